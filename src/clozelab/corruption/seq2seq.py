"""Pieces every sequence-to-sequence corruption shares (the batch layout of the seq2seq contract).

A seq2seq corruption turns a clean batch into (source, target) pairs: ``input_ids`` /
``attention_mask`` (the encoder input) and ``labels`` / ``decoder_input_ids`` /
``decoder_attention_mask`` (the decoder side, teacher forcing). Every tensor is right-padded; a
row's real tokens come first. ``labels`` are -100 on padding, ``decoder_input_ids`` are the labels
shifted right by one with the decoder start id first (the pad id for T5 layouts, the [SEP]/eos id
for BART layouts, [MASK] for MASS), pad where the labels are padding.

Sources and targets are built by *compaction*: each keeps a subset of the row's positions, in
order, with some ids rewritten (a sentinel on the first token of a noise run, a [MASK], ...).
``compact`` moves the kept entries of every row to the left with one scatter, so no corruption
loops over tokens or rows.

Sentinels (T5's ``<extra_id_i>``): with tokenizer vocabulary V and ``n_sentinels`` extra ids, the
model's embedding has V + n_sentinels rows and sentinel i is id V + n_sentinels - 1 - i (T5's order:
``<extra_id_0>`` is the highest id). A corruption that uses them declares ``extra_vocab``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from clozelab.corruption.base import IGNORE_INDEX, Corruption, check_choice, check_positive_int
from clozelab.errors import ClozelabError

SEQ2SEQ_KEYS = (
    "input_ids", "attention_mask", "labels", "decoder_input_ids", "decoder_attention_mask",
)  # fmt: skip
DECODER_STARTS = ("pad", "eos", "mask")
#: per-token keys that travel with the source (others are dropped: their positions changed)
SOURCE_KEYS = {"token_type_ids": 0, "special_tokens_mask": 1}


def compact(values: Tensor, keep: Tensor, fill: int) -> tuple[Tensor, Tensor]:
    """Move the ``keep`` entries of every row of ``values`` to the left, in order.

    Returns ``(out [B, W], lengths [B])`` with W the longest row's kept count and ``fill`` after
    each row's entries. One cumsum and one scatter over ``[B, T]``.
    """
    lengths = keep.sum(-1)
    width = int(lengths.max()) if lengths.numel() else 0
    slot = (keep.long().cumsum(-1) - 1).masked_fill_(~keep, width)
    out = torch.full((keep.shape[0], width + 1), fill, dtype=values.dtype, device=values.device)
    out.scatter_(1, slot, values)
    return out[:, :width], lengths


def interleave(before: Tensor, at: Tensor) -> Tensor:
    """``[B, 2T]``: ``before[:, t]`` then ``at[:, t]`` for every t (a slot in front of each
    position, used to insert one token before some positions before compacting)."""
    return torch.stack((before, at), dim=-1).flatten(1)


def padding_mask(lengths: Tensor, width: int) -> Tensor:
    """``bool [B, width]``: True on the first ``lengths[b]`` positions of row b."""
    return torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(-1)


def append_eos(ids: Tensor, lengths: Tensor, eos: int, fill: int) -> tuple[Tensor, Tensor]:
    """Write ``eos`` after the last real entry of each row (the width grows by one)."""
    out = torch.cat((ids, torch.full_like(ids[:, :1], fill)), dim=1)
    out.scatter_(1, lengths.unsqueeze(-1), eos)
    return out, lengths + 1


def decoder_side(target: Tensor, lengths: Tensor, start_id: int, pad_id: int) -> dict[str, Tensor]:
    """``labels`` / ``decoder_input_ids`` / ``decoder_attention_mask`` of right-padded targets."""
    real = padding_mask(lengths, target.shape[1])
    labels = target.masked_fill(~real, IGNORE_INDEX)
    shifted = torch.full_like(target, pad_id)
    shifted[:, 0] = start_id
    shifted[:, 1:] = target[:, :-1]
    return {
        "labels": labels,
        "decoder_input_ids": shifted.masked_fill_(~real, pad_id),
        "decoder_attention_mask": real.long(),
    }


def run_starts(noise: Tensor) -> tuple[Tensor, Tensor]:
    """First position of each maximal run of ``noise`` and the run's index (0.. per row, -1 off
    runs); T5's ``noise_span_to_unique_sentinel`` numbering."""
    first = noise.clone()
    first[:, 1:] &= ~noise[:, :-1]
    index = (first.long().cumsum(-1) - 1).masked_fill_(~noise, -1)
    return first, index


