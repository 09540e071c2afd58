"""Sentence-order prediction (ALBERT, SPECS §7).

Two consecutive segments of one document, in their original order (label 0) or swapped (label 1);
a one-sentence chunk gets a random-document B, labelled 1 as in ALBERT's builder. The head is
ALBERT's: dropout (``classifier_dropout_prob``) and a 2-way linear layer on the pooled [CLS]
vector (``tanh(dense(h_[CLS]))``); the loss is the batch-mean cross-entropy. Needs
``data.instances=sentence_order``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.model.dropout import Dropout
from clozelab.model.layers import Pooler, init_bert_weights
from clozelab.objectives.base import Objective, ObjectiveOutput, global_mean


class SOP(Objective):
    """Sentence-order prediction; reads ``batch["sentence_order_label"]`` [B].

    Args:
        hidden_size: encoder width H.
        weight: factor of this loss in the total loss (ALBERT: MLM + SOP, 1.0).
        classifier_dropout: dropout on the pooled vector (ALBERT: 0.1).
        initializer_range: std of the normal initialisation (BERT: 0.02).
    """

    name = "sop"
    requires = ("sentence_order_label",)
    instance_kinds = ("sentence_order",)

    def __init__(
        self,
        hidden_size: int,
        weight: float = 1.0,
        classifier_dropout: float = 0.1,
        initializer_range: float = 0.02,
    ):
        super().__init__(weight=weight)
        self.pooler = Pooler(hidden_size, initializer_range=initializer_range)
        self.dropout = Dropout(classifier_dropout)
        self.classifier = nn.Linear(hidden_size, 2)
        init_bert_weights(self.classifier, std=initializer_range)

    def summary_pooler(self) -> nn.Module:
        return self.pooler

    def logits(self, hidden: Tensor) -> Tensor:
        """SOP logits [B, 2] from the last hidden state [B, T, H]."""
        return self.classifier(self.dropout(self.pooler(hidden)))

    def forward(
        self, encoder_output, batch: Mapping[str, Tensor], embedding: nn.Module | None = None
    ) -> ObjectiveOutput:
        self.check_batch(batch)
        labels = batch["sentence_order_label"].reshape(-1)  # (B,)
        logits = self.logits(encoder_output.last_hidden_state).float()  # (B, 2)
        loss = global_mean(F.cross_entropy(logits, labels), labels.numel())
        with torch.no_grad():
            acc = (logits.argmax(-1) == labels).float().mean()
        return ObjectiveOutput(
            loss=loss, n_targets=labels.numel(), logs={"sop_loss": loss.detach(), "sop_acc": acc}
        )
