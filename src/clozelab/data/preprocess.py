"""Corpus -> sentences -> token ids (+ word and entity ids) -> cached memory-mapped shards.

The cache key is (corpus fingerprint, tokenizer, preprocessing settings), so a second run with the
same inputs reuses the shards (and says so). Documents are tokenised in worker processes, in order,
with a bounded number of chunks in flight: memory stays flat as the corpus grows. Every
``validation_every``-th document is held out for validation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clozelab.core.errors import ClozelabError, check_int, config_error
from clozelab.core.progress import progress
from clozelab.data.annotate import AnnotationSettings, Annotator
from clozelab.data.corpus import corpus_fingerprint, iter_documents
from clozelab.data.corpus_stats import CorpusStats
from clozelab.data.document import Document
from clozelab.data.knowledge import EntityIndex
from clozelab.data.sentences import sentence_units, split_sentences
from clozelab.data.shards import ShardError, ShardWriter, open_split
from clozelab.data.staging import die_with_parent, remove_stale, staging_dir
from clozelab.data.tokenizer import Tokenizer, load_tokenizer, train_wordpiece

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TOKENIZER_TRAINER = "clozelab-wordpiece-1"  # bump when the vocabulary training changes
CHUNK_DOCUMENTS = 32


@dataclass
class Prepared:
    tokenizer: Tokenizer
    directory: Path
    reused: bool
    stats: dict

    @property
    def train_dir(self) -> Path:
        return self.directory / "train"

    @property
    def corpus_stats(self) -> CorpusStats:
        """The training corpus's statistics (unigram counts, phrase table), cached here."""
        return CorpusStats(self.train_dir)

    @property
    def validation_dir(self) -> Path:
        return self.directory / "validation"


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reader_options(data_cfg) -> dict:
    """Corpus reader options from the data config (``data.text_column``: the column of HF
    datasets and .jsonl/.csv/.parquet files; the other corpus kinds ignore it)."""
    column = data_cfg.get("text_column") or "text"
    return {"text_column": str(column)}


def _keyed(settings: dict, options: dict) -> dict:
    """The cache key settings plus the reader options that differ from the defaults (so the
    default keeps the keys of existing caches)."""
    changed = {k: v for k, v in options.items() if (k, v) != ("text_column", "text")}
    return {**settings, "reader": changed} if changed else settings


def _sentence_texts(corpus: str, max_documents: int | None, options: dict) -> Iterator[str]:
    for i, doc in enumerate(iter_documents(corpus, **options)):
        if max_documents is not None and i >= max_documents:
            return
        for text, _ in split_sentences(doc):
            yield text


def get_tokenizer(
    tokenizer_cfg, corpus: str, cache_dir: Path, max_documents=None, options: dict | None = None
) -> Tokenizer:
    """Load the configured tokenizer, or train (once, then cached) a WordPiece on the corpus."""
    options = options or {}
    path = tokenizer_cfg.get("path")
    lowercase = tokenizer_cfg.get("lowercase", True)
    if path:
        return load_tokenizer(path, lowercase)
    settings = {
        "trainer": TOKENIZER_TRAINER,
        "corpus": corpus_fingerprint(corpus),
        "vocab_size": tokenizer_cfg.get("vocab_size", 8192),
        "lowercase": lowercase,
        "min_frequency": tokenizer_cfg.get("min_frequency", 2),
        "max_documents": max_documents,
    }
    settings = _keyed(settings, options)
    target = cache_dir / "tokenizers" / _digest(settings)
    remove_stale(target.parent)
    if (target / "tokenizer.json").is_file():
        log.info("Reusing the cached tokenizer at %s", target)
        return load_tokenizer(target / "tokenizer.json", lowercase)
    log.info("Training a WordPiece tokenizer (vocab %d) on %s", settings["vocab_size"], corpus)
    start = time.perf_counter()
    tokenizer = train_wordpiece(
        _sentence_texts(corpus, max_documents, options),
        vocab_size=settings["vocab_size"],
        lowercase=lowercase,
        min_frequency=settings["min_frequency"],
    )
    tmp = staging_dir(target)
    tokenizer.save(tmp)
    (tmp / "settings.json").write_text(json.dumps(settings, indent=1), "utf-8")
    _publish(tmp, target)
    log.info(
        "Tokenizer trained in %.1fs: %d entries", time.perf_counter() - start, tokenizer.vocab_size
    )
    return tokenizer


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished directory into place; another process may have won the race."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:
        if not target.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- document encoding