class Seq2SeqCorruption(Corruption):
    """Base class of the corruptions that produce (source, target) pairs.

    Declares what the model side needs: ``produces`` the decoder keys (``labels``,
    ``decoder_input_ids``: only an objective with a decoder reads them, so an encoder-only model is
    refused at compose time), ``extra_vocab`` (sentinel ids beyond the tokenizer's vocabulary) and
    ``decoder_start`` (which id opens the decoder input). ``bos``: keep the leading [CLS] in the
    source and in a restored target (BART's ``<s>``); T5 layouts have no BOS and drop it.

    Args shared by subclasses:
        decoder_start: ``pad`` (T5), ``eos`` (BART) or ``mask`` (MASS).
        bos: keep the row's leading special token.
        vocab_size, mask_token_id, special_token_ids, pad_token_id, eos_token_id: from the
            tokenizer at run time (eos is [SEP]).
    """

    produces: ClassVar[tuple[str, ...]] = SEQ2SEQ_KEYS
    accepts_pad = True
    accepts_eos = True
    extra_vocab: int = 0

    def __init__(
        self,
        decoder_start: str = "eos",
        bos: bool = True,
        *,
        vocab_size: int,
        mask_token_id: int,
        special_token_ids,
        pad_token_id: int = 0,
        eos_token_id: int | None = None,
    ) -> None:
        self.decoder_start = check_choice(decoder_start, "corruption.decoder_start", DECODER_STARTS)
        if not isinstance(bos, bool):
            raise ClozelabError(
                f"corruption.bos={bos!r} must be true or false. Fix: corruption.bos=false (T5: no "
                "BOS) or true (BART: keep <s>/[CLS])."
            )
        self.bos = bos
        self.vocab_size = check_positive_int(vocab_size, "corruption.vocab_size")
        self.mask_token_id = int(mask_token_id)
        self.special_token_ids = tuple(int(i) for i in special_token_ids)
        self.pad_token_id = int(pad_token_id)
        if eos_token_id is None:
            raise ClozelabError(
                f"{type(self).__name__} needs the tokenizer's eos ([SEP]) id (eos_token_id): build "
                "it through build_components/runtime_kwargs, which pass it."
            )
        self.eos_token_id = int(eos_token_id)

    # -- preview -----------------------------------------------------------------------------------

    def preview_stats(self, pairs: list[tuple[dict, dict]], tokenizer) -> dict:
        from clozelab.corruption.seq2seq_preview import seq2seq_stats

        return seq2seq_stats(pairs, tokenizer, self.extra_vocab, self.bos)

    def preview_render(self, clean: dict, out: dict, row: int, tokenizer) -> str:
        from clozelab.corruption.seq2seq_preview import render_pair

        return render_pair(out, row, tokenizer, self.extra_vocab)

    # -- lengths -----------------------------------------------------------------------------------

    def output_length(self, n_tokens: int, n_special: int) -> int:
        """Source length of a row of ``n_tokens`` real tokens (``n_special`` of them special);
        subclasses whose source is shorter or longer override it (``instance_length``)."""
        return n_tokens - self.dropped_bos()

    def dropped_bos(self) -> int:
        return 0 if self.bos else 1

    # -- building blocks ---------------------------------------------------------------------------

    @property
    def start_id(self) -> int:
        return {"pad": self.pad_token_id, "eos": self.eos_token_id, "mask": self.mask_token_id}[
            self.decoder_start
        ]

    def real(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Real positions of the row, without the leading special token when ``bos`` is off."""
        ids = batch["input_ids"]
        real = (
            batch["attention_mask"].bool()
            if "attention_mask" in batch
            else torch.ones_like(ids, dtype=torch.bool)
        )
        if not self.bos and "special_tokens_mask" in batch:
            real = real.clone()
            real[:, 0] &= ~batch["special_tokens_mask"][:, 0].bool()
        return real

    def source(self, batch: Mapping[str, Tensor], ids: Tensor, keep: Tensor) -> dict[str, Tensor]:
        """Encoder side: ``ids`` at the ``keep`` positions, compacted; per-row keys of ``batch``
        carried over, ``token_type_ids`` / ``special_tokens_mask`` compacted with the tokens."""
        out = {k: v for k, v in batch.items() if not _per_token(v, ids)}
        out["input_ids"], lengths = compact(ids, keep, self.pad_token_id)
        width = out["input_ids"].shape[1]
        out["attention_mask"] = padding_mask(lengths, width).long()
        for key, fill in SOURCE_KEYS.items():
            if key in batch:
                out[key] = compact(batch[key], keep, fill)[0]
        return out

    def target(self, ids: Tensor, keep: Tensor, add_eos: bool) -> dict[str, Tensor]:
        """Decoder side: ``ids`` at the ``keep`` positions, compacted, optionally + eos."""
        target, lengths = compact(ids, keep, self.pad_token_id)
        if add_eos:
            target, lengths = append_eos(target, lengths, self.eos_token_id, self.pad_token_id)
        return decoder_side(target, lengths, self.start_id, self.pad_token_id)

    def restore_target(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The original row as the target (BART, T5 BERT-style / deshuffling): its real tokens,
        which already end with [SEP] (eos)."""
        return self.target(batch["input_ids"], self.real(batch), add_eos=False)


def _per_token(value, ids: Tensor) -> bool:
    """Per-token (or per-span) tensors of the batch: their positions no longer hold."""
    return isinstance(value, Tensor) and value.dim() >= 2 and value.shape[0] == ids.shape[0]


class SentinelIds:
    """Maps run indices to sentinel ids: run i -> V + n - 1 - i (``<extra_id_i>``)."""

    def __init__(self, vocab_size: int, n_sentinels: int) -> None:
        self.vocab_size = vocab_size
        self.n = check_positive_int(n_sentinels, "corruption.n_sentinels")

    def __call__(self, run_index: Tensor) -> Tensor:
        most = int(run_index.max()) + 1 if run_index.numel() else 0
        if most > self.n:
            raise ClozelabError(
                f"corruption.n_sentinels={self.n}: a sequence has {most} noise spans, more than "
                "there are sentinel ids (T5 has 100). Fix: raise corruption.n_sentinels (the model "
                "grows its embedding by the same number) or shorten data.max_seq_length."
            )
        return self.vocab_size + self.n - 1 - run_index

    def is_sentinel(self, ids: Tensor) -> Tensor:
        return (ids >= self.vocab_size) & (ids < self.vocab_size + self.n)
