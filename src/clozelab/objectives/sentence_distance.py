"""Sentence distance (ERNIE 2.0, Sun et al. 2020; SPECS.md §20).

A 3-way ``PooledClassifier`` on ``[CLS] A [SEP] B [SEP]``: 0 = B is adjacent to A in the same
document, 1 = B is from the same document, not adjacent, 2 = B is from another document
(``sentence_distance_label``, built by ``data.instances=structure``; -100 on its reordered
paragraphs, which the loss skips). Logs ``sentence_distance_loss`` and ``sentence_distance_acc``.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from clozelab.core.errors import config_error
from clozelab.objectives.pooled import PooledClassifier


class SentenceDistance(PooledClassifier):
    """Adjacent / same document / other document; reads ``batch["sentence_distance_label"]``."""

    name = "sentence_distance"
    requires = ("sentence_distance_label",)
    instance_kinds = ("structure",)
    label_key = "sentence_distance_label"
    num_labels = 3

    @classmethod
    def check_config(cls, cfg, name: str) -> None:
        share = OmegaConf.select(cfg, "data.reorder_share")
        if share is not None and share >= 1:
            raise config_error(
                "data.reorder_share",
                share,
                f"every structure row is a reordered paragraph, so objective.{name} gets no pair",
                "set data.reorder_share below 1 (0.5: half pairs, half paragraphs)",
            )
