"""``data.corpus`` -> documents: one entry point over every corpus reader.

``resolve_corpus`` turns what the user wrote into a ``CorpusSpec`` and checks it eagerly (the
path exists, is not empty, is of a readable kind), so a bad corpus fails before any work starts:

==========================================  ==================================================
spec                                        reader
==========================================  ==================================================
``bundled:wikipedia``                       gensim's English Wikipedia sample (106 articles)
``*.xml``, ``*.xml.bz2``, ``*.bz2``,        ``iter_wikipedia`` (MediaWiki XML dump)
``*.xml.gz``, or a directory of them
``*.txt`` or a directory of them            ``iter_text`` (BERT format)
``*.json``, ``*.jsonl``, ``*.csv``,         ``iter_hf_dataset`` (local, streamed)
``*.parquet``, a directory of them, or a
``save_to_disk`` directory
``hf:NAME``, ``hf:ORG/NAME``,               ``iter_hf_dataset`` (Hub; cache only when offline)
``hf:ORG/NAME/CONFIG``
a list of paths of one kind                 that reader, path after path
==========================================  ==================================================

A file with another extension is sniffed: compressed or plain MediaWiki XML is a dump, other
text is BERT format, binary data is refused. ``hf:A/B`` is tried as the repository ``A/B``
first and, if that cannot be loaded, as dataset ``A`` with config ``B``.

``iter_documents`` is lazy. A corpus that yields no document at all raises ``ClozelabError``
when the iterator is exhausted (after the readers have finished), so a consumer that stops early
never pays for the check.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from clozelab.core.errors import ClozelabError, config_error
from clozelab.data.document import Document
from clozelab.data.hf_datasets import LOCAL_BUILDERS, is_saved_dataset, iter_hf_dataset
from clozelab.data.text import is_binary_file, iter_text, text_files
from clozelab.data.wikipedia import iter_wikipedia, open_maybe_compressed

__all__ = [
    "BUNDLED_WIKIPEDIA",
    "READER_VERSION",
    "CorpusSpec",
    "bundled_wikipedia_path",
    "corpus_fingerprint",
    "iter_documents",
    "resolve_corpus",
]

# Bumped whenever a reader changes the text it produces (wikitext cleaning, normalisation), so
# caches keyed by ``corpus_fingerprint`` are rebuilt.
READER_VERSION = 1

BUNDLED_WIKIPEDIA = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_BUNDLED = {"wikipedia"}

_WIKI_SUFFIXES = (".xml", ".xml.bz2", ".bz2", ".xml.gz")
_TEXT_SUFFIXES = (".txt",)
_HF_SUFFIXES = tuple(s for s in LOCAL_BUILDERS if s != ".txt")
_READER_OPTIONS = {
    "wikipedia": {"min_chars"},
    "text": set(),
    "hf_local": {"split", "text_column", "config_name"},
    "hf_hub": {"split", "text_column", "config_name"},
}
_ALL_OPTIONS = {"max_docs"}.union(*_READER_OPTIONS.values())
_FORMATS_HELP = (
    "bundled:wikipedia, a MediaWiki dump (.xml/.xml.bz2), BERT-format text (.txt or a directory), "
    ".json/.jsonl/.csv/.parquet, or hf:NAME"
)


@dataclass(frozen=True)
class CorpusSpec:
    """A resolved ``data.corpus``.

    Attributes:
        spec: what the user wrote, for messages.
        kind: ``"wikipedia"``, ``"text"``, ``"hf_local"`` or ``"hf_hub"``.
        paths: absolute files/directories for the local kinds, in reading order.
        name: Hub dataset name (``hf_hub``).
        config_name: Hub dataset config (``hf_hub``), if given in the spec.
        key: the config key named in error messages.
    """

    spec: str
    kind: str
    paths: tuple[Path, ...] = ()
    name: str | None = None
    config_name: str | None = None
    key: str = "data.corpus"


def bundled_wikipedia_path(key: str = "data.corpus") -> Path:
    """Path of the English Wikipedia sample in gensim's test data (what
    ``gensim.test.utils.datapath(BUNDLED_WIKIPEDIA)`` returns, found without importing gensim)."""
    fix = (
        "install gensim from a wheel (it ships the sample in gensim/test/test_data), "
        "or set data.corpus to a Wikipedia dump or text files"
    )
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise config_error(key, "bundled:wikipedia", "gensim is not installed", fix)
    for root in spec.submodule_search_locations:
        path = Path(root) / "test" / "test_data" / BUNDLED_WIKIPEDIA
        if path.is_file():
            return path
    raise config_error(
        key, "bundled:wikipedia", f"gensim's test data has no {BUNDLED_WIKIPEDIA}", fix
    )


def _base_dir() -> Path:
    """Directory relative paths are resolved from: Hydra's original cwd when Hydra runs."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import get_original_cwd

        if HydraConfig.initialized():
            return Path(get_original_cwd())
    except (ImportError, ValueError):
        pass
    return Path.cwd()


