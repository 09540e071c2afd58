"""A corruption in the user's own module: mask the tail of every sequence (a "suffix cloze").

Use it from the command line, in the directory that holds this file::

    clozelab pretrain corruption._target_=my_corruption.TailMasking corruption.rate=0.2

(the other keys of the selected corruption preset are replaced by the ones below with ``~``, or
start from a preset file of your own). Like every corruption it subclasses
``clozelab.corruption.base.Corruption`` and declares what it reads and writes, so an objective
that needs something it does not produce is refused when the config is composed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from clozelab.corruption.base import (
    Corruption,
    candidates,
    check_choice,
    check_rate,
    mlm_targets,
)


class TailMasking(Corruption):
    """Replace the last ``rate`` fraction of every row's real tokens by [MASK] (or by random ids
    with ``fill=random``); the masked tokens are the MLM targets.

    Args:
        rate: fraction of each row's candidate tokens masked, at its end.
        fill: ``mask`` ([MASK]) or ``random`` (uniform non-special ids).
        vocab_size, mask_token_id, special_token_ids: the tokenizer's (given at run time).
    """

    requires = ("input_ids", "attention_mask", "special_tokens_mask")
    produces = ("input_ids", "mlm_labels")

    def __init__(
        self, rate=0.15, fill="mask", *, vocab_size, mask_token_id, special_token_ids
    ) -> None:
        self.rate = check_rate(rate)
        self.fill = check_choice(fill, "corruption.fill", ("mask", "random"))
        self.vocab_size, self.mask_token_id = int(vocab_size), int(mask_token_id)
        self.special_token_ids = tuple(int(i) for i in special_token_ids)

    def __call__(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> dict:
        out = dict(batch)
        ids = batch["input_ids"]
        eligible = candidates(batch, self.special_token_ids)  # real, non-special tokens
        n = eligible.sum(-1, keepdim=True)  # (B, 1)
        k = torch.ceil(n * self.rate).long()  # tokens to mask per row
        rank_from_end = n - eligible.long().cumsum(-1)  # 0 on a row's last candidate
        selected = eligible & (rank_from_end < k)
        if self.fill == "mask":
            fill = torch.full_like(ids, self.mask_token_id)
        else:  # every random draw from the given generator: reproducible in any worker
            fill = torch.randint(0, self.vocab_size, ids.shape, generator=generator).to(ids)
        out["input_ids"] = torch.where(selected, fill, ids)
        out["mlm_labels"] = mlm_targets(ids, selected)
        return out
