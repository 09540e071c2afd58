"""A classifier on the pooled [CLS] vector, the head NSP, ERNIE's DLM and ERNIE 2.0's sentence
distance and reordering share.

``tanh(dense(h_[CLS]))`` (its own pooler), a ``num_labels``-way linear layer (2 by default), the
batch-mean cross-entropy of ``batch[label_key]`` over the rows whose label is not -100 (rows of
another task in a mixed batch, ``data.instances=structure``); logs ``<name>_loss`` and
``<name>_acc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.core.batch import IGNORE_INDEX
from clozelab.model.layers import Pooler, init_bert_weights
from clozelab.objectives.base import Objective, ObjectiveOutput, global_mean


class PooledClassifier(Objective):
    """Base of the sequence-level objectives; a subclass sets ``name``, ``requires``,
    ``label_key`` (the [B] batch key it classifies) and ``num_labels`` (or passes it).

    Args:
        hidden_size: encoder width H.
        weight: factor of this loss in the total loss.
        initializer_range: std of the normal initialisation (BERT: 0.02).
        num_labels: classes (default: the class's ``num_labels``).
    """

    label_key: ClassVar[str] = ""
    num_labels: int = 2

    def __init__(
        self,
        hidden_size: int,
        weight: float = 1.0,
        initializer_range: float = 0.02,
        num_labels: int | None = None,
    ):
        super().__init__(weight=weight)
        self.num_labels = int(num_labels or self.num_labels)
        self.pooler = Pooler(hidden_size, initializer_range=initializer_range)
        self.classifier = nn.Linear(hidden_size, self.num_labels)
        init_bert_weights(self.classifier, std=initializer_range)

    def logits(self, hidden: Tensor) -> Tensor:
        """Logits [B, num_labels] from the last hidden state [B, T, H]."""
        return self.classifier(self.pooler(hidden))

    def forward(
        self, encoder_output, batch: Mapping[str, Tensor], embedding: nn.Module | None = None
    ) -> ObjectiveOutput:
        self.check_batch(batch)
        labels = batch[self.label_key].reshape(-1)  # (B,)
        logits = self.logits(encoder_output.last_hidden_state).float()  # (B, num_labels)
        valid = labels != IGNORE_INDEX
        n = int(valid.sum())
        local = F.cross_entropy(logits, labels) if n else logits.sum() * 0.0  # mean over valid
        loss = global_mean(local, n)
        with torch.no_grad():
            acc = ((logits.argmax(-1) == labels) & valid).float().sum() / max(n, 1)
        logs = {f"{self.name}_loss": loss.detach(), f"{self.name}_acc": acc}
        return ObjectiveOutput(loss=loss, n_targets=n, logs=logs)
