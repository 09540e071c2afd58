"""Reader for plain text in BERT format: one sentence per line, a blank line between documents.

``iter_text`` streams the lines of each file in binary and decodes them one at a time, so a
stray non-UTF-8 line costs that line only: it is skipped and counted, and one warning per file
gives the count and the first bad line number. A file whose first 8 KiB hold a NUL byte, or are
mostly undecodable bytes and control characters, is binary and refused; so is a file in which not
a single line decodes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from os import PathLike
from pathlib import Path

from clozelab.core.errors import ClozelabError, config_error
from clozelab.data.document import Document

__all__ = ["is_binary_file", "iter_text", "text_files"]

log = logging.getLogger(__name__)

PathSpec = str | PathLike[str]
_SNIFF_BYTES = 8192
_NOT_TEXT = re.compile(r"[\ufffd\x01-\x08\x0e-\x1f\x7f]")
_MAX_NOT_TEXT = 0.3


def is_binary_file(path: Path) -> bool:
    """True when the first 8 KiB of ``path`` hold a NUL byte (images, archives, arrays) or are
    more than 30% undecodable bytes and control characters (random or compressed data). Text in
    a legacy encoding (a few bad bytes per line) is not binary."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if b"\x00" in head:
        return True
    decoded = head.decode("utf-8", errors="replace")
    return len(_NOT_TEXT.findall(decoded)) > _MAX_NOT_TEXT * max(len(decoded), 1)


def text_files(paths: PathSpec | Iterable[PathSpec], key: str = "data.corpus") -> list[Path]:
    """The files ``iter_text`` reads: each file as given, each directory's ``*.txt`` (recursive,
    sorted). Raises ``ClozelabError`` for a missing path or a directory without ``.txt`` files."""
    if isinstance(paths, (str, PathLike)):
        paths = [paths]
    files: list[Path] = []
    for spec in paths:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not found:
                raise config_error(
                    key,
                    str(path),
                    "directory holds no *.txt files",
                    "put BERT-format text files (one sentence per line, blank line between "
                    "documents) with the .txt extension in it, or point at a file",
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise config_error(
                key,
                str(path),
                "no such file or directory",
                "check the path (relative paths are resolved from the original working directory)",
            )
    return files


def iter_text(
    paths: PathSpec | Iterable[PathSpec], *, key: str = "data.corpus"
) -> Iterator[Document]:
    """Yield the documents of BERT-format text files.

    ``paths`` is a file, a directory (all ``*.txt`` inside, recursive, sorted) or a list of
    those. Each document's ``text`` is its sentences joined by ``"\\n"`` and ``sentences`` their
    spans; lines are stripped, so whitespace-only lines separate documents too. ``id`` is
    ``"<file>:<n>"`` (n counts documents from 0 within the file). ``key`` names the config key
    in error messages.
    """
    for path in text_files(paths, key):
        yield from _iter_file(path, key)


def _iter_file(path: Path, key: str) -> Iterator[Document]:
    if is_binary_file(path):
        raise config_error(
            key,
            str(path),
            "not a text file (binary data in its first 8 KiB)",
            "pass UTF-8 text in BERT format: one sentence per line, a blank line between documents",
        )
    n_docs = 0
    n_good = 0
    n_bad = 0
    first_bad = 0
    sentences: list[str] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                n_bad += 1
                first_bad = first_bad or lineno
                continue
            n_good += 1
            if lineno == 1:
                line = line.lstrip("\ufeff")
            line = line.strip()
            if line:
                sentences.append(line)
            elif sentences:
                yield _document(f"{path}:{n_docs}", sentences)
                n_docs += 1
                sentences = []
    if sentences:
        yield _document(f"{path}:{n_docs}", sentences)
    if n_bad:
        if not n_good:
            raise ClozelabError(
                f"{key}={str(path)!r}: not a text file (none of its {n_bad} lines is valid "
                "UTF-8). Fix: convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8) or remove it"
            )
        log.warning(
            "%s: skipped %d line(s) that are not valid UTF-8 (first at line %d)",
            path,
            n_bad,
            first_bad,
        )


def _document(doc_id: str, sentences: list[str]) -> Document:
    spans: list[tuple[int, int]] = []
    start = 0
    for sentence in sentences:
        end = start + len(sentence)
        spans.append((start, end))
        start = end + 1
    return Document(id=doc_id, text="\n".join(sentences), sentences=spans)