_WORKER_TOKENIZER: Tokenizer | None = None
_WORKER_ANNOTATOR: Annotator | None = None
_WORKER_CASE = False


def _init_worker(
    tokenizer_json: str, lowercase: bool, settings: AnnotationSettings, case: bool = False
) -> None:
    global _WORKER_TOKENIZER, _WORKER_ANNOTATOR, _WORKER_CASE
    die_with_parent()  # a killed prepare leaves no orphan workers
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOKENIZER = Tokenizer.from_str(tokenizer_json, lowercase)
    _WORKER_ANNOTATOR = settings.build()
    _WORKER_CASE = case


def _span_ids(offsets: np.ndarray, spans, out: np.ndarray, first: int, kept=None) -> int:
    """Number the tokens wholly inside each character span ``first``, ``first + 1``, ... (spans
    covering no token get no number); returns the next free number. ``kept`` (a list) receives
    the position in ``spans`` of each span numbered."""
    for j, (start, end) in enumerate(spans):
        inside = (offsets[:, 0] >= start) & (offsets[:, 1] <= end) & (offsets[:, 1] > offsets[:, 0])
        if inside.any():
            out[inside] = first
            first += 1
            if kept is not None:
                kept.append(j)
    return first


def case_flags(text: str, offsets: np.ndarray) -> np.ndarray:
    """uint8 per token: 1 where the token's first character in ``text`` (the original, cased
    sentence; ``offsets`` are the tokenizer's character offsets into it) is an upper-case letter.
    Lowercasing tokenizers lose this; ERNIE 2.0's capitalisation prediction learns it back."""
    flags = np.zeros(len(offsets), dtype=np.uint8)
    for i, (start, end) in enumerate(offsets.tolist()):
        flags[i] = end > start and text[start].isupper()
    return flags


@dataclass
class EncodedDocument:
    """One encoded document: per sentence (token ids, word index in the sentence, entity index in
    the document or -1[, phrase index in the document or -1]); for each entity index the entity
    it mentions (``Document.links`` or the annotator's names; None where unknown); the title."""

    sentences: list[tuple[np.ndarray, ...]]
    links: list[str | None]
    title: str | None = None


def encode_documents(docs: list[Document], tokenizer: Tokenizer, annotator=None, case=False):
    """Documents -> per document, per sentence: (token ids, word index in the sentence, entity
    index in the document or -1), plus the phrase index in the document or -1 when the annotator
    finds phrases. The annotator (``annotate.Annotator``) sees the sentences of all ``docs`` at
    once (spaCy batches them) and replaces the documents' own entity spans when it finds
    entities. ``case`` adds a fifth element, the ``case_flags`` of the tokens (the fourth is then
    None when there are no phrases)."""
    return [encoded.sentences for encoded in encode_linked(docs, tokenizer, annotator, case)]


