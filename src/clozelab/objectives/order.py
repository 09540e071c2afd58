"""Order prediction: where each token stood before the ``reorder`` corruption moved it.

Consumes ``order_labels`` [B, T] (the original position of the token now at each position; -100
on specials and padding). The head points: the score of "the token at i came from position j" is
``(W_q h_i) . (W_k h_j) / sqrt(d)`` over the real positions j of the same sequence (the state at j
knows its position), and the loss is the cross-entropy of the true original position, averaged
over the labelled tokens of the batch. ``order_acc`` is the accuracy over all labelled tokens,
``order_moved_acc`` over the tokens that moved.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.core.batch import IGNORE_INDEX
from clozelab.model.layers import init_bert_weights
from clozelab.objectives.base import Objective, ObjectiveOutput, global_mean


class OrderPrediction(Objective):
    """Pointer to each token's original position.

    Args:
        hidden_size: encoder width H.
        pointer_size: width d of the query/key projections (default H).
        weight: factor of this loss in the total loss.
        initializer_range: std of the normal initialisation (BERT: 0.02).
    """

    name = "order"
    requires = ("order_labels",)
    instance_kinds = None
    requires_fix = "use corruption=reorder (local or sentence shuffle)"

    def __init__(
        self,
        hidden_size: int,
        pointer_size: int | None = None,
        weight: float = 1.0,
        initializer_range: float = 0.02,
    ):
        super().__init__(weight=weight)
        size = pointer_size or hidden_size
        self.query = nn.Linear(hidden_size, size)
        self.key = nn.Linear(hidden_size, size)
        init_bert_weights(self, std=initializer_range)

    def scores(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """[B, T, T] pointer logits (query position, candidate original position)."""
        q, k = self.query(hidden), self.key(hidden)  # (B, T, d)
        scores = (q @ k.transpose(1, 2)).float() * q.shape[-1] ** -0.5  # (B, T, T)
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask.bool()[:, None, :], float("-inf"))
        return scores

    def forward(
        self, encoder_output, batch: Mapping[str, Tensor], embedding: nn.Module | None = None
    ) -> ObjectiveOutput:
        self.check_batch(batch)
        labels = batch["order_labels"]  # (B, T)
        keep = labels != IGNORE_INDEX
        scores = self.scores(encoder_output.last_hidden_state, batch.get("attention_mask"))
        picked, targets = scores[keep], labels[keep]  # (N, T), (N,)
        n = targets.numel()
        loss = global_mean(F.cross_entropy(picked, targets, reduction="sum") / max(n, 1), n)
        with torch.no_grad():
            hit = picked.argmax(-1) == targets
            positions = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
            moved = (labels != positions)[keep]
            logs = {
                "order_loss": loss.detach(),
                "order_acc": hit.float().sum() / max(n, 1),
                "order_moved_acc": (hit & moved).float().sum() / moved.sum().clamp_min(1),
            }
        return ObjectiveOutput(
            loss=loss, n_targets=n, logs=logs, weights={"order_moved_acc": moved.sum()}
        )
