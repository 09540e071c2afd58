"""Local reordering at word level keeps every word's pieces together and in order (issue 15,
item 8); unit=token keeps today's piece shuffle."""

from __future__ import annotations

import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.corruption.reorder import Reorder
from tests.helpers import compose_config

PAD, CLS, SEP, MASK = 0, 2, 3, 4
TOK = {"vocab_size": 100, "mask_token_id": MASK, "special_token_ids": (PAD, CLS, SEP, MASK)}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pieces_batch(rows: int = 64) -> dict:
    """``[CLS] w0 w1 .. [SEP] v0 .. [SEP] [PAD]``, words of 1-3 pieces; token id = 10 + position
    (so every token is distinct), word_ids numbered across the row, -1 on specials/padding."""
    lengths = [1, 3, 2, 1, 2, 3, 1]  # pieces per word of segment A; segment B: [2, 1, 3]
    words, ids = [-1], [CLS]
    for w, n in enumerate(lengths):
        words += [w] * n
    words += [-1]
    for w, n in enumerate([2, 1, 3]):
        words += [100 + w] * n
    words += [-1, -1]
    t = len(words)
    ids = torch.arange(10, 10 + t).expand(rows, t).clone()
    word_ids = torch.tensor(words).expand(rows, t).clone()
    special = word_ids < 0
    ids[:, 0], ids[:, sum(lengths) + 1], ids[:, -2], ids[:, -1] = CLS, SEP, SEP, PAD
    attention = torch.ones(rows, t, dtype=torch.long)
    attention[:, -1] = 0
    return {"input_ids": ids, "attention_mask": attention, "special_tokens_mask": special.long(),
            "word_ids": word_ids}  # fmt: skip


def word_runs(ids: list[int], words: list[int]) -> list[tuple[int, ...]]:
    runs, current, last = [], [], None
    for token, word in zip(ids, words):
        if word != last and current:
            runs.append(tuple(current))
            current = []
        if word >= 0:
            current.append(token)
        last = word
    if current:
        runs.append(tuple(current))
    return runs


def test_word_level_keeps_every_words_pieces_together():
    batch = pieces_batch()
    out = Reorder(rate=0.9, window=3, **TOK)(batch, gen(0))  # unit=word is the default
    assert out["reordered_mask"].any()
    original = word_runs(batch["input_ids"][0].tolist(), batch["word_ids"][0].tolist())
    for row in range(batch["input_ids"].shape[0]):
        ids, words = out["input_ids"][row].tolist(), out["word_ids"][row].tolist()
        runs = word_runs(ids, words)
        assert sorted(runs) == sorted(original)  # each word intact, pieces in order
        # specials stay, words never cross [SEP], and a word moves at most window-1 words
        assert ids[0] == CLS and ids[14] == SEP and ids[-2] == SEP and ids[-1] == PAD
        assert set(runs[:7]) == set(original[:7])
        for new_index, run in enumerate(runs):
            assert abs(original.index(run) - new_index) <= 2
        # order_labels still name each token's original position
        labels = out["order_labels"][row]
        real = labels >= 0
        assert torch.equal(batch["input_ids"][row][labels[real]], out["input_ids"][row][real])


def test_word_level_order_by_hand():
    batch = pieces_batch(rows=1)
    out = Reorder(rate=0.5, window=3, **TOK)(batch, gen(3))
    g = gen(3)
    t = batch["input_ids"].shape[1]
    u = torch.rand(1, t, generator=g, dtype=torch.float64)[0]
    moved = (torch.rand(1, t, generator=g) < 0.5)[0]
    # word k (0..9 over the row) gets k + 0.5 (+ 3 u_k if moved); words sort within a segment
    keys = [k + 0.5 + (3 * float(u[k]) if moved[k] else 0.0) for k in range(10)]
    original = word_runs(batch["input_ids"][0].tolist(), batch["word_ids"][0].tolist())
    order_a = sorted(range(7), key=lambda k: keys[k])
    order_b = sorted(range(7, 10), key=lambda k: keys[k])
    expected = [original[k] for k in order_a + order_b]
    got = word_runs(out["input_ids"][0].tolist(), out["word_ids"][0].tolist())
    assert got == expected


def test_token_unit_is_todays_piece_shuffle_and_can_split_words():
    batch = pieces_batch(rows=256)
    out = Reorder(rate=0.9, window=3, unit="token", **TOK)(batch, gen(0))
    original = word_runs(batch["input_ids"][0].tolist(), batch["word_ids"][0].tolist())
    split = sum(
        sorted(word_runs(out["input_ids"][r].tolist(), out["word_ids"][r].tolist()))
        != sorted(original)
        for r in range(256)
    )
    assert split > 0  # pieces of a word separated in some rows


def test_preset_default_is_word_level_and_needs_word_ids():
    cfg = compose_config("corruption=reorder")
    assert cfg.corruption.unit == "word" and cfg.corruption.mode == "local"
    batch = pieces_batch(rows=2)
    del batch["word_ids"]
    with pytest.raises(ClozelabError, match="corruption.unit=word"):
        Reorder(**TOK)(batch, gen(0))
    with pytest.raises(ClozelabError, match="corruption.unit"):
        Reorder(unit="phrase", **TOK)
