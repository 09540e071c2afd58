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

import torch
from torch import Tensor

from clozelab.corruption.base import candidates, check_choice, check_rate, choose_k
from clozelab.corruption.seq2seq import (
    SentinelIds,
    Seq2SeqCorruption,
    interleave,
    run_starts,
)
from clozelab.errors import config_error

NOISES = ("spans", "iid", "prefix")
MODES = ("sentinel", "drop")


def t5_round(x: Tensor) -> Tensor:
    """``tf.round`` of a float32 value (half to even), as T5's noise masks compute their counts."""
    return torch.round(x.to(torch.float32)).to(torch.long)


def span_counts(lengths: Tensor, density: float, mean_span: float) -> tuple[Tensor, Tensor]:
    """T5's ``(num_noise, num_spans)`` per row for rows of ``lengths`` tokens (lengths < 2 are
    raised to 2, as T5 does, and cut back by the caller)."""
    length = lengths.clamp_min(2)
    num_noise = t5_round(length.float() * density)
    num_noise = torch.minimum(num_noise.clamp_min(1), length - 1)
    num_spans = t5_round(num_noise.float() / mean_span).clamp_min(1)
    return num_noise, num_spans


def random_segmentation(
    num_items: Tensor, num_segments: Tensor, width: int, generator: torch.Generator
) -> Tensor:
    """``[B, width]``: the lengths of ``num_segments`` non-empty segments of ``num_items`` items,
    uniformly at random (T5's ``_random_segmentation``: ``num_segments - 1`` of the item gaps
    start a segment), 0 after the last segment. Needs ``num_segments <= num_items``."""
    b = num_items.shape[0]
    positions = torch.arange(width, device=num_items.device).expand(b, width)
    gaps = (positions >= 1) & (positions < num_items.unsqueeze(-1))
    keys = torch.rand(b, width, generator=generator, device=num_items.device)
    cut = choose_k(keys, gaps, num_segments - 1)
    cut[:, 0] = num_items > 0
    segment = (cut.long().cumsum(-1) - 1).masked_fill_(positions >= num_items.unsqueeze(-1), width)
    counts = torch.zeros(b, width + 1, dtype=torch.long, device=num_items.device)
    counts.scatter_add_(1, segment.clamp_min(0), torch.ones_like(segment))
    return counts[:, :width]


def random_spans_noise_mask(
    lengths: Tensor,
    width: int,
    generator: torch.Generator,
    density: float = 0.15,
    mean_span: float = 3.0,
) -> Tensor:
    """T5's ``random_spans_noise_mask`` for every row at once: ``bool [B, width]``, True on the
    noise items of each row's first ``lengths[b]`` items (see the module docstring)."""
    num_noise, num_spans = span_counts(lengths, density, mean_span)
    length = lengths.clamp_min(2)
    w = max(width, 2)
    noise_len = random_segmentation(num_noise, num_spans, w, generator)
    clean_len = random_segmentation(length - num_noise, num_spans, w, generator)
    # segments alternate clean_0 noise_0 clean_1 noise_1 ...: span s starts after s+1 clean and
    # s noise segments
    start = clean_len.cumsum(-1) + noise_len.cumsum(-1) - noise_len
    delta = torch.zeros(lengths.shape[0], w + 1, dtype=torch.long, device=lengths.device)
    delta.scatter_add_(1, start.clamp_max(w), torch.ones_like(start))
    delta.scatter_add_(1, (start + noise_len).clamp_max(w), -torch.ones_like(start))
    noise = delta.cumsum(-1)[:, :width] > 0
    return noise & (torch.arange(width, device=lengths.device) < lengths.unsqueeze(-1))


def random_prefix_noise_mask(
    lengths: Tensor, width: int, generator: torch.Generator, density: float = 0.5
) -> Tensor:
    """T5's ``random_prefix_noise_mask``: the items from a uniform split point on are noise; the
    prefix keeps between ``max(1, round((1 - 2 density)(L - 1)))`` and ``L - 1`` items."""
    top = (lengths - 1).clamp_min(0)
    low = torch.minimum(top, t5_round((1.0 - 2.0 * density) * top.float()).clamp_min(1))
    u = torch.rand(lengths.shape, generator=generator, device=lengths.device)
    split = low + torch.floor(u * (top - low + 1).float()).long()
    positions = torch.arange(width, device=lengths.device)
    return (positions >= split.unsqueeze(-1)) & (positions < lengths.unsqueeze(-1))


def to_positions(item_mask: Tensor, eligible: Tensor) -> Tensor:
    """Map a mask over each row's eligible items (in order) back onto the row's positions."""
    rank = (eligible.long().cumsum(-1) - 1).clamp_min(0)
    return eligible & item_mask.gather(1, rank)


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
                "corruption.density", density, "the prefix LM's density must be <= 0.5 (T5)",
                "set corruption.density=0.5 (any split point)",
            )  # fmt: skip
        finite = isinstance(mean_span, (int, float)) and math.isfinite(mean_span)
        if not (finite and mean_span >= 1):
            raise config_error(
                "corruption.mean_span", mean_span, "must be a number >= 1",
                "set corruption.mean_span=3 (T5)",
            )  # fmt: skip
        self.mean_span = float(mean_span)
        self.sentinels = SentinelIds(self.vocab_size, n_sentinels)
        self.extra_vocab = self.sentinels.n if self.mode == "sentinel" else 0

    def output_length(self, n_tokens: int, n_special: int) -> int:
        """Longest source of a row (exact for ``spans``; ``iid`` may keep every token)."""
        base = n_tokens - self.dropped_bos()
        if self.noise != "spans":
            return base
        num_noise, num_spans = span_counts(torch.tensor([n_tokens - n_special]), self.density,
                                           self.mean_span)  # fmt: skip
        kept_spans = int(num_spans) if self.mode == "sentinel" else 0
        return base - int(num_noise) + kept_spans

    def noise_mask(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> Tensor:
        eligible = candidates(batch, self.special_token_ids)
        if self.noise == "iid":
            draw = torch.rand(eligible.shape, generator=generator, device=eligible.device)
            return eligible & (draw < self.density)
        lengths = eligible.sum(-1)
        width = eligible.shape[1]
        if self.noise == "spans":
            items = random_spans_noise_mask(lengths, width, generator, self.density, self.mean_span)
        else:
            items = random_prefix_noise_mask(lengths, width, generator, self.density)
        return to_positions(items, eligible)

    def __call__(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> dict:
        ids = batch["input_ids"]
        real = self.real(batch)
        noise = self.noise_mask(batch, generator) & real
        if self.mode == "drop":
            out = self.source(batch, ids, real & ~noise)
            out.update(self.target(ids, noise, add_eos=True))
            return out
        first, run = run_starts(noise)
        sentinel = self.sentinels(run.clamp_min(0))
        out = self.source(batch, torch.where(first, sentinel, ids), real & (~noise | first))
        # target: in front of each run its sentinel, then the run's tokens
        target_ids = interleave(sentinel, ids)
        out.update(self.target(target_ids, interleave(first, noise), add_eos=True))
        return out

    def __repr__(self) -> str:
        return (
            f"T5Noise(noise={self.noise!r}, mode={self.mode!r}, density={self.density}, "
            f"mean_span={self.mean_span})"
        )
