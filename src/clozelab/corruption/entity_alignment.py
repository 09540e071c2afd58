"""The alignment noise of ERNIE-THU's denoising entity auto-encoder (dEA; Zhang et al. 2019,
§3.4; SPECS §19).

Of the token-entity alignments of a batch (``entity_links`` >= 0: an entity at the first token
of its mention), independently per alignment: ``replace_prob`` (5%) get a uniformly drawn
entity instead, ``mask_prob`` (15%) are dropped (the entity input removed, -1), the rest (80%)
are kept. Every alignment is a target: ``entity_labels`` holds the original entity at each
aligned token and -100 elsewhere, and the dEA objective predicts it from the token's output.

It touches only the entity inputs, so it composes with any token corruption and takes no share
of a ``Compose``'s token budget::

    _target_: clozelab.corruption.compose.Compose
    _recursive_: false
    steps:
      - {_target_: clozelab.corruption.masking.UnitMasking, unit: token, rate: 0.15}
      - {_target_: clozelab.corruption.entity_alignment.EntityAlignmentNoise}
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from clozelab.core.batch import IGNORE_INDEX
from clozelab.core.errors import ClozelabError, config_error
from clozelab.corruption.base import Corruption, check_positive_int, check_probability


class EntityAlignmentNoise(Corruption):
    """dEA alignment noise: ``replace_prob`` random entity, ``mask_prob`` dropped, rest kept.

    Args:
        replace_prob: share of the alignments given a random entity (the paper: 5%).
        mask_prob: share of the alignments whose entity input is removed (the paper: 15%).
        num_entities: how many entities random ones are drawn from; None: the corpus's
            (``corpus.knowledge()``, the run-time input).
    """

    requires = ("entity_links",)
    requires_fix = (
        "set data.entity_links=true (the entity each mention names); the dEA noise is ERNIE-THU's: "
        "experiment=ernie_thu sets it with encoder=ernie_thu and objective=[mlm,nsp,dea]"
    )
    produces = ("entity_links", "entity_labels")
    runtime_inputs = frozenset({"corpus"})
    shares_budget = False

    def __init__(
        self,
        replace_prob: float = 0.05,
        mask_prob: float = 0.15,
        num_entities: int | None = None,
        corpus=None,
        **tokenizer_ids,
    ) -> None:
        self.replace_prob = check_probability(replace_prob, "corruption.replace_prob")
        self.mask_prob = check_probability(mask_prob, "corruption.mask_prob")
        if self.replace_prob + self.mask_prob > 1.0:
            raise config_error(
                "corruption.replace_prob + corruption.mask_prob",
                self.replace_prob + self.mask_prob,
                "the two shares of the alignments must not exceed 1",
                "the paper's 0.05 and 0.15 leave 80% of the alignments as they are",
            )
        num_entities = check_positive_int(num_entities, "corruption.num_entities", allow_none=True)
        if num_entities is None and corpus is not None:
            num_entities = corpus.knowledge().num_entities
        self.num_entities = num_entities

    def __call__(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> dict:
        if "entity_links" not in batch:
            raise ClozelabError(
                "corruption: the dEA alignment noise needs the entity each mention names "
                f"(batch key 'entity_links'; the batch has {sorted(batch)}). Fix: set "
                "data.entity_links=true (experiment=ernie_thu does)."
            )
        if not self.num_entities:
            raise ClozelabError(
                "corruption: the dEA alignment noise draws random entities and knows of none. "
                "Fix: build it with the corpus (clozelab pretrain does) or give "
                "corruption num_entities=N."
            )
        links = batch["entity_links"]
        aligned = links >= 0
        u = torch.rand(links.shape, generator=generator)
        replace = aligned & (u < self.replace_prob)
        drop = aligned & (u >= self.replace_prob) & (u < self.replace_prob + self.mask_prob)
        random = torch.randint(self.num_entities, links.shape, generator=generator)
        out = dict(batch)
        out["entity_labels"] = links.masked_fill(~aligned, IGNORE_INDEX)
        out["entity_links"] = torch.where(replace, random, links).masked_fill(drop, -1)
        return out

    def __repr__(self) -> str:
        return (f"EntityAlignmentNoise(replace_prob={self.replace_prob}, "
                f"mask_prob={self.mask_prob}, num_entities={self.num_entities})")  # fmt: skip
