"""Reordering noise with original-order targets (SPECS §13: BART sentence permutation; local token
shuffle as in ``add_permuted_noise`` / Lample et al.'s word shuffle).

* ``mode="local"``: every unit is displaced with probability ``rate`` by a uniform key offset in
  ``[0, window)``; sorting the keys moves a unit at most ``window - 1`` units. Units never cross a
  special token. ``unit="word"`` (default; Lample et al.'s *word* shuffle) moves whole words (the
  runs of a ``word_ids`` value), keeping a word's pieces together and in order; ``unit="token"``
  moves single tokens (subword pieces, which can split a word).
* ``mode="sentence"``: BART's ``permute_sentences`` (SPECS §13): ``ceil(n * rate)`` of the row's
  n sentences (``sentence_ids``) are chosen uniformly at random and take each other's places in a
  uniformly random order (a chosen sentence may land on its own slot, as in BART). Unlike BART,
  segments and [SEP] stay put: chosen sentences only swap with chosen sentences of their segment.
* ``mode="permute"``: ``add_permuted_noise`` (SPECS §13): ``ceil(n * rate)`` of the row's n
  candidate tokens are permuted among themselves (within their segment); ``rate=1`` permutes every
  token (T5's deshuffling objective).

Targets: ``order_labels [B, T]``: the original position of the token now at each position (on every
real non-special position, -100 elsewhere), and ``reordered_mask`` (True where the token moved).
Every per-token tensor of the batch moves with its token.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from clozelab.core.errors import ClozelabError
from clozelab.corruption.base import (
    IGNORE_INDEX,
    Corruption,
    candidates,
    check_choice,
    check_positive_int,
    check_rate,
)
from clozelab.corruption.seq2seq import as_numpy, put, take

MODES = ("local", "sentence", "permute")
UNITS = ("word", "token")  # what mode=local moves


def permutation_order(
    units: np.ndarray, movable: np.ndarray, rate: float, generator: torch.Generator
) -> np.ndarray:
    """``[B, T]`` new -> old positions that permute ``ceil(n * rate)`` of each row's n units among
    themselves (BART's ``permute_sentences``; with one unit per token ``add_permuted_noise``).

    A unit is a maximal run of equal ``units`` ids over ``movable`` positions; every other position
    is a fixed unit of its own, and a fixed position closes a group: chosen units take each other's
    slots within their group only (segments and [SEP] stay put). NumPy, four row sorts.
    """
    b, t = movable.shape
    positions = np.arange(t)
    same = np.zeros_like(movable)
    same[:, 1:] = (units[:, 1:] == units[:, :-1]) & movable[:, 1:] & movable[:, :-1]
    unit = np.cumsum(~same, -1) - 1  # every position's unit, numbered in position order
    rows, cols = np.nonzero(~same)
    unit_start = np.full((b, t), t, dtype=np.int64)
    unit_start[rows, unit[rows, cols]] = cols
    exists = np.zeros((b, t), dtype=bool)  # movable units, by unit index
    exists[rows, unit[rows, cols]] = movable[rows, cols]
    group = np.zeros((b, t), dtype=np.int64)  # a fixed unit opens a group
    group[rows, unit[rows, cols]] = np.cumsum(~movable, -1)[rows, cols]
    keys = as_numpy(torch.rand(2, b, t, generator=generator, dtype=torch.float64))
    count = np.ceil(exists.sum(-1) * rate).astype(np.int64)  # BART: ceil(n * p)
    first = np.argsort(np.where(exists, keys[0], 2.0), -1)[:, : int(count.max()) if b else 0]
    chosen = np.zeros_like(exists)
    put(chosen, first, np.arange(first.shape[1]) < count[:, None])
    # chosen units in (group, random) order take the slots of chosen ones in (group, position)
    by_key = np.argsort(np.where(chosen, group + keys[1], np.inf), -1)
    by_slot = np.argsort(np.where(chosen, group + positions / (t + 1.0), np.inf), -1)
    slot = np.broadcast_to(positions, (b, t)).copy()
    n_chosen = chosen.sum(-1)
    pairs = positions < n_chosen[:, None]
    r = np.nonzero(pairs)[0]
    slot[r, by_key[pairs]] = by_slot[pairs]
    # tokens sort by (their unit's new slot, offset in the unit): slots are unit indices, whose
    # order is position order
    offset = positions - take(unit_start, unit)
    key = take(slot, unit) * t + offset
    return np.argsort(key, -1, kind="stable")


class Reorder(Corruption):
    """Args:
    rate: fraction of tokens (local, each with probability rate) or of sentences (sentence,
        exactly ceil(n * rate) per row, BART) that are moved.
    mode: ``local``, ``sentence`` or ``permute``.
    window: largest displacement + 1 of the local shuffle, in units (Lample et al.: k = 3).
    unit: what ``mode=local`` moves: ``word`` (whole words, reads ``word_ids``) or ``token``.
    special_token_ids: from the tokenizer at run time.
    """

    produces = ("input_ids", "order_labels", "reordered_mask", "corrupted_mask")
    shares_budget = False  # moves tokens whatever an earlier step did (see compose.py)

    def __init__(
        self,
        rate: float = 0.15,
        mode: str = "local",
        window: int = 3,
        unit: str = "word",
        *,
        vocab_size: int,
        mask_token_id: int,
        special_token_ids,
    ) -> None:
        self.mode = check_choice(mode, "corruption.mode", MODES)
        # sentence and token permutation may move every unit (BART's paper run: rate 1)
        full = not isinstance(rate, bool) and rate == 1 and self.mode != "local"
        self.rate = 1.0 if full else check_rate(rate)
        self.window = check_positive_int(window, "corruption.window")
        self.unit = check_choice(unit, "corruption.unit", UNITS)
        self.special_token_ids = tuple(int(i) for i in special_token_ids)

    def _sort_keys(self, batch, eligible: Tensor, generator) -> Tensor:
        """Local shuffle: each moved token's key is displaced by up to ``window`` places."""
        b, t = eligible.shape
        positions = torch.arange(t, device=eligible.device).expand(b, t).to(torch.float64)
        group = (~eligible).long().cumsum(-1).to(torch.float64)  # fixed positions open a group
        big = float(4 * t + 4 + self.window)
        u = torch.rand(b, t, generator=generator, dtype=torch.float64)
        moved = torch.rand(b, t, generator=generator) < self.rate
        if self.unit == "word":
            return self._word_keys(batch, eligible, group, big, u, moved)
        moved = eligible & moved
        offset = torch.where(moved, u * self.window, 0.0)
        # fixed positions keep the smallest key of their group, so they never move
        offset = torch.where(eligible, offset + 0.5, 0.0)
        return group * big + positions + offset

    def _word_keys(self, batch, eligible, group, big, u, moved) -> Tensor:
        """Local shuffle of whole words: word ``k`` of a row (counted from 0) gets the key
        ``k + 0.5`` (+ ``u_k * window`` when moved, from the draws of column ``k``); its tokens
        share it, so the stable sort keeps them together and in order."""
        if "word_ids" not in batch:
            raise ClozelabError(
                "corruption.unit=word: the batch has no word_ids to keep a word's pieces together. "
                "Fix: use batches from clozelab's shards (they carry word_ids), or set "
                "corruption.unit=token."
            )
        words = batch["word_ids"]
        previous = torch.nn.functional.pad(words[:, :-1], (1, 0), value=-1)
        before = torch.nn.functional.pad(eligible[:, :-1], (1, 0), value=False)
        starts = eligible & ((words != previous) | ~before)
        ordinal = (starts.long().cumsum(-1) - 1).clamp_min(0)  # the word of each token
        offset = torch.where(moved, u * self.window, 0.0).gather(1, ordinal)
        key = ordinal.to(torch.float64) + 0.5 + offset
        # fixed positions keep the smallest key of their group, so they never move
        return group * big + torch.where(eligible, key, -1.0)

    def __call__(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> dict:
        # earlier corruptions move with their tokens: only specials and padding stay in place
        unlocked = {k: v for k, v in batch.items() if k != "corrupted_mask"}
        eligible = candidates(unlocked, self.special_token_ids)
        b, t = eligible.shape
        if self.mode == "local":
            order = self._sort_keys(batch, eligible, generator).argsort(dim=-1, stable=True)
        else:  # new -> old
            if self.mode == "permute":  # every token is its own unit
                units = np.broadcast_to(np.arange(t), (b, t))
            elif "sentence_ids" not in batch:
                raise KeyError("sentence reordering needs batch['sentence_ids']")
            else:
                units = as_numpy(batch["sentence_ids"])
            order = torch.from_numpy(
                permutation_order(units, as_numpy(eligible), self.rate, generator)
            )
        out = dict(batch)
        for key, value in batch.items():
            if isinstance(value, Tensor) and value.shape == (b, t):
                out[key] = value.gather(1, order)
        positions = torch.arange(t, device=eligible.device).expand(b, t)
        moved_eligible = eligible.gather(1, order)
        out["order_labels"] = order.masked_fill(~moved_eligible, IGNORE_INDEX)
        reordered = moved_eligible & (order != positions)
        out["reordered_mask"] = reordered
        previous = out.get("corrupted_mask")
        out["corrupted_mask"] = reordered if previous is None else previous.bool() | reordered
        if "span_bounds" in batch:
            from clozelab.corruption.units import span_bounds

            out["span_bounds"] = span_bounds(out["corrupted_mask"])
        return out

    def __repr__(self) -> str:
        return (
            f"Reorder(rate={self.rate}, mode={self.mode!r}, window={self.window}, "
            f"unit={self.unit!r})"
        )
