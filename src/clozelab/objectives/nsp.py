"""Next-sentence prediction (BERT, SPECS §5-6).

A two-way classifier on the pooled [CLS] vector (``tanh(dense(h_[CLS]))``), trained with the
batch-mean cross-entropy. Label convention as in BERT and HF: 0 = B follows A, 1 = B is random.
Needs segment-pair (BERT) or sentence-pair (RoBERTa SENTENCE-PAIR) instances.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.model.heads import Pooler, init_bert_weights
from clozelab.objectives.base import Objective, ObjectiveOutput, global_mean


class NSP(Objective):
    """Next-sentence prediction; reads ``batch["next_sentence_label"]`` [B].

    Args:
        hidden_size: encoder width H.
        weight: factor of this loss in the total loss.
        initializer_range: std of the normal initialisation (BERT: 0.02).
    """

    name = "nsp"
    requires = ("next_sentence_label",)
    instance_kinds = ("segment_pair", "sentence_pair")

    def __init__(self, hidden_size: int, weight: float = 1.0, initializer_range: float = 0.02):
        super().__init__(weight=weight)
        self.pooler = Pooler(hidden_size, initializer_range=initializer_range)
        self.classifier = nn.Linear(hidden_size, 2)
        init_bert_weights(self.classifier, std=initializer_range)

    def logits(self, hidden: Tensor) -> Tensor:
        """NSP logits [B, 2] from the last hidden state [B, T, H]."""
        return self.classifier(self.pooler(hidden))

    def forward(
        self, encoder_output, batch: Mapping[str, Tensor], embedding: nn.Module | None = None
    ) -> ObjectiveOutput:
        self.check_batch(batch)
        labels = batch["next_sentence_label"].reshape(-1)  # (B,)
        logits = self.logits(encoder_output.last_hidden_state).float()  # (B, 2)
        loss = global_mean(F.cross_entropy(logits, labels), labels.numel())
        with torch.no_grad():
            acc = (logits.argmax(-1) == labels).float().mean()
        return ObjectiveOutput(
            loss=loss, n_targets=labels.numel(), logs={"nsp_loss": loss.detach(), "nsp_acc": acc}
        )
