"""Memory-mapped shards of tokenised documents.

A split directory holds ``shard-00000/``, ``shard-00001/`` ... Each shard stores flat binary arrays
(read back with ``np.memmap``, so memory stays flat whatever the corpus size):

- ``tokens.bin``      token ids of every sentence, concatenated (uint16, or int32 for big vocabs)
- ``word_ids.bin``    int32, shard-global running word index of each token
- ``entity_ids.bin``  int32, shard-global entity index of each token, -1 outside entities
- ``sentences.bin``   int64, token offset where each sentence starts, plus a final end offset
- ``documents.bin``   int64, sentence index where each document starts, plus a final end index
- ``phrase_ids.bin``  int32, shard-global phrase index of each token, -1 outside phrases (only
  when preprocessing finds phrases: ``data.phrases=spacy_chunks``)
- ``case_flags.bin``  uint8, 1 where the token's text starts with an upper-case letter in the
  original (cased) text, whatever the tokenizer's lowercasing (only with ``data.case_flags=true``:
  ERNIE 2.0's capitalisation prediction)
- ``entity_links.bin`` int32, id of the entity each token's mention names (the entity vocabulary
  of ``clozelab.data.knowledge``), -1 elsewhere (only with ``data.entity_links``)
- ``meta.json``       dtypes, lengths and a CRC32 per file (a torn or corrupt shard is detected)
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARRAYS = {
    "tokens": None,  # dtype depends on the vocabulary size
    "word_ids": np.int32,
    "entity_ids": np.int32,
    "sentences": np.int64,
    "documents": np.int64,
}
OPTIONAL = {"phrase_ids": np.int32, "entity_links": np.int32, "case_flags": np.uint8}


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)


class _Appender:
    """Appends arrays to one binary file and keeps its running CRC32 and length."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = path, np.dtype(dtype)
        self.file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.crc = 0
        self.length = 0

    def append(self, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array, dtype=self.dtype).tobytes()
        self.file.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(array)

    def close(self) -> dict:
        self.file.close()
        return {"dtype": self.dtype.str, "length": self.length, "crc32": self.crc}


class ShardWriter:
    """Streams documents into shards of at most ``shard_tokens`` tokens each."""

    def __init__(
        self,
        directory: str | Path,
        vocab_size: int,
        shard_tokens: int = 50_000_000,
        phrases: bool = False,
        links=None,
        case_flags: bool = False,
    ):
        """``links``: a ``clozelab.data.knowledge.EntityIndex`` (shared by the splits) to number
        the entities mentions name (``entity_links.bin``); None: none stored. ``case_flags``:
        store each token's original capitalisation (``case_flags.bin``)."""
        self.phrases = phrases
        self.links = links
        self.case_flags = case_flags
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tokens_dtype = token_dtype(vocab_size)
        self.shard_tokens = shard_tokens
        self.n_shards = 0
        self.totals = {"documents": 0, "sentences": 0, "tokens": 0}
        self._open = None

    def _start(self) -> None:
        path = self.directory / f"shard-{self.n_shards:05d}"
        path.mkdir()
        dtypes = dict(ARRAYS, tokens=self.tokens_dtype)
        if self.phrases:
            dtypes["phrase_ids"] = OPTIONAL["phrase_ids"]
        if self.case_flags:
            dtypes["case_flags"] = OPTIONAL["case_flags"]
        if self.links is not None:
            dtypes["entity_links"] = OPTIONAL["entity_links"]
        self._open = {
            "path": path,
            "files": {name: _Appender(path / f"{name}.bin", dt) for name, dt in dtypes.items()},
            "tokens": 0,
            "sentences": 0,
            "documents": 0,
            "words": 0,
            "entities": 0,
            "phrases": 0,
        }
        self.n_shards += 1

    def add_document(
        self, sentences: list[tuple[np.ndarray, ...]], links=None, title: str | None = None
    ) -> None:
        """Add one document: per sentence (token ids, word index within the sentence, entity index
        within the document or -1[, phrase index within the document or -1: with
        ``phrases=True`` (None otherwise)[, case flags: with ``case_flags=True``]]); with an
        entity index, ``links`` names the entity of each entity index and ``title`` the document
        (``EncodedDocument``)."""
        if not sentences:
            return
        if self._open is None or self._open["tokens"] >= self.shard_tokens:
            self._finish()
            self._start()
        shard, files = self._open, self._open["files"]
        files["documents"].append(np.array([shard["sentences"]]))
        lengths = np.array([len(s[0]) for s in sentences], dtype=np.int64)
        files["sentences"].append(shard["tokens"] + np.concatenate([[0], np.cumsum(lengths)[:-1]]))
        tokens = np.concatenate([s[0] for s in sentences])
        words = np.concatenate(
            [s[1] + shift for s, shift in zip(sentences, self._word_shifts(sentences))]
        )
        entities = np.concatenate([s[2] for s in sentences])
        files["tokens"].append(tokens)
        files["word_ids"].append(words + shard["words"])
        n_entities = int(entities.max()) + 1 if len(entities) else 0
        files["entity_ids"].append(np.where(entities >= 0, entities + shard["entities"], -1))
        if self.links is not None:
            sentence = np.repeat(np.arange(len(sentences)), lengths)
            files["entity_links"].append(self.links.add_document(links, entities, sentence, title))
        if self.phrases:
            phrases = np.concatenate([s[3] for s in sentences])
            files["phrase_ids"].append(np.where(phrases >= 0, phrases + shard["phrases"], -1))
            shard["phrases"] += int(phrases.max()) + 1 if len(phrases) and phrases.max() >= 0 else 0
        if self.case_flags:
            files["case_flags"].append(np.concatenate([s[4] for s in sentences]))
        shard["words"] += int(words.max()) + 1 if len(words) else 0
        shard["entities"] += max(n_entities, 0)
        shard["tokens"] += len(tokens)
        shard["sentences"] += len(sentences)
        shard["documents"] += 1
        self.totals["documents"] += 1
        self.totals["sentences"] += len(sentences)
        self.totals["tokens"] += len(tokens)

    @staticmethod
    def _word_shifts(sentences) -> list[int]:
        """Offsets that make word indices unique across the sentences of a document."""
        shifts, total = [], 0
        for _, words, *_ in sentences:
            shifts.append(total)
            total += int(words.max()) + 1 if len(words) else 0
        return shifts

    def _finish(self) -> None:
        if self._open is None:
            return
        shard, files = self._open, self._open["files"]
        files["sentences"].append(np.array([shard["tokens"]]))
        files["documents"].append(np.array([shard["sentences"]]))
        meta = {name: f.close() for name, f in files.items()}
        meta["counts"] = {k: shard[k] for k in ("documents", "sentences", "tokens")}
        (shard["path"] / "meta.json").write_text(json.dumps(meta, indent=1), "utf-8")
        self._open = None

    def close(self) -> dict:
        self._finish()
        summary = dict(self.totals, shards=self.n_shards)
        (self.directory / "split.json").write_text(json.dumps(summary, indent=1), "utf-8")
        return summary


