"""ERNIE 1.0's dialogue language model (DLM; Sun et al. 2019, SPECS.md §11): the real/fake part.

Dialogue batches are ``[CLS] U1 [SEP] U2 [SEP] U3 [SEP]`` triples (QRQ / QRR / QQR) with role
embeddings (``embedding=role``), built by ``clozelab.data.dialogue_instances`` from
``data.dialogue.corpus``. This objective owns the binary real/fake head (``PooledClassifier``,
as NSP): its own pooler ``tanh(dense(h_[CLS]))`` and a 2-way linear layer, trained with the
batch-mean cross-entropy.
The "MLM over all turns" half of DLM is the run's ``mlm`` objective itself, which also trains on
dialogue batches (logged there as ``dialogue_mlm_loss``); nothing is duplicated.

Label convention: ``dialogue_label`` **1 = real, 0 = fake** (ERNIE's: positive = 1; BERT's NSP is
the other way round). Logs: ``dlm_loss``, ``dlm_acc``.
"""

from __future__ import annotations

from clozelab.data.dialogue_instances import FAKE, REAL
from clozelab.objectives.pooled import PooledClassifier


class DLM(PooledClassifier):
    """Real/fake dialogue classification; reads ``batch["dialogue_label"]`` [B] (1 real, 0 fake).

    Args:
        hidden_size: encoder width H.
        weight: factor of this loss in the total loss (the paper gives none; 1.0).
        initializer_range: std of the normal initialisation (BERT: 0.02).
    """

    name = "dlm"
    requires = ("dialogue_label", "role_ids")
    instance_kinds = None  # dialogue batches come from data.dialogue, beside any text instances
    streams = ("dialogue",)
    label_key = "dialogue_label"
    requires_fix = (
        "add dialogue data, data.dialogue.corpus=bundled:chatterbot (or a .jsonl of turns), "
        "with embedding=role"
    )
    real, fake = REAL, FAKE
