"""A per-token classifier, the head of ERNIE 2.0's word-aware tasks (SPECS.md §20).

Dropout and a ``num_labels``-way linear layer on the final hidden state of each labelled token
(``batch[label_key] != -100``; only those rows are projected), trained with the cross-entropy
averaged over the labelled tokens of the batch. Logs ``<name>_loss`` and ``<name>_acc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.core.batch import IGNORE_INDEX
from clozelab.model.dropout import Dropout
from clozelab.model.layers import init_bert_weights
from clozelab.objectives.base import Objective, ObjectiveOutput, global_mean


class TokenClassifier(Objective):
    """Base of the token-level objectives; a subclass sets ``name``, ``requires`` and
    ``label_key`` (the [B, T] batch key it classifies, -100 where no label applies).

    Args:
        hidden_size: encoder width H.
        weight: factor of this loss in the total loss.
        dropout: dropout on the hidden states before the linear layer.
        initializer_range: std of the normal initialisation (BERT: 0.02).
    """

    label_key: ClassVar[str] = ""
    num_labels: ClassVar[int] = 2

    def __init__(
        self,
        hidden_size: int,
        weight: float = 1.0,
        dropout: float = 0.1,
        initializer_range: float = 0.02,
    ):
        super().__init__(weight=weight)
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, self.num_labels)
        init_bert_weights(self.classifier, std=initializer_range)

    def forward(
        self, encoder_output, batch: Mapping[str, Tensor], embedding: nn.Module | None = None
    ) -> ObjectiveOutput:
        self.check_batch(batch)
        labels = batch[self.label_key]  # (B, T)
        keep = labels != IGNORE_INDEX
        hidden = encoder_output.last_hidden_state[keep]  # (N, H): labelled tokens only
        targets = labels[keep]  # (N,)
        logits = self.classifier(self.dropout(hidden)).float()  # (N, num_labels)
        n = targets.numel()
        loss = global_mean(F.cross_entropy(logits, targets, reduction="sum") / max(n, 1), n)
        with torch.no_grad():
            acc = (logits.argmax(-1) == targets).float().sum() / max(n, 1)
        logs = {f"{self.name}_loss": loss.detach(), f"{self.name}_acc": acc}
        return ObjectiveOutput(loss=loss, n_targets=n, logs=logs)
