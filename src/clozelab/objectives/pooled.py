"""A two-way classifier on the pooled [CLS] vector, the head NSP and ERNIE's DLM share.

``tanh(dense(h_[CLS]))`` (its own pooler), a 2-way linear layer, the batch-mean cross-entropy of
``batch[label_key]``; logs ``<name>_loss`` and ``<name>_acc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.model.layers import Pooler, init_bert_weights
from clozelab.objectives.base import Objective, ObjectiveOutput, global_mean


class PooledClassifier(Objective):
    """Base of the sequence-level binary objectives; a subclass sets ``name``, ``requires`` and
    ``label_key`` (the [B] batch key it classifies).

    Args:
        hidden_size: encoder width H.
        weight: factor of this loss in the total loss.
        initializer_range: std of the normal initialisation (BERT: 0.02).
    """

    label_key: ClassVar[str] = ""

    def __init__(self, hidden_size: int, weight: float = 1.0, initializer_range: float = 0.02):
        super().__init__(weight=weight)
        self.pooler = Pooler(hidden_size, initializer_range=initializer_range)
        self.classifier = nn.Linear(hidden_size, 2)
        init_bert_weights(self.classifier, std=initializer_range)

    def logits(self, hidden: Tensor) -> Tensor:
        """Logits [B, 2] from the last hidden state [B, T, H]."""
        return self.classifier(self.pooler(hidden))

    def forward(
        self, encoder_output, batch: Mapping[str, Tensor], embedding: nn.Module | None = None
    ) -> ObjectiveOutput:
        self.check_batch(batch)
        labels = batch[self.label_key].reshape(-1)  # (B,)
        logits = self.logits(encoder_output.last_hidden_state).float()  # (B, 2)
        loss = global_mean(F.cross_entropy(logits, labels), labels.numel())
        with torch.no_grad():
            acc = (logits.argmax(-1) == labels).float().mean()
        logs = {f"{self.name}_loss": loss.detach(), f"{self.name}_acc": acc}
        return ObjectiveOutput(loss=loss, n_targets=labels.numel(), logs=logs)