def encode_linked(docs: list[Document], tokenizer: Tokenizer, annotator=None, case=False):
    """``encode_documents`` as ``EncodedDocument``s: with the entity each entity index
    mentions."""
    split = [sentence_units(doc) for doc in docs]
    flat = [text for sentences in split for text, _, _ in sentences]
    entities = phrases = names = None
    if annotator is not None and flat:
        entities, phrases, names = annotator.annotate(flat)
    encodings = tokenizer.encode_batch(flat) if flat else []
    out, at = [], 0
    for doc, sentences in zip(docs, split):
        encoded, links, n_entities, n_phrases = [], [], 0, 0
        for _, spans, index in sentences:
            enc = encodings[at]
            if entities is not None:
                spans = entities[at]
                mentions = names[at] if names is not None else [None] * len(spans)
            else:
                mentions = [doc.links[i] for i in index] if doc.links else [None] * len(spans)
            at += 1
            ids = np.asarray(enc.ids, dtype=np.int32)
            if len(ids) == 0:
                continue
            words = np.asarray([-1 if w is None else w for w in enc.word_ids], dtype=np.int32)
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            entity_ids = np.full(len(ids), -1, dtype=np.int32)
            kept: list[int] = []
            n_entities = _span_ids(offsets, spans, entity_ids, n_entities, kept)
            links += [mentions[j] for j in kept]
            phrase_ids = None
            if phrases is not None:
                phrase_ids = np.full(len(ids), -1, dtype=np.int32)
                n_phrases = _span_ids(offsets, phrases[at - 1], phrase_ids, n_phrases)
            if case:
                flags = case_flags(flat[at - 1], offsets)
                encoded.append((ids, words, entity_ids, phrase_ids, flags))
            elif phrase_ids is None:
                encoded.append((ids, words, entity_ids))
            else:
                encoded.append((ids, words, entity_ids, phrase_ids))
        out.append(EncodedDocument(encoded, links, doc.title))
    return out


def encode_document(doc: Document, tokenizer: Tokenizer, annotator=None, case: bool = False):
    """One document -> per sentence: (token ids, word index in the sentence, entity index in the
    document or -1[, phrase index in the document or -1][, case flags]); see
    ``encode_documents``."""
    return encode_documents([doc], tokenizer, annotator, case)[0]


def _encode_chunk(docs: list[Document]):
    before = _annotation_counts(_WORKER_ANNOTATOR)
    encoded = encode_linked(docs, _WORKER_TOKENIZER, _WORKER_ANNOTATOR, _WORKER_CASE)
    after = _annotation_counts(_WORKER_ANNOTATOR)
    return encoded, (after[0] - before[0], after[1] - before[1])


def _annotation_counts(annotator) -> tuple[int, float]:
    return (0, 0.0) if annotator is None else (annotator.sentences, annotator.seconds)


