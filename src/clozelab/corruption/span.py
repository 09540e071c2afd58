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

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from clozelab.corruption.base import check_positive_int, check_probability, choose_k
from clozelab.corruption.masking import MaskingCorruption, exact_budget
from clozelab.corruption.units import runs, shift_left, shift_right, unit_index, word_units
from clozelab.errors import config_error


def geometric_pmf(p: float, lower: int, upper: int) -> Tensor:
    """SpanBERT's length distribution: Geometric(p) on ``lower..upper``, truncated and
    **renormalised** (not clipped). p = 0.2 on 1..10 has mean 3.797 (clipping would give 4.463)."""
    lengths = torch.arange(lower, upper + 1, dtype=torch.float64)
    pmf = p * (1 - p) ** (lengths - 1)
    return pmf / pmf.sum()


def sample_lengths(pmf: Tensor, lower: int, shape, generator: torch.Generator) -> Tensor:
    """Draw lengths ``lower + i`` with probability ``pmf[i]`` (inverse CDF)."""
    cdf = pmf.cumsum(0)
    cdf[-1] = 1.0
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return torch.searchsorted(cdf, u, right=True).clamp_max(len(pmf) - 1) + lower


class WordLayout:
    """Per-row word geometry shared by span and n-gram masking (all ``[B, W]`` by word ordinal)."""

    def __init__(self, batch: Mapping[str, Tensor], eligible: Tensor):
        b, t = eligible.shape
        self.positions = torch.arange(t, device=eligible.device).expand(b, t)
        self.word, self.n_words = unit_index(word_units(batch, eligible), eligible)
        w = self.word.clamp_min(0)
        is_start = eligible & (self.word != shift_right(self.word, -1))
        is_end = eligible & (self.word != shift_left(self.word, -1))
        dump = torch.full_like(w, t)  # positions that are no start/end write to a dropped column
        self.start = torch.full((b, t + 1), t, dtype=torch.long, device=eligible.device)
        self.start.scatter_(1, torch.where(is_start, w, dump), self.positions)
        self.start = self.start[:, :t]
        self.end = torch.full((b, t + 1), -1, dtype=torch.long, device=eligible.device)
        self.end.scatter_(1, torch.where(is_end, w, dump), self.positions)
        self.end = self.end[:, :t]
        # last word ordinal of each block (a run of candidates between specials): spans stop there
        block_end = eligible & ~shift_left(eligible, False)
        marks = self.word.masked_fill(~block_end, t).flip(-1)
        token_block_last = marks.cummin(-1).values.flip(-1)  # next block end at or after t
        self.block_last = token_block_last.gather(1, self.start.clamp_max(t - 1)).clamp_max(t - 1)

    def last_word(self, first: Tensor, n: Tensor) -> Tensor:
        """Ordinal of the n-th word from ``first``, stopped at the end of ``first``'s block."""
        return torch.minimum(first + n - 1, self.block_last.gather(1, first))


