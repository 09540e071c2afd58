"""Sentence reordering (ERNIE 2.0, Sun et al. 2020; SPECS.md §20).

A paragraph is cut into k segments, k uniform in [1, m], and shuffled (``data.instances=structure``,
``data.reorder_segments=m``); a ``PooledClassifier`` over the sum of k! for k = 1..m classes
(9 for m = 3, 33 for m = 4) predicts the order (``permutation_label``; -100 on the structure's
sentence-distance pairs, which the loss skips). Logs ``sentence_reorder_loss`` and
``sentence_reorder_acc``.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from clozelab.core.errors import config_error
from clozelab.data.structure import MAX_SEGMENTS, permutation_classes
from clozelab.objectives.pooled import PooledClassifier


class SentenceReordering(PooledClassifier):
    """Which permutation shuffled the paragraph's segments; reads ``batch["permutation_label"]``.

    Args:
        hidden_size: encoder width H.
        max_segments: m, the most segments of a paragraph (must equal data.reorder_segments).
        weight, initializer_range: as ``PooledClassifier``.
    """

    name = "sentence_reorder"
    requires = ("permutation_label",)
    instance_kinds = ("structure",)
    label_key = "permutation_label"

    def __init__(
        self,
        hidden_size: int,
        max_segments: int = 3,
        weight: float = 1.0,
        initializer_range: float = 0.02,
    ):
        if isinstance(max_segments, bool) or not 1 <= max_segments <= MAX_SEGMENTS:
            raise config_error(
                f"objective.{self.name}.max_segments",
                max_segments,
                f"must be an integer in [1, {MAX_SEGMENTS}]",
                "use 3 or 4 (the paper's m)",
            )
        super().__init__(hidden_size, weight, initializer_range, permutation_classes(max_segments))
        self.max_segments = max_segments

    @classmethod
    def check_config(cls, cfg, name: str) -> None:
        share = OmegaConf.select(cfg, "data.reorder_share")
        if share is not None and share <= 0:
            raise config_error(
                "data.reorder_share",
                share,
                f"no structure row is a reordered paragraph, so objective.{name} gets none",
                "set data.reorder_share above 0 (0.5: half pairs, half paragraphs)",
            )
        mine = OmegaConf.select(cfg, f"objective.{name}.max_segments")
        data = OmegaConf.select(cfg, "data.reorder_segments")
        if mine != data:
            raise config_error(
                f"objective.{name}.max_segments",
                mine,
                f"the head has one class per order of up to that many segments, but the data "
                f"cuts paragraphs into up to data.reorder_segments={data}",
                f"set objective.{name}.max_segments=${{data.reorder_segments}}",
            )
