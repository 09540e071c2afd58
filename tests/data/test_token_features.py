"""Word-aware labels of ERNIE 2.0 (SPECS.md §20): capitalisation from the cased text, token-document
relation from the shards."""

from __future__ import annotations

import numpy as np

from clozelab.core.batch import IGNORE_INDEX
from clozelab.data.dataset import InstanceDataset
from clozelab.data.document import Document
from clozelab.data.instances import packed
from clozelab.data.preprocess import encode_document
from clozelab.data.shards import ShardWriter, open_split
from clozelab.data.token_features import case_labels
from clozelab.data.tokenizer import train_wordpiece


def test_case_flags_come_from_the_cased_text_with_an_uncased_vocab():
    tok = train_wordpiece(["alan turing was born in london ."] * 30, vocab_size=120)
    assert tok.lowercase
    doc = Document("d", "Alan Turing was born in LONDON.\nin Londonderry.")
    (ids, words, _, phrases, flags), (_, words2, _, _, flags2) = encode_document(
        doc, tok, case=True
    )
    assert phrases is None
    assert tok.hf.decode(ids.tolist()) == "alan turing was born in london."  # lowercased input
    labels = case_labels(words.astype(np.int64), flags)
    first = {tok.hf.decode([int(i)]): int(v) for i, v in zip(ids, labels) if v != IGNORE_INDEX}
    assert first == {"alan": 1, "turing": 1, "was": 0, "born": 0, "in": 0, "london": 1, ".": 0}
    labels2 = case_labels(words2.astype(np.int64), flags2)
    assert labels2[0] == 0 and labels2[1] == 1  # "in", then the first piece of "Londonderry"
    assert (labels2[2:-1] == IGNORE_INDEX).all()  # its other pieces carry no label


def test_token_document_labels_match_a_brute_force_count(tmp_path):
    rng = np.random.default_rng(0)
    writer = ShardWriter(tmp_path / "split", vocab_size=1000)
    for _ in range(12):
        sentences = [rng.integers(10, 60, rng.integers(3, 12)).astype(np.int32)
                     for _ in range(rng.integers(2, 9))]  # fmt: skip
        writer.add_document([(s, np.arange(len(s), dtype=np.int32), np.full(len(s), -1))
                             for s in sentences])  # fmt: skip
    writer.close()
    shards = open_split(tmp_path / "split")
    (shard,) = shards
    table = packed(shards, 24, cross_documents=False)
    data = InstanceDataset(shards, table, "doc_sentences", 2, 3, ("token_document_labels",))
    tokens = np.asarray(shard.tokens)
    doc_starts = np.asarray(shard.sentences)[np.asarray(shard.documents)]
    positive = 0
    for index, (_, start, end) in enumerate(table):
        labels = data[index]["token_document_labels"]
        assert labels[0] == labels[-1] == IGNORE_INDEX  # [CLS], [SEP]
        doc = np.searchsorted(doc_starts, start, side="right") - 1
        outside = np.concatenate(
            [tokens[doc_starts[doc] : start], tokens[end : doc_starts[doc + 1]]]
        )
        expected = np.isin(tokens[start:end], outside).astype(np.int64)
        assert np.array_equal(labels[1:-1], expected)
        positive += int(expected.sum())
    assert 0 < positive < sum(int(e - s) for _, s, e in table)  # both classes occur
