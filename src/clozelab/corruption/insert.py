"""Extraneous insertion (fairseq ``add_insertion_noise``, SPECS.md §16; the seeds' "外部插入").

``ceil(rate * n)`` new tokens are inserted per row at a uniformly random subset of the *inner*
positions of the result (never before the row's first token nor after its last, so [CLS] stays
first and the final [SEP] last). ``ceil(num * random_ratio)`` of them are random non-special ids,
the rest [MASK]. n counts the row's non-special tokens (fairseq counts every token, specials
included; counting candidates makes ``rate`` a fraction of the same tokens the other corruptions'
rates are, so insertion shares their budget in a ``Compose``).

Encoder targets (the detection analogue of ``deletion``): ``insertion_labels [B, T']`` 1 on an
inserted token, 0 on an original non-special one, -100 on specials and padding. Every per-token
tensor of the batch moves with its token (inserted positions: [MASK]/random id, attention 1, not
special, no MLM target, ``corrupted_mask`` True, the token type of the token before). The width
grows to the longest new row; ``output_length`` lets the data module build rows short enough that
the result fits ``data.max_seq_length``. For seq2seq (target = the original) wrap it in
``clozelab.corruption.restore.Restore``.

Invariants: a row of n real tokens has ``n + num`` afterwards; removing the labelled positions gives
back the input exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from clozelab.corruption.base import (
    IGNORE_INDEX,
    Corruption,
    ReplacementSampler,
    check_probability,
    check_rate,
    replacement_sampler,
)
from clozelab.corruption.delete import PAD_VALUES
from clozelab.corruption.seq2seq import as_numpy, as_torch, eligible, put

#: value of an inserted position in the per-token keys that do not copy their neighbour's
INSERTED_VALUES = {
    "attention_mask": 1, "special_tokens_mask": 0, "word_ids": -1, "entity_ids": -1,
    "phrase_ids": -1, "mlm_labels": IGNORE_INDEX, "order_labels": IGNORE_INDEX,
    "deletion_labels": 0, "replaced_mask": 0, "corrupted_mask": 1, "reordered_mask": 0,
}  # fmt: skip


def insert_tokens(
    arrays: dict[str, np.ndarray],
    num: np.ndarray,
    random_ratio: float,
    mask_token_id: int,
    sampler: ReplacementSampler,
    pad_token_id: int,
    generator: torch.Generator,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Insert ``num[b]`` tokens into row b of every ``[B, T]`` array (NumPy; see the module
    docstring). Returns the new arrays and ``inserted`` (``bool [B, W]``)."""
    ids = arrays["input_ids"]
    b, t = ids.shape
    n = arrays["attention_mask"].sum(-1) if "attention_mask" in arrays else np.full(b, t)
    new_len = n + num
    width = max(t, int(new_len.max()) if b else 0)
    positions = np.arange(width)
    inner = (positions >= 1) & (positions <= (new_len - 2)[:, None]) & (num > 0)[:, None]
    # one sort: the num smallest keys of the inner slots are inserted, the first
    # ceil(num * random_ratio) of those (in key order) get random ids
    keys = as_numpy(torch.rand(b, width, generator=generator))
    k_max = int(num.max()) if b else 0
    inserted = np.zeros((b, width), dtype=bool)
    value = np.full((b, width), mask_token_id, dtype=ids.dtype)
    if k_max:
        order = np.argsort(np.where(inner, keys, 2.0), axis=-1)[:, :k_max]
        rank = np.arange(k_max)
        chosen = rank < num[:, None]
        n_random = np.ceil(num * random_ratio).astype(np.int64)
        random = chosen & (rank < n_random[:, None])
        put(inserted, order, chosen)
        row_values = np.full((b, k_max), mask_token_id, dtype=ids.dtype)
        row_values[random] = as_numpy(sampler.sample(int(random.sum()), generator))
        put(value, order, row_values)
    source = np.clip(np.cumsum(~inserted, -1) - 1, 0, t - 1)  # original index of each slot
    beyond = positions >= new_len[:, None]
    # every per-token array moves by one flat gather index (row offsets added once)
    flat = (source + (np.arange(b) * t)[:, None]).reshape(-1)
    out = {}
    for k, v in arrays.items():
        moved = np.ascontiguousarray(v).reshape(-1)[flat].reshape(b, width)
        moved[beyond] = pad_token_id if k == "input_ids" else PAD_VALUES.get(k, 0)
        if k in INSERTED_VALUES:  # inserted positions of keys with a fixed value (attention 1,
            moved[inserted] = INSERTED_VALUES[k]  # no label, ...)
        out[k] = moved
    out["input_ids"][inserted] = value[inserted]
    return out, inserted


