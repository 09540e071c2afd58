"""The vectorised SpanBERT and ALBERT selections equal their sequential reference loops (SPECS §7,
§8) fed with the same draws, and phrase matching gives the same units with and without the key
bitmap of big tables."""

from __future__ import annotations

import math

import pytest
import torch
from corruption.test_schemes import TOK, make_batch

from clozelab.corruption.base import ascending, candidates
from clozelab.corruption.masking import exact_budget
from clozelab.corruption.phrases import PhraseTable
from clozelab.corruption.span import NgramMasking, SpanMasking, sample_lengths


def words_of(batch, eligible, row):
    """Per row: list of words (token positions) and the block index of each word."""
    words, blocks, block = [], [], 0
    prev_word, prev_eligible = None, False
    for p in range(eligible.shape[1]):
        if not eligible[row, p]:
            if prev_eligible:
                block += 1
            prev_eligible = False
            continue
        w = int(batch["word_ids"][row, p])
        if not prev_eligible or w != prev_word:
            words.append([])
            blocks.append(block)
        words[-1].append(p)
        prev_word, prev_eligible = w, True
    return words, blocks


def spanbert_reference(words, blocks, anchors, lengths, k):
    """SpanBERT's loop: anchor (already masked: redraw), snap to its word, add words until the
    drawn length, the block end or the budget (which may cut a word)."""
    word_of = {p: i for i, w in enumerate(words) for p in w}
    masked: list[int] = []
    for anchor, length in zip(anchors, lengths):
        if len(masked) >= k:
            break
        if anchor not in word_of or anchor in masked:
            continue
        first = word_of[anchor]
        last = first
        while (
            last + 1 < len(words)
            and last + 1 - first < length
            and blocks[last + 1] == blocks[first]
        ):
            last += 1
        for w in range(first, last + 1):
            for p in words[w]:
                if p not in masked and len(masked) < k:
                    masked.append(p)
    return sorted(masked)


def albert_reference(words, blocks, order, draws, k):
    """ALBERT's loop: shuffled word starts, n drawn, shorter n when the n-gram overflows the budget,
    skipped when it overlaps a chosen one; n-grams stop at the block end."""
    covered: set[int] = set()
    used = 0
    for w, n in zip(order, draws):
        if used >= k:
            break
        for m in range(n, 0, -1):
            gram = [v for v in range(w, min(w + m, len(words))) if blocks[v] == blocks[w]]
            size = sum(len(words[v]) for v in gram)
            if used + size <= k:
                break
        else:
            continue
        if covered & set(gram):
            continue
        covered |= set(gram)
        used += size
    return sorted(p for v in covered for p in words[v])


@pytest.mark.parametrize("seed, pad_from, rate", [(0, None, 0.15), (1, 70, 0.15), (2, 100, 0.4)])
def test_span_selection_equals_the_sequential_loop(seed, pad_from, rate):
    batch = make_batch(b=24, pad_from=pad_from, seed=seed)
    scheme = SpanMasking(rate=rate, replace_distribution="uniform", **TOK)
    eligible = candidates(batch, scheme.special_token_ids)
    selected, _ = scheme.select(batch, eligible, torch.Generator().manual_seed(seed))
    # the same draws, in the same order
    g = torch.Generator().manual_seed(seed)
    b, t = eligible.shape
    k = torch.ceil(eligible.sum(-1).double() * rate).long()
    m_full = min(t, max(1, 2 * int(k.max())))
    keys = torch.rand(b, t, generator=g).masked_fill(~eligible, math.inf)
    anchors = ascending(keys, m_full)
    lengths = sample_lengths(scheme.pmf, 1, (b, m_full), g)
    for row in range(b):
        words, blocks = words_of(batch, eligible, row)
        expected = spanbert_reference(
            words, blocks, anchors[row].tolist(), lengths[row].tolist(), int(k[row])
        )
        assert selected[row].nonzero().flatten().tolist() == expected, row


@pytest.mark.parametrize("seed, pad_from, max_n", [(0, None, 3), (1, 70, 3), (2, 100, 5)])
def test_ngram_selection_equals_the_sequential_loop(seed, pad_from, max_n):
    batch = make_batch(b=24, pad_from=pad_from, seed=seed)
    scheme = NgramMasking(max_n=max_n, max_predictions=None, rate=0.2, **TOK)
    eligible = candidates(batch, scheme.special_token_ids)
    selected, _ = scheme.select(batch, eligible, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    b, t = eligible.shape
    k = exact_budget(batch, eligible, 0.2, None)
    n_words = [len(words_of(batch, eligible, row)[0]) for row in range(b)]
    live = torch.arange(t) < torch.tensor(n_words).unsqueeze(-1)
    order = ascending(torch.rand(b, t, generator=g).masked_fill(~live, 2.0), max(n_words))
    draws = sample_lengths(scheme.pmf, 1, (b, max(n_words)), g)
    for row in range(b):
        words, blocks = words_of(batch, eligible, row)
        expected = albert_reference(
            words, blocks, order[row, : n_words[row]].tolist(), draws[row].tolist(), int(k[row])
        )
        assert selected[row].nonzero().flatten().tolist() == expected, row


def test_phrase_key_bitmap_of_big_tables_changes_nothing():
    batch = make_batch(b=8, single_piece=True, seed=3)
    ids = batch["input_ids"]
    spots = [(0, 5, 2), (1, 9, 3), (2, 20, 4)]  # (row, first word, words): inside one block
    real = [[[int(ids[r, p])] for p in range(s, s + n)] for r, s, n in spots]
    g = torch.Generator().manual_seed(0)
    noise = [[[int(x)] for x in torch.randint(5, 500, (n,), generator=g)] for n in [2, 3] * 2500]
    table = PhraseTable(real + noise)
    assert table.filter is not None  # > 4096 keys
    eligible = ~batch["special_tokens_mask"].bool()
    with_filter = table.phrase_ids(batch, eligible)
    table.filter = None
    assert torch.equal(with_filter, table.phrase_ids(batch, eligible))
    for r, s, n in spots:
        assert (with_filter[r, s : s + n] == with_filter[r, s]).all() and with_filter[r, s] >= 0