class SpanMasking(MaskingCorruption):
    """SpanBERT span masking (``PairWithSpanMaskingScheme``, SPECS §8).

    Budget ``ceil(rate * n)`` over the n candidate tokens, hit exactly (the last span may be cut
    mid-word). Span lengths in words ~ Geometric(``geometric_p``) truncated to ``[span_lower,
    span_upper]`` and renormalised; anchors uniform over tokens, snapped back to their word start,
    so a word is a start word with probability proportional to its piece count. Spans stop at [SEP]
    (SpanBERT masks single-segment blocks). The operation mixture is drawn per merged span by
    default (``operations_per=unit``, the paper run's ``replacement_method=span``).
    """

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

    def budget(self, eligible: Tensor) -> Tensor:
        n = eligible.sum(-1).to(torch.float64)
        return torch.ceil(n * self.rate).to(torch.long)  # float64 like Python's math.ceil

    @staticmethod
    def _owners(anchors: Tensor, start: Tensor, end: Tensor, valid: Tensor, t: int):
        """Accepted spans (anchor not covered by an earlier accepted one) and, per token, the index
        of the first accepted span covering it. Returns ``(owned [B, T], owner [B, T])``."""
        m = anchors.shape[1]
        earlier = torch.ones(m, m, dtype=torch.bool, device=anchors.device).tril(-1)
        covers = (
            (start.unsqueeze(1) <= anchors.unsqueeze(2))
            & (anchors.unsqueeze(2) <= end.unsqueeze(1))
            & earlier
            & valid.unsqueeze(1)
        )  # [B, i, j]: span j (earlier) covers anchor i
        accepted = valid
        for _ in range(
            m + 1
        ):  # fixed point of the recursion; exact after <= m rounds, ~3 in practice
            update = valid & ~(covers & accepted.unsqueeze(1)).any(-1)
            if torch.equal(update, accepted):
                break
            accepted = update
        positions = torch.arange(t, device=anchors.device).view(1, t, 1)
        inside = (positions >= start.unsqueeze(1)) & (positions <= end.unsqueeze(1))
        inside &= accepted.unsqueeze(1)  # [B, T, M]: reduce over the contiguous last dim
        span_index = torch.arange(m, device=anchors.device, dtype=torch.int16)
        owner = torch.where(inside, span_index, m).amin(-1).long()
        return owner < m, owner

    def select(self, batch, eligible, generator):
        b, t = eligible.shape
        words = WordLayout(batch, eligible)
        n_cand = eligible.sum(-1)
        k = self.budget(eligible)
        # 2K distinct anchors always reach the budget: every rejected anchor lies in the masked
        # set, which stays below K until the end, so at least K anchors are accepted. Most rows need
        # far fewer: try a short prefix of the same draws first (same result: span i depends only on
        # spans j < i, and the budget cut only on the first spans that reach K).
        m_full = int(min(t, max(1, 2 * int(k.max()) if k.numel() else 1)))
        keys = torch.rand(b, t, generator=generator).masked_fill(~eligible, math.inf)
        anchor_keys, anchors = keys.topk(m_full, dim=-1, largest=False, sorted=True)  # [B, M]
        valid = torch.isfinite(anchor_keys)
        lengths = sample_lengths(self.pmf, self.span_lower, (b, m_full), generator)
        first = words.word.gather(1, anchors).clamp_min(0)
        start = words.start.gather(1, first)
        end = words.end.gather(1, words.last_word(first, lengths))
        m = min(m_full, int(k.max()) // 2 + 4 if k.numel() else 1)
        while True:
            owned, owner = self._owners(anchors[:, :m], start[:, :m], end[:, :m], valid[:, :m], t)
            owned &= eligible
            if m >= m_full or bool((owned.sum(-1) >= k).all()):
                break
            m = m_full
        order = (owner * t + words.positions).to(torch.float32)
        selected = choose_k(order, owned, torch.minimum(k, n_cand))
        return selected, runs(selected)[0]


class NgramMasking(MaskingCorruption):
    """ALBERT n-gram masking (SPECS §7): whole-word n-grams, p(n) ∝ 1/n for n = 1..max_n.

    Word starts are visited in random order; from each, n is drawn (``favor_shorter=False``
    reverses the weights, ∝ n); an n-gram that would overflow BERT's budget
    ``K = min(max_predictions, max(1, round_half_even(n_real * rate)))`` falls back to shorter n,
    and one that overlaps a chosen n-gram is skipped. Unlike ALBERT, n-grams stop at [SEP] and n is
    drawn from the seeded generator (ALBERT uses the unseeded global ``np.random``). The mixture is
    drawn per token, as in ALBERT.
    """

    produces = MaskingCorruption.produces

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

    def select(self, batch, eligible, generator):
        b, t = eligible.shape
        words = WordLayout(batch, eligible)
        k = exact_budget(batch, eligible, self.rate, self.max_predictions)
        n_words = words.n_words
        w_max = int(n_words.max()) if n_words.numel() else 0
        covered = torch.zeros(b, t + self.max_n, dtype=torch.bool, device=eligible.device)
        if w_max == 0:
            return covered[:, :t].gather(1, words.word.clamp_min(0)) & eligible, words.word
        columns = torch.arange(t, device=eligible.device).expand(b, t)
        keys = torch.rand(b, t, generator=generator).masked_fill(columns >= n_words[:, None], 2.0)
        order = keys.argsort(-1)[:, :w_max]  # [B, W] word ordinals in visiting order
        draws = sample_lengths(self.pmf, 1, (b, w_max), generator)
        # token length of the n-gram of each size from each word: [B, W, max_n]
        sizes = torch.arange(1, self.max_n + 1, device=eligible.device)
        first = order.unsqueeze(-1).expand(b, w_max, self.max_n)
        last = torch.minimum(
            first + sizes - 1, words.block_last.gather(1, order).unsqueeze(-1)
        ).clamp_min(0)
        start = words.start.gather(1, order).unsqueeze(-1)
        end = words.end.gather(1, last.reshape(b, -1)).reshape(b, w_max, self.max_n)
        token_len = (end - start + 1).masked_fill(sizes > draws.unsqueeze(-1), t + 1)  # [B, W, N]
        avail = (last[..., -1] - order + 1).clamp_min(1)  # words before the block end, [B, W]
        live = torch.arange(w_max, device=eligible.device) < n_words.unsqueeze(-1)  # [B, W]
        covered = self._walk(order, token_len, avail, live, k, t).to(eligible.device)
        selected = covered.gather(1, words.word.clamp_min(0)) & eligible
        return selected, words.word

    def _walk(self, order, token_len, avail, live, k, t) -> Tensor:
        """ALBERT's sequential walk, one shuffled rank of every row at once.

        The walk is inherently sequential over ranks (fallback and overlap depend on what is
        taken), so each step is a handful of operations on ``[B]``/``[B, N]`` arrays; they run as
        NumPy on zero-copy views of the CPU tensors, whose per-call overhead is ~4x lower than
        torch's at these sizes (the walk was 80% of the scheme's time). Same draws, same result.
        """
        import numpy as np

        b, w_max, n_max = token_len.shape
        rows = np.arange(b)[:, None]
        offsets = np.arange(n_max)
        order_np = order.cpu().numpy()
        # per (row, rank): token length of the n-gram of each size, t + 1 past the drawn n
        lens = token_len.cpu().numpy()
        avail_np = avail.clamp_max(n_max).cpu().numpy()
        live_np = live.cpu().numpy()
        k_np = k.cpu().numpy().astype(np.int64)
        covered = np.zeros((b, t + n_max), dtype=bool)
        used = np.zeros(b, dtype=np.int64)
        for r in range(w_max):  # the r-th shuffled word start of every row at once
            active = live_np[:, r] & (used < k_np)
            if not active.any():
                break
            # lengths grow with n: the n-grams that fit are a prefix
            n_pick = (lens[:, r] <= (k_np - used)[:, None]).sum(-1)
            n_words = np.minimum(n_pick, avail_np[:, r])
            idx = order_np[:, r, None] + offsets
            gram = offsets < n_words[:, None]
            take = active & (n_pick > 0) & ~(covered[rows, idx] & gram).any(-1)
            covered[rows, idx] |= gram & take[:, None]
            used += np.where(take, lens[:, r][np.arange(b), np.maximum(n_pick - 1, 0)], 0)
        return torch.from_numpy(covered[:, :t])
