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

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from clozelab.corruption.base import (
    IGNORE_INDEX,
    Corruption,
    ReplacementSampler,
    ascending,
    candidates,
    check_probability,
    check_rate,
)
from clozelab.corruption.delete import PAD_VALUES

#: value of an inserted position in the per-token keys that do not copy their neighbour's
INSERTED_VALUES = {
    "attention_mask": 1, "special_tokens_mask": 0, "word_ids": -1, "entity_ids": -1,
    "phrase_ids": -1, "mlm_labels": IGNORE_INDEX, "order_labels": IGNORE_INDEX,
    "deletion_labels": 0, "replaced_mask": 0, "corrupted_mask": 1, "reordered_mask": 0,
}  # fmt: skip


def insert_tokens(
    batch: Mapping[str, Tensor],
    num: Tensor,
    random_ratio: float,
    mask_token_id: int,
    sampler: ReplacementSampler,
    pad_token_id: int,
    generator: torch.Generator,
) -> tuple[dict[str, Tensor], Tensor]:
    """Insert ``num[b]`` tokens into row b (see the module docstring). Returns the new batch and
    ``inserted`` (``bool [B, W]``)."""
    ids = batch["input_ids"]
    b, t = ids.shape
    device = ids.device
    n = batch["attention_mask"].sum(-1) if "attention_mask" in batch else torch.full((b,), t)
    new_len = n + num
    width = max(t, int(new_len.max()) if b else 0)
    positions = torch.arange(width, device=device).expand(b, width)
    inner = (positions >= 1) & (positions <= (new_len - 2).unsqueeze(-1)) & (num > 0).unsqueeze(-1)
    # one sort: the num smallest keys of the inner slots are inserted, the first
    # ceil(num * random_ratio) of those (in key order) get random ids
    keys = torch.rand(b, width, generator=generator, device=device).masked_fill_(~inner, math.inf)
    k_max = int(num.max()) if b else 0
    inserted = torch.zeros(b, width, dtype=torch.bool, device=device)
    value = torch.full((b, width), mask_token_id, dtype=ids.dtype, device=device)
    if k_max:
        order = ascending(keys, k_max)
        rank = torch.arange(k_max, device=device)
        chosen = rank < num.unsqueeze(-1)
        n_random = torch.ceil(num.to(torch.float64) * random_ratio).long()
        random = chosen & (rank < n_random.unsqueeze(-1))
        inserted.scatter_(1, order, chosen)
        draws = sampler.sample(int(random.sum()), generator, device=device).to(ids.dtype)
        row_values = torch.full((b, k_max), mask_token_id, dtype=ids.dtype, device=device)
        row_values.masked_scatter_(random, draws)
        value.scatter_(1, order, row_values)
    source = ((~inserted).long().cumsum(-1) - 1).clamp_(0, t - 1)  # original index of each slot
    beyond = positions >= new_len.unsqueeze(-1)
    out = dict(batch)
    for key, tensor in batch.items():
        if not isinstance(tensor, Tensor) or tensor.shape[:2] != (b, t) or tensor.dim() != 2:
            continue
        moved = tensor.gather(1, source if width == t else source.clamp_max(t - 1))
        fill = pad_token_id if key == "input_ids" else PAD_VALUES.get(key, 0)
        moved = moved.masked_fill(beyond, fill)
        if key == "input_ids":
            moved = torch.where(inserted, value, moved)
        elif key in INSERTED_VALUES:
            moved = moved.masked_fill(inserted, INSERTED_VALUES[key])
        out[key] = moved
    return out, inserted


class Insertion(Corruption):
    """Args:
    rate: inserted tokens per row, ``ceil(rate * n)`` for n non-special tokens (SPECS §16).
    random_ratio: share of the inserted tokens that are random non-special ids (the rest
        [MASK]); fairseq/BART: 0.1. An encoder detecting insertions needs random ids: an
        inserted [MASK] gives itself away.
    vocab_size, mask_token_id, special_token_ids, pad_token_id: from the tokenizer at run time.
    """

    produces = ("input_ids", "insertion_labels", "inserted_count", "corrupted_mask")
    accepts_pad = True

    def __init__(
        self,
        rate: float = 0.1,
        random_ratio: float = 0.1,
        *,
        vocab_size: int,
        mask_token_id: int,
        special_token_ids,
        pad_token_id: int = 0,
    ) -> None:
        self.rate = check_rate(rate)
        self.random_ratio = check_probability(random_ratio, "corruption.random_ratio")
        self.special_token_ids = tuple(int(i) for i in special_token_ids)
        self.mask_token_id = int(mask_token_id)
        self.pad_token_id = int(pad_token_id)
        self.sampler = ReplacementSampler(vocab_size, self.special_token_ids, "nonspecial")

    def count(self, n_candidates: Tensor) -> Tensor:
        return torch.ceil(n_candidates.to(torch.float64) * self.rate).long()

    def output_length(self, n_tokens: int, n_special: int) -> int:
        return n_tokens + int(self.count(torch.tensor(n_tokens - n_special)))

    def __call__(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> dict:
        unlocked = {k: v for k, v in batch.items() if k != "corrupted_mask"}
        eligible = candidates(unlocked, self.special_token_ids)
        num = self.count(eligible.sum(-1))
        base = dict(batch)
        if "corrupted_mask" not in base:
            base["corrupted_mask"] = torch.zeros_like(eligible)
        if "insertion_labels" not in base:  # 0 on original candidates, -100 elsewhere
            base["insertion_labels"] = torch.where(eligible, 0, IGNORE_INDEX)
        out, inserted = insert_tokens(
            base, num, self.random_ratio, self.mask_token_id, self.sampler, self.pad_token_id,
            generator,
        )  # fmt: skip
        out["insertion_labels"] = out["insertion_labels"].masked_fill(inserted, 1)
        out["inserted_count"] = num
        if "span_bounds" in batch:
            from clozelab.corruption.units import span_bounds

            out["span_bounds"] = span_bounds(out["corrupted_mask"])
        return out

    def __repr__(self) -> str:
        return f"Insertion(rate={self.rate}, random_ratio={self.random_ratio})"
