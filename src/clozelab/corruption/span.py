"""Multi-word units: SpanBERT geometric spans (SPECS §8) and ALBERT n-grams (SPECS §7).

Both references grow their masked set with a sequential loop (each new span depends on what is
already masked). Here:

* ``SpanMasking`` reproduces SpanBERT's loop *exactly* without looping: anchors in a random order
  over the candidate tokens are SpanBERT's "uniform anchor, retry if already masked" draws; which
  candidate spans are accepted (anchor not covered by an earlier accepted span) is the fixed point
  of a batched ``[B, M, M]`` recursion (a few iterations); the budget cut keeps, in span order and
  then left to right, the first ``ceil(rate * n)`` new tokens (``choose_k`` on ``owner * T + pos``).
* ``NgramMasking`` walks the k-th shuffled word start of *every row at once* (a loop over the rank,
  vectorised over the batch, bounded and stopped as soon as every row's budget is spent), with
  ALBERT's fallback to shorter n-grams and its overlap check.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from clozelab.core.errors import config_error
from clozelab.corruption.base import (
    ascending,
    check_positive_int,
    check_probability,
    choose_k,
)
from clozelab.corruption.masking import MaskingCorruption, exact_budget
from clozelab.corruption.units import word_units


def geometric_pmf(p: float, lower: int, upper: int) -> Tensor:
    """SpanBERT's length distribution: Geometric(p) on ``lower..upper``, truncated and
    **renormalised** (not clipped). p = 0.2 on 1..10 has mean 3.797 (clipping would give 4.463)."""
    lengths = torch.arange(lower, upper + 1, dtype=torch.float64)
    pmf = p * (1 - p) ** (lengths - 1)
    return pmf / pmf.sum()


def length_cdf(pmf: Tensor) -> Tensor:
    """Cumulative ``pmf`` with its last entry exactly 1 (``sample_lengths``'s table)."""
    cdf = pmf.cumsum(0)
    cdf[-1] = 1.0
    return cdf


def sample_lengths(
    pmf: Tensor, lower: int, shape, generator: torch.Generator, cdf: Tensor | None = None
) -> Tensor:
    """Draw lengths ``lower + i`` with probability ``pmf[i]`` (inverse CDF; ``cdf`` is
    ``length_cdf(pmf)``, precomputed by callers that draw often)."""
    cdf = length_cdf(pmf) if cdf is None else cdf
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return torch.bucketize(u, cdf[:-1], right=True) + lower  # u < 1 = cdf[-1]


@functools.lru_cache(maxsize=64)
def _earlier(m: int, device: torch.device) -> Tensor:
    """``bool [m, m]``: column j is before row i."""
    return torch.ones(m, m, dtype=torch.bool, device=device).tril(-1)


class WordLayout:
    """Per-row word geometry shared by span and n-gram masking.

    Words are maximal runs of equal ``word_ids`` over candidate tokens, numbered 0.. per row in
    positional order: ``ordinal`` per token (clamped at 0 off candidates, so always a valid gather
    index; ``word`` has -1 there). Blocks are runs of candidates between specials (spans and n-grams
    stop at their end): ``block_last`` per token is the ordinal of the last word of its block. By
    word ordinal (``[B, T]``): ``start`` / ``end`` token of each word. A few batched cumsum /
    scatter calls; each array is computed on first use.
    """

    def __init__(self, batch: Mapping[str, Tensor], eligible: Tensor):
        if "word_ids" not in batch:
            word_units(batch, eligible)  # raises the error that names the missing key
        raw = batch["word_ids"]
        b, t = eligible.shape
        self.t = t
        self.eligible = eligible
        self.ineligible = ~eligible
        self.positions = torch.arange(t, device=eligible.device).expand(b, t)
        same = torch.zeros_like(eligible)  # continues the word of the previous candidate token
        same[:, 1:] = (raw[:, 1:] == raw[:, :-1]) & eligible[:, :-1]
        self.is_start = eligible & ~same
        ordinal = self.is_start.cumsum(-1) - 1
        self.n_words = ordinal[:, -1] + 1
        self.ordinal = ordinal.clamp_min(0)
        self._start = self._end = self._block_last = None

    @property
    def word(self) -> Tensor:
        return self.ordinal.masked_fill(self.ineligible, -1)

    def _by_word(self, where: Tensor, fill: int) -> Tensor:
        """``[B, T]`` by word ordinal: the position of the ``where`` token of each word."""
        b, t = where.shape
        out = torch.full((b, t + 1), fill, dtype=torch.long, device=where.device)
        out.scatter_(1, torch.where(where, self.ordinal, t), self.positions)
        return out[:, :t]

    @property
    def start(self) -> Tensor:
        if self._start is None:
            self._start = self._by_word(self.is_start, self.t)
        return self._start

    @property
    def end(self) -> Tensor:
        if self._end is None:
            next_is_break = torch.ones_like(self.eligible)  # next token: other word or special
            next_is_break[:, :-1] = self.is_start[:, 1:] | self.ineligible[:, 1:]
            self._end = self._by_word(self.eligible & next_is_break, -1)
        return self._end

    @property
    def block_last(self) -> Tensor:
        if self._block_last is None:
            # block id: specials count up, so a block's candidates share the id of the special
            # before them (whose ordinal, the previous word's, is smaller: the max is unaffected)
            block = self.ineligible.cumsum(-1)
            last = torch.zeros(block.shape[0], self.t + 1, dtype=torch.long, device=block.device)
            last.scatter_reduce_(1, block, self.ordinal, "amax")
            self._block_last = last.gather(1, block)
        return self._block_last


class SpanMasking(MaskingCorruption):
    """SpanBERT span masking (``PairWithSpanMaskingScheme``, SPECS §8).

    Budget ``ceil(rate * n)`` over the n candidate tokens, hit exactly (the last span may be cut
    mid-word). Span lengths in words ~ Geometric(``geometric_p``) truncated to ``[span_lower,
    span_upper]`` and renormalised; anchors uniform over tokens, snapped back to their word start,
    so a word is a start word with probability proportional to its piece count. Spans stop at [SEP]
    (SpanBERT masks single-segment blocks). The operation mixture is drawn per merged span by
    default (``operations_per=unit``, the paper run's ``replacement_method=span``).
    """

    spans = True

    def __init__(
        self,
        rate: float = 0.15,
        mask_prob: float = 0.8,
        random_prob: float = 0.1,
        keep_prob: float = 0.1,
        geometric_p: float = 0.2,
        span_lower: int = 1,
        span_upper: int = 10,
        operations_per: str = "unit",
        prediction_rate: float | None = None,
        replace_from: str = "nonspecial",
        replace_distribution: str = "unigram",
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
        p = check_probability(geometric_p, "corruption.geometric_p")
        if p == 0.0:
            raise config_error(
                "corruption.geometric_p", p, "must be > 0", "SpanBERT uses geometric_p=0.2"
            )
        self.geometric_p = p
        self.span_lower = check_positive_int(span_lower, "corruption.span_lower")
        self.span_upper = check_positive_int(span_upper, "corruption.span_upper")
        if self.span_upper < self.span_lower:
            raise config_error(
                "corruption.span_upper",
                span_upper,
                f"must be >= span_lower={span_lower}",
                "SpanBERT uses span_lower=1 span_upper=10",
            )
        self.pmf = geometric_pmf(p, self.span_lower, self.span_upper)
        self.cdf = length_cdf(self.pmf)

    def rate_of_remaining(self) -> bool:
        """Its rate is drawn over its own candidates (see ``Corruption.rate_of_remaining``)."""
        return True

    def budget(self, eligible: Tensor) -> Tensor:
        n = eligible.sum(-1).to(torch.float64)
        return torch.ceil(n * self.rate).to(torch.long)  # float64 like Python's math.ceil

    @staticmethod
    def _owners(first: Tensor, last: Tensor, valid: Tensor, words: WordLayout, width: int):
        """Accepted spans (anchor not covered by an earlier accepted one) and, per token, the index
        of the first accepted span covering it. Spans are word ranges ``[first, last]`` (ordinals);
        anchor ``i`` lies in word ``first[i]``. Returns ``(owned [B, T], owner [B, T])``."""
        b, m = first.shape
        earlier = _earlier(m, first.device)
        anchor = first.unsqueeze(2)
        covers = (
            (first.unsqueeze(1) <= anchor) & (anchor <= last.unsqueeze(1)) & earlier
        )  # [B, i, j]: span j (earlier) covers anchor i
        covers &= valid.unsqueeze(1)
        accepted = valid
        for _ in range(m + 1):  # fixed point of the recursion; exact after <= m rounds, ~4 here
            update = valid & ~(covers & accepted.unsqueeze(1)).any(-1)
            if torch.equal(update, accepted):
                break
            accepted = update
        # first accepted span over each word: scatter the span index over its words (min wins)
        offsets = torch.arange(width, device=first.device)
        inside = (offsets <= (last - first).unsqueeze(-1)) & accepted.unsqueeze(-1)  # [B, M, L]
        t = words.t
        target = torch.where(inside, first.unsqueeze(-1) + offsets, t).view(b, -1)
        span_index = torch.arange(m, device=first.device).repeat_interleave(width).expand(b, -1)
        by_word = torch.full((b, t + 1), m, dtype=torch.long, device=first.device)
        by_word.scatter_reduce_(1, target, span_index, "amin")
        owner = by_word.gather(1, words.ordinal)
        return (owner < m) & words.eligible, owner

    def select(self, batch, eligible, generator):
        b, t = eligible.shape
        words = WordLayout(batch, eligible)
        k = self.budget(eligible)
        k_max = int(k.max()) if k.numel() else 0
        # 2K distinct anchors always reach the budget: every rejected anchor lies in the masked
        # set, which stays below K until the end, so at least K anchors are accepted. Most rows need
        # far fewer: try a short prefix of the same draws first (same result: span i depends only on
        # spans j < i, and the budget cut only on the first spans that reach K).
        m_full = min(t, max(1, 2 * k_max))
        keys = torch.rand(b, t, generator=generator).masked_fill(words.ineligible, math.inf)
        anchors = ascending(keys, m_full)  # [B, M]
        valid = eligible.gather(1, anchors)
        lengths = sample_lengths(self.pmf, self.span_lower, (b, m_full), generator, self.cdf)
        first = words.ordinal.gather(1, anchors)
        last = torch.minimum(first + lengths - 1, words.block_last.gather(1, anchors))
        m = min(m_full, k_max // 2 + 4)
        while True:
            owned, owner = self._owners(
                first[:, :m], last[:, :m], valid[:, :m], words, self.span_upper
            )
            if m >= m_full or bool((owned.sum(-1) >= k).all()):
                break
            m = m_full
        order = (owner * t + words.positions).to(torch.float32)
        return choose_k(order, owned, k), None


class NgramMasking(MaskingCorruption):
    """ALBERT n-gram masking (SPECS §7): whole-word n-grams, p(n) ∝ 1/n for n = 1..max_n.

    Word starts are visited in random order; from each, n is drawn (``favor_shorter=False``
    reverses the weights, ∝ n); an n-gram that would overflow BERT's budget
    ``K = min(max_predictions, max(1, round_half_even(n_real * rate)))`` falls back to shorter n,
    and one that overlaps a chosen n-gram is skipped. Unlike ALBERT, n-grams stop at [SEP] and n is
    drawn from the seeded generator (ALBERT uses the unseeded global ``np.random``). The mixture is
    drawn per token, as in ALBERT.
    """

    spans = True

    def __init__(
        self,
        rate: float = 0.15,
        mask_prob: float = 0.8,
        random_prob: float = 0.1,
        keep_prob: float = 0.1,
        max_n: int = 3,
        favor_shorter: bool = True,
        max_predictions: int | None = 20,
        operations_per: str = "token",
        prediction_rate: float | None = None,
        replace_from: str = "vocab",
        replace_distribution: str = "uniform",
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
        self.max_n = check_positive_int(max_n, "corruption.max_n")
        self.max_predictions = check_positive_int(
            max_predictions, "corruption.max_predictions", allow_none=True
        )
        n = torch.arange(1, self.max_n + 1, dtype=torch.float64)
        weights = 1.0 / n if favor_shorter else n
        self.pmf = weights / weights.sum()
        self.cdf = length_cdf(self.pmf)

    def select(self, batch, eligible, generator):
        b, t = eligible.shape
        words = WordLayout(batch, eligible)
        k = exact_budget(batch, eligible, self.rate, self.max_predictions)
        n_words = words.n_words
        w_max = int(n_words.max()) if n_words.numel() else 0
        units = words.word if self.operations_per == "unit" else None
        if w_max == 0:
            return torch.zeros_like(eligible), units
        live = words.positions < n_words.unsqueeze(-1)
        keys = torch.rand(b, t, generator=generator).masked_fill(~live, 2.0)
        order = ascending(keys, w_max)  # [B, W] word ordinals in visiting order
        draws = sample_lengths(self.pmf, 1, (b, w_max), generator, self.cdf)
        covered = self._walk(words, order, draws, live, k).to(eligible.device)
        return covered.gather(1, words.ordinal) & eligible, units

    def _walk(
        self, words: WordLayout, order: Tensor, draws: Tensor, live: Tensor, k: Tensor
    ) -> Tensor:
        """ALBERT's sequential walk, one shuffled rank of every row at once.

        The walk is inherently sequential over ranks (fallback and overlap depend on what is
        taken). The tables of the n-gram of each size from the r-th word start of each row (token
        length, and where its words lie in ``covered``) are built with batched torch; each step of
        the walk is then a dozen NumPy operations on ``[B, N]`` zero-copy views, whose per-call
        overhead is ~4x lower than torch's at these sizes. An n-gram longer than the drawn n or
        than the words left in its block never fits (the truncated one is the shorter n-gram).
        Returns ``bool [B, T]`` by word ordinal: the covered words.
        """
        b, w_max = order.shape
        n_max, t = self.max_n, words.t
        width = t + n_max
        sizes = torch.arange(n_max, device=order.device).view(1, n_max, 1)  # n - 1
        start = words.start.gather(1, order)
        block_last = words.block_last.gather(1, start.clamp_max(t - 1))
        last = (order.unsqueeze(1) + sizes).clamp_max_(t - 1)  # [B, N, W]
        lens = words.end.gather(1, last.view(b, -1)).view(b, n_max, w_max)
        lens -= (start - 1).unsqueeze(1)  # token lengths
        cap = torch.minimum(draws, block_last - order + 1).masked_fill_(~live[:, :w_max], 0)
        lens.masked_fill_(sizes >= cap.unsqueeze(1), t + 1)
        flat = order + torch.arange(0, b * width, width, device=order.device).unsqueeze(-1)
        flat = flat.unsqueeze(1) + sizes  # into covered
        lens, flat = lens.cpu().numpy(), flat.cpu().numpy()  # rank r: [:, :, r] views
        covered = np.zeros(b * width, dtype=bool)
        remaining = k.cpu().numpy().astype(np.int64)
        last_live = (words.n_words - 1).cpu().numpy()
        all_live = int(last_live.min())  # up to this rank every row still has words
        for r in range(w_max):  # the r-th shuffled word start of every row at once
            at, length = flat[..., r], lens[..., r]
            fits = length <= remaining[:, None]  # a prefix: lengths grow with n (the fallback)
            seen = covered[at]
            take = fits[:, 0] > (seen & fits).any(-1)  # fits and does not overlap
            gram = fits & take[:, None]
            covered[at] = seen | gram
            remaining -= (length * gram).max(-1)
            if r < all_live:
                if remaining.max() <= 0:
                    break
            elif not ((remaining > 0) & (last_live > r)).any():
                break
        return torch.from_numpy(covered.reshape(b, width)[:, :t])
