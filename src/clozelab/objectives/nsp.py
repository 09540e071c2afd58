"""Next-sentence prediction (BERT, SPECS §5-6).

A two-way classifier on the pooled [CLS] vector (``tanh(dense(h_[CLS]))``), trained with the
batch-mean cross-entropy (``PooledClassifier``). Label convention as in BERT and HF: 0 = B follows
A, 1 = B is random. Needs segment-pair (BERT) or sentence-pair (RoBERTa SENTENCE-PAIR) instances.
"""

from __future__ import annotations

from clozelab.objectives.pooled import PooledClassifier


class NSP(PooledClassifier):
    """Next-sentence prediction; reads ``batch["next_sentence_label"]`` [B].

    Args:
        hidden_size: encoder width H.
        weight: factor of this loss in the total loss.
        initializer_range: std of the normal initialisation (BERT: 0.02).
    """

    name = "nsp"
    requires = ("next_sentence_label",)
    instance_kinds = ("segment_pair", "sentence_pair")
    label_key = "next_sentence_label"

    def summary_pooler(self):
        return self.pooler
