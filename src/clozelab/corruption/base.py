"""Pieces every corruption scheme shares.

A corruption is a plain callable ``corruption(batch, generator) -> batch``: it returns a new dict (a
shallow copy of ``batch``) whose ``input_ids`` are corrupted and which carries the targets. It holds
no parameters, never loops in Python over tokens or rows, and draws every random number from the
``torch.Generator`` it is given, so the same generator state gives the same corruption in any
DataLoader worker.

The two axes of DESIGN.md §3 map onto this module as follows:

* *which units*: ``candidates`` (real, non-special positions) and ``choose_k`` (a uniform subset of
  exactly k per row, vectorised) are the building blocks of the selection step;
* *what happens to them*: ``OperationMix`` (the 80/10/10 split), ``ReplacementSampler`` (where a
  random token comes from) and ``apply_operations`` (writes ``[MASK]`` / random / keep per token).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from clozelab.core.batch import IGNORE_INDEX
from clozelab.core.errors import BuildError, ClozelabError, check_choice, config_error
from clozelab.corruption.runtime import RUNTIME_INPUTS, STAND_IN_TOKENIZER, runtime_kwargs

log = logging.getLogger(__name__)

REPLACE_FROM = ("nonspecial", "vocab")
"""Where random replacements come from: every id except the special ones (RoBERTa), or the whole
vocabulary, specials included (BERT, ALBERT, HF collator; SPECS §3)."""

DISTRIBUTIONS = ("uniform", "unigram")
"""How random replacements are weighted: uniformly, or by corpus unigram frequency (the seeds'
"sampled by unigram probability"; SpanBERT's token buffer; fairseq ``freq_weighted_replacement``).
"""


class Corruption:
    """Base class of all corruption schemes: the hooks the rest of clozelab asks a scheme about.

    Subclasses implement ``__call__(batch, generator) -> dict`` and declare what they read and
    write, so objectives and config checks (``training/validate.py``) can refuse impossible
    combinations before any data is read. A user's scheme in their own module subclasses this and
    is selected with ``corruption._target_=mymodule.MyCorruption``.

    Every scheme is built with its config node plus the tokenizer's ``vocab_size``,
    ``mask_token_id`` and ``special_token_ids`` (keyword arguments), and the optional run-time
    inputs it lists in ``runtime_inputs``.
    """

    #: Batch keys ``__call__`` reads. A key the configured data does not provide is refused when
    #: the config is composed (``check_keys``), with ``requires_fix``.
    requires: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "special_tokens_mask")
    #: The fix ``check_keys`` names (e.g. the data setting that adds a key to the batches, the
    #: objective that reads what the scheme writes).
    requires_fix: ClassVar[str] = "choose data settings whose batches carry them"
    #: Batch keys ``__call__`` writes (targets such as ``mlm_labels``, ``span_bounds`` ...): what
    #: the objectives may require. Compositions compute theirs with ``produces_for``.
    produces: ClassVar[tuple[str, ...]] = ("input_ids",)
    #: Optional run-time inputs (keyword arguments) besides the tokenizer's vocab_size,
    #: mask_token_id and special_token_ids: any of ``RUNTIME_INPUTS``: ``pad_token_id`` /
    #: ``eos_token_id`` (the tokenizer's [PAD] / [SEP] ids), ``corpus`` (the training corpus's
    #: statistics, ``clozelab.data.corpus_stats.CorpusStats``: unigram counts, phrase table; None
    #: when the corruption is built without a corpus).
    runtime_inputs: ClassVar[frozenset[str]] = frozenset()
    #: Whether the positions it corrupts count against the shared budget of a ``Compose``
    #: (False for Reorder: it moves tokens whatever an earlier step did).
    shares_budget: ClassVar[bool] = True
    #: Ids the model needs beyond the tokenizer's vocabulary (T5 sentinels): the embedding and
    #: softmax get ``tokenizer.vocab_size + extra_vocab`` rows (SEQ2SEQ contract).
    extra_vocab: int = 0
    #: The corruption rate: the fraction of the sequence it corrupts (0: none, no budget share).
    rate: float = 0.0

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        old = [a for a in ("accepts_corpus", "accepts_pad", "accepts_eos") if a in cls.__dict__]
        if old:
            raise TypeError(
                f"{cls.__qualname__}: {old} are replaced by the declared hook "
                "runtime_inputs = frozenset({'corpus', 'pad_token_id', 'eos_token_id'})"
            )
        unknown = set(cls.runtime_inputs) - set(RUNTIME_INPUTS)
        if unknown:
            raise TypeError(
                f"{cls.__qualname__}.runtime_inputs: {sorted(unknown)} are not run-time inputs "
                f"(known: {list(RUNTIME_INPUTS)})"
            )

    @classmethod
    def produces_for(cls, node) -> tuple[str, ...]:
        """The batch keys this scheme, configured by ``node``, produces (``produces``; a
        composition adds its steps')."""
        return tuple(cls.produces)

    @classmethod
    def check_keys(
        cls, node, provided: set[str], read: set[str] | None = None, key: str = "corruption"
    ) -> None:
        """Refuse, when the config is composed, a scheme configured by ``node`` that reads batch
        keys the data does not provide (``provided``: the keys of a text batch before
        corruption), or, given ``read`` (the keys the objectives, embedding and encoder read),
        one that leaves ``input_ids`` alone and writes nothing anything reads (it would run for
        nothing). The error names ``requires_fix``. A composition checks each step against the
        data and the keys of the steps before it."""
        missing = [k for k in cls.requires if k not in provided]
        if missing:
            raise ClozelabError(
                f"{key} ({node.get('_target_')}) reads the batch keys {missing}, which the "
                f"configured data does not provide. Fix: {cls.requires_fix}."
            )
        produced = set(cls.produces_for(node))
        if read is not None and "input_ids" not in produced and not produced & read:
            raise ClozelabError(
                f"{key} ({node.get('_target_')}) writes only {sorted(produced)}, which no "
                f"objective, embedding or encoder of this run reads. Fix: {cls.requires_fix}."
            )

    @classmethod
    def check_node(cls, node) -> None:
        """Refuse a bad ``corruption`` node when the config is composed, before any data is read
        or tokenizer trained (``training/validate.py`` calls it through ``corruption._target_``).

        The default builds the scheme from ``node`` with stand-in tokenizer ids
        (``runtime.STAND_IN_TOKENIZER``) and no corpus, so every check its constructor makes of
        its own arguments (rates, lengths, choices) runs now instead of after the shards are
        built. Its ClozelabErrors and keywords it does not take are refusals; anything else its
        constructor raises on the stand-ins (a user's scheme that reads the corpus, None here)
        is not: the scheme is then checked when the run builds it with the real inputs. A scheme
        whose constructor needs the real tokenizer or corpus may override this."""
        from clozelab.core.config import build

        try:
            build(node, "corruption", **runtime_kwargs(cls, STAND_IN_TOKENIZER))
        except BuildError as exc:
            if not exc.inside:
                raise
            log.debug("corruption: not checked with stand-in inputs (%s)", exc)

    def budget_rate(self) -> float:
        """The share of a ``Compose``'s budget this step takes: its ``rate`` when it
        ``shares_budget``, else 0."""
        return float(self.rate) if self.shares_budget else 0.0

    def rate_of_remaining(self) -> bool:
        """Whether the rate is drawn over the step's own candidates (which exclude positions an
        earlier step of a ``Compose`` corrupted), so ``Compose`` rescales it to
        ``rate / (1 - earlier rates)``. False (the default) for budgets counted over the whole row
        (BERT's exact budget)."""
        return False

    def __call__(
        self, batch: Mapping[str, Tensor], generator: torch.Generator
    ) -> dict[str, Tensor]:
        raise NotImplementedError(
            f"{type(self).__name__} must implement __call__(batch, generator)"
        )

    def preview_stats(self, pairs: list[tuple[dict, dict]], tokenizer) -> dict:
        """Statistics ``clozelab preview`` writes for (clean, corrupted) batch pairs."""
        from clozelab.corruption.preview import corruption_stats

        return corruption_stats(pairs, tokenizer.mask_id)

    def preview_render(self, clean: dict, out: dict, row: int, tokenizer) -> str:
        """One corrupted row of ``clozelab preview`` with its changes marked."""
        from clozelab.corruption.preview import render

        return render(clean, out, row, tokenizer, tokenizer.mask_id)

    def output_length(self, n_tokens: int, n_special: int) -> int:
        """Longest corrupted row (encoder input) from a row of ``n_tokens`` real tokens,
        ``n_special`` of them special. Corruptions that shorten or lengthen rows override it."""
        return n_tokens

    def instance_length(self, max_seq_length: int, n_special: int) -> int:
        """Longest raw row whose corrupted form fits in ``max_seq_length`` (T5's
        ``random_spans_helper`` search): the length the data module builds instances at.
        ``output_length`` must not decrease with the row length."""
        n = max_seq_length
        while self.output_length(n + 1, n_special) <= max_seq_length:
            n += 1
        while n > n_special + 1 and self.output_length(n, n_special) > max_seq_length:
            n -= 1
        return n


# --------------------------------------------------------------------------------------------------
# validation helpers


def _is_real_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_rate(rate: object, key: str = "corruption.rate") -> float:
    """Return ``rate`` as a float after checking it lies in the open interval (0, 1)."""
    if not _is_real_number(rate) or not 0.0 < float(rate) < 1.0:
        raise config_error(
            key,
            rate,
            "the corruption rate must be a number strictly between 0 and 1",
            f"set {key} to a fraction such as 0.15",
        )
    return float(rate)


def check_probability(value: object, key: str) -> float:
    """Return ``value`` as a float after checking it lies in the closed interval [0, 1]."""
    if not _is_real_number(value) or not 0.0 <= float(value) <= 1.0:
        raise config_error(key, value, "must be a probability in [0, 1]", f"set {key} in [0, 1]")
    return float(value)


def check_positive_int(value: object, key: str, *, allow_none: bool = False) -> int | None:
    """Return ``value`` after checking it is an integer >= 1 (or None when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or null" if allow_none else ""
        raise config_error(
            key, value, f"must be a positive integer{extra}", f"set {key} to an integer >= 1"
        )
    return int(value)


# --------------------------------------------------------------------------------------------------
# what happens to the selected tokens


@dataclass(frozen=True)
class OperationMix:
    """Per-token split of the selected positions: ``[MASK]`` / random token / kept unchanged.

    BERT's 80/10/10 is the default. Every selected position is a prediction target whatever happens
    to its input token. ``prefix`` only names the config group in error messages.
    """

    mask: float = 0.8
    random: float = 0.1
    keep: float = 0.1
    prefix: str = field(default="corruption", compare=False, repr=False)

    def __post_init__(self) -> None:
        values = (self.mask, self.random, self.keep)
        for attr, value in zip(("mask", "random", "keep"), values):
            object.__setattr__(self, attr, check_probability(value, self._key(f"{attr}_prob")))
        total = self.mask + self.random + self.keep
        if abs(total - 1.0) > 1e-6:
            raise config_error(
                f"{self.prefix}.mask_prob/random_prob/keep_prob",
                values,
                f"the three probabilities must sum to 1, they sum to {total:.6g}",
                "make them add up to 1, e.g. mask_prob=0.8 random_prob=0.1 keep_prob=0.1",
            )

    def _key(self, name: str) -> str:
        return f"{self.prefix}.{name}"


class ReplacementSampler:
    """Draws the ids written at "random token" positions.

    * ``replace_from="nonspecial"`` (default, RoBERTa): uniform over every id that is not special
      (``special_token_ids``, which should include ``[MASK]`` and ``[PAD]``).
    * ``replace_from="vocab"`` (BERT, ALBERT, HF): uniform over ``[0, vocab_size)``.
    * ``probs``: a ``[vocab_size]`` weight vector (e.g. unigram corpus counts, SpanBERT / fairseq's
      ``freq_weighted_replacement``), normalised here. In ``nonspecial`` mode the weight of the
      special ids is zeroed first.
    """

    def __init__(
        self,
        vocab_size: int,
        special_token_ids: Iterable[int] = (),
        replace_from: str = "nonspecial",
        probs: Tensor | None = None,
        prefix: str = "corruption",
    ) -> None:
        self.vocab_size = check_positive_int(vocab_size, f"{prefix}.vocab_size")
        self.replace_from = check_choice(replace_from, f"{prefix}.replace_from", REPLACE_FROM)
        self.special_token_ids = check_token_ids(
            special_token_ids, self.vocab_size, f"{prefix}.special_token_ids"
        )
        self.table_missing = False  # set by replacement_sampler: unigram asked, no table given
        self.allowed: Tensor | None = None  # ids to draw from uniformly; None = whole vocab
        self.probs: Tensor | None = None  # normalised weights; None = uniform
        if self.replace_from == "nonspecial":
            keep = torch.ones(self.vocab_size, dtype=torch.bool)
            keep[list(self.special_token_ids)] = False
            if not bool(keep.any()):
                raise config_error(
                    f"{prefix}.replace_from",
                    replace_from,
                    "every vocabulary id is special, so no random token can be drawn",
                    f"set {prefix}.replace_from=vocab or check the tokenizer's special tokens",
                )
            self.allowed = keep.nonzero().squeeze(1)
        if probs is not None:
            self.probs = self._normalise(probs, prefix)
            self._cdf = torch.cumsum(self.probs.to(torch.float64), 0)
            self._cdf[-1] = 1.0
            self.allowed = None

    def _normalise(self, probs: Tensor, prefix: str) -> Tensor:
        key = f"{prefix}.replacement_probs"
        weights = torch.as_tensor(probs, dtype=torch.float64).flatten().clone()
        if weights.numel() != self.vocab_size:
            raise config_error(
                key,
                f"<tensor of {weights.numel()} weights>",
                f"needs one weight per vocabulary id ({self.vocab_size})",
                "build the weights from the same tokenizer as the data",
            )
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise config_error(
                key, "<tensor>", "weights must be finite and non-negative", "recount the corpus"
            )
        if self.replace_from == "nonspecial":
            weights[list(self.special_token_ids)] = 0.0
        total = float(weights.sum())
        if total <= 0.0:
            raise config_error(
                key,
                "<tensor>",
                "no id has positive weight (after removing special ids)",
                "recount the corpus or set replace_from=vocab",
            )
        return (weights / total).to(torch.float32)

    def check_table(self) -> None:
        """Raise when ``replace_distribution=unigram`` was asked without the corpus table."""
        if self.table_missing:
            raise ClozelabError(
                "corruption.replace_distribution=unigram needs the token frequency table of the "
                "training shards, and this corruption was built without them. Fix: build it with "
                "clozelab.pretrain.build_components(cfg, tokenizer, prepared) (clozelab pretrain "
                "does), or set corruption.replace_distribution=uniform."
            )

    def sample(
        self, n: int, generator: torch.Generator, device: torch.device | None = None
    ) -> Tensor:
        """Return ``n`` random ids (long tensor of shape ``[n]``)."""
        if self.probs is not None:
            # inverse-CDF sampling: O(n log V) per call, no O(V) set-up (unlike multinomial)
            u = torch.rand(n, generator=generator, dtype=torch.float64)
            index = torch.searchsorted(self._cdf, u, right=True).clamp_max(self.vocab_size - 1)
            return index.to(device)
        if self.allowed is None:
            return torch.randint(self.vocab_size, (n,), generator=generator, device=device)
        index = torch.randint(self.allowed.numel(), (n,), generator=generator)
        return self.allowed[index].to(device)

    def __repr__(self) -> str:
        kind = "probs" if self.probs is not None else "uniform"
        return (
            f"ReplacementSampler(vocab_size={self.vocab_size}, replace_from={self.replace_from!r}, "
            f"{kind})"
        )


def replacement_sampler(
    vocab_size: int,
    special_token_ids: Iterable[int],
    replace_from: str,
    replace_distribution: str,
    corpus=None,
    replacement_probs: Tensor | None = None,
    needed: bool = True,
) -> ReplacementSampler:
    """The sampler of a corruption that writes random tokens (``replace_distribution`` choice).

    ``uniform`` draws uniformly (``replace_from`` says over which ids); ``unigram`` weights the ids
    by their counts in the training corpus (``corpus``: its ``CorpusStats``, counted once). Explicit
    ``replacement_probs`` (tests, custom tables) win over both. Without a table, a ``unigram``
    corruption that may replace (``needed``) is still built (tests, ``preview`` of a config) but
    flagged: its ``check_table`` raises a clear error before the first batch is corrupted.
    """
    distribution = check_choice(
        replace_distribution, "corruption.replace_distribution", DISTRIBUTIONS
    )
    if replacement_probs is None and distribution == "unigram" and corpus is not None:
        replacement_probs = corpus.unigram_counts(vocab_size)
    sampler = ReplacementSampler(
        vocab_size, special_token_ids, replace_from, probs=replacement_probs
    )
    sampler.table_missing = distribution == "unigram" and replacement_probs is None and needed
    return sampler


def check_token_ids(ids: Iterable[int], vocab_size: int, key: str) -> tuple[int, ...]:
    """Return ``ids`` as a sorted tuple of unique ints, each in ``[0, vocab_size)``."""
    try:
        values = sorted({int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)})
    except (TypeError, ValueError):
        raise config_error(
            key, ids, "must be a list of token ids", "pass the tokenizer's all_special_ids"
        ) from None
    bad = [i for i in values if not 0 <= i < vocab_size]
    if bad:
        raise config_error(
            key,
            bad,
            f"token ids must lie in [0, vocab_size={vocab_size})",
            "build the corruption from the same tokenizer as the data",
        )
    return tuple(values)


def apply_operations(
    input_ids: Tensor,
    selected: Tensor,
    mix: OperationMix,
    generator: torch.Generator,
    mask_token_id: int | None,
    replacement_sampler: ReplacementSampler | None,
    draws: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Apply ``mix`` independently to every selected position.

    One uniform draw ``u`` per position: ``u < mask`` -> ``[MASK]``; ``u < mask + random`` -> a
    random id from ``replacement_sampler``; otherwise the token is kept. Returns the corrupted copy
    of ``input_ids`` and ``replaced_mask`` (True where a random id was written, which can by chance
    equal the original). ``input_ids`` itself is never modified.

    ``draws`` (float ``[B, T]``) replaces the per-position draws: giving every token of a unit the
    same value applies the mixture per unit (SpanBERT's ``replacement_method=span``, SPECS §8).
    """
    if draws is None:
        u = torch.rand(selected.shape, generator=generator, device=input_ids.device)
    else:
        u = draws
    to_mask = selected & (u < mix.mask)
    replaced = selected & (u >= mix.mask) & (u < mix.mask + mix.random)
    new_ids = input_ids.clone()
    if mix.mask > 0.0:
        if mask_token_id is None:
            raise ValueError("apply_operations: mask_token_id is required when mix.mask > 0")
        new_ids.masked_fill_(to_mask, mask_token_id)
    if mix.random > 0.0:
        if replacement_sampler is None:
            raise ValueError(
                "apply_operations: a replacement_sampler is required when mix.random > 0"
            )
        n = int(replaced.sum())
        if n:
            draws = replacement_sampler.sample(n, generator, device=input_ids.device)
            new_ids.masked_scatter_(replaced, draws.to(new_ids.dtype))
    return new_ids, replaced


# --------------------------------------------------------------------------------------------------
# which units are selected


def candidates(
    batch: Mapping[str, Tensor], special_token_ids: Iterable[int] | None = None
) -> Tensor:
    """Positions that may be corrupted: real tokens (``attention_mask`` 1) that are not special.

    Specials come from ``batch["special_tokens_mask"]``; when the batch has none they are the
    positions whose id is in ``special_token_ids`` (like HF's collator without a precomputed mask).
    A missing ``attention_mask`` means every position is real. Returns ``bool [B, T]``.
    """
    input_ids = batch["input_ids"]
    if "special_tokens_mask" in batch:
        special = batch["special_tokens_mask"].bool()
    elif special_token_ids is not None:
        ids = torch.tensor(list(special_token_ids), dtype=input_ids.dtype, device=input_ids.device)
        special = torch.isin(input_ids, ids)
    else:
        raise KeyError(
            "the batch has no 'special_tokens_mask' and no special_token_ids were given; "
            "tokenize with return_special_tokens_mask=True"
        )
    if "corrupted_mask" in batch:  # positions an earlier step of a Compose already corrupted
        special = special | batch["corrupted_mask"].bool()
    if "attention_mask" in batch:
        return batch["attention_mask"].bool() & ~special
    return ~special


def ascending(keys: Tensor, k: int | None = None) -> Tensor:
    """Per row, the column indices of ``keys`` in increasing key order (only the first ``k``).

    Ties are broken arbitrarily (callers use distinct keys, or only ever read the order of
    distinct ones). CPU tensors are sorted by NumPy's vectorised sort: on fresh random ``[32, 128]``
    keys it is ~6x faster than ``torch.argsort`` and ~3x faster than ``torch.topk``, which lose
    their time to branch mispredictions; other devices use ``torch.argsort``.
    """
    if keys.device.type == "cpu":
        order = torch.from_numpy(np.argsort(keys.detach().numpy(), axis=-1))
    else:
        order = keys.argsort(dim=-1)
    return order if k is None else order[:, :k]


def choose_k(keys: Tensor, eligible: Tensor, k: Tensor) -> Tensor:
    """Per row, select the ``k[row]`` eligible positions with the smallest ``keys``.

    With i.i.d. uniform ``keys`` this is a uniform draw of ``k`` positions without replacement.
    ``k`` is capped at the number of eligible positions of its row. Returns ``bool`` like
    ``eligible``. Vectorised: one row sort (``ascending``), cut at the largest ``k``.
    """
    k = torch.minimum(k.to(torch.long), eligible.sum(dim=-1))
    k_max = int(k.max()) if k.numel() else 0
    chosen = torch.zeros_like(eligible)
    if k_max == 0:
        return chosen
    ranked = keys.masked_fill(~eligible, math.inf)
    index = ascending(ranked, k_max)
    rank = torch.arange(k_max, device=keys.device)
    return chosen.scatter_(-1, index, rank < k.unsqueeze(-1))


def round_half_even(x: Tensor | float) -> Tensor | int:
    """Round to the nearest integer, ties to even (Python 3's ``round``; BERT's budget, SPECS §1).

    Tensors are rounded in float64 so ``n * rate`` reproduces Python's double arithmetic exactly
    (e.g. 30 * 0.15 -> 4, 70 * 0.15 -> 10, 50 * 0.15 -> 8). Returns a long tensor or an int.
    """
    if isinstance(x, Tensor):
        return torch.round(x.to(torch.float64)).to(torch.long)
    return round(float(x))


def prediction_budget(
    n_tokens: Tensor, rate: float, max_predictions: int | None = None, minimum: int = 1
) -> Tensor:
    """BERT's per-row budget ``min(max_predictions, max(minimum, round_half_even(n * rate)))``."""
    k = round_half_even(n_tokens.to(torch.float64) * rate).clamp_min(minimum)
    if max_predictions is not None:
        k = k.clamp_max(max_predictions)
    return k


def mlm_targets(input_ids: Tensor, selected: Tensor) -> Tensor:
    """Original ids at ``selected`` positions, ``IGNORE_INDEX`` elsewhere."""
    return input_ids.masked_fill(~selected, IGNORE_INDEX)
