"""Preprocessing: cache reuse, rebuild of a corrupt cache, parallel == serial, entity ids."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from omegaconf import OmegaConf

from clozelab.core.errors import ClozelabError
from clozelab.data.document import Document
from clozelab.data.preprocess import encode_document, prepare
from clozelab.data.shards import open_split
from clozelab.data.tokenizer import train_wordpiece


def _cfgs(corpus, workers=0, fraction=0.1):
    data = OmegaConf.create({"corpus": str(corpus), "validation_fraction": fraction,
                             "preprocessing_workers": workers, "max_documents": None})  # fmt: skip
    return data, OmegaConf.create({"path": None, "vocab_size": 300, "lowercase": True})


def test_second_run_reuses_the_cache_and_says_so(tmp_path, text_corpus, caplog):
    data, tok = _cfgs(text_corpus)
    first = prepare(data, tok, tmp_path)
    assert not first.reused
    with caplog.at_level(logging.INFO, logger="clozelab"):
        second = prepare(data, tok, tmp_path)
    assert second.reused and second.directory == first.directory
    assert any("Reusing cached shards" in r.getMessage() for r in caplog.records)
    assert any("Reusing the cached tokenizer" in r.getMessage() for r in caplog.records)
    stats = first.stats
    assert stats["validation"]["documents"] == 40 // 10  # every 10th of the 40 documents
    assert stats["train"]["documents"] == 36


def test_corrupt_cache_is_rebuilt(tmp_path, text_corpus, caplog):
    data, tok = _cfgs(text_corpus)
    first = prepare(data, tok, tmp_path)
    shard_file = first.train_dir / "shard-00000" / "tokens.bin"
    shard_file.write_bytes(shard_file.read_bytes()[:-4])
    with caplog.at_level(logging.WARNING, logger="clozelab"):
        again = prepare(data, tok, tmp_path)
    assert not again.reused
    assert any("unusable" in r.getMessage() for r in caplog.records)
    assert len(open_split(again.train_dir)[0].tokens) == first.stats["train"]["tokens"]


def test_parallel_equals_serial(tmp_path, text_corpus):
    data0, tok = _cfgs(text_corpus, workers=0)
    serial = prepare(data0, tok, tmp_path / "a")
    data2, _ = _cfgs(text_corpus, workers=2)
    parallel = prepare(data2, tok, tmp_path / "b")
    for split in ("train", "validation"):
        (s,) = open_split(serial.directory / split)
        (p,) = open_split(parallel.directory / split)
        for name in ("tokens", "word_ids", "entity_ids", "sentences", "documents"):
            assert np.array_equal(getattr(s, name), getattr(p, name)), name


def test_entity_spans_become_entity_ids():
    tok = train_wordpiece(["alan turing was born in london", "he studied at cambridge"] * 20,
                          vocab_size=200)  # fmt: skip
    text = "Alan Turing was born in London. He studied at Cambridge."
    doc = Document("d", text, entities=[(0, 11), (24, 30), (46, 55)])
    sentences = encode_document(doc, tok)
    assert len(sentences) == 2
    ids0, words0, ents0 = sentences[0]
    tokens0 = tok.hf.decode(ids0[ents0 == 0].tolist())
    assert tokens0 == "alan turing"
    assert tok.hf.decode(ids0[ents0 == 1].tolist()) == "london"
    ids1, _, ents1 = sentences[1]
    assert tok.hf.decode(ids1[ents1 == 2].tolist()) == "cambridge"  # numbering spans the document
    assert words0[0] == 0 and (np.diff(words0) >= 0).all()


def test_too_small_corpus_for_validation(tmp_path):
    corpus = tmp_path / "one.txt"
    corpus.write_text("Just one document here.\nWith two sentences.\n")
    data, tok = _cfgs(corpus, fraction=0.1)
    with pytest.raises(ClozelabError, match="data.validation_fraction"):
        prepare(data, tok, tmp_path / "cache")


def test_data_text_column_reaches_the_reader(tmp_path, text_corpus):
    import json

    docs = text_corpus.read_text("utf-8").split("\n\n")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(docs)))
    data, tok = _cfgs(corpus)
    with pytest.raises(ClozelabError, match=r"no column 'text'.*Fix: .*data\.text_column="):
        prepare(data, tok, tmp_path / "cache")
    data.text_column = "body"  # the fix the message names
    prepared = prepare(data, tok, tmp_path / "cache")
    assert prepared.stats["train"]["documents"] == len(docs) - len(docs) // 10


@pytest.mark.parametrize("documents", [2, 3, 7, 10, 19, 20, 21, 99, 100, 101, 250])
def test_the_holdout_fix_names_an_allowed_fraction_that_holds_a_document_out(documents):
    import re

    from clozelab.data.preprocess import _holdout_fix

    fix = _holdout_fix(documents)
    fraction = float(re.search(r"validation_fraction=([0-9.]+)", fix).group(1))
    assert 0.0 < fraction < 0.5  # what prepare() accepts
    assert round(1 / fraction) <= documents  # the held-out stride fits in the corpus
    assert f"1 document in {round(1 / fraction)}" in fix
