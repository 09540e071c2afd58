"""ERNIE 2.0 structure rows (SPECS.md §20): sentence distance (3-way) and sentence reordering
over the sum of k! permutations of k <= m segments."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from clozelab.core.batch import IGNORE_INDEX
from clozelab.data import instances as inst
from clozelab.data import structure as st
from clozelab.data.dataset import InstanceDataset
from clozelab.data.shards import ShardWriter, open_split

CLS, SEP = 2, 3


def make_shards(tmp_path, documents):
    """documents: lists of sentence lengths; every token id is unique (its shard offset + 10),
    so a row's tokens name the positions they came from."""
    writer = ShardWriter(tmp_path / "split", vocab_size=100_000)
    offset = 0
    for lengths in documents:
        sentences = []
        for n in lengths:
            ids = np.arange(offset, offset + n, dtype=np.int32) + 10
            offset += n
            sentences.append((ids, np.arange(n, dtype=np.int32), np.full(n, -1, np.int32)))
        writer.add_document(sentences)
    writer.close()
    return open_split(tmp_path / "split")


def sentence_of(shard, token):
    return int(np.searchsorted(shard.sentences, token, side="right") - 1)


def doc_of(shard, token):
    return int(np.searchsorted(shard.documents, sentence_of(shard, token), side="right") - 1)


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    return make_shards(
        tmp_path, [list(rng.integers(3, 15, rng.integers(2, 14))) for _ in range(200)]
    )


def test_permutation_classes_count_and_round_trip():
    assert [st.permutation_classes(m) for m in (1, 2, 3, 4)] == [1, 3, 9, 33]
    seen = set()
    for k in range(1, 5):
        for order in itertools.permutations(range(k)):
            label = st.permutation_class(order)
            assert st.permutation_of(label) == order
            seen.add(label)
    assert seen == set(range(33))


def test_distance_rows_follow_their_labels(shards):
    table = st.structure_rows(shards, 64, 0.1, np.random.default_rng(1), reorder_share=0.0)
    (shard,) = shards
    assert len(table) > 100 and (table[:, inst.KIND] != st.REORDERED).all()
    for row in table:
        a0, a1, b0, b1 = (int(row[c]) for c in (inst.A_START, inst.A_END, inst.B_START, inst.B_END))
        assert a1 > a0 and b1 > b0 and (a1 - a0) + (b1 - b0) <= 64 - 3
        label = int(row[inst.LABEL])
        assert label == int(row[inst.KIND])
        same = doc_of(shard, a0) == doc_of(shard, b0)
        if label == st.RANDOM_DOCUMENT:
            assert not same
            continue
        assert same
        gap_after = sentence_of(shard, b0) - sentence_of(shard, a1 - 1)  # sentences from A to B
        gap_before = sentence_of(shard, a0) - sentence_of(shard, b1 - 1)
        if label == st.ADJACENT:  # B starts where A ends, at a sentence boundary
            assert b0 == a1 and gap_after == 1 and b0 in set(np.asarray(shard.sentences))
        else:  # at least one whole sentence between them
            assert gap_after >= 2 or gap_before >= 2
    shares = np.bincount(table[:, inst.LABEL], minlength=3) / len(table)
    assert np.all(np.abs(shares - 1 / 3) < 0.08), shares  # the draw is uniform over the labels


def test_reordered_rows_cut_and_label_within_bounds(shards):
    table = st.structure_rows(shards, 64, 0.1, np.random.default_rng(2), reorder_share=1.0,
                              max_segments=4)  # fmt: skip
    (shard,) = shards
    assert (table[:, inst.KIND] == st.REORDERED).all()
    ks = []
    for row in table:
        a0, a1 = int(row[inst.A_START]), int(row[inst.A_END])
        cuts = [int(c) for c in row[st.CUTS :] if c >= 0]
        assert a1 - a0 <= 64 - 2 and doc_of(shard, a0) == doc_of(shard, a1 - 1)
        assert cuts == sorted(set(cuts)) and all(a0 < c < a1 for c in cuts)
        k = len(cuts) + 1
        assert len(st.permutation_of(int(row[inst.LABEL]))) == k <= 4
        ks.append(k)
    counts = np.bincount(ks, minlength=5)[1:]
    assert np.all(np.abs(counts / len(ks) - 0.25) < 0.08), counts  # k uniform in [1, m]


def test_reordered_item_is_the_paragraph_shuffled(shards):
    table = st.structure_rows(shards, 64, 0.0, np.random.default_rng(3), reorder_share=0.5)
    data = InstanceDataset(shards, table, "structure", CLS, SEP)
    checked = {st.REORDERED: 0, st.ADJACENT: 0}
    for index, row in enumerate(table):
        item = data[index]
        a0, a1 = int(row[inst.A_START]), int(row[inst.A_END])
        if row[inst.KIND] != st.REORDERED:
            assert item["permutation_label"] == IGNORE_INDEX
            assert item["sentence_distance_label"] == row[inst.LABEL]
            checked[st.ADJACENT] += 1
            continue
        assert item["sentence_distance_label"] == IGNORE_INDEX
        assert item["permutation_label"] == row[inst.LABEL]
        bounds = [a0, *(int(c) for c in row[st.CUTS :] if c >= 0), a1]
        pieces = [np.arange(bounds[j], bounds[j + 1]) + 10 for j in range(len(bounds) - 1)]
        order = st.permutation_of(int(row[inst.LABEL]))
        expected = np.concatenate([[CLS], *(pieces[j] for j in order), [SEP]])
        assert np.array_equal(item["input_ids"], expected)
        assert (item["token_type_ids"] == 0).all() and item["special_tokens_mask"].sum() == 2
        checked[st.REORDERED] += 1
    assert min(checked.values()) > 20
    assert math.isclose(checked[st.REORDERED] / len(table), 0.5, abs_tol=0.1)
