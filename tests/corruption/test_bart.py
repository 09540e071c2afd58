"""BART noising (SPECS §13): Poisson spans, mask share, deletion, rotation, permutation."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.corruption.bart import BartNoising, poisson_pmf, span_lengths
from clozelab.corruption.span import length_cdf

from .s2s_helpers import CLS, MASK, SEP, TOK, gen, originals, packed_batch, sources, targets


def bart(**kwargs):
    settings = {"permute_sentences": 0.0, **kwargs}
    return BartNoising(**settings, **TOK)


def test_poisson_pmf_is_truncated_where_fairseq_stops():
    pmf = poisson_pmf(3.0)
    assert len(pmf) == 18  # k <= 17: p(17) is the first < 1e-7
    assert math.isclose(float(pmf.sum()), 1.0)
    assert math.isclose(float(pmf[0]), math.exp(-3), rel_tol=1e-6)
    assert len(poisson_pmf(3.5)) > 18


def test_span_lengths_sum_exactly_to_the_budget_and_have_poisson_mean():
    num = torch.randint(1, 200, (512,), generator=gen(0)).numpy()
    lengths = torch.from_numpy(span_lengths(num, length_cdf(poisson_pmf(3.0)).numpy(), gen(1)))
    used = lengths >= 0
    assert torch.equal(lengths.clamp_min(0).sum(-1), torch.from_numpy(num))
    # all but each row's last (cut) draw are plain Poisson(3) draws
    last = used.long().cumsum(-1) == used.sum(-1, keepdim=True)
    plain = lengths[used & ~last].double()
    assert abs(float(plain.mean()) - 3.0) < 0.05
    assert abs(float((plain == 0).double().mean()) - math.exp(-3)) < 0.01


def test_infilling_matches_the_spec_table_and_keeps_specials():
    # SPECS §13 (sim, mask 0.3, n = 510, lambda 3): output / input ~ 0.817, ~42 <mask> slots, of
    # which mask_random = 10% hold a random id
    batch = packed_batch(b=256, t=512, ragged=False, piece_prob=0.0, seed=2)
    out = bart()(batch, gen(2))
    src, orig = sources(out), originals(batch)
    ratio = sum(len(s) for s in src) / sum(len(o) for o in orig)
    masks = sum(s.count(MASK) for s in src) / len(src)
    assert abs(ratio - 0.817) < 0.01
    assert abs(masks - 0.9 * 42) < 1.5
    assert targets(out) == orig  # target = the original row (BART)
    for s in src:
        assert s[0] == CLS and s[-1] == SEP and s.count(SEP) == 1
    assert (out["decoder_input_ids"][:, 0] == SEP).all()  # BART's decoder starts with eos


def test_token_masking_mask_share_and_alignment():
    batch = packed_batch(b=256, t=128, seed=3)
    out = bart(mask_length="subword")(batch, gen(3))
    n_masked = n_random = n_cand = 0
    for s, o in zip(sources(out), originals(batch)):
        assert len(s) == len(o)  # one token per span: nothing deleted, nothing inserted
        changed = [i for i, (a, b) in enumerate(zip(s, o)) if a != b]
        n_cand += len(o) - 2
        assert len(changed) <= math.ceil((len(o) - 2) * 0.3)
        n_masked += sum(s[i] == MASK for i in changed)
        n_random += sum(s[i] != MASK for i in changed)
        assert s[0] == CLS and s[-1] == SEP
    share = (n_masked + n_random) / n_cand
    assert 0.29 < share <= 0.31
    assert abs(n_random / (n_masked + n_random) - 0.1) < 0.015


def test_token_deletion_removes_exactly_the_budget():
    batch = packed_batch(b=64, t=100, seed=4)
    out = bart(mask_length="subword", replace_length=0)(batch, gen(4))
    for s, o in zip(sources(out), originals(batch)):
        assert len(o) - len(s) == math.ceil((len(o) - 2) * 0.3)
        it = iter(o)
        assert all(tok in it for tok in s)  # an in-order subsequence


def test_whole_word_spans_and_replace_length_minus_one():
    batch = packed_batch(b=64, t=100, seed=5, piece_prob=0.5)
    out = bart(mask_length="word", replace_length=-1, mask_random=0.0)(batch, gen(5))
    for row, (s, o) in enumerate(zip(sources(out), originals(batch))):
        assert len(s) == len(o)
        words = batch["word_ids"][row][: len(o)].tolist()
        masked_words = {w for w, tok in zip(words, s) if tok == MASK}
        # whole words: every piece of a masked word is masked
        assert all(tok == MASK for w, tok in zip(words, s) if w in masked_words)
        starts = sum(1 for i, w in enumerate(words) if w >= 0 and (i == 0 or words[i - 1] != w))
        assert len(masked_words) == math.ceil(starts * 0.3)


def test_rotation_is_a_rotation_and_unchanged_rows_are_rare():
    batch = packed_batch(b=400, t=30, ragged=False, seed=6)
    out = bart(mask=0.0, rotate=1.0)(batch, gen(6))
    same = 0
    for s, o in zip(sources(out), originals(batch)):
        assert s[0] == CLS and s[-1] == SEP
        body, inner = s[1:-1], o[1:-1]
        k = next(i for i in range(len(inner)) if inner[i:] + inner[:i] == body)
        same += k == 0
    assert abs(same / 400 - 2 / 29) < 0.04  # offsets 1 and n-1 are identities


def test_sentence_permutation_moves_whole_sentences():
    batch = packed_batch(b=64, t=90, ragged=False, seed=7)
    out = BartNoising(mask=0.0, **TOK)(batch, gen(7))  # permute_sentences=1.0 by default
    moved = 0
    for row, (s, o) in enumerate(zip(sources(out), originals(batch))):
        assert Counter(s) == Counter(o) and s[0] == CLS and s[-1] == SEP
        sentence = batch["sentence_ids"][row].tolist()
        chunks = {tuple(t for t, j in zip(o, sentence) if j == i) for i in set(sentence) - {-1}}
        moved += s != o
        body = s[1:-1]
        assert all(any(body[j : j + len(c)] == list(c) for j in range(len(body))) for c in chunks)
    assert moved > 50


def test_insert_and_bad_config():
    batch = packed_batch(b=32, t=60, seed=8)
    c = bart(mask=0.0, insert=0.1)
    out = c(batch, gen(8))
    for s, o in zip(sources(out), originals(batch)):
        assert len(s) - len(o) == math.ceil((len(o) - 2) * 0.1)
    assert c.output_length(60, 2) == 60 + 6
    with pytest.raises(ClozelabError, match="replace_length"):
        bart(replace_length=2)
    with pytest.raises(ClozelabError, match="mask_length"):
        bart(mask_length="span-geometric")
    with pytest.raises(ClozelabError, match="sentence_ids"):
        no_sentences = {k: v for k, v in batch.items() if k != "sentence_ids"}
        BartNoising(**TOK)(no_sentences, gen(0))