@dataclass
class Shard:
    """One shard, memory-mapped."""

    path: Path
    tokens: np.ndarray
    word_ids: np.ndarray
    entity_ids: np.ndarray
    sentences: np.ndarray  # [n_sentences + 1] token offsets
    documents: np.ndarray  # [n_documents + 1] sentence offsets
    phrase_ids: np.ndarray | None = None  # only in shards written with phrases
    case_flags: np.ndarray | None = None  # only in shards written with data.case_flags
    entity_links: np.ndarray | None = None  # only in shards written with entity links

    @property
    def n_documents(self) -> int:
        return len(self.documents) - 1


class ShardError(OSError):
    """A shard is missing, torn or corrupt (the cache rebuilds it)."""


def open_shard(path: Path, verify: bool = True) -> Shard:
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ShardError(f"{meta_path}: unreadable shard metadata ({exc})") from exc
    arrays = {}
    for name in (*ARRAYS, *(k for k in OPTIONAL if k in meta)):
        file = path / f"{name}.bin"
        info = meta.get(name)
        if info is None or not file.is_file():
            raise ShardError(f"{file}: missing")
        dtype = np.dtype(info["dtype"])
        if file.stat().st_size != info["length"] * dtype.itemsize:
            raise ShardError(f"{file}: size does not match its metadata (truncated?)")
        if verify and _crc32(file) != info["crc32"]:
            raise ShardError(f"{file}: checksum mismatch (corrupt)")
        if info["length"] == 0:
            arrays[name] = np.zeros(0, dtype=dtype)
        else:
            arrays[name] = np.memmap(file, dtype=dtype, mode="r", shape=(info["length"],))
    return Shard(path=path, **arrays)


def _crc32(file: Path, block: int = 1 << 24) -> int:
    crc = 0
    with open(file, "rb") as handle:
        while chunk := handle.read(block):
            crc = zlib.crc32(chunk, crc)
    return crc


def open_split(directory: str | Path, verify: bool = True) -> list[Shard]:
    directory = Path(directory)
    if not (directory / "split.json").is_file():
        raise ShardError(f"{directory}: incomplete split (no split.json)")
    return [open_shard(p, verify) for p in sorted(directory.glob("shard-*"))]
