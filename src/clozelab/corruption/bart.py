"""BART noising (Lewis et al. 2020, §2.2 and Table 1; fairseq ``DenoisingDataset``, SPECS.md §13).

The transformations run in fairseq's order, each optional, and the target is the original row:

1. **Sentence permutation** (``permute_sentences``): ``ceil(n * p)`` of the row's n sentences (the
   shards' sentence boundaries, ``sentence_ids``) permuted among themselves, within their segment
   (``reorder.permutation_order``).
2. **Span masking** (``mask``) over word starts (``mask_length``: ``span-poisson`` text infilling,
   ``word``, ``subword`` token masking): ``num = ceil(#word starts * mask)``; span lengths (in
   words) ~ Poisson(``poisson_lambda``) truncated where the pmf falls below 1e-7 and renormalised,
   drawn until they sum to >= num, the last cut so they sum to num exactly; zero lengths become
   **insertions** of new tokens (``mask_random`` of them random ids, the rest [MASK]); the spans
   start at **distinct** random word starts (they may overlap and merge), never cross a special.
   ``replace_length``: ``1`` the span's first token becomes [MASK] (a random id w.p.
   ``mask_random``, one draw per span) and the rest is deleted (text infilling); ``0`` the whole
   span is deleted (**token deletion**); ``-1`` every token becomes [MASK].
3. **Insertion** (``insert``): ``ceil(n * insert)`` new tokens (``Insertion``, SPECS §16).
4. **Document rotation** (``rotate``: probability per row): the tokens between the first and last
   special rotate to start at a uniform offset (fairseq: offset in [1, n-1], so two of the n - 1
   offsets leave the row unchanged).

[CLS]/[SEP] (BART's ``<s>``/``</s>``) are never masked; the decoder starts with eos (BART).
Zero-length spans are only inserted up to the number of tokens the spans deleted, so infilling
never lengthens a row (at lambda = 3 the cap binds only on rows of a handful of words); the data
module builds rows short enough for ``insert``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from clozelab.core.errors import ClozelabError, config_error
from clozelab.corruption.base import check_choice, check_probability, replacement_sampler
from clozelab.corruption.insert import insert_tokens
from clozelab.corruption.reorder import permutation_order
from clozelab.corruption.seq2seq import (
    Compactor,
    Seq2SeqCorruption,
    as_numpy,
    as_torch,
    compact,
    eligible,
    padding_mask,
    put,
    take,
)
from clozelab.corruption.span import length_cdf

MASK_LENGTHS = ("span-poisson", "word", "subword")
REPLACE_LENGTHS = (-1, 0, 1)
CARRIED = ("input_ids", "attention_mask", "special_tokens_mask", "token_type_ids")


def poisson_pmf(lam: float) -> Tensor:
    """fairseq's truncated Poisson: p(k) for k = 0.. up to and including the first p(k) < 1e-7,
    renormalised (lambda = 3: k <= 17)."""
    ps, power, factorial = [], 1.0, 1.0
    for k in range(128):
        ps.append(math.exp(-lam) * power / factorial)
        power *= lam
        factorial *= k + 1
        if ps[-1] < 1e-7:
            break
    pmf = torch.tensor(ps, dtype=torch.float64)
    return pmf / pmf.sum()


def span_lengths(num: np.ndarray, cdf: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """``[B, M]`` Poisson span lengths per row, drawn until they sum to >= ``num[b]`` and cut so
    they sum to exactly ``num[b]``; -1 after the last used draw."""
    b = num.shape[0]
    block = max(int(num.max()) if b else 0, 1)
    lengths = np.zeros((b, 0), dtype=np.int64)
    while True:  # iterations over blocks of draws, not tokens: almost always one
        u = as_numpy(torch.rand(b, block, generator=generator, dtype=torch.float64))
        lengths = np.concatenate((lengths, np.searchsorted(cdf[:-1], u, side="right")), axis=1)
        cum = np.cumsum(lengths, -1)
        if bool((cum[:, -1] >= num).all()):
            break
    used = np.ones_like(cum, dtype=bool)
    used[:, 1:] = cum[:, :-1] < num[:, None]
    used &= (num > 0)[:, None]
    lengths = np.minimum(lengths, num[:, None] - (cum - lengths))  # cut the last one
    return np.where(used, lengths, -1)


class WordGeometry:
    """Per-row word layout (NumPy) for spans of whole words that stop at specials: word starts,
    word ordinals, each word's first token, and each token's block end (the last candidate before
    the next special) and the ordinal of its block's last word."""

    def __init__(self, word_ids: np.ndarray, candidates: np.ndarray) -> None:
        b, t = candidates.shape
        same = np.zeros_like(candidates)
        same[:, 1:] = (word_ids[:, 1:] == word_ids[:, :-1]) & candidates[:, :-1]
        self.is_start = candidates & ~same
        self.ordinal = np.maximum(np.cumsum(self.is_start, -1) - 1, 0)
        rows, cols = np.nonzero(self.is_start)
        self.start = np.full((b, t + 1), t, dtype=np.int64)  # by ordinal: first token
        self.start[rows, self.ordinal[rows, cols]] = cols
        positions = np.arange(t)
        breaks = np.where(candidates, t, positions)  # next special at or after each position
        next_break = np.minimum.accumulate(breaks[:, ::-1], axis=-1)[:, ::-1]
        self.block_end = next_break  # one past the block's last candidate
        self.block_last = take(self.ordinal, np.maximum(next_break - 1, 0))


