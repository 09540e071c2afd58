"""Corpus statistics of the prepared training shards, computed by the data layer and handed to the
components that declare they need them (``Corruption.runtime_inputs``: ``corpus``); components
never read shard directories themselves.

- ``unigram_counts``: token counts over every training shard (SpanBERT's / fairseq's unigram
  replacement distribution, SPECS §3), counted while the shards are prepared;
- ``phrases``: the collocation phrase table (ERNIE's phrase units, SPECS §10), two gensim
  ``Phrases`` layers over words spelled as their token ids, learnt on first request for the
  asked ``min_count`` / ``threshold``.

- ``knowledge``: the entity vocabulary and link graph written at preprocessing
  (``data.entity_links``, ``clozelab.data.knowledge``), and ``entity_embeddings``: TransE vectors
  trained on that graph (``clozelab.data.transe``) for the asked settings (ERNIE-THU, SPECS §19).

All are cached beside the shards (``<prepared dir>/corpus_stats/``), so a second run reads them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from clozelab.core.errors import ClozelabError
from clozelab.core.rundir import atomic_write, write_json
from clozelab.data.knowledge import KnowledgeGraph
from clozelab.data.shards import open_split
from clozelab.data.transe import TransESettings, train_transe

log = logging.getLogger(__name__)

MAX_PHRASE_WORDS = 4  # longest phrase kept (words)


class CorpusStats:
    """The statistics of the training shards under ``train_dir`` (computed once, cached)."""

    def __init__(self, train_dir: str | Path):
        self.train_dir = Path(train_dir)

    def __repr__(self) -> str:
        return f"CorpusStats({str(self.train_dir)!r})"

    @property
    def cache_dir(self) -> Path:
        path = self.train_dir.parent / "corpus_stats"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def unigram_counts(self, vocab_size: int) -> torch.Tensor:
        """``float64 [vocab_size]`` token counts over every training shard."""
        path = self.cache_dir / f"unigram-{vocab_size}.npy"
        if path.is_file():
            counts = np.load(path)
        else:
            counts = np.zeros(vocab_size, dtype=np.int64)
            for shard in open_split(self.train_dir, verify=False):
                if len(shard.tokens):
                    counts += np.bincount(np.asarray(shard.tokens), minlength=vocab_size)[
                        :vocab_size
                    ]

            def write(tmp: Path) -> None:
                with open(tmp, "wb") as handle:
                    np.save(handle, counts)

            atomic_write(path, write)
        return torch.from_numpy(counts.astype(np.float64))

    def phrases(
        self, min_count: int = 5, threshold: float = 10.0, max_tokens: int = 5_000_000
    ) -> list[list[list[int]]]:
        """The collocation phrases (each a list of words, each word its token ids)."""
        path = self.cache_dir / f"phrases-{min_count}-{threshold:g}-{max_tokens}.json"
        if path.is_file():
            return json.loads(path.read_text("utf-8"))
        phrases = learn_phrases(self.train_dir, min_count, threshold, max_tokens)
        write_json(path, phrases, indent=None, sort_keys=False)
        log.info("Learnt %d phrases from %s (cached at %s)", len(phrases), self.train_dir, path)
        return phrases

    def knowledge(self) -> KnowledgeGraph:
        """The entity vocabulary and triples of the corpus (``data.entity_links=true``)."""
        if not KnowledgeGraph.exists(self.train_dir.parent):
            raise ClozelabError(
                f"{self.train_dir.parent}: these shards were prepared without entity links, so "
                "there is no entity vocabulary or link graph. Fix: set data.entity_links=true "
                "(experiment=ernie_thu does)."
            )
        graph = KnowledgeGraph.load(self.train_dir.parent)
        if not graph.num_entities:  # e.g. plain text read with data.entities=anchors
            raise ClozelabError(
                f"{self.train_dir.parent}: data.entity_links=true found no entity mention in this "
                "corpus (the default data.entities=anchors reads Wikipedia [[links]], which "
                "plain text has none of), so there are no entities to embed or align. Fix: set "
                "data.entities=gazetteer data.gazetteer=names.txt (one entity name per line), "
                "or use a corpus whose mentions name entities."
            )
        return graph

    def entity_embeddings(self, settings: TransESettings) -> torch.Tensor:
        """``float32 [num_entities, settings.dim]`` TransE vectors of the corpus's entities,
        trained on first request for these settings, then read from the cache."""
        path = self.cache_dir / f"transe-{settings.key()}.npy"
        if path.is_file():
            return torch.from_numpy(np.load(path))
        graph = self.knowledge()
        vectors, _, losses = train_transe(
            graph.triples, graph.num_entities, len(graph.relations), settings
        )
        array = vectors.numpy().astype(np.float32)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, array)

        atomic_write(path, write)
        write_json(path.with_suffix(".json"), {"losses": losses}, indent=None, sort_keys=False)
        return torch.from_numpy(array)

    def has_phrase_units(self) -> bool:
        """Whether the shards hold phrase units found at preprocessing (``data.phrases``)."""
        shards = open_split(self.train_dir, verify=False)
        return not shards or shards[0].phrase_ids is not None


def _sentences(train_dir, max_tokens: int):
    """Sentences as lists of word strings ("12-345": the word's token ids), from the shards."""
    seen = 0
    for shard in open_split(train_dir, verify=False):
        bounds = np.asarray(shard.sentences)
        for s in range(len(bounds) - 1):
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            if seen >= max_tokens:
                return
            seen += hi - lo
            tokens = np.asarray(shard.tokens[lo:hi])
            words = np.asarray(shard.word_ids[lo:hi])
            cuts = np.flatnonzero(np.diff(words)) + 1
            yield ["-".join(map(str, piece)) for piece in np.split(tokens, cuts)]


def learn_phrases(train_dir, min_count: int, threshold: float, max_tokens: int) -> list:
    """Two gensim ``Phrases`` layers over the shards; returns phrases as per-word token-id lists."""
    from gensim.models.phrases import Phrases

    sentences = list(_sentences(train_dir, max_tokens))
    first = Phrases(sentences, min_count=min_count, threshold=threshold, delimiter=" ")
    layered = [first[s] for s in sentences]
    second = Phrases(layered, min_count=min_count, threshold=threshold, delimiter=" ")
    found = set(first.export_phrases()) | set(second.export_phrases())
    phrases = []
    for phrase in sorted(found):
        words = phrase.split(" ")
        if 2 <= len(words) <= MAX_PHRASE_WORDS:
            phrases.append([[int(p) for p in word.split("-")] for word in words])
    return phrases
