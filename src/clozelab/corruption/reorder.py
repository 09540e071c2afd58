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

import math
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
    choose_k,
)
from clozelab.errors import ClozelabError

MODES = ("local", "sentence", "permute")
UNITS = ("word", "token")  # what mode=local moves


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
        b, t = eligible.shape
        positions = torch.arange(t, device=eligible.device).expand(b, t).to(torch.float64)
        group = (~eligible).long().cumsum(-1).to(torch.float64)  # fixed positions open a group
        big = float(4 * t + 4 + self.window)
        if self.mode == "local":
            u = torch.rand(b, t, generator=generator, dtype=torch.float64)
            moved = torch.rand(b, t, generator=generator) < self.rate
            if self.unit == "word":
                return self._word_keys(batch, eligible, group, big, u, moved)
            moved = eligible & moved
            offset = torch.where(moved, u * self.window, 0.0)
            # fixed positions keep the smallest key of their group, so they never move
            offset = torch.where(eligible, offset + 0.5, 0.0)
            return group * big + positions + offset
        if self.mode == "permute":  # every token is its own "sentence"
            sent = positions.long().masked_fill(~eligible, -1)
        elif "sentence_ids" not in batch:
            raise KeyError("sentence reordering needs batch['sentence_ids']")
        else:
            sent = batch["sentence_ids"].masked_fill(~eligible, -1)
        s_col = sent.clamp_min(0)
        # per sentence: its segment group, first position, chosen flag, random key
        first = torch.full((b, t), math.inf, dtype=torch.float64).scatter_reduce(
            1, s_col, positions.masked_fill(~eligible, math.inf), "amin"
        )
        s_group = torch.full((b, t), -1.0, dtype=torch.float64).scatter_reduce(
            1, s_col, group.masked_fill(~eligible, -1.0), "amax"
        )
        exists = torch.isfinite(first)
        n_sentences = exists.sum(-1).to(torch.float64)
        count = torch.ceil(n_sentences * self.rate).to(torch.long)  # BART: ceil(n * p)
        chosen = choose_k(torch.rand(b, t, generator=generator), exists, count)
        key = torch.rand(b, t, generator=generator, dtype=torch.float64)
        # chosen sentences in (group, random) order take the slots of chosen ones in (group, first)
        inf = torch.tensor(math.inf, dtype=torch.float64)
        by_key = torch.where(chosen, s_group * 2 + key, inf).argsort(-1)
        by_slot = torch.where(chosen, s_group * big + first, inf).argsort(-1)
        new_first = first.clone().scatter_(1, by_key, first.gather(1, by_slot))
        new_first = torch.where(chosen, new_first, first)  # the tail pairs non-chosen: undone
        token_slot = new_first.gather(1, s_col)
        # tokens sort by (group, their sentence's new slot, position); fixed positions first
        inner = torch.where(eligible, token_slot * big + positions + 1.0, -1.0)
        return group * big * big + inner

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
        order = self._sort_keys(batch, eligible, generator).argsort(
            dim=-1, stable=True
        )  # new -> old
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