def resolve_corpus(
    spec: str | PathLike[str] | Sequence[str | PathLike[str]] | CorpusSpec,
    *,
    key: str = "data.corpus",
) -> CorpusSpec:
    """Resolve and check ``data.corpus`` (see the module docstring for the accepted forms)."""
    if isinstance(spec, CorpusSpec):
        return spec
    if isinstance(spec, (str, PathLike)):
        return _resolve_one(spec, key)
    if isinstance(spec, Sequence) and len(spec) > 0:
        parts = [_resolve_one(s, key) for s in spec]
        kinds = {p.kind for p in parts}
        if len(kinds) != 1 or "hf_hub" in kinds:
            raise config_error(
                key,
                [p.spec for p in parts],
                f"a list must name local corpora of one kind, got {sorted(k for k in kinds)}",
                "list files of one format, or run one corpus at a time",
            )
        paths = tuple(p for part in parts for p in part.paths)
        return CorpusSpec(
            spec=",".join(p.spec for p in parts), kind=kinds.pop(), paths=paths, key=key
        )
    raise config_error(key, spec, "expected a path, bundled:wikipedia or hf:NAME", _FORMATS_HELP)


def _resolve_one(spec: str | PathLike[str], key: str) -> CorpusSpec:
    raw = os.fspath(spec)
    if not isinstance(raw, str):
        raise config_error(key, raw, "expected a path string", _FORMATS_HELP)
    text = raw.strip()
    if not text:
        raise config_error(key, raw, "empty corpus spec", f"set it to one of: {_FORMATS_HELP}")
    if isinstance(spec, str) and text.startswith("bundled:"):
        which = text.partition(":")[2]
        if which not in _BUNDLED:
            raise config_error(
                key, raw, f"unknown bundled corpus {which!r}", "use bundled:wikipedia"
            )
        return CorpusSpec(raw, "wikipedia", (bundled_wikipedia_path(key),), key=key)
    if isinstance(spec, str) and text.startswith("hf:"):
        return _resolve_hub(raw, text[3:].strip(), key)
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = _base_dir() / path
    try:
        path = path.resolve()
        exists = path.exists()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise config_error(
            key,
            raw,
            f"cannot be resolved ({exc})",
            "point it at the real file or directory (check the symbolic links on the way)",
        ) from None
    if not exists:
        raise config_error(
            key,
            raw,
            "no such file or directory",
            f"check the path (resolved to {path}), or use one of: {_FORMATS_HELP}",
        )
    if path.is_dir():
        return _resolve_dir(raw, path, key)
    return CorpusSpec(raw, _file_kind(raw, path, key), (path,), key=key)


