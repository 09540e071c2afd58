"""Deletion detection: which positions follow a deleted token (BART's token deletion, SPECS §13).

Consumes the ``delete`` corruption's ``deletion_labels`` [B, T] (1 where one or more tokens were
removed right before the position, 0 elsewhere, -100 on padding). The head is ELECTRA's
discriminator head (dense H -> H, activation, dense H -> 1); the loss is the sigmoid
cross-entropy averaged over the labelled positions of the batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.core.batch import IGNORE_INDEX
from clozelab.model.layers import get_activation, init_bert_weights
from clozelab.objectives.base import Objective, ObjectiveOutput, global_mean


class BinaryTokenHead(nn.Module):
    """dense(H -> H) -> activation -> dense(H -> 1): one logit per token (ELECTRA)."""

    def __init__(self, hidden_size: int, activation: str = "gelu", initializer_range: float = 0.02):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = get_activation(activation)
        self.out = nn.Linear(hidden_size, 1)
        init_bert_weights(self, std=initializer_range)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.out(self.act(self.dense(hidden))).squeeze(-1)  # (..., H) -> (...)


def binary_token_loss(logits: Tensor, labels: Tensor, keep: Tensor, name: str) -> ObjectiveOutput:
    """Mean sigmoid CE of ``logits`` against ``labels`` over the positions where ``keep``."""
    logits = logits.float()[keep]  # (N,)
    targets = labels[keep].float()  # (N,)
    n = targets.numel()
    loss = global_mean(
        F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / max(n, 1), n
    )
    with torch.no_grad():
        acc = ((logits > 0).float() == targets).float().sum() / max(n, 1)
    return ObjectiveOutput(
        loss=loss, n_targets=n, logs={f"{name}_loss": loss.detach(), f"{name}_acc": acc}
    )


class TokenDetection(Objective):
    """Base of the per-token binary detection objectives: an ELECTRA head reads every position
    and a sigmoid cross-entropy is averaged over the positions where ``batch[labels_key]`` is not
    -100. Subclasses set ``name``, ``labels_key`` (also their ``requires``) and ``requires_fix``.

    Args:
        hidden_size: encoder width H.
        activation: activation of the head.
        weight: factor of this loss in the total loss.
        initializer_range: std of the normal initialisation (BERT: 0.02).
    """

    labels_key: str = ""
    instance_kinds = None

    def __init__(
        self,
        hidden_size: int,
        activation: str = "gelu",
        weight: float = 1.0,
        initializer_range: float = 0.02,
    ):
        super().__init__(weight=weight)
        self.head = BinaryTokenHead(hidden_size, activation, initializer_range)

    def forward(
        self, encoder_output, batch: Mapping[str, Tensor], embedding: nn.Module | None = None
    ) -> ObjectiveOutput:
        self.check_batch(batch)
        labels = batch[self.labels_key]  # (B, T)
        logits = self.head(encoder_output.last_hidden_state)  # (B, T)
        return binary_token_loss(logits, labels, labels != IGNORE_INDEX, self.name)


class DeletionDetection(TokenDetection):
    """Predict, at each position, whether tokens were deleted right before it."""

    name = "deletion"
    labels_key = "deletion_labels"
    requires = ("deletion_labels",)
    requires_fix = "use corruption=delete (token deletion), alone or in a composed corruption"
