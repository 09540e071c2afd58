"""BART noising (Lewis et al. 2020, §2.2 and Table 1; fairseq ``DenoisingDataset``, SPECS.md §13).

The transformations run in fairseq's order, each optional, and the target is the original row:

1. **Sentence permutation** (``permute_sentences``): ``ceil(n * p)`` of the row's n sentences (the
   shards' sentence boundaries, ``sentence_ids``) permuted among themselves (``Reorder``).
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

import torch
from torch import Tensor

from clozelab.corruption.base import (
    ReplacementSampler,
    ascending,
    candidates,
    check_choice,
    check_probability,
)
from clozelab.corruption.insert import insert_tokens
from clozelab.corruption.reorder import Reorder
from clozelab.corruption.seq2seq import Seq2SeqCorruption, compact, padding_mask
from clozelab.corruption.span import WordLayout, length_cdf
from clozelab.corruption.units import shift_right
from clozelab.errors import ClozelabError, config_error

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


def span_lengths(num: Tensor, cdf: Tensor, generator: torch.Generator) -> Tensor:
    """``[B, M]`` Poisson span lengths per row, drawn until they sum to >= ``num[b]`` and cut so
    they sum to exactly ``num[b]``; 0 after the last used draw is marked -1."""
    b = num.shape[0]
    block = max(int(num.max()) if b else 0, 1)
    lengths = torch.empty(b, 0, dtype=torch.long)
    while True:  # iterations over blocks of draws, not tokens: almost always one
        u = torch.rand(b, block, generator=generator, dtype=torch.float64)
        lengths = torch.cat((lengths, torch.bucketize(u, cdf[:-1], right=True)), dim=1)
        cum = lengths.cumsum(-1)
        if bool((cum[:, -1] >= num).all()):
            break
    used = shift_right(cum < num.unsqueeze(-1), True) & (num > 0).unsqueeze(-1)
    before = cum - lengths
    lengths = torch.minimum(lengths, num.unsqueeze(-1) - before)  # cut the last one
    return lengths.masked_fill(~used, -1)


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
    """

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
        **runtime,
    ) -> None:
        super().__init__(decoder_start, bos, **runtime)
        self.mask = check_probability(mask, "corruption.mask")
        self.mask_random = check_probability(mask_random, "corruption.mask_random")
        self.mask_length = check_choice(mask_length, "corruption.mask_length", MASK_LENGTHS)
        if replace_length not in REPLACE_LENGTHS or isinstance(replace_length, bool):
            raise config_error(
                "corruption.replace_length", replace_length, "must be -1, 0 or 1",
                "1: text infilling (one [MASK] per span), 0: token deletion, -1: [MASK] per token",
            )  # fmt: skip
        self.replace_length = int(replace_length)
        if not (isinstance(poisson_lambda, (int, float)) and 0 < poisson_lambda < 64):
            raise config_error(
                "corruption.poisson_lambda", poisson_lambda, "must be a number in (0, 64)",
                "set corruption.poisson_lambda=3 (BART)",
            )  # fmt: skip
        self.poisson_lambda = float(poisson_lambda)
        self.pmf = poisson_pmf(self.poisson_lambda)
        self.cdf = length_cdf(self.pmf)
        self.permute_sentences = check_probability(
            permute_sentences, "corruption.permute_sentences"
        )
        self.rotate = check_probability(rotate, "corruption.rotate")
        self.insert = check_probability(insert, "corruption.insert")
        tok = {k: runtime[k] for k in ("vocab_size", "mask_token_id", "special_token_ids")}
        self.sampler = ReplacementSampler(self.vocab_size, self.special_token_ids, "nonspecial")
        self.permute = (
            Reorder(self.permute_sentences, mode="sentence", **tok)
            if self.permute_sentences > 0
            else None
        )

    def output_length(self, n_tokens: int, n_special: int) -> int:
        extra = math.ceil((n_tokens - n_special) * self.insert)
        return n_tokens + extra - self.dropped_bos()

    # -- 2. span masking ---------------------------------------------------------------------------

    def word_batch(self, batch: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        if self.mask_length != "subword":
            return batch
        positions = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
        return {**batch, "word_ids": positions}

    def spans(self, batch, generator):
        """``(starts, continuation, random_start, n_inserts)``: the chosen word starts, the
        tokens after a start inside a span, per-start random flags, zero-length spans per row."""
        eligible = candidates(batch, self.special_token_ids)
        words = WordLayout(self.word_batch(batch), eligible)
        n_starts = words.is_start.sum(-1)
        num = torch.ceil(n_starts.to(torch.float64) * self.mask).long()
        b, t = eligible.shape
        if self.mask_length == "span-poisson":
            lengths = span_lengths(num, self.cdf, generator)
            n_inserts = (lengths == 0).sum(-1)
            lengths, n_spans = compact(lengths, lengths > 0, 0)
        else:
            n_spans, n_inserts = num, torch.zeros_like(num)
            lengths = torch.ones(b, int(num.max()) if b else 0, dtype=torch.long)
        s_max = lengths.shape[1]
        starts = torch.zeros(b, t, dtype=torch.bool)
        continuation = torch.zeros(b, t, dtype=torch.bool)
        flags = torch.zeros(b, t, dtype=torch.bool)
        if s_max == 0:
            return starts, continuation, flags, n_inserts
        keys = torch.rand(b, t, generator=generator).masked_fill_(~words.is_start, math.inf)
        order = ascending(keys, s_max)  # distinct word starts in random order
        valid = padding_mask(n_spans, s_max)
        starts.scatter_(1, order, valid)
        random = valid & (torch.rand(b, s_max, generator=generator) < self.mask_random)
        flags.scatter_(1, order, random)
        word = words.ordinal.gather(1, order)
        last = words.block_last.gather(1, order)
        target_word = word + lengths
        inside = target_word <= last
        end = torch.where(
            inside,
            words.start.gather(1, target_word.clamp_max(t - 1)),
            words.end.gather(1, last) + 1,
        )
        delta = torch.zeros(b, t + 1, dtype=torch.long)
        delta.scatter_add_(1, torch.where(valid, order + 1, t).clamp_max(t), valid.long())
        delta.scatter_add_(1, torch.where(valid, end, t).clamp_max(t), -valid.long())
        continuation = delta.cumsum(-1)[:, :t] > 0
        return starts, continuation, flags, n_inserts

    def infill(self, batch: dict, generator: torch.Generator) -> dict:
        starts, cont, flags, n_inserts = self.spans(batch, generator)
        ids = batch["input_ids"]
        if self.replace_length == 1:
            masked, deleted = starts & ~cont, cont
        elif self.replace_length == 0:
            masked, deleted = torch.zeros_like(starts), starts | cont
        else:
            masked, deleted = starts | cont, torch.zeros_like(starts)
            # each token takes the random flag of the latest span start at or before it
            positions = torch.arange(ids.shape[1]).expand_as(ids)
            latest = torch.where(starts, positions, 0).cummax(-1).values
            flags = flags.gather(1, latest)
        random = masked & flags
        noisy = ids.masked_fill(masked, self.mask_token_id)
        noisy.masked_scatter_(random, self.sampler.sample(int(random.sum()), generator))
        keep = batch["attention_mask"].bool() & ~deleted
        fills = {"input_ids": self.pad_token_id, "special_tokens_mask": 1}
        out = {
            k: compact(noisy if k == "input_ids" else batch[k], keep, fills.get(k, 0))[0]
            for k in CARRIED
            if k in batch
        }
        inserts = torch.minimum(n_inserts, deleted.sum(-1))
        if bool((inserts > 0).any()):
            out = insert_tokens(
                out, inserts, self.mask_random, self.mask_token_id, self.sampler,
                self.pad_token_id, generator,
            )[0]  # fmt: skip
        return out

    # -- 4. rotation -------------------------------------------------------------------------------

    def rotation(self, batch: dict, generator: torch.Generator) -> dict:
        ids = batch["input_ids"]
        b, t = ids.shape
        n = batch["attention_mask"].sum(-1)
        inner = (n - 2).clamp_min(1)
        u = torch.rand(b, generator=generator, dtype=torch.float64)
        offset = 1 + torch.floor(u * (n - 1).clamp_min(1).to(torch.float64)).long()  # [1, n-1]
        rotated = torch.rand(b, generator=generator) < self.rotate
        shift = torch.where(rotated, offset - 1, 0)
        positions = torch.arange(t).expand(b, t)
        body = (positions >= 1) & (positions <= (n - 2).unsqueeze(-1))
        source = torch.where(
            body, (positions - 1 + shift.unsqueeze(-1)) % inner.unsqueeze(-1) + 1, positions
        )
        return {k: v.gather(1, source) for k, v in batch.items()}

    def __call__(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> dict:
        noisy = dict(batch)
        if self.permute is not None:
            if "sentence_ids" not in batch:
                raise ClozelabError(
                    f"corruption.permute_sentences={self.permute_sentences} needs the sentence "
                    "boundaries of the shards (batch['sentence_ids']), which this batch lacks. "
                    "Fix: pre-train from prepared shards, or set corruption.permute_sentences=0."
                )
            noisy = self.permute(noisy, generator)
        noisy.pop("corrupted_mask", None)
        if self.mask > 0:
            noisy = self.infill(noisy, generator)
        else:
            noisy = {k: noisy[k] for k in CARRIED if k in noisy}
        if self.insert > 0:
            eligible = candidates(noisy, self.special_token_ids)
            num = torch.ceil(eligible.sum(-1).to(torch.float64) * self.insert).long()
            noisy = insert_tokens(
                noisy, num, self.mask_random, self.mask_token_id, self.sampler,
                self.pad_token_id, generator,
            )[0]  # fmt: skip
        if self.rotate > 0:
            noisy = self.rotation(noisy, generator)
        out = self.source({**batch, **noisy}, noisy["input_ids"], self.real(noisy))
        out.update(self.restore_target(batch))
        return out

    def __repr__(self) -> str:
        return (
            f"BartNoising(mask={self.mask}, mask_length={self.mask_length!r}, "
            f"replace_length={self.replace_length}, poisson_lambda={self.poisson_lambda}, "
            f"permute_sentences={self.permute_sentences}, rotate={self.rotate}, "
            f"insert={self.insert})"
        )
