"""T5's denoising objectives (Raffel et al. 2020, §3.3, Tables 3-6; SPECS.md §14;
google-research/text-to-text-transfer-transformer ``t5/data/preprocessors.py``).

``T5Noise`` is T5's ``denoise`` preprocessor: a *noise mask* chooses tokens, an *inputs function*
and a *targets function* turn it into (source, target):

* ``noise="spans"``: ``random_spans_noise_mask`` (the final objective): exactly
  ``num_noise = round(L * density)`` noise tokens (clamped to [1, L-1]) in
  ``num_spans = max(1, round(num_noise / mean_span))`` spans; noise and non-noise tokens are each
  split into ``num_spans`` non-empty segments uniformly at random (stars and bars), alternating
  non-noise / noise, starting with non-noise and ending with noise.
* ``noise="iid"``: ``iid_noise_mask``, every token independently with probability ``density``.
* ``noise="prefix"``: ``random_prefix_noise_mask`` (prefix LM): the row is split at a uniform point,
  the suffix is the noise (``density`` <= 0.5 sets the shortest prefix, T5: 0.5 -> any split).
* ``mode="sentinel"``: each noise run becomes one unique sentinel in the source; the target is each
  sentinel followed by its run's tokens, then eos (``noise_span_to_unique_sentinel`` /
  ``nonnoise_span_to_unique_sentinel``). Pitfall avoided (SPECS §14): T5 numbers the *target*
  sentinels by the non-noise runs, so with i.i.d. masks a row that begins with noise gets target
  sentinel 0 before the second noise run; here the k-th noise run has sentinel k on both sides.
* ``mode="drop"``: noise tokens are removed from the source; the target is the noise tokens
  concatenated, then eos (``drop_noise_tokens`` / ``drop_nonnoise_tokens``).

L counts a row's non-special tokens (the noise never touches [CLS]/[SEP]). T5 has no BOS: with
``bos=false`` (the presets) the leading [CLS] is dropped from the source, and the final [SEP] is the
source's eos. ``output_length`` gives the source length of a full row, so the data module builds raw
rows that fill ``data.max_seq_length`` once corrupted (T5's ``random_spans_helper``: 512 -> raw 568,
targets 114; 128 -> 141 / 29).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from clozelab.core.errors import config_error
from clozelab.corruption.base import check_choice, check_rate
from clozelab.corruption.seq2seq import (
    SentinelIds,
    Seq2SeqCorruption,
    as_numpy,
    eligible,
    interleave,
    run_starts,
    take,
)

NOISES = ("spans", "iid", "prefix")
MODES = ("sentinel", "drop")


def span_counts(lengths: np.ndarray, density: float, mean_span: float):
    """T5's ``(num_noise, num_spans)`` per row for rows of ``lengths`` tokens, in float32 with
    ``tf.round``'s half-to-even as T5's mask computes them (lengths < 2 are raised to 2, as T5
    does, and cut back by the caller)."""
    length = np.maximum(np.asarray(lengths, dtype=np.int64), 2)
    num_noise = np.round(length.astype(np.float32) * np.float32(density)).astype(np.int64)
    num_noise = np.minimum(np.maximum(num_noise, 1), length - 1)
    num_spans = np.round(num_noise.astype(np.float32) / np.float32(mean_span)).astype(np.int64)
    return num_noise, np.maximum(num_spans, 1)


def random_segmentation(num_items: np.ndarray, num_segments: np.ndarray, keys: np.ndarray):
    """``[B, max segments]``: the lengths of ``num_segments`` non-empty segments of ``num_items``
    items, uniformly at random (T5's ``_random_segmentation``: ``num_segments - 1`` of the item gaps
    1..num_items-1 start a segment, chosen by the smallest of the i.i.d. ``keys [B, W]``), 0 after
    the last segment. Needs ``num_segments <= num_items <= W``."""
    b, width = keys.shape
    positions = np.arange(width)
    gaps = (positions >= 1) & (positions < num_items[:, None])
    n_cuts = num_segments - 1
    most = int(n_cuts.max()) if b else 0
    order = np.argsort(np.where(gaps, keys, 2.0), axis=-1)[:, :most]
    cuts = np.sort(np.where(np.arange(most) < n_cuts[:, None], order, width), axis=-1)
    bounds = np.concatenate(
        (np.zeros((b, 1), np.int64), np.minimum(cuts, num_items[:, None]), num_items[:, None]), 1
    )
    return np.diff(bounds, axis=-1)


def random_spans_noise_mask(
    lengths: np.ndarray,
    width: int,
    keys: np.ndarray,
    density: float = 0.15,
    mean_span: float = 3.0,
) -> np.ndarray:
    """T5's ``random_spans_noise_mask`` for every row at once: ``bool [B, width]``, True on the
    noise items of each row's first ``lengths[b]`` items (see the module docstring). ``keys``:
    i.i.d. uniforms ``[2, B, >= max(width, 2)]`` (from the corruption's generator)."""
    num_noise, num_spans = span_counts(lengths, density, mean_span)
    length = np.maximum(lengths, 2)
    noise_len = random_segmentation(num_noise, num_spans, keys[0])
    clean_len = random_segmentation(length - num_noise, num_spans, keys[1])
    # segments alternate clean_0 noise_0 clean_1 noise_1 ...: span s starts after s+1 clean and
    # s noise segments; starts and ends are all distinct (segments are non-empty)
    start = np.cumsum(clean_len, -1) + np.cumsum(noise_len, -1) - noise_len
    rows, span = np.nonzero(noise_len)
    delta = np.zeros((lengths.shape[0], max(width, 2) + 2), np.int64)
    delta[rows, start[rows, span]] = 1
    delta[rows, start[rows, span] + noise_len[rows, span]] = -1
    noise = np.cumsum(delta, -1)[:, :width] > 0
    return noise & (np.arange(width) < lengths[:, None])


def random_prefix_noise_mask(
    lengths: np.ndarray, width: int, u: np.ndarray, density: float = 0.5
) -> np.ndarray:
    """T5's ``random_prefix_noise_mask``: the items from a uniform split point on are noise; the
    prefix keeps between ``max(1, round((1 - 2 density)(L - 1)))`` and ``L - 1`` items. ``u``:
    one uniform per row."""
    top = np.maximum(lengths - 1, 0)
    low = np.round(np.float32(1.0 - 2.0 * density) * top.astype(np.float32)).astype(np.int64)
    low = np.minimum(top, np.maximum(low, 1))
    split = low + np.floor(u * (top - low + 1)).astype(np.int64)
    positions = np.arange(width)
    return (positions >= split[:, None]) & (positions < lengths[:, None])


def to_positions(item_mask: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Map a mask over each row's eligible items (in order) back onto the row's positions."""
    rank = np.maximum(np.cumsum(eligible, -1) - 1, 0)
    return eligible & take(item_mask, rank)


def random_spans_lengths(inputs_length: int, density: float = 0.15, mean_span: float = 3.0):
    """T5's ``random_spans_helper``: the raw token count whose span-corrupted input (+ eos) has
    ``inputs_length`` tokens, and the target length (+ eos): 512 -> (568, 114), 128 -> (141, 29)."""

    def lengths(tokens: int) -> tuple[int, int]:
        noise = round(tokens * density)
        spans = round(noise / mean_span)
        return tokens - noise + spans + 1, noise + spans + 1

    tokens = inputs_length - 1
    while lengths(tokens + 1)[0] <= inputs_length:
        tokens += 1
    return tokens, lengths(tokens)[1]


class T5Noise(Seq2SeqCorruption):
    """T5's denoising objectives: a noise mask (``spans`` / ``iid`` / ``prefix``) and what the noise
    becomes (``sentinel`` / ``drop``). See the module docstring.

    Args:
        noise: ``spans`` (T5 final), ``iid`` (Table 4 "replace corrupted spans" / "drop corrupted
            tokens") or ``prefix`` (prefix LM).
        mode: ``sentinel`` or ``drop``.
        density: noise density (T5: 0.15; prefix LM: 0.5).
        mean_span: mean noise span length of ``noise=spans`` (T5: 3).
        n_sentinels: sentinel ids appended to the vocabulary (T5: 100).
        decoder_start, bos: see ``Seq2SeqCorruption`` (T5: pad, no BOS).
    """

    def __init__(
        self,
        noise: str = "spans",
        mode: str = "sentinel",
        density: float = 0.15,
        mean_span: float = 3.0,
        n_sentinels: int = 100,
        decoder_start: str = "pad",
        bos: bool = False,
        **runtime,
    ) -> None:
        super().__init__(decoder_start, bos, **runtime)
        self.noise = check_choice(noise, "corruption.noise", NOISES)
        self.mode = check_choice(mode, "corruption.mode", MODES)
        self.density = check_rate(density, "corruption.density")
        if self.noise == "prefix" and self.density > 0.5:
            raise config_error(
                "corruption.density",
                density,
                "the prefix LM's density must be <= 0.5 (T5)",
                "set corruption.density=0.5 (any split point)",
            )
        finite = isinstance(mean_span, (int, float)) and math.isfinite(mean_span)
        if not (finite and mean_span >= 1):
            raise config_error(
                "corruption.mean_span",
                mean_span,
                "must be a number >= 1",
                "set corruption.mean_span=3 (T5)",
            )
        self.mean_span = float(mean_span)
        self.sentinels = SentinelIds(self.vocab_size, n_sentinels)
        self.extra_vocab = self.sentinels.n if self.mode == "sentinel" else 0

    def output_length(self, n_tokens: int, n_special: int) -> int:
        """Longest source of a row (exact for ``spans``; ``iid`` may keep every token)."""
        base = n_tokens - self.dropped_bos()
        if self.noise != "spans":
            return base
        num_noise, num_spans = span_counts(
            np.array([n_tokens - n_special]), self.density, self.mean_span
        )
        kept_spans = int(num_spans[0]) if self.mode == "sentinel" else 0
        return base - int(num_noise[0]) + kept_spans

    def noise_mask(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> np.ndarray:
        candidates = eligible(batch, self.special_token_ids)
        b, width = candidates.shape
        if self.noise == "iid":
            draw = as_numpy(torch.rand(b, width, generator=generator))
            return candidates & (draw < self.density)
        lengths = candidates.sum(-1)
        if self.noise == "spans":
            keys = as_numpy(torch.rand(2, b, max(width, 2), generator=generator))
            items = random_spans_noise_mask(lengths, width, keys, self.density, self.mean_span)
        else:
            u = as_numpy(torch.rand(b, generator=generator, dtype=torch.float64))
            items = random_prefix_noise_mask(lengths, width, u, self.density)
        return to_positions(items, candidates)

    def __call__(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> dict:
        ids = as_numpy(batch["input_ids"])
        real = self.real(batch)
        noise = self.noise_mask(batch, generator) & real
        if self.mode == "drop":
            out = self.source(batch, ids, real & ~noise)
            out.update(self.target(ids, noise, add_eos=True))
            return out
        first, run = run_starts(noise)
        sentinel = self.sentinels(np.maximum(run, 0))
        out = self.source(batch, np.where(first, sentinel, ids), real & (~noise | first))
        # target: in front of each run its sentinel, then the run's tokens
        target_ids = interleave(sentinel, ids)
        out.update(self.target(target_ids, interleave(first, noise), add_eos=True))
        return out

    def __repr__(self) -> str:
        return (
            f"T5Noise(noise={self.noise!r}, mode={self.mode!r}, density={self.density}, "
            f"mean_span={self.mean_span})"
        )