def _resolve_hub(raw: str, name: str, key: str) -> CorpusSpec:
    parts = name.split("/")
    if not name or any(not p for p in parts) or len(parts) > 3:
        raise config_error(
            key, raw, "malformed Hub dataset name", "use hf:NAME, hf:ORG/NAME or hf:ORG/NAME/CONFIG"
        )
    if len(parts) == 3:
        return CorpusSpec(raw, "hf_hub", name="/".join(parts[:2]), config_name=parts[2], key=key)
    return CorpusSpec(raw, "hf_hub", name=name, key=key)


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def _file_kind(raw: str, path: Path, key: str) -> str:
    if path.stat().st_size == 0:
        raise config_error(
            key, raw, "the file is empty", f"point it at a non-empty corpus ({path})"
        )
    if _has_suffix(path, _WIKI_SUFFIXES):
        _check_xml(raw, path, key)
        return "wikipedia"
    if _has_suffix(path, _HF_SUFFIXES):
        return "hf_local"
    if _has_suffix(path, _TEXT_SUFFIXES):
        _check_text(raw, path, key)
        return "text"
    # Unknown extension: sniff the content.
    with open(path, "rb") as f:
        head = f.read(8192)
    if head.startswith((b"BZh", b"\x1f\x8b")):
        _check_xml(raw, path, key)
        return "wikipedia"
    if b"\x00" in head:
        raise _not_text(raw, path, key)
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<") and b"<mediawiki" in head:
        return "wikipedia"
    _check_text(raw, path, key)
    return "text"


def _not_text(raw: str, path: Path, key: str) -> ClozelabError:
    return config_error(
        key,
        raw,
        f"not a text file ({path} holds binary data)",
        f"pass a corpus in one of the supported formats: {_FORMATS_HELP}",
    )


def _check_text(raw: str, path: Path, key: str) -> None:
    if is_binary_file(path):
        raise _not_text(raw, path, key)


def _check_xml(raw: str, path: Path, key: str) -> None:
    try:
        with open_maybe_compressed(path) as f:
            head = f.read(4096)
    except (OSError, EOFError) as exc:
        raise config_error(
            key, raw, f"cannot be decompressed ({exc})", "pass a complete .xml or .xml.bz2 dump"
        ) from exc
    if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        raise config_error(
            key,
            raw,
            "not an XML file (it does not start with '<')",
            "pass a MediaWiki pages-articles dump (.xml or .xml.bz2)",
        )


def _resolve_dir(raw: str, path: Path, key: str) -> CorpusSpec:
    if is_saved_dataset(path):
        return CorpusSpec(raw, "hf_local", (path,), key=key)
    found: dict[str, list[Path]] = {"wikipedia": [], "text": [], "hf_local": []}
    for file in sorted(path.rglob("*")):
        if not file.is_file() or any(part.startswith(".") for part in file.relative_to(path).parts):
            continue
        if _has_suffix(file, _WIKI_SUFFIXES):
            found["wikipedia"].append(file)
        elif _has_suffix(file, _TEXT_SUFFIXES):
            found["text"].append(file)
        elif _has_suffix(file, _HF_SUFFIXES):
            found["hf_local"].append(file)
    present = {kind: files for kind, files in found.items() if files}
    if not present:
        raise config_error(
            key,
            raw,
            f"directory {path} holds no corpus files",
            f"put .txt, .xml(.bz2) or .jsonl/.csv/.parquet files in it; formats: {_FORMATS_HELP}",
        )
    if len(present) > 1:
        counts = ", ".join(f"{len(files)} {kind}" for kind, files in present.items())
        raise config_error(
            key,
            raw,
            f"directory mixes corpus formats ({counts} files)",
            "keep one format per directory, or list the files to read",
        )
    kind, files = present.popitem()
    if kind == "wikipedia":
        return CorpusSpec(raw, kind, tuple(files), key=key)
    return CorpusSpec(raw, kind, (path,), key=key)


