"""Token deletion (BART's ``replace_length=0`` noise, SPECS §13) for encoders.

Chosen units (tokens or whole words, ``bernoulli`` or ``exact`` budget) are removed and every row is
re-packed to the left (width unchanged, padding at the end). Every per-token tensor of the batch
moves with its token. Targets:

* ``deletion_labels [B, T]``: at each real position of the re-packed row, 1 if one or more tokens
  were deleted right before it, else 0; -100 on padding. (BART's paper: "the model must decide
  which positions are missing inputs".)
* ``deleted_count [B]``: tokens removed per row.

Specials are never deleted, so [CLS] stays first and every [SEP] keeps its segment.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from clozelab.corruption.base import (
    IGNORE_INDEX,
    Corruption,
    candidates,
    check_choice,
    check_positive_int,
    check_rate,
)
from clozelab.corruption.masking import BUDGETS, build_units, exact_budget, select_units
from clozelab.corruption.units import shift_right

PAD_VALUES = {
    "special_tokens_mask": 1, "word_ids": -1, "entity_ids": -1, "sentence_ids": -1,
    "phrase_ids": -1, "mlm_labels": IGNORE_INDEX, "token_type_ids": 0, "attention_mask": 0,
    "order_labels": IGNORE_INDEX, "deletion_labels": IGNORE_INDEX,
    "insertion_labels": IGNORE_INDEX,
}  # fmt: skip


def repack(batch: Mapping[str, Tensor], keep: Tensor, pad_id: int) -> dict[str, Tensor]:
    """Move the kept positions of every ``[B, T]`` tensor to the left, pad the rest."""
    b, t = keep.shape
    target = (keep.long().cumsum(-1) - 1).masked_fill(~keep, t)  # dropped -> a discarded column
    out = dict(batch)
    for key, value in batch.items():
        if not isinstance(value, Tensor) or value.shape != (b, t) or key == "span_bounds":
            continue
        fill = pad_id if key == "input_ids" else PAD_VALUES.get(key, 0)
        packed = torch.full((b, t + 1), fill, dtype=value.dtype, device=value.device)
        packed.scatter_(1, target, value)
        out[key] = packed[:, :t]
    return out


class Deletion(Corruption):
    """Args:
    rate: fraction of candidate tokens deleted.
    unit: ``token`` or ``whole_word``.
    budget: ``bernoulli`` or ``exact`` (BERT's K).
    max_predictions: cap of the exact budget.
    pad_token_id, special_token_ids: from the tokenizer at run time.
    """

    requires = ("input_ids", "attention_mask", "special_tokens_mask")
    produces = ("input_ids", "deletion_labels", "deleted_count", "corrupted_mask")
    runtime_inputs = frozenset({"pad_token_id"})

    def __init__(
        self,
        rate: float = 0.15,
        unit: str = "token",
        budget: str = "bernoulli",
        max_predictions: int | None = None,
        *,
        vocab_size: int,
        mask_token_id: int,
        special_token_ids,
        pad_token_id: int = 0,
    ) -> None:
        self.rate = check_rate(rate)
        self.unit = check_choice(unit, "corruption.unit", ("token", "whole_word"))
        self.budget = check_choice(budget, "corruption.budget", BUDGETS)
        self.max_predictions = check_positive_int(
            max_predictions, "corruption.max_predictions", allow_none=True
        )
        self.special_token_ids = tuple(int(i) for i in special_token_ids)
        self.pad_token_id = int(pad_token_id)
        self.vocab_size = vocab_size

    def rate_of_remaining(self) -> bool:
        """Bernoulli draws take the rate of the candidates left; exact budgets count the row."""
        return self.budget == "bernoulli"

    def __call__(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> dict:
        eligible = candidates(batch, self.special_token_ids)
        units = build_units(self.unit, batch, eligible, "word")
        k = exact_budget(batch, eligible, self.rate, self.max_predictions)
        deleted = select_units(units, eligible, self.rate, self.budget, k, generator)
        keep = ~deleted
        before = shift_right(deleted, False)  # a deletion right before this position
        previous = batch.get("corrupted_mask")
        base = {
            **batch,
            "deletion_labels": before.long(),
            "corrupted_mask": torch.zeros_like(deleted) if previous is None else previous.bool(),
        }
        # several deleted tokens in a row: the label goes to the next kept token
        run_before = deleted.long().cumsum(-1)
        kept_run = torch.where(keep, run_before, 0)
        prev_kept = torch.cummax(shift_right(kept_run, 0), dim=-1).values
        base["deletion_labels"] = (keep & (run_before > prev_kept)).long()
        out = repack(base, keep, self.pad_token_id)
        real = out["attention_mask"].bool() if "attention_mask" in out else keep
        out["deletion_labels"] = out["deletion_labels"].masked_fill(~real, IGNORE_INDEX)
        out["deleted_count"] = deleted.sum(-1)
        if "span_bounds" in batch:  # earlier corrupted spans move with their tokens
            from clozelab.corruption.units import span_bounds

            out["span_bounds"] = span_bounds(out["corrupted_mask"])
        return out

    def __repr__(self) -> str:
        return f"Deletion(rate={self.rate}, unit={self.unit!r}, budget={self.budget!r})"
