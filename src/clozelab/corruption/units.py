"""Units: which groups of tokens are corrupted together (DESIGN.md §3, "which units").

A unit labelling is a ``long [B, T]`` tensor, -1 on positions that are no candidate, and equal
values on the tokens of one unit. Units are *maximal runs* of equal ids, so an id that appears
twice in a row (e.g. one Wikipedia anchor split by [SEP]) gives two units; units never cover special
tokens or padding because those positions are -1.

Every function here is vectorised over the whole batch (cumsum / scatter / gather).
"""

from __future__ import annotations

import torch
from torch import Tensor

UNIT_KINDS = ("token", "whole_word", "entity", "phrase")
"""Unit kinds ``UnitMasking`` understands (n-grams and geometric spans have their own schemes)."""


def _filled(x: Tensor, fill) -> Tensor:
    # zeros_like is a memset, cheaper than writing a scalar into a column of empty_like
    return torch.zeros_like(x) if fill in (0, False) else torch.full_like(x, fill)


def shift_right(x: Tensor, fill) -> Tensor:
    """``x[:, t-1]`` at position t, ``fill`` at t = 0."""
    out = _filled(x, fill)
    out[:, 1:] = x[:, :-1]
    return out


def shift_left(x: Tensor, fill) -> Tensor:
    """``x[:, t+1]`` at position t, ``fill`` at the last position."""
    out = _filled(x, fill)
    out[:, :-1] = x[:, 1:]
    return out


def unit_starts(unit_ids: Tensor, eligible: Tensor) -> Tensor:
    """``bool [B, T]``: the first token of each unit (a run of equal ids over eligible tokens)."""
    prev_ids = shift_right(unit_ids, -1)
    prev_eligible = shift_right(eligible, False)
    return eligible & ((unit_ids != prev_ids) | ~prev_eligible)


def unit_index(unit_ids: Tensor, eligible: Tensor) -> tuple[Tensor, Tensor]:
    """Renumber units 0..n_units-1 per row in positional order.

    Returns ``(index [B, T]`` (-1 outside units), ``n_units [B])``.
    """
    starts = unit_starts(unit_ids, eligible)
    index = starts.long().cumsum(-1) - 1
    return index.masked_fill(~eligible, -1), starts.sum(-1)


def token_units(eligible: Tensor) -> Tensor:
    """Every eligible token is its own unit."""
    positions = torch.arange(eligible.shape[-1], device=eligible.device).expand_as(eligible)
    return positions.masked_fill(~eligible, -1)


def word_units(batch, eligible: Tensor) -> Tensor:
    """Whole words from ``word_ids`` (any tokenizer: no ``##`` assumption)."""
    if "word_ids" not in batch:
        raise KeyError("whole-word units need batch['word_ids'] (index of each token's word)")
    return batch["word_ids"].masked_fill(~eligible, -1)


def annotated_units(batch, eligible: Tensor, key: str, fill: str) -> Tensor:
    """Units from an annotation (``entity_ids`` / ``phrase_ids``: unit index or -1).

    ``fill`` says what the unannotated tokens are: ``"word"`` (each word is a unit, ERNIE's basic
    units between knowledge units), ``"token"``, or ``"none"`` (not candidates at all).
    """
    if key not in batch:
        raise KeyError(f"these units need batch[{key!r}] (unit index or -1)")
    ann = batch[key]
    inside = eligible & (ann >= 0)
    # Two id spaces that never collide: annotated units >= 0 ... shifted above any word/position id.
    width = ann.shape[-1]
    annotated = ann + width + 1
    if fill == "none":
        return annotated.masked_fill(~inside, -1)
    other = word_units(batch, eligible) if fill == "word" else token_units(eligible)
    return torch.where(inside, annotated, other).masked_fill(~eligible, -1)


def runs(selected: Tensor) -> tuple[Tensor, Tensor]:
    """Maximal runs of consecutive selected positions (merged spans, SpanBERT step 3).

    Returns ``(run_id [B, T]`` (-1 off runs, 0.. per row), ``n_runs [B])``.
    """
    merged = Runs(selected)
    return merged.run_id, merged.n


class Runs:
    """The maximal runs of ``selected`` (``bool [B, T]``): ``starts`` (first position of each),
    ``run_id`` (-1 off runs, 0.. per row in positional order) and ``n`` (runs per row)."""

    def __init__(self, selected: Tensor):
        self.selected = selected
        self.starts = selected & ~shift_right(selected, False)
        index = self.starts.cumsum(-1)
        self.n = index[:, -1] if index.shape[-1] else index.sum(-1)
        self.run_id = (index - 1).masked_fill_(~selected, -1)


def span_bounds(selected: Tensor, merged: Runs | None = None) -> Tensor:
    """``long [B, S, 2]``: (first, last) position of every merged selected span, padded with -1.

    S is the largest number of spans in a row (at least 1). Spans are in positional order. Only
    contiguous runs are merged, and selections never cover specials, so a span never crosses
    [SEP]. ``merged`` is ``Runs(selected)`` when the caller has it.
    """
    batch, width = selected.shape
    merged = Runs(selected) if merged is None else merged
    s_max = max(int(merged.n.max()) if merged.n.numel() else 0, 1)
    ends = selected & ~shift_left(selected, False)
    positions = torch.arange(width, device=selected.device).expand(batch, width)
    first = torch.full((batch, s_max + 1), -1, dtype=torch.long, device=selected.device)
    last = torch.full((batch, s_max + 1), -1, dtype=torch.long, device=selected.device)
    # positions that are no start/end write into the dropped slot s_max
    first.scatter_(1, torch.where(merged.starts, merged.run_id, s_max), positions)
    last.scatter_(1, torch.where(ends, merged.run_id, s_max), positions)
    return torch.stack((first[:, :s_max], last[:, :s_max]), dim=-1)


def expand_unit_draws(
    unit_ids: Tensor, eligible: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """One uniform draw per unit, copied onto its tokens.

    Returns ``(draws [B, T]`` (per-token copy of its unit's draw; 1.0 off units), ``index [B, T]``,
    ``n_units [B])``.
    """
    index, n_units = unit_index(unit_ids, eligible)
    width = unit_ids.shape[-1]
    per_unit = torch.rand(unit_ids.shape[0], width, generator=generator, device=unit_ids.device)
    draws = per_unit.gather(1, index.clamp_min(0)).masked_fill(index < 0, 1.0)
    return draws, index, n_units


def unit_lengths(index: Tensor) -> Tensor:
    """``long [B, T]``: number of tokens of unit u at column u (units from ``unit_index``)."""
    lengths = torch.zeros_like(index)
    valid = index >= 0
    lengths.scatter_add_(1, index.clamp_min(0), valid.long())
    return lengths