def iter_documents(
    spec: str | PathLike[str] | Sequence[str | PathLike[str]] | CorpusSpec, **reader_kwargs: Any
) -> Iterator[Document]:
    """Yield the documents of a corpus, lazily.

    The spec and the options are checked at once (``resolve_corpus``); the documents are read
    as the iterator is consumed. ``reader_kwargs``: ``max_docs`` (all kinds: stop after that
    many documents), ``min_chars`` (Wikipedia dumps: skip shorter articles, default 200),
    ``split``, ``text_column``, ``config_name`` (HF datasets). Options that belong to another
    kind of corpus are ignored, so one data config serves every corpus; an unknown option raises
    ``ClozelabError``. If the corpus yields no document at all, ``ClozelabError`` is raised when
    the iterator is exhausted.
    """
    unknown = set(reader_kwargs) - _ALL_OPTIONS
    if unknown:
        raise ClozelabError(
            f"corpus reader options {sorted(unknown)}: unknown. "
            f"Fix: use only {sorted(_ALL_OPTIONS)}"
        )
    corpus = resolve_corpus(spec)
    max_docs = reader_kwargs.get("max_docs")
    if max_docs is not None and (
        isinstance(max_docs, bool) or not isinstance(max_docs, int) or max_docs < 1
    ):
        raise config_error(
            "max_docs", max_docs, "must be a positive integer", "set it to 1 or more, or null"
        )
    options = {k: v for k, v in reader_kwargs.items() if k in _READER_OPTIONS[corpus.kind]}
    return _generate(corpus, options, max_docs)


def _generate(
    corpus: CorpusSpec, options: dict[str, Any], max_docs: int | None
) -> Iterator[Document]:
    count = 0
    for doc in _read(corpus, options):
        yield doc
        count += 1
        if max_docs is not None and count >= max_docs:
            return
    if count == 0:
        raise config_error(
            corpus.key,
            corpus.spec,
            f"the corpus yielded no documents (read as {corpus.kind})",
            _empty_fix(corpus.kind, options),
        )


def _empty_fix(kind: str, options: dict[str, Any]) -> str:
    if kind == "wikipedia":
        return (
            "check that the dump has main-namespace articles that are not redirects and are at "
            f"least min_chars={options.get('min_chars', 200)} characters long after cleaning"
        )
    if kind == "text":
        return "put one sentence per line and a blank line between documents in the .txt files"
    return f"check that the text column {options.get('text_column', 'text')!r} has non-empty rows"


def _read(corpus: CorpusSpec, options: dict[str, Any]) -> Iterator[Document]:
    key = corpus.key
    if corpus.kind == "wikipedia":
        for path in corpus.paths:
            yield from iter_wikipedia(path, key=key, **options)
    elif corpus.kind == "text":
        yield from iter_text(corpus.paths, key=key)
    elif corpus.kind == "hf_local":
        for path in corpus.paths:
            yield from iter_hf_dataset(path, key=key, **options)
    else:
        yield from _read_hub(corpus, options)


def _read_hub(corpus: CorpusSpec, options: dict[str, Any]) -> Iterator[Document]:
    assert corpus.name is not None
    config_name = options.pop("config_name", None) or corpus.config_name
    docs = iter_hf_dataset(corpus.name, config_name=config_name, key=corpus.key, **options)
    try:
        first = next(docs, None)
    except ClozelabError as exc:
        org, slash, rest = corpus.name.partition("/")
        if not slash or config_name is not None:
            raise
        # hf:NAME/CONFIG for a dataset without an organisation: retry as (NAME, CONFIG).
        retry = iter_hf_dataset(org, config_name=rest, key=corpus.key, **options)
        try:
            first = next(retry, None)
        except ClozelabError:
            raise exc from None
        docs = retry
    if first is not None:
        yield first
        yield from docs


def corpus_fingerprint(
    spec: str | PathLike[str] | Sequence[str | PathLike[str]] | CorpusSpec,
) -> str:
    """A stable 16-hex-digit hash of a corpus, for cache keys.

    Local corpora hash the absolute path, size and mtime of every file the reader would read;
    Hub corpora hash the name and config (the Hub revision is not pinned). ``READER_VERSION``
    is included so a change in cleaning invalidates caches.
    """
    corpus = resolve_corpus(spec)
    digest = hashlib.sha256(f"clozelab-corpus/{READER_VERSION}/{corpus.kind}\n".encode())
    if corpus.kind == "hf_hub":
        digest.update(f"{corpus.name}\n{corpus.config_name}\n".encode())
        return digest.hexdigest()[:16]
    if corpus.kind == "text":
        files = text_files(corpus.paths, corpus.key)
    else:
        files = []
        for path in corpus.paths:
            if path.is_dir():
                files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
            else:
                files.append(path)
    for file in files:
        stat = file.stat()
        digest.update(f"{file.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
