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

import numpy as np
import torch
from torch import Tensor

from clozelab.core.batch import IGNORE_INDEX
from clozelab.core.errors import ClozelabError
from clozelab.corruption.base import Corruption, check_choice, check_positive_int

SEQ2SEQ_KEYS = (
    "input_ids",
    "attention_mask",
    "labels",
    "decoder_input_ids",
    "decoder_attention_mask",
)
DECODER_STARTS = ("pad", "eos", "mask")
#: per-token keys that travel with the source (others are dropped: their positions changed)
SOURCE_KEYS = {"token_type_ids": 0, "special_tokens_mask": 1}


def as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    """A NumPy view of a CPU tensor (a copy from other devices); arrays pass through."""
    return x if isinstance(x, np.ndarray) else x.detach().cpu().numpy()


def as_torch(x: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def _flat(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Indices into ``values.reshape(-1)`` of ``values[b, index[b, j]]`` (one flat index is
    cheaper than NumPy's two broadcast fancy indices)."""
    b, t = values.shape
    return index + (np.arange(b) * t)[:, None]


def take(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[b, index[b, j]]`` (``np.take_along_axis`` on the last axis, without its
    per-call overhead)."""
    if not values.flags.c_contiguous:
        values = np.ascontiguousarray(values)
    return values.reshape(-1)[_flat(values, index)]


def put(values: np.ndarray, index: np.ndarray, new) -> None:
    """``values[b, index[b, j]] = new[b, j]`` in place (``np.put_along_axis``)."""
    if not values.flags.c_contiguous:  # a view reshape(-1) would copy: write through indexing
        values[np.arange(values.shape[0])[:, None], index] = new
        return
    flat = _flat(values, index)
    values.reshape(-1)[flat.reshape(-1)] = np.broadcast_to(new, flat.shape).reshape(-1)


class Compactor:
    """Moves the ``keep`` entries of every row to the left, in order (``[B, T]`` -> ``[B, W]``, W
    the longest row's kept count); the slots are computed once and reused for every array.

    The seq2seq corruptions build their outputs with NumPy: on the small ``[B, T]`` arrays of a
    collate call its calls cost a few microseconds, a fraction of a torch op's dispatch, which is
    what the >= 10,000 sequences/s budget is spent on.
    """

    def __init__(self, keep: np.ndarray) -> None:
        self.lengths = keep.sum(-1)
        self.width = int(self.lengths.max()) if self.lengths.size else 0
        slot = np.cumsum(keep, -1) - 1
        slot[~keep] = self.width  # a discarded column
        self.slot = slot

    def __call__(self, values: np.ndarray, fill: int) -> np.ndarray:
        out = np.full((values.shape[0], self.width + 1), fill, dtype=values.dtype)
        put(out, self.slot, values)
        return out[:, : self.width]


def compact(values: np.ndarray, keep: np.ndarray, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kept entries of each row moved left, lengths)``: a one-off ``Compactor``."""
    compactor = Compactor(keep)
    return compactor(values, fill), compactor.lengths


def interleave(before: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``[B, 2T]``: ``before[:, t]`` then ``at[:, t]`` for every t (a slot in front of each
    position, used to insert one token before some positions before compacting)."""
    return np.stack((before, at), axis=-1).reshape(before.shape[0], -1)


def padding_mask(lengths: np.ndarray, width: int) -> np.ndarray:
    """``bool [B, width]``: True on the first ``lengths[b]`` positions of row b."""
    return np.arange(width) < lengths[:, None]


def append_eos(
    ids: np.ndarray, lengths: np.ndarray, eos: int, fill: int
) -> tuple[np.ndarray, np.ndarray]:
    """Write ``eos`` after the last real entry of each row (the width grows by one; also from
    width 0, a batch whose rows have no target token)."""
    out = np.concatenate((ids, np.full((ids.shape[0], 1), fill, dtype=ids.dtype)), axis=1)
    out[np.arange(ids.shape[0]), lengths] = eos
    return out, lengths + 1


def decoder_side(
    target: np.ndarray, lengths: np.ndarray, start_id: int, pad_id: int
) -> dict[str, Tensor]:
    """``labels`` / ``decoder_input_ids`` / ``decoder_attention_mask`` of right-padded targets."""
    real = padding_mask(lengths, target.shape[1])
    shifted = np.full_like(target, pad_id)
    shifted[:, :1] = start_id
    shifted[:, 1:] = target[:, :-1]
    shifted[~real] = pad_id
    return {
        "labels": as_torch(np.where(real, target, IGNORE_INDEX)),
        "decoder_input_ids": as_torch(shifted),
        "decoder_attention_mask": as_torch(real.astype(np.int64)),
    }


def run_starts(noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First position of each maximal run of ``noise`` and the run's index (0.. per row, -1 off
    runs); T5's ``noise_span_to_unique_sentinel`` numbering."""
    first = noise.copy()
    first[:, 1:] &= ~noise[:, :-1]
    index = np.cumsum(first, -1) - 1
    return first, np.where(noise, index, -1)


def eligible(batch: Mapping[str, Tensor], special_token_ids) -> np.ndarray:
    """``candidates`` as a NumPy bool array (real, non-special, not yet corrupted)."""
    ids = as_numpy(batch["input_ids"])
    if "special_tokens_mask" in batch:
        special = as_numpy(batch["special_tokens_mask"]).astype(bool)
    else:
        special = np.isin(ids, np.asarray(special_token_ids))
    if "corrupted_mask" in batch:
        special = special | as_numpy(batch["corrupted_mask"]).astype(bool)
    if "attention_mask" in batch:
        return as_numpy(batch["attention_mask"]).astype(bool) & ~special
    return ~special


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
    runtime_inputs = frozenset({"pad_token_id", "eos_token_id"})
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

    def real(self, batch: Mapping[str, Tensor]) -> np.ndarray:
        """Real positions of the row, without the leading special token when ``bos`` is off."""
        ids = batch["input_ids"]
        if "attention_mask" in batch:
            real = as_numpy(batch["attention_mask"]).astype(bool)
        else:
            real = np.ones(tuple(ids.shape), dtype=bool)
        if not self.bos and "special_tokens_mask" in batch:
            real[:, 0] &= ~as_numpy(batch["special_tokens_mask"][:, 0]).astype(bool)
        return real

    def source(
        self, batch: Mapping[str, Tensor], ids: np.ndarray, keep: np.ndarray
    ) -> dict[str, Tensor]:
        """Encoder side: ``ids`` at the ``keep`` positions, compacted; per-row keys of ``batch``
        carried over, ``token_type_ids`` / ``special_tokens_mask`` compacted with the tokens."""
        out = {k: v for k, v in batch.items() if not _per_token(v, ids)}
        compactor = Compactor(keep)
        out["input_ids"] = as_torch(compactor(ids, self.pad_token_id))
        real = padding_mask(compactor.lengths, compactor.width)
        out["attention_mask"] = as_torch(real.astype(np.int64))
        for key, fill in SOURCE_KEYS.items():
            if key in batch:
                out[key] = as_torch(compactor(as_numpy(batch[key]), fill))
        return out

    def target(self, ids: np.ndarray, keep: np.ndarray, add_eos: bool) -> dict[str, Tensor]:
        """Decoder side: ``ids`` at the ``keep`` positions, compacted, optionally + eos."""
        target, lengths = compact(ids, keep, self.pad_token_id)
        if add_eos:
            target, lengths = append_eos(target, lengths, self.eos_token_id, self.pad_token_id)
        return decoder_side(target, lengths, self.start_id, self.pad_token_id)

    def restore_target(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The original row as the target (BART, T5 BERT-style / deshuffling): its real tokens,
        which already end with [SEP] (eos)."""
        return self.target(as_numpy(batch["input_ids"]), self.real(batch), add_eos=False)


def _per_token(value, ids) -> bool:
    """Per-token (or per-span) tensors of the batch: their positions no longer hold."""
    return isinstance(value, Tensor) and value.dim() >= 2 and value.shape[0] == ids.shape[0]


class SentinelIds:
    """Maps run indices to sentinel ids: run i -> V + n - 1 - i (``<extra_id_i>``)."""

    def __init__(self, vocab_size: int, n_sentinels: int) -> None:
        self.vocab_size = vocab_size
        self.n = check_positive_int(n_sentinels, "corruption.n_sentinels")

    def __call__(self, run_index: np.ndarray) -> np.ndarray:
        most = int(run_index.max()) + 1 if run_index.size else 0
        if most > self.n:
            raise ClozelabError(
                f"corruption.n_sentinels={self.n}: a sequence has {most} noise spans, more than "
                "there are sentinel ids (T5 has 100). Fix: raise corruption.n_sentinels (the model "
                "grows its embedding by the same number) or shorten data.max_seq_length."
            )
        return self.vocab_size + self.n - 1 - run_index
