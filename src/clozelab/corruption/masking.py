"""Masked-LM corruption over units: token, whole word, entity, phrase (SPECS §1-4, §10).

``MaskingCorruption`` is the shared second half of every masking scheme ("what happens"): the
80/10/10 mixture applied per token or per unit, random tokens from a uniform or unigram
distribution, and a prediction rate separate from the corruption rate (Wettig et al. 2023,
"Should You Mask 15% in Masked Language Modeling?"). Subclasses only choose positions.

``UnitMasking`` chooses units:

* ``budget="bernoulli"``: every unit is chosen independently with probability ``rate`` (ERNIE 1.0's
  unit level, SPECS §10; current HF whole-word masking, SPECS §2). The expected fraction of
  candidate tokens is exactly ``rate``.
* ``budget="exact"``: BERT's ``create_masked_lm_predictions`` (SPECS §1-2): units in random order,
  a unit is taken unless it would overflow ``K = min(max_predictions, max(1,
  round_half_even(n_real * rate)))`` (skipped with *continue*), so the count is <= K (== K for
  single-token units).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import ClassVar

import torch
from torch import Tensor

from clozelab.core.errors import ClozelabError, config_error
from clozelab.corruption.base import (
    IGNORE_INDEX,
    Corruption,
    OperationMix,
    apply_operations,
    ascending,
    candidates,
    check_choice,
    check_positive_int,
    check_probability,
    check_rate,
    prediction_budget,
    replacement_sampler,
)
from clozelab.corruption.units import (
    UNIT_KINDS,
    Runs,
    annotated_units,
    expand_unit_draws,
    runs,
    span_bounds,
    token_units,
    unit_index,
    unit_lengths,
    word_units,
)

BUDGETS = ("bernoulli", "exact")
OPERATIONS_PER = ("token", "unit")
FILLS = ("word", "token", "none")


class MaskedReplacement(Corruption):
    """What happens to the tokens a masked-LM scheme chooses, set up once for every such scheme
    (``mask.TokenMasking``, ``MaskingCorruption``): the corruption rate, the [MASK] / random /
    keep mixture (``OperationMix``), the [MASK] id and the sampler of random tokens (uniform or
    unigram, over the vocabulary or the non-special ids; ``base.replacement_sampler``).
    A subclass passes these arguments to ``super().__init__`` and then sets up how it chooses
    positions.

    Args:
        rate: corruption rate, the fraction of candidate tokens chosen (``corruption.rate``).
        mask_prob, random_prob, keep_prob: what happens to the chosen tokens (BERT's 80/10/10).
        replace_from: ``"nonspecial"`` (RoBERTa) or ``"vocab"`` (BERT/HF, specials included).
        replace_distribution: ``"uniform"`` or ``"unigram"`` (corpus frequencies, SpanBERT /
            fairseq ``freq_weighted_replacement``; the table is counted once from the shards).
        vocab_size, mask_token_id, special_token_ids: from the tokenizer at run time.
        corpus: the training corpus's statistics (run time; ``unigram`` and phrases need it).
        replacement_probs: explicit ``[vocab_size]`` weights (tests, custom tables).
    """

    runtime_inputs = frozenset({"corpus"})  # unigram counts / phrase table of the corpus

    def __init__(
        self,
        rate: float,
        mask_prob: float,
        random_prob: float,
        keep_prob: float,
        replace_from: str,
        replace_distribution: str,
        *,
        vocab_size: int,
        mask_token_id: int,
        special_token_ids: Iterable[int],
        corpus=None,
        replacement_probs: Tensor | None = None,
    ) -> None:
        self.rate = check_rate(rate)
        self.mix = OperationMix(mask_prob, random_prob, keep_prob)
        self.vocab_size = check_positive_int(vocab_size, "corruption.vocab_size")
        if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int):
            raise config_error(
                "corruption.mask_token_id",
                mask_token_id,
                "must be an integer token id",
                "use a tokenizer that defines a [MASK] token",
            )
        if not 0 <= mask_token_id < self.vocab_size:
            raise config_error(
                "corruption.mask_token_id",
                mask_token_id,
                f"must lie in [0, vocab_size={self.vocab_size})",
                "build the corruption from the same tokenizer as the data",
            )
        self.mask_token_id = mask_token_id
        # [MASK] never comes out of a "nonspecial" random draw, even if the tokenizer forgot it.
        specials = [*_as_ints(special_token_ids), mask_token_id]
        self.corpus = corpus
        self.sampler = replacement_sampler(
            self.vocab_size,
            specials,
            replace_from,
            replace_distribution,
            corpus,
            replacement_probs,
            needed=self.mix.random > 0,
        )
        self.replace_distribution = replace_distribution
        self.replace_from = self.sampler.replace_from
        self.special_token_ids = self.sampler.special_token_ids


def _as_ints(ids: Iterable[int]) -> list[int]:
    try:
        return [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
    except (TypeError, ValueError):
        raise config_error(
            "corruption.special_token_ids",
            ids,
            "must be a list of token ids",
            "pass the tokenizer's all_special_ids",
        ) from None


class MaskingCorruption(MaskedReplacement):
    """Base of the unit masking schemes: ``MaskedReplacement`` plus operations per token or
    unit and a prediction rate.

    Args (besides ``MaskedReplacement``'s):
        operations_per: ``"token"`` (one draw per token: BERT, ALBERT, ERNIE) or ``"unit"`` (one
            draw per unit / merged span: SpanBERT's ``replacement_method=span``).
        prediction_rate: fraction of candidate tokens that carry an MLM loss; ``None`` = every
            chosen token (all references). Below ``rate`` a uniform subset of the chosen tokens is
            predicted; above it, unchosen tokens are added with probability
            ``(prediction_rate - rate) / (1 - rate)`` and predict themselves (Wettig et al.).
    """

    produces = ("input_ids", "mlm_labels", "replaced_mask", "corrupted_mask")
    #: whether it chooses multi-token spans and writes their ``span_bounds`` (what SBO reads):
    #: SpanBERT spans, n-grams, entities, phrases, ERNIE's mix; not single tokens or words
    spans: ClassVar[bool] = False

    @classmethod
    def produces_for(cls, node) -> tuple[str, ...]:
        """The batch keys this configured corruption writes (``span_bounds`` with spans)."""
        return cls.produces + (("span_bounds",) if cls.spans_for(node) else ())

    @classmethod
    def spans_for(cls, node) -> bool:
        return cls.spans

    def __init__(
        self,
        rate: float = 0.15,
        mask_prob: float = 0.8,
        random_prob: float = 0.1,
        keep_prob: float = 0.1,
        operations_per: str = "token",
        prediction_rate: float | None = None,
        replace_from: str = "nonspecial",
        replace_distribution: str = "uniform",
        *,
        vocab_size: int,
        mask_token_id: int,
        special_token_ids: Iterable[int],
        corpus=None,
        replacement_probs: Tensor | None = None,
    ) -> None:
        super().__init__(
            rate,
            mask_prob,
            random_prob,
            keep_prob,
            replace_from,
            replace_distribution,
            vocab_size=vocab_size,
            mask_token_id=mask_token_id,
            special_token_ids=special_token_ids,
            corpus=corpus,
            replacement_probs=replacement_probs,
        )
        self.operations_per = check_choice(
            operations_per, "corruption.operations_per", OPERATIONS_PER
        )
        self.prediction_rate = (
            None
            if prediction_rate is None
            else check_probability(prediction_rate, "corruption.prediction_rate")
        )

    # -- the part subclasses implement ------------------------------------------------------------

    def select(
        self, batch: Mapping[str, Tensor], eligible: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Return ``(selected bool [B, T], unit_ids long [B, T] | None)``: the units for per-unit
        operations; ``None`` means the merged runs of ``selected`` (SpanBERT's spans)."""
        raise NotImplementedError

    # -- shared second half -----------------------------------------------------------------------

    def __call__(
        self, batch: Mapping[str, Tensor], generator: torch.Generator
    ) -> dict[str, Tensor]:
        self.sampler.check_table()
        input_ids = batch["input_ids"]
        if input_ids.dim() != 2:
            raise ValueError(f"{type(self).__name__} expects input_ids [B, T]")
        eligible = candidates(batch, self.special_token_ids)
        selected, unit_ids = self.select(batch, eligible, generator)
        selected = selected & eligible
        merged = Runs(selected)
        draws = None
        if self.operations_per == "unit":
            index = merged.run_id if unit_ids is None else None
            draws = unit_draws(unit_ids, selected, generator, index)
        new_ids, replaced = apply_operations(
            input_ids, selected, self.mix, generator, self.mask_token_id, self.sampler, draws
        )
        predicted = self.predicted(selected, eligible, generator)
        out = dict(batch)
        out["input_ids"] = new_ids
        out["mlm_labels"] = merge_labels(batch.get("mlm_labels"), input_ids, predicted)
        out["replaced_mask"] = (
            replaced | batch["replaced_mask"] if "replaced_mask" in batch else replaced
        )
        previous = batch.get("corrupted_mask")
        out["corrupted_mask"] = selected if previous is None else selected | previous.bool()
        if self.spans:
            out["span_bounds"] = (
                span_bounds(selected, merged)
                if previous is None
                else span_bounds(out["corrupted_mask"])
            )
        return out

    def predicted(self, selected: Tensor, eligible: Tensor, generator: torch.Generator) -> Tensor:
        if self.prediction_rate is None:
            return selected
        u = torch.rand(selected.shape, generator=generator, device=selected.device)
        if self.prediction_rate <= self.rate:
            return selected & (u < self.prediction_rate / self.rate)
        extra = (self.prediction_rate - self.rate) / (1.0 - self.rate)
        return selected | (eligible & ~selected & (u < extra))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rate={self.rate}, mix={self.mix.mask}/{self.mix.random}/"
            f"{self.mix.keep}, operations_per={self.operations_per!r}, "
            f"prediction_rate={self.prediction_rate}, "
            f"replace={self.sampler.replace_from}/{self.replace_distribution})"
        )


def unit_draws(
    unit_ids: Tensor | None, selected: Tensor, generator: torch.Generator, index: Tensor | None
) -> Tensor:
    """One uniform draw per selected unit, copied onto its tokens (``expand_unit_draws``);
    ``index`` is the units' 0.. numbering when the caller already has it (merged runs)."""
    if index is None:
        return expand_unit_draws(unit_ids.masked_fill(~selected, -1), selected, generator)[0]
    per_unit = torch.rand(selected.shape, generator=generator, device=selected.device)
    return per_unit.gather(1, index.clamp_min(0))  # read only at selected positions


def merge_labels(previous: Tensor | None, input_ids: Tensor, predicted: Tensor) -> Tensor:
    """Original ids at ``predicted`` positions; earlier labels (of a Compose step) kept."""
    labels = input_ids.masked_fill(~predicted, IGNORE_INDEX)
    if previous is None:
        return labels
    return torch.where(previous != IGNORE_INDEX, previous, labels)


# --------------------------------------------------------------------------------------------------
# budgets over units


def greedy_fill(keys: Tensor, lengths: Tensor, valid: Tensor, budget: Tensor) -> Tensor:
    """BERT's walk over shuffled units: take a unit unless it would overflow the budget.

    ``keys``/``lengths``/``valid`` are ``[B, U]`` (one column per unit), ``budget`` is ``[B]``.
    Units are visited in increasing ``keys``; a unit that would overflow is skipped and the walk
    goes on (``continue``, SPECS §1 step 5). Returns ``bool [B, U]`` (taken units).

    Vectorised in passes: each pass first drops every pending unit longer than the remaining budget
    (it can never fit later, the budget only shrinks), then takes the longest prefix of pending
    units that fits. Each pass takes at least one unit, and in practice two or three passes suffice.
    """
    order = ascending(keys.masked_fill(~valid, math.inf))
    length_sorted = lengths.gather(1, order)
    pending = valid.gather(1, order)
    taken = torch.zeros_like(pending)
    remaining = budget.clone().to(lengths.dtype)
    while True:
        pending = pending & (length_sorted <= remaining.unsqueeze(-1))
        if not bool(pending.any()):
            break
        fits = (length_sorted * pending).cumsum(-1) <= remaining.unsqueeze(-1)
        take = pending & fits
        taken |= take
        pending &= ~take
        remaining = remaining - (length_sorted * take).sum(-1)
    return torch.zeros_like(taken).scatter_(1, order, taken)


def exact_budget(batch: Mapping[str, Tensor], eligible: Tensor, rate: float, max_predictions):
    """BERT's ``K`` per row: counts real tokens (specials included, padding excluded)."""
    attention = batch.get("attention_mask")
    if attention is None:
        n_real = torch.full(eligible.shape[:-1], eligible.shape[-1], device=eligible.device)
    else:
        n_real = attention.bool().sum(dim=-1)
    return prediction_budget(n_real, rate, max_predictions)


def select_units(
    unit_ids: Tensor,
    eligible: Tensor,
    rate: float,
    budget: str,
    k: Tensor | None,
    generator: torch.Generator,
) -> Tensor:
    """Choose whole units with the ``bernoulli`` or ``exact`` budget; returns ``bool [B, T]``."""
    eligible = eligible & (unit_ids >= 0)  # e.g. tokens outside entities with fill=none
    index, _ = unit_index(unit_ids, eligible)
    keys = torch.rand(index.shape, generator=generator, device=index.device)  # one per unit column
    if budget == "bernoulli":
        chosen_unit = keys < rate
    else:
        lengths = unit_lengths(index)
        chosen_unit = greedy_fill(keys, lengths, lengths > 0, k)
    return chosen_unit.gather(1, index.clamp_min(0)) & (index >= 0)


SPAN_UNITS = ("entity", "phrase")  # units of several words: they write span_bounds


class UnitMasking(MaskingCorruption):
    """Masked LM over units: ``token``, ``whole_word``, ``entity`` or ``phrase``.

    Args (besides ``MaskingCorruption``'s):
        unit: which units (``whole_word`` reads ``word_ids``; ``entity`` reads ``entity_ids``;
            ``phrase`` reads ``phrase_ids`` or derives them from the corpus phrase table).
        budget: ``"bernoulli"`` (per unit) or ``"exact"`` (BERT's K, overflowing units skipped).
        max_predictions: cap of the exact budget (BERT: 20 at length 128), or None.
        fill: for entity/phrase units, what the other tokens are: ``word`` units (ERNIE), single
            ``token`` units, or ``none`` (only annotated units are candidates).
        phrase_source: ``collocations`` (gensim Phrases over the shards) or ``spacy_chunks``
            (noun chunks stored in the shards at preprocessing, ``data.phrases=spacy_chunks``).
        phrase_min_count, phrase_threshold: gensim Phrases settings of the phrase table.
    """

    def __init__(
        self,
        rate: float = 0.15,
        mask_prob: float = 0.8,
        random_prob: float = 0.1,
        keep_prob: float = 0.1,
        unit: str = "whole_word",
        budget: str = "exact",
        max_predictions: int | None = None,
        fill: str = "word",
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
        self.unit = check_choice(unit, "corruption.unit", UNIT_KINDS)
        self.spans = self.unit in SPAN_UNITS
        self.budget = check_choice(budget, "corruption.budget", BUDGETS)
        self.max_predictions = check_positive_int(
            max_predictions, "corruption.max_predictions", allow_none=True
        )
        self.fill = check_choice(fill, "corruption.fill", FILLS)
        self.phrases = None
        if self.unit == "phrase":
            from clozelab.corruption.phrases import phrase_source as phrases_from

            self.phrases = phrases_from(
                phrase_source, self.corpus, phrase_min_count, phrase_threshold
            )

    def rate_of_remaining(self) -> bool:
        """Bernoulli draws take the rate of the candidates left; exact budgets count the row."""
        return self.budget == "bernoulli"

    @classmethod
    def spans_for(cls, node) -> bool:
        return node.get("unit", "whole_word") in SPAN_UNITS

    def units(self, batch: Mapping[str, Tensor], eligible: Tensor) -> Tensor:
        return build_units(self.unit, batch, eligible, self.fill, self.phrases)

    def select(self, batch, eligible, generator):
        unit_ids = self.units(batch, eligible)
        k = exact_budget(batch, eligible, self.rate, self.max_predictions)
        selected = select_units(unit_ids, eligible, self.rate, self.budget, k, generator)
        return selected, unit_ids


def build_units(unit: str, batch, eligible: Tensor, fill: str, phrases=None) -> Tensor:
    """Unit ids ``[B, T]`` of the given kind (see ``units.py``)."""
    if unit == "token":
        return token_units(eligible)
    if unit == "whole_word":
        return word_units(batch, eligible)
    if unit == "entity":
        return annotated_units(batch, eligible, "entity_ids", fill)
    if phrases is not None:  # the collocation table wins over phrase ids from the data
        batch = {**batch, "phrase_ids": phrases.phrase_ids(batch, eligible)}
    elif "phrase_ids" not in batch:
        raise ClozelabError(
            "corruption.unit=phrase: the batch has no phrase_ids and no phrase table was built. "
            "Fix: build the corruption with the training shards (clozelab pretrain does) so the "
            "collocation table can be learnt, or store noun chunks at preprocessing "
            "(data.phrases=spacy_chunks with corruption.phrase_source=spacy_chunks)."
        )
    return annotated_units(batch, eligible, "phrase_ids", fill)


__all__ = ["MaskingCorruption", "UnitMasking", "greedy_fill", "runs", "select_units"]
