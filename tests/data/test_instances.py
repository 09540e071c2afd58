"""Instance builders: BERT segment pairs (SPECS.md §6) and RoBERTa packing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clozelab.data import instances as inst
from clozelab.data.dataset import InstanceDataset
from clozelab.data.shards import ShardWriter, open_split

CLS, SEP = 2, 3


def make_shards(tmp_path, documents, shard_tokens=10**9):
    """documents: list of lists of sentence lengths; token ids encode (doc, sentence)."""
    writer = ShardWriter(tmp_path / "split", vocab_size=1000, shard_tokens=shard_tokens)
    for d, lengths in enumerate(documents):
        sentences = []
        for s, n in enumerate(lengths):
            ids = np.full(n, 10 + (d * 7 + s) % 900, dtype=np.int32)
            sentences.append((ids, np.arange(n, dtype=np.int32), np.full(n, -1, dtype=np.int32)))
        writer.add_document(sentences)
    writer.close()
    return open_split(tmp_path / "split")


def doc_of(shard, token):
    sentence = np.searchsorted(shard.sentences, token, side="right") - 1
    return np.searchsorted(shard.documents, sentence, side="right") - 1


def naive_truncation(len_a, len_b, max_tokens):
    ra = rb = 0
    while len_a + len_b > max_tokens:
        if len_a > len_b:
            len_a, ra = len_a - 1, ra + 1
        else:
            len_b, rb = len_b - 1, rb + 1
    return ra, rb


@given(st.integers(1, 300), st.integers(1, 300), st.integers(2, 300))
def test_truncation_counts_match_berts_loop(len_a, len_b, max_tokens):
    assert inst.truncation_counts(len_a, len_b, max_tokens) == naive_truncation(
        len_a, len_b, max_tokens
    )


def test_truncation_tie_goes_to_b():
    assert inst.truncation_counts(6, 6, 11) == (0, 1)
    assert inst.truncation_counts(10, 10, 17) == (1, 2)


@pytest.fixture
def corpus_shards(tmp_path):
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(3, 40, size=rng.integers(1, 25))) for _ in range(300)]
    return make_shards(tmp_path, docs, shard_tokens=20_000)


def test_segment_pairs_invariants(corpus_shards):
    rng = np.random.default_rng(1)
    table = inst.segment_pairs(corpus_shards, 128, 0.1, rng)
    assert len(corpus_shards) > 1 and len(table) > 300
    len_a = table[:, inst.A_END] - table[:, inst.A_START]
    len_b = table[:, inst.B_END] - table[:, inst.B_START]
    assert (len_a >= 1).all() and (len_b >= 1).all()
    assert (len_a + len_b + 3 <= 128).all()
    for row in table[table[:, inst.LABEL] == 0]:
        # is-next: B follows A inside the same document of the same shard
        shard = corpus_shards[row[inst.A_SHARD]]
        assert row[inst.B_SHARD] == row[inst.A_SHARD]
        assert row[inst.B_START] >= row[inst.A_END]
        assert doc_of(shard, row[inst.A_START]) == doc_of(shard, row[inst.B_END] - 1)
    # P(random) = 0.5 P(chunk >= 2) + P(chunk == 1) > 0.5
    assert 0.5 < table[:, inst.LABEL].mean() < 0.75


def test_segment_pairs_random_b_comes_from_another_document(corpus_shards):
    table = inst.segment_pairs(corpus_shards, 128, 0.0, np.random.default_rng(3))
    rows = table[table[:, inst.LABEL] == 1]
    same = [
        row[inst.A_SHARD] == row[inst.B_SHARD]
        and doc_of(corpus_shards[row[inst.A_SHARD]], row[inst.A_START])
        == doc_of(corpus_shards[row[inst.B_SHARD]], row[inst.B_START])
        for row in rows
    ]
    assert np.mean(same) < 0.01


def test_short_seq_prob_shortens_targets(corpus_shards):
    full = inst.segment_pairs(corpus_shards, 128, 0.0, np.random.default_rng(4))
    short = inst.segment_pairs(corpus_shards, 128, 1.0, np.random.default_rng(4))
    length = lambda t: (t[:, 2] - t[:, 1] + t[:, 5] - t[:, 4]).mean()  # noqa: E731
    assert length(short) < 0.8 * length(full)
    assert len(short) > len(full)


def test_segment_pairs_are_seeded(corpus_shards):
    a = inst.segment_pairs(corpus_shards, 64, 0.1, np.random.default_rng(5))
    b = inst.segment_pairs(corpus_shards, 64, 0.1, np.random.default_rng(5))
    c = inst.segment_pairs(corpus_shards, 64, 0.1, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_single_sentence_documents_always_get_random_next(tmp_path):
    shards = make_shards(tmp_path, [[20]] * 50)
    table = inst.segment_pairs(shards, 64, 0.0, np.random.default_rng(0))
    assert len(table) == 50 and (table[:, inst.LABEL] == 1).all()


@pytest.mark.parametrize("kind", ["full_sentences", "doc_sentences"])
def test_packing_fits_and_covers_every_token_once(corpus_shards, kind):
    table = inst.packed(corpus_shards, 128, cross_documents=kind == "full_sentences")
    covered = {i: np.zeros(len(s.tokens), dtype=int) for i, s in enumerate(corpus_shards)}
    for shard_i, start, end in table:
        covered[shard_i][start:end] += 1
        shard = corpus_shards[shard_i]
        docs = doc_of(shard, np.arange(start, end))
        separators = len(np.unique(docs)) - 1
        assert end - start + separators <= 126
        if kind == "doc_sentences":
            assert separators == 0
    assert all((c == 1).all() for c in covered.values())


def test_long_sentences_are_split(tmp_path):
    shards = make_shards(tmp_path, [[300, 5]])
    table = inst.packed(shards, 128, cross_documents=False)
    assert ((table[:, 2] - table[:, 1]) <= 126).all()
    assert table[:, 1].min() == 0 and table[:, 2].max() == 305


def test_pair_item_layout(corpus_shards):
    table = inst.segment_pairs(corpus_shards, 64, 0.1, np.random.default_rng(0))
    dataset = InstanceDataset(corpus_shards, table, "segment_pair", CLS, SEP)
    for i in range(20):
        item = dataset[i]
        ids, types = item["input_ids"], item["token_type_ids"]
        row = table[i]
        la, lb = row[2] - row[1], row[5] - row[4]
        assert len(ids) == la + lb + 3 <= 64
        assert ids[0] == CLS and ids[la + 1] == SEP and ids[-1] == SEP
        assert (types[: la + 2] == 0).all() and (types[la + 2 :] == 1).all()
        assert item["special_tokens_mask"].sum() == 3
        assert (item["word_ids"][item["special_tokens_mask"] == 1] == -1).all()
        assert item["next_sentence_label"] == row[inst.LABEL]


def test_full_sentences_insert_separator_between_documents(tmp_path):
    shards = make_shards(tmp_path, [[5, 5], [4], [6]])
    table = inst.packed(shards, 64, cross_documents=True)
    assert len(table) == 1
    item = InstanceDataset(shards, table, "full_sentences", CLS, SEP)[0]
    assert len(item["input_ids"]) == 20 + 2 + 2
    assert list(np.nonzero(item["input_ids"] == SEP)[0]) == [11, 16, 23]


def _sentence_index(shard, start, end):
    """Index of the sentence [start, end) covers exactly, or None."""
    i = int(np.searchsorted(shard.sentences, start, side="right") - 1)
    whole = shard.sentences[i] == start and shard.sentences[i + 1] == end
    return i if whole else None


def test_sentence_pairs_are_single_natural_sentences(corpus_shards):
    """RoBERTa SENTENCE-PAIR: A is one sentence; B the next one (label 0) or one sentence of
    another document (label 1); each sentence starts a pair or follows as next exactly once."""
    table = inst.build("sentence_pair", corpus_shards, 128, 0.1, np.random.default_rng(2))
    used = {i: np.zeros(len(s.sentences) - 1, dtype=int) for i, s in enumerate(corpus_shards)}
    for row in table:
        shard_a, shard_b = corpus_shards[row[inst.A_SHARD]], corpus_shards[row[inst.B_SHARD]]
        a = _sentence_index(shard_a, row[inst.A_START], row[inst.A_END])
        b = _sentence_index(shard_b, row[inst.B_START], row[inst.B_END])
        assert a is not None and b is not None  # no truncation at this length: whole sentences
        used[row[inst.A_SHARD]][a] += 1
        same_doc = row[inst.A_SHARD] == row[inst.B_SHARD] and doc_of(
            shard_a, row[inst.A_START]
        ) == doc_of(shard_b, row[inst.B_START])
        if row[inst.LABEL] == 0:
            assert row[inst.B_SHARD] == row[inst.A_SHARD] and b == a + 1 and same_doc
            used[row[inst.A_SHARD]][b] += 1
        else:
            assert not same_doc
    assert all((u == 1).all() for u in used.values())
    assert 0.5 < table[:, inst.LABEL].mean() < 0.75
    lengths = table[:, inst.A_END] - table[:, inst.A_START] + table[:, inst.B_END] - table[:, 4]
    segments = inst.segment_pairs(corpus_shards, 128, 0.1, np.random.default_rng(2))
    assert lengths.mean() < 0.6 * (segments[:, 2] - segments[:, 1] + segments[:, 5]
                                   - segments[:, 4]).mean()  # fmt: skip


def test_sentence_pairs_truncate_and_are_seeded(tmp_path):
    shards = make_shards(tmp_path, [[50, 60, 10], [70], [40, 45]])
    table = inst.sentence_pairs(shards, 64, np.random.default_rng(0))
    len_a = table[:, inst.A_END] - table[:, inst.A_START]
    len_b = table[:, inst.B_END] - table[:, inst.B_START]
    assert (len_a >= 1).all() and (len_b >= 1).all() and (len_a + len_b + 3 <= 64).all()
    assert np.array_equal(table, inst.sentence_pairs(shards, 64, np.random.default_rng(0)))
    item = InstanceDataset(shards, table, "sentence_pair", CLS, SEP)[0]
    assert item["next_sentence_label"] == table[0, inst.LABEL]
    assert item["special_tokens_mask"].sum() == 3