class BartNoising(Seq2SeqCorruption):
    """Args (fairseq's names; defaults = the BART paper run, fairseq#1899, with lambda = 3):
    mask: fraction of word starts that begin a masked span (0.3).
    mask_random: share of the [MASK]s that are random ids instead (0.1).
    mask_length: ``span-poisson`` (text infilling), ``word`` or ``subword``.
    poisson_lambda: mean span length of ``span-poisson`` (paper: 3; fairseq run: 3.5).
    replace_length: 1 (one [MASK] per span), 0 (delete spans), -1 (a [MASK] per token).
    permute_sentences: fraction of sentences permuted (paper run: 1.0; 0 = off).
    rotate: probability of rotating a row (paper run: 0.0).
    insert: fraction of tokens inserted (0.0 = off).
    decoder_start, bos: see ``Seq2SeqCorruption`` (BART: eos, keeps <s>/[CLS]).
    replace_distribution: random ids ``uniform`` over the non-special ids (BART) or ``unigram``
        (by corpus frequency, counted once from the training shards).
    """

    runtime_inputs = Seq2SeqCorruption.runtime_inputs | {"corpus"}  # unigram replacement

    def __init__(
        self,
        mask: float = 0.3,
        mask_random: float = 0.1,
        mask_length: str = "span-poisson",
        poisson_lambda: float = 3.0,
        replace_length: int = 1,
        permute_sentences: float = 1.0,
        rotate: float = 0.0,
        insert: float = 0.0,
        decoder_start: str = "eos",
        bos: bool = True,
        replace_distribution: str = "uniform",
        corpus=None,
        replacement_probs: Tensor | None = None,
        **runtime,
    ) -> None:
        super().__init__(decoder_start, bos, **runtime)
        self.mask = check_probability(mask, "corruption.mask")
        self.mask_random = check_probability(mask_random, "corruption.mask_random")
        self.mask_length = check_choice(mask_length, "corruption.mask_length", MASK_LENGTHS)
        if replace_length not in REPLACE_LENGTHS or isinstance(replace_length, bool):
            raise config_error(
                "corruption.replace_length",
                replace_length,
                "must be -1, 0 or 1",
                "1: text infilling (one [MASK] per span), 0: token deletion, -1: [MASK] per token",
            )
        self.replace_length = int(replace_length)
        if not (isinstance(poisson_lambda, (int, float)) and 0 < poisson_lambda < 64):
            raise config_error(
                "corruption.poisson_lambda",
                poisson_lambda,
                "must be a number in (0, 64)",
                "set corruption.poisson_lambda=3 (BART)",
            )
        self.poisson_lambda = float(poisson_lambda)
        self.pmf = poisson_pmf(self.poisson_lambda)
        self.cdf = as_numpy(length_cdf(self.pmf))
        self.permute_sentences = check_probability(
            permute_sentences, "corruption.permute_sentences"
        )
        self.rotate = check_probability(rotate, "corruption.rotate")
        self.insert = check_probability(insert, "corruption.insert")
        self.sampler = replacement_sampler(
            self.vocab_size,
            self.special_token_ids,
            "nonspecial",
            replace_distribution,
            corpus,
            replacement_probs,
            needed=self.mask_random > 0 or self.insert > 0,
        )
        self.replace_distribution = replace_distribution

    def output_length(self, n_tokens: int, n_special: int) -> int:
        extra = math.ceil((n_tokens - n_special) * self.insert)
        return n_tokens + extra - self.dropped_bos()

    # -- 2. span masking ---------------------------------------------------------------------------

    def spans(self, batch, generator):
        """``(starts, continuation, random_start, n_inserts)``: the chosen word starts, the
        tokens after a start inside a span, per-start random flags, zero-length spans per row."""
        candidates = eligible(batch, self.special_token_ids)
        b, t = candidates.shape
        if self.mask_length == "subword":
            word_ids = np.broadcast_to(np.arange(t), (b, t))
        else:
            word_ids = as_numpy(batch["word_ids"])
        words = WordGeometry(word_ids, candidates)
        num = np.ceil(words.is_start.sum(-1) * self.mask).astype(np.int64)
        if self.mask_length == "span-poisson":
            lengths = span_lengths(num, self.cdf, generator)
            n_inserts = (lengths == 0).sum(-1)
            lengths, n_spans = compact(lengths, lengths > 0, 0)
        else:
            n_spans, n_inserts = num, np.zeros_like(num)
            lengths = np.ones((b, int(num.max()) if b else 0), dtype=np.int64)
        s_max = lengths.shape[1]
        starts = np.zeros((b, t), dtype=bool)
        flags = np.zeros((b, t), dtype=bool)
        if s_max == 0:
            return starts, starts.copy(), flags, n_inserts
        keys = as_numpy(torch.rand(b, t, generator=generator))
        order = np.argsort(np.where(words.is_start, keys, 2.0), -1)[:, :s_max]  # random starts
        valid = padding_mask(n_spans, s_max)
        put(starts, order, valid)
        random = valid & (as_numpy(torch.rand(b, s_max, generator=generator)) < self.mask_random)
        put(flags, order, random)
        target_word = take(words.ordinal, order) + lengths
        inside = target_word <= take(words.block_last, order)
        end = np.where(
            inside,
            take(words.start, np.minimum(target_word, t)),
            take(words.block_end, order),
        )
        # continuation: (start, end) of every span; ends may coincide, so counts are summed
        rows = np.broadcast_to(np.arange(b)[:, None], order.shape)[valid] * (t + 1)
        delta = np.bincount(rows + order[valid] + 1, minlength=b * (t + 1)).astype(np.int64)
        delta -= np.bincount(rows + end[valid], minlength=b * (t + 1))
        continuation = np.cumsum(delta.reshape(b, t + 1), -1)[:, :t] > 0
        return starts, continuation, flags, n_inserts

    def infill(self, arrays: dict, generator: torch.Generator) -> dict:
        starts, cont, flags, n_inserts = self.spans(arrays, generator)
        ids = arrays["input_ids"]
        if self.replace_length == 1:
            masked, deleted = starts & ~cont, cont
        elif self.replace_length == 0:
            masked, deleted = np.zeros_like(starts), starts | cont
        else:
            masked, deleted = starts | cont, np.zeros_like(starts)
            # each token takes the random flag of the latest span start at or before it
            positions = np.arange(ids.shape[1])
            latest = np.maximum.accumulate(np.where(starts, positions, 0), axis=-1)
            flags = take(flags, latest)
        random = masked & flags
        noisy = np.where(masked, self.mask_token_id, ids)
        noisy[random] = as_numpy(self.sampler.sample(int(random.sum()), generator))
        compactor = Compactor(arrays["attention_mask"].astype(bool) & ~deleted)
        fills = {"input_ids": self.pad_token_id, "special_tokens_mask": 1}
        out = {
            k: compactor(noisy if k == "input_ids" else v, fills.get(k, 0))
            for k, v in arrays.items()
        }
        inserts = np.minimum(n_inserts, deleted.sum(-1))
        if bool((inserts > 0).any()):
            out = insert_tokens(
                out,
                inserts,
                self.mask_random,
                self.mask_token_id,
                self.sampler,
                self.pad_token_id,
                generator,
            )[0]
        return out

    # -- 4. rotation -------------------------------------------------------------------------------

    def rotation(self, arrays: dict, generator: torch.Generator) -> dict:
        b, t = arrays["input_ids"].shape
        n = arrays["attention_mask"].sum(-1)
        inner = np.maximum(n - 2, 1)
        u = as_numpy(torch.rand(b, generator=generator, dtype=torch.float64))
        offset = 1 + np.floor(u * np.maximum(n - 1, 1)).astype(np.int64)  # [1, n-1]
        rotated = as_numpy(torch.rand(b, generator=generator)) < self.rotate
        shift = np.where(rotated, offset - 1, 0)[:, None]
        positions = np.arange(t)
        body = (positions >= 1) & (positions <= (n - 2)[:, None])
        source = np.where(body, (positions - 1 + shift) % inner[:, None] + 1, positions)
        return {k: take(v, source) for k, v in arrays.items()}

    def __call__(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> dict:
        self.sampler.check_table()
        arrays = {k: as_numpy(batch[k]) for k in CARRIED if k in batch}
        if self.mask > 0 and self.mask_length != "subword":
            arrays["word_ids"] = as_numpy(batch["word_ids"])
        if self.permute_sentences > 0:
            if "sentence_ids" not in batch:
                raise ClozelabError(
                    f"corruption.permute_sentences={self.permute_sentences} needs the sentence "
                    "boundaries of the shards (batch['sentence_ids']), which this batch lacks. "
                    "Fix: pre-train from prepared shards, or set corruption.permute_sentences=0."
                )
            order = permutation_order(
                as_numpy(batch["sentence_ids"]),
                eligible(batch, self.special_token_ids),
                self.permute_sentences,
                generator,
            )
            for key in ("input_ids", "word_ids"):  # specials, padding and segments stay put
                if key in arrays:
                    arrays[key] = take(arrays[key], order)
        if self.mask > 0:
            arrays = self.infill(arrays, generator)
            arrays.pop("word_ids", None)
        if self.insert > 0:
            candidates = eligible(arrays, self.special_token_ids)
            num = np.ceil(candidates.sum(-1) * self.insert).astype(np.int64)
            arrays = insert_tokens(
                arrays,
                num,
                self.mask_random,
                self.mask_token_id,
                self.sampler,
                self.pad_token_id,
                generator,
            )[0]
        if self.rotate > 0:
            arrays = self.rotation(arrays, generator)
        torch_arrays = {k: as_torch(v) for k, v in arrays.items()}
        out = self.source({**batch, **torch_arrays}, arrays["input_ids"], self.real(torch_arrays))
        out.update(self.restore_target(batch))
        return out

    def __repr__(self) -> str:
        return (
            f"BartNoising(mask={self.mask}, mask_length={self.mask_length!r}, "
            f"replace_length={self.replace_length}, poisson_lambda={self.poisson_lambda}, "
            f"permute_sentences={self.permute_sentences}, rotate={self.rotate}, "
            f"insert={self.insert})"
        )
