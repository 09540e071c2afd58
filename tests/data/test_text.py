"""BERT-format text reader: documents, sentence spans, bad bytes, binary files."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clozelab.core.errors import ClozelabError
from clozelab.data.text import iter_text, text_files

BERT_TEXT = "First sentence of doc one.\nSecond sentence.\n\n\nDoc two only sentence.\n   \nLast.\n"


def test_documents_and_sentence_spans(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(BERT_TEXT, "utf-8")
    docs = list(iter_text(path))
    assert [d.text for d in docs] == [
        "First sentence of doc one.\nSecond sentence.",
        "Doc two only sentence.",
        "Last.",
    ]
    assert docs[0].sentences == [(0, 26), (27, 43)]
    for doc in docs:
        assert [doc.text[s:e] for s, e in doc.sentences] == doc.text.split("\n")
        assert doc.entities == []
    assert [d.id for d in docs] == [f"{path}:0", f"{path}:1", f"{path}:2"]


def test_crlf_bom_and_no_trailing_newline(tmp_path):
    path = tmp_path / "w.txt"
    path.write_bytes("\ufeffOne.\r\nTwo.\r\n\r\nThree.".encode())
    docs = list(iter_text(path))
    assert [d.text for d in docs] == ["One.\nTwo.", "Three."]


def test_invalid_utf8_lines_skipped_and_counted(tmp_path, caplog):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"Good line.\nBad \xff\xfe line.\nAnother good.\n\nCaf\xe9 latin1.\nOk.\n")
    with caplog.at_level(logging.WARNING, logger="clozelab.data.text"):
        docs = list(iter_text(path))
    assert [d.text for d in docs] == ["Good line.\nAnother good.", "Ok."]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "mixed.txt" in message and "2 line(s)" in message and "line 2" in message


def test_all_lines_invalid_is_not_text(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"Un caf\xe9 au lait, s'il vous pla\xeet.\n" * 3)
    with pytest.raises(ClozelabError, match=r"latin1\.txt.*none of its 3 lines.*Fix:"):
        list(iter_text(path))


def test_undecodable_bytes_without_nul_are_binary(tmp_path):
    path = tmp_path / "noise.txt"
    path.write_bytes(bytes(range(128, 256)) * 8 + b"\nok\n")
    with pytest.raises(ClozelabError, match=r"noise\.txt.*not a text file.*binary"):
        list(iter_text(path))


def test_binary_file_refused(tmp_path):
    path = tmp_path / "image.txt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(ClozelabError, match=r"image\.txt.*binary"):
        list(iter_text(path))


def test_missing_path(tmp_path):
    with pytest.raises(ClozelabError, match=r"nope\.txt'.*no such file or directory.*Fix:"):
        list(iter_text(tmp_path / "nope.txt"))


def test_directory_recursive_sorted_and_lists(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("Zed.\n", "utf-8")
    (tmp_path / "a.txt").write_text("Aye.\n", "utf-8")
    (tmp_path / "notes.md").write_text("ignored\n", "utf-8")
    assert [p.name for p in text_files(tmp_path)] == ["a.txt", "z.txt"]
    assert [d.text for d in iter_text(tmp_path)] == ["Aye.", "Zed."]
    extra = tmp_path / "extra.txt"
    extra.write_text("Extra.\n", "utf-8")
    texts = [d.text for d in iter_text([tmp_path / "b", extra])]
    assert texts == ["Zed.", "Extra."]


def test_directory_without_txt(tmp_path):
    (tmp_path / "x.md").write_text("no\n", "utf-8")
    with pytest.raises(ClozelabError, match=r"no \*\.txt files"):
        list(iter_text(tmp_path))


def test_is_lazy(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("".join(f"Sentence {i}.\n\n" for i in range(1000)), "utf-8")
    it = iter_text(path)
    assert next(it).text == "Sentence 0."


# --- fuzzing: valid Documents or ClozelabError, never another exception ---


def _read(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.txt"
        path.write_bytes(data)
        try:
            for doc in iter_text(path):
                assert doc.text and doc.sentences
                assert [doc.text[s:e] for s, e in doc.sentences] == doc.text.split("\n")
                assert all(line == line.strip() and line for line in doc.text.split("\n"))
        except ClozelabError:
            pass


FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data):
    _read(data)


@FUZZ
@given(st.integers(min_value=0, max_value=len(BERT_TEXT.encode("utf-8") * 3)))
def test_fuzz_truncated_text(cut):
    _read((BERT_TEXT * 3).encode("utf-8")[:cut])


@FUZZ
@given(st.text(max_size=500))
def test_fuzz_unicode_text(text):
    _read(text.encode("utf-8", "surrogatepass"))
