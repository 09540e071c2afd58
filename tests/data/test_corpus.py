"""``data.corpus`` dispatch, eager checks, zero-document corpora, fingerprints."""

from __future__ import annotations

import bz2
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clozelab.core.errors import ClozelabError
from clozelab.data.corpus import (
    CorpusSpec,
    bundled_wikipedia_path,
    corpus_fingerprint,
    iter_documents,
    resolve_corpus,
)


def _page(page_id: int, text: str, ns: int = 0) -> str:
    return (
        f"<page><title>T{page_id}</title><ns>{ns}</ns><id>{page_id}</id>"
        f"<revision><text>{text}</text></revision></page>"
    )


def make_dump() -> str:
    """Pages 101 (long), 102 (other namespace), 105 and 106 (short)."""
    long_text = "A long article about [[Lisbon]] and its history. " * 6
    pages = [
        _page(101, long_text),
        _page(102, long_text, ns=4),
        _page(105, "Short [[text]]."),
        _page(106, "Another short one."),
    ]
    return (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">'
        + "".join(pages)
        + ("</mediawiki>")
    )


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "a.txt").write_text("One.\nTwo.\n\nThree.\n", "utf-8")
    (tmp_path / "dump.xml.bz2").write_bytes(bz2.compress(make_dump().encode()))
    (tmp_path / "rows.jsonl").write_text(json.dumps({"text": "Row."}) + "\n", "utf-8")
    return tmp_path


def test_dispatch_by_kind(files):
    assert resolve_corpus(str(files / "a.txt")).kind == "text"
    assert resolve_corpus(files / "dump.xml.bz2").kind == "wikipedia"
    assert resolve_corpus(str(files / "rows.jsonl")).kind == "hf_local"
    assert [d.text for d in iter_documents(files / "a.txt")] == ["One.\nTwo.", "Three."]
    assert [d.id for d in iter_documents(files / "dump.xml.bz2", min_chars=0)] == [
        "101",
        "105",
        "106",
    ]
    assert [d.text for d in iter_documents(files / "rows.jsonl")] == ["Row."]


def test_bundled_wikipedia():
    corpus = resolve_corpus("bundled:wikipedia")
    assert corpus.kind == "wikipedia" and corpus.paths == (bundled_wikipedia_path(),)
    docs = list(iter_documents("bundled:wikipedia", max_docs=3))
    assert len(docs) == 3 and docs[0].id == "12" and docs[0].entities


def test_bundled_missing_gensim(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ClozelabError, match=r"bundled:wikipedia.*gensim.*Fix:"):
        resolve_corpus("bundled:wikipedia")


def test_hub_specs():
    assert resolve_corpus("hf:wikitext") == CorpusSpec("hf:wikitext", "hf_hub", name="wikitext")
    spec = resolve_corpus("hf:Salesforce/wikitext/wikitext-2-raw-v1")
    assert (spec.name, spec.config_name) == ("Salesforce/wikitext", "wikitext-2-raw-v1")
    assert resolve_corpus("hf:org/name").name == "org/name"
    with pytest.raises(ClozelabError, match="malformed Hub dataset name"):
        resolve_corpus("hf:a//b")


@pytest.mark.timeout(60)
def test_hub_offline_error_through_corpus():
    docs = iter_documents("hf:clozelab-test/no-such-dataset")
    with pytest.raises(ClozelabError, match=r"hf:clozelab-test/no-such-dataset.*local path"):
        next(docs)


def test_missing_path_message(tmp_path):
    with pytest.raises(ClozelabError) as info:
        resolve_corpus(str(tmp_path / "nowhere.txt"))
    message = str(info.value)
    assert message.startswith(
        f"data.corpus='{tmp_path / 'nowhere.txt'}': no such file or directory"
    )
    assert "Fix:" in message


def test_missing_path_is_raised_eagerly(tmp_path):
    with pytest.raises(ClozelabError, match="no such file"):
        iter_documents(tmp_path / "nowhere")  # no next(): checked before reading