def _is_per_token(value, batch) -> bool:
    ids = batch["input_ids"]
    return isinstance(value, Tensor) and value.dim() == 2 and value.shape == ids.shape


class Insertion(Corruption):
    """Args:
    rate: inserted tokens per row, ``ceil(rate * n)`` for n non-special tokens (SPECS §16).
    random_ratio: share of the inserted tokens that are random non-special ids (the rest
        [MASK]); fairseq/BART: 0.1. An encoder detecting insertions needs random ids: an
        inserted [MASK] gives itself away.
    replace_distribution: ``uniform`` over the non-special ids (fairseq) or ``unigram`` (by
        corpus frequency, counted once from the training shards).
    vocab_size, mask_token_id, special_token_ids, pad_token_id: from the tokenizer at run time.
    corpus: the training corpus's statistics (runtime; needed by ``unigram``).
    """

    produces = ("input_ids", "insertion_labels", "inserted_count", "corrupted_mask")
    runtime_inputs = frozenset({"pad_token_id", "corpus"})  # corpus: replace_distribution=unigram

    def __init__(
        self,
        rate: float = 0.1,
        random_ratio: float = 0.1,
        replace_distribution: str = "uniform",
        *,
        vocab_size: int,
        mask_token_id: int,
        special_token_ids,
        pad_token_id: int = 0,
        corpus=None,
        replacement_probs: Tensor | None = None,
    ) -> None:
        self.rate = check_rate(rate)
        self.random_ratio = check_probability(random_ratio, "corruption.random_ratio")
        self.special_token_ids = tuple(int(i) for i in special_token_ids)
        self.mask_token_id = int(mask_token_id)
        self.pad_token_id = int(pad_token_id)
        self.sampler = replacement_sampler(
            vocab_size,
            self.special_token_ids,
            "nonspecial",
            replace_distribution,
            corpus,
            replacement_probs,
            needed=self.random_ratio > 0,
        )
        self.replace_distribution = replace_distribution

    def count(self, n_candidates: np.ndarray) -> np.ndarray:
        return np.ceil(np.asarray(n_candidates) * self.rate).astype(np.int64)

    def output_length(self, n_tokens: int, n_special: int) -> int:
        return n_tokens + int(self.count(n_tokens - n_special))

    def __call__(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> dict:
        self.sampler.check_table()
        unlocked = {k: v for k, v in batch.items() if k != "corrupted_mask"}
        candidates = eligible(unlocked, self.special_token_ids)
        num = self.count(candidates.sum(-1))
        per_token = {k: as_numpy(v) for k, v in batch.items() if _is_per_token(v, batch)}
        if "corrupted_mask" not in per_token:
            per_token["corrupted_mask"] = np.zeros_like(candidates)
        if "insertion_labels" not in per_token:  # 0 on original candidates, -100 elsewhere
            per_token["insertion_labels"] = np.where(candidates, 0, IGNORE_INDEX)
        moved, inserted = insert_tokens(
            per_token,
            num,
            self.random_ratio,
            self.mask_token_id,
            self.sampler,
            self.pad_token_id,
            generator,
        )
        moved["insertion_labels"][inserted] = 1
        out = dict(batch)
        out.update({k: as_torch(v) for k, v in moved.items()})
        out["inserted_count"] = as_torch(num)
        if "span_bounds" in batch:
            from clozelab.corruption.units import span_bounds

            out["span_bounds"] = span_bounds(out["corrupted_mask"])
        return out

    def __repr__(self) -> str:
        return (
            f"Insertion(rate={self.rate}, random_ratio={self.random_ratio}, "
            f"replace_distribution={self.replace_distribution!r})"
        )
