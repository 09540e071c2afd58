"""ERNIE 1.0 knowledge masking: a mixture of basic, phrase and entity levels (SPECS §10).

Each sequence draws its level from ``level_probs`` (ERNIE draws it per *file* with
``mask_word_prob``; per sequence is the finer-grained version of the same mixture, and equals it
when one level has probability 1). At every level the units are chosen independently with
probability ``rate`` (ERNIE: the unit is selected iff its first token's draw is <= 0.15) and every
token of a chosen unit gets its own 80/10/10 draw (ERNIE splits the first token's draw, which has
the same marginals). Phrase and entity levels use ERNIE's unit layout: the knowledge units, and the
words between them as basic units, so the expected masked fraction is ``rate`` at every level.
"""

from __future__ import annotations

import torch

from clozelab.core.errors import config_error
from clozelab.corruption.base import check_choice, check_probability
from clozelab.corruption.masking import MaskingCorruption, build_units, select_units

LEVELS = ("basic", "phrase", "entity")


class ErnieMasking(MaskingCorruption):
    """Args (besides ``MaskingCorruption``'s):
    level_probs: ``{basic: p, phrase: p, entity: p}``, summing to 1.
    basic_unit: ``whole_word`` (ERNIE's English basic unit) or ``token``.
    phrase_source: ``collocations`` (gensim Phrases) or ``spacy_chunks`` (``data.phrases``).
    phrase_min_count, phrase_threshold: gensim Phrases settings of the phrase table.
    """

    spans = True  # phrase and entity units: several words each

    def __init__(
        self,
        rate: float = 0.15,
        mask_prob: float = 0.8,
        random_prob: float = 0.1,
        keep_prob: float = 0.1,
        level_probs: dict | None = None,
        basic_unit: str = "whole_word",
        operations_per: str = "token",
        prediction_rate: float | None = None,
        replace_from: str = "nonspecial",
        replace_distribution: str = "uniform",
        phrase_source: str = "collocations",
        phrase_min_count: int = 5,
        phrase_threshold: float = 10.0,
        **runtime,
    ) -> None:
        super().__init__(
            rate,
            mask_prob,
            random_prob,
            keep_prob,
            operations_per,
            prediction_rate,
            replace_from,
            replace_distribution,
            **runtime,
        )
        probs = dict(level_probs or {"basic": 1 / 3, "phrase": 1 / 3, "entity": 1 / 3})
        unknown = sorted(set(probs) - set(LEVELS))
        if unknown:
            raise config_error(
                "corruption.level_probs",
                unknown,
                f"unknown levels (known: {list(LEVELS)})",
                "e.g. corruption.level_probs={basic:0.4,phrase:0.3,entity:0.3}",
            )
        values = [
            check_probability(probs.get(k, 0.0), f"corruption.level_probs.{k}") for k in LEVELS
        ]
        if abs(sum(values) - 1.0) > 1e-6:
            raise config_error(
                "corruption.level_probs",
                probs,
                f"must sum to 1, they sum to {sum(values):.6g}",
                "make the level probabilities add up to 1",
            )
        self.level_probs = torch.tensor(values, dtype=torch.float64)
        self.basic_unit = check_choice(basic_unit, "corruption.basic_unit", ("whole_word", "token"))
        self.phrases = None
        if values[1] > 0:
            from clozelab.corruption.phrases import phrase_source as phrases_from

            self.phrases = phrases_from(
                phrase_source, self.corpus, phrase_min_count, phrase_threshold
            )

    def rate_of_remaining(self) -> bool:
        """Its rate is drawn over its own candidates (see ``Corruption.rate_of_remaining``)."""
        return True

    def levels(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``long [B]``: 0 basic, 1 phrase, 2 entity."""
        cdf = self.level_probs.cumsum(0)
        cdf[-1] = 1.0
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        return torch.searchsorted(cdf, u, right=True).clamp_max(2)

    def select(self, batch, eligible, generator):
        level = self.levels(eligible.shape[0], generator).unsqueeze(-1)
        units = build_units(self.basic_unit, batch, eligible, "word")
        if bool((level == 2).any()):
            entity = build_units("entity", batch, eligible, "word")
            units = torch.where(level == 2, entity, units)
        has_phrases = self.phrases is not None or "phrase_ids" in batch
        if self.level_probs[1] > 0 and has_phrases and bool((level == 1).any()):
            phrase = build_units("phrase", batch, eligible, "word", self.phrases)
            units = torch.where(level == 1, phrase, units)
        selected = select_units(units, eligible, self.rate, "bernoulli", None, generator)
        return selected, units