def test_empty_file(tmp_path):
    for name in ("empty.txt", "empty.xml.bz2", "empty.jsonl", "empty"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(ClozelabError, match=r"empty.*Fix:"):
            resolve_corpus(tmp_path / name)


@pytest.mark.parametrize("name", ["image.txt", "image.png", "noext"])
def test_png_refused(tmp_path, name):
    (tmp_path / name).write_bytes(PNG)
    with pytest.raises(ClozelabError, match=rf"not a text file.*{name}"):
        resolve_corpus(tmp_path / name)


def test_random_bytes_as_dump(tmp_path):
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(os.urandom(2000))
    with pytest.raises(ClozelabError, match=r"dump\.xml\.bz2"):
        list(iter_documents(path))


def test_unknown_extension_sniffed(tmp_path):
    text = tmp_path / "corpus.dat"
    text.write_text("A sentence.\n\nAnother.\n", "utf-8")
    assert resolve_corpus(text).kind == "text"
    dump = tmp_path / "enwiki-pages-p1p9"
    dump.write_bytes(bz2.compress(make_dump().encode()))
    assert resolve_corpus(dump).kind == "wikipedia"


def test_zero_documents_raised_lazily(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n\n   \n", "utf-8")
    docs = iter_documents(path)
    with pytest.raises(ClozelabError, match=r"blank\.txt.*no documents.*Fix:"):
        next(docs)
    dump = tmp_path / "short.xml"
    dump.write_text(make_dump(), "utf-8")
    assert len(list(iter_documents(dump))) == 1
    with pytest.raises(ClozelabError, match=r"no documents.*min_chars=100000"):
        list(iter_documents(dump, min_chars=100_000))


def test_directories(files, tmp_path):
    with pytest.raises(ClozelabError, match="mixes corpus formats"):
        resolve_corpus(files)
    texts = tmp_path / "texts"
    (texts / "sub").mkdir(parents=True)
    (texts / "sub" / "b.txt").write_text("Bee.\n", "utf-8")
    (texts / "a.txt").write_text("Aye.\n", "utf-8")
    (texts / ".hidden.jsonl").write_text("{}\n", "utf-8")
    assert resolve_corpus(texts).kind == "text"
    assert [d.text for d in iter_documents(texts)] == ["Aye.", "Bee."]
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    for i in (2, 1):
        (dumps / f"part{i}.xml.bz2").write_bytes(bz2.compress(make_dump().encode()))
    spec = resolve_corpus(dumps)
    assert spec.kind == "wikipedia" and [p.name for p in spec.paths] == [
        "part1.xml.bz2",
        "part2.xml.bz2",
    ]
    assert len(list(iter_documents(dumps))) == 2
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(ClozelabError, match="holds no corpus files"):
        resolve_corpus(empty)


def test_list_of_paths(files, tmp_path):
    other = tmp_path / "b.txt"
    other.write_text("Bee.\n", "utf-8")
    spec = resolve_corpus([str(files / "a.txt"), str(other)])
    assert spec.kind == "text" and len(spec.paths) == 2
    assert [d.text for d in iter_documents(spec)] == ["One.\nTwo.", "Three.", "Bee."]
    with pytest.raises(ClozelabError, match="one kind"):
        resolve_corpus([str(files / "a.txt"), str(files / "rows.jsonl")])


def test_reader_options(files):
    with pytest.raises(ClozelabError, match=r"unknown.*Fix:"):
        iter_documents(files / "a.txt", min_char=3)
    with pytest.raises(ClozelabError, match="max_docs"):
        iter_documents(files / "a.txt", max_docs=0)
    # options of another reader are ignored
    docs = list(iter_documents(files / "a.txt", min_chars=10_000, text_column="x", max_docs=1))
    assert [d.text for d in docs] == ["One.\nTwo."]


def test_relative_path_from_cwd(files, monkeypatch):
    monkeypatch.chdir(files)
    assert resolve_corpus("a.txt").paths == (files / "a.txt",)


def test_fingerprint(files, tmp_path):
    path = files / "a.txt"
    first = corpus_fingerprint(path)
    assert first == corpus_fingerprint(str(path)) == corpus_fingerprint(resolve_corpus(path))
    assert len(first) == 16 and int(first, 16) >= 0
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    second = corpus_fingerprint(path)
    assert second != first
    path.write_text("One.\nTwo.\n\nThree!\n", "utf-8")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert corpus_fingerprint(path) == second  # same size and mtime: same key (by design)
    path.write_text("Changed size.\n", "utf-8")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert corpus_fingerprint(path) != second
    assert corpus_fingerprint("hf:a/b/c") == corpus_fingerprint("hf:a/b/c")
    assert corpus_fingerprint("hf:a/b/c") != corpus_fingerprint("hf:a/b/d")
    assert corpus_fingerprint("bundled:wikipedia") == corpus_fingerprint(bundled_wikipedia_path())
    texts = tmp_path / "dir"
    texts.mkdir()
    (texts / "x.txt").write_text("X.\n", "utf-8")
    before = corpus_fingerprint(texts)
    (texts / "y.txt").write_text("Y.\n", "utf-8")
    assert corpus_fingerprint(texts) != before


# --- fuzzing through the dispatcher ---


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.sampled_from(["x.txt", "x.xml", "x.bz2", "x.bin", "x"]))
def test_fuzz_random_files(data, name):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            for doc in iter_documents(path, min_chars=0):
                assert isinstance(doc.text, str) and doc.text
        except ClozelabError:
            pass
