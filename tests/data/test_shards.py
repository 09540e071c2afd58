"""Shards: round trip, checksums, rotation."""

from __future__ import annotations

import numpy as np
import pytest

from clozelab.data.shards import ShardError, ShardWriter, open_split


def _sentence(ids, entity=-1):
    ids = np.asarray(ids, dtype=np.int32)
    return ids, np.arange(len(ids), dtype=np.int32), np.full(len(ids), entity, dtype=np.int32)


def test_round_trip_and_global_ids(tmp_path):
    writer = ShardWriter(tmp_path, vocab_size=100)
    writer.add_document([_sentence([5, 6, 7]), _sentence([8, 9], entity=0)])
    writer.add_document([_sentence([10], entity=0)])
    summary = writer.close()
    assert summary == {"documents": 2, "sentences": 3, "tokens": 6, "shards": 1}
    (shard,) = open_split(tmp_path)
    assert shard.tokens.dtype == np.uint16
    assert list(shard.tokens) == [5, 6, 7, 8, 9, 10]
    assert list(shard.sentences) == [0, 3, 5, 6]
    assert list(shard.documents) == [0, 2, 3]
    assert list(shard.word_ids) == [0, 1, 2, 3, 4, 5]  # unique across sentences and documents
    assert list(shard.entity_ids) == [-1, -1, -1, 0, 0, 1]  # document-local -> shard-global


def test_rotation(tmp_path):
    writer = ShardWriter(tmp_path, vocab_size=100_000, shard_tokens=10)
    for _ in range(5):
        writer.add_document([_sentence(range(6))])
    assert writer.close()["shards"] == 3
    shards = open_split(tmp_path)
    assert [s.n_documents for s in shards] == [2, 2, 1]
    assert shards[0].tokens.dtype == np.int32


def test_corruption_is_detected(tmp_path):
    writer = ShardWriter(tmp_path, vocab_size=100)
    writer.add_document([_sentence([5, 6, 7, 8])])
    writer.close()
    tokens = tmp_path / "shard-00000" / "tokens.bin"
    data = bytearray(tokens.read_bytes())
    data[0] ^= 0xFF
    tokens.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="checksum"):
        open_split(tmp_path)
    tokens.write_bytes(bytes(data[:-2]))
    with pytest.raises(ShardError, match="truncated"):
        open_split(tmp_path)


def test_incomplete_split_is_refused(tmp_path):
    with pytest.raises(ShardError, match="incomplete"):
        open_split(tmp_path)