def _chunks(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    chunk = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _encoded_documents(
    docs: Iterable[Document],
    tokenizer: Tokenizer,
    workers: int,
    settings: AnnotationSettings,
    counts: list,
    case: bool = False,
):
    """Encoded documents in corpus order; at most 2 x workers chunks in flight. ``counts``
    accumulates the annotator's (sentences, seconds) over every process; ``case`` adds the
    tokens' case flags."""

    def unpack(result):
        encoded, (sentences, seconds) = result
        counts[0] += sentences
        counts[1] += seconds
        return encoded

    if workers <= 0:
        annotator = settings.build()
        for chunk in _chunks(docs, CHUNK_DOCUMENTS):
            before = _annotation_counts(annotator)
            encoded = encode_linked(chunk, tokenizer, annotator, case)
            after = _annotation_counts(annotator)
            yield from unpack((encoded, (after[0] - before[0], after[1] - before[1])))
        return
    ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
    init = (tokenizer.to_str(), tokenizer.lowercase, settings, case)
    with ctx.Pool(workers, _init_worker, init) as pool:
        pending: deque = deque()
        for chunk in _chunks(docs, CHUNK_DOCUMENTS):
            pending.append(pool.apply_async(_encode_chunk, (chunk,)))
            if len(pending) >= 2 * workers:
                yield from unpack(pending.popleft().get())
        while pending:
            yield from unpack(pending.popleft().get())


def _counted(docs: Iterable[Document], total: list) -> Iterator[Document]:
    """``docs``, adding the UTF-8 size of their text to ``total[0]`` (for the MB/s log)."""
    for doc in docs:
        total[0] += len(doc.text.encode("utf-8", "surrogatepass"))
        yield doc


def _limited(docs: Iterable[Document], max_documents: int | None) -> Iterator[Document]:
    for i, doc in enumerate(docs):
        if max_documents is not None and i >= max_documents:
            return
        yield doc


def build_shards(
    corpus: str,
    tokenizer: Tokenizer,
    directory: Path,
    validation_every: int,
    workers: int,
    max_documents: int | None = None,
    shard_tokens: int = 50_000_000,
    settings: AnnotationSettings | None = None,
    options: dict | None = None,
    case: bool = False,
) -> dict:
    settings = settings or AnnotationSettings()
    phrases = settings.phrases != "none"
    index = EntityIndex() if settings.entity_links else None
    writers = {
        name: ShardWriter(
            directory / name, tokenizer.vocab_size, shard_tokens, phrases, index, case_flags=case
        )
        for name in ("train", "validation")
    }
    text_bytes = [0]
    docs = _counted(_limited(iter_documents(corpus, **(options or {})), max_documents), text_bytes)
    label = "Tokenising and annotating documents" if settings.active else "Tokenising documents"
    counts = [0, 0.0]
    start = time.perf_counter()
    with progress(label) as advance:
        encoded = _encoded_documents(docs, tokenizer, workers, settings, counts, case)
        for i, doc in enumerate(encoded):
            held_out = validation_every > 0 and i % validation_every == validation_every - 1
            writers["validation" if held_out else "train"].add_document(
                doc.sentences, doc.links, doc.title
            )
            advance(1)
    stats = {name: writer.close() for name, writer in writers.items()}
    wall = time.perf_counter() - start
    stats["text_mb"] = round(text_bytes[0] / 1e6, 3)
    stats["mb_per_s"] = round(text_bytes[0] / 1e6 / wall, 3) if wall > 0 else 0.0
    if index is not None:
        stats["knowledge"] = _knowledge_stats(index, directory, time.perf_counter() - start)
    if settings.active:
        stats["annotation"] = _annotation_stats(settings, counts, time.perf_counter() - start)
    if stats["train"]["tokens"] == 0:
        raise config_error(
            "data.corpus",
            corpus,
            "the corpus holds no usable text after cleaning",
            "point data.corpus to a non-empty corpus",
        )
    return stats


def _knowledge_stats(index: EntityIndex, directory: Path, wall: float) -> dict:
    stats = index.write(directory)
    log.info(
        "Entity links: %d mentions of %d entities, %d triples (%d links_to, %d co_occurs)",
        stats["mentions"],
        stats["entities"],
        stats["triples"],
        stats["links_to"],
        stats["co_occurs"],
    )
    return stats


def _annotation_stats(settings: AnnotationSettings, counts, wall: float) -> dict:
    sentences, seconds = counts
    source = f"entities={settings.entities} phrases={settings.phrases}"
    rate = sentences / seconds if seconds > 0 else 0.0
    log.info(
        "Annotated %d sentences (%s) in %.1f s of worker time (%.0f sentences/s per process; "
        "%.1f s wall for the whole preprocessing)",
        sentences,
        source,
        seconds,
        rate,
        wall,
    )
    return {
        "source": source,
        "sentences": sentences,
        "seconds": round(seconds, 3),
        "sentences_per_s_per_process": round(rate, 1),
    }


def _documents(n: int) -> str:
    return f"{n} document{'s' if n != 1 else ''}"


def check_data_settings(data_cfg) -> tuple[float, AnnotationSettings]:
    """The settings of ``data`` that ``prepare`` reads besides the corpus, checked before any
    tokenizer is trained or document read (``training/validate.py`` calls it when the config is
    composed): the document limit, the held-out fraction and the entity/phrase sources
    (``AnnotationSettings``)."""
    limit = data_cfg.get("max_documents")
    if limit is not None:
        check_int(limit, "data.max_documents", 1, "documents read", "null reads them all")
    fraction = data_cfg.get("validation_fraction", 0.05)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise config_error("data.validation_fraction", fraction, "must be a number", "e.g. 0.05")
    if not 0.0 <= fraction < 0.5:
        raise config_error(
            "data.validation_fraction", fraction, "must be in [0, 0.5)", "use e.g. 0.05"
        )
    return float(fraction), AnnotationSettings.from_config(data_cfg)


def holdout_stride(fraction: float) -> int:
    """``data.validation_fraction`` as the stride of held-out documents (every n-th; 0: none)."""
    return round(1 / fraction) if fraction > 0 else 0


def _holdout_fix(documents: int) -> str:
    """What to do when no validation document is held out of ``documents``."""
    if documents < 2:  # no fraction can split one document
        return (
            "give a corpus of several documents (text files: a blank line between documents; "
            "one .jsonl/.csv row per document), or set data.validation_fraction=0 to train "
            "without validation"
        )
    example = min(0.49, round(1 / documents + 0.005, 2))  # the bound is < 0.5
    every = holdout_stride(example)
    return f"set data.validation_fraction={example} (1 document in {every}), or use a larger corpus"


def prepare(data_cfg, tokenizer_cfg, cache_dir: str | Path) -> Prepared:
    """Tokenizer + shards for ``data_cfg.corpus``, reusing the cache when the key matches."""
    cache_dir = Path(cache_dir).expanduser()
    corpus = str(data_cfg.corpus)
    max_documents = data_cfg.get("max_documents")
    options = reader_options(data_cfg)
    fraction, annotation = check_data_settings(data_cfg)
    tokenizer = get_tokenizer(tokenizer_cfg, corpus, cache_dir, max_documents, options)
    validation_every = holdout_stride(fraction)
    settings = {
        "version": FORMAT_VERSION,
        "corpus": corpus_fingerprint(corpus),
        "tokenizer": hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16],
        "validation_every": validation_every,
        "max_documents": max_documents,
    }
    annotation_key = annotation.cache_key()
    if annotation_key is not None:  # the default (anchors, no phrases) keeps the old keys
        settings["annotation"] = annotation_key
    case = bool(data_cfg.get("case_flags", False))
    if case:  # ERNIE 2.0 capitalisation labels; off by default, keeping the old keys
        settings["case_flags"] = True
    settings = _keyed(settings, options)
    key = _digest(settings)
    directory = cache_dir / "shards" / key
    remove_stale(directory.parent)  # partial builds of killed runs
    if directory.is_dir():
        try:
            for split in ("train", "validation"):
                open_split(directory / split, verify=True)
            stats = json.loads((directory / "stats.json").read_text("utf-8"))
            log.info("Reusing cached shards at %s (%s tokens)", directory, stats["train"]["tokens"])
            return Prepared(tokenizer, directory, True, stats)
        except (ShardError, OSError, ValueError, KeyError) as exc:
            log.warning("Cached shards at %s are unusable (%s); rebuilding them", directory, exc)
            shutil.rmtree(directory, ignore_errors=True)
    log.info("Preprocessing %s into %s", corpus, directory)
    start = time.perf_counter()
    tmp = staging_dir(directory)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        stats = build_shards(
            corpus,
            tokenizer,
            tmp,
            validation_every,
            workers=int(data_cfg.get("preprocessing_workers", 2)),
            max_documents=max_documents,
            settings=annotation,
            options=options,
            case=case,
        )
        stats["settings"] = settings
        CorpusStats(tmp / "train").unigram_counts(tokenizer.vocab_size)  # cached with the shards
        stats["seconds"] = round(time.perf_counter() - start, 2)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1), "utf-8")
        tokenizer.save(tmp / "tokenizer")
        _publish(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if stats["validation"]["tokens"] == 0 and fraction > 0:
        raise ClozelabError(
            f"data.validation_fraction={fraction}: holds out every {validation_every}th "
            f"document, and the corpus has {_documents(stats['train']['documents'])}, so no "
            f"validation document is left. Fix: {_holdout_fix(stats['train']['documents'])}."
        )
    log.info(
        "Preprocessed %d documents, %d sentences, %d tokens in %.1fs (%.2f MB of text, "
        "%.2f MB/s%s)",
        stats["train"]["documents"] + stats["validation"]["documents"],
        stats["train"]["sentences"] + stats["validation"]["sentences"],
        stats["train"]["tokens"] + stats["validation"]["tokens"],
        stats["seconds"],
        stats["text_mb"],
        stats["mb_per_s"],
        ", with entity links" if annotation.entity_links else "",
    )
    return Prepared(tokenizer, directory, False, stats)
