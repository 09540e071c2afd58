"""The entity knowledge a corpus carries: an entity vocabulary and a link graph (SPECS §19).

ERNIE-THU aligns mentions to Wikidata entities (TAGME) and embeds them with TransE. Here the
corpus itself gives both (``data.entity_links``):

* mentions: each entity span of a document and the entity it names (``Document.links``: the
  article a Wikipedia anchor links to; the gazetteer's spelling of a name; spaCy's mention text);
* entities: every name that is mentioned or heads a document (a Wikipedia article's title),
  numbered in order of first appearance;
* triples ``(head, relation, tail)``, each kept once:
  - ``links_to``: a document's title -> every entity the document mentions (Wikipedia's link
    graph: article -> linked article);
  - ``co_occurs``: a mention -> the next mention of another entity in the same sentence (what
    a corpus without titles, e.g. a gazetteer-annotated one, still tells).

``EntityIndex`` is filled while the shards are written (both splits share it) and writes
``knowledge/`` beside them: ``entities.txt`` (one name per line, id = line number),
``relations.txt`` and ``triples.npy`` (int64 ``[n, 3]``). ``KnowledgeGraph`` reads them back.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clozelab.core.rundir import atomic_write

RELATIONS = ("links_to", "co_occurs")
LINKS_TO, CO_OCCURS = range(2)
DIRECTORY = "knowledge"


class EntityIndex:
    """Entity ids and triples, collected document by document."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.triples: set[tuple[int, int, int]] = set()
        self.mentions = 0

    def __len__(self) -> int:
        return len(self.ids)

    def entity(self, name: str) -> int:
        """The id of ``name`` (a new one the first time)."""
        found = self.ids.get(name)
        if found is None:
            found = self.ids[name] = len(self.ids)
        return found

    def add_document(
        self, links: list[str | None], entity_ids: np.ndarray, sentences: np.ndarray, title=None
    ) -> np.ndarray:
        """Record one document; return the entity id of each of its tokens (-1 outside linked
        mentions). ``links[k]`` is the entity that the document's entity span ``k`` names;
        ``entity_ids`` the span index of each token (-1 outside spans) and ``sentences`` the
        sentence index of each token."""
        if not links:
            return np.full(len(entity_ids), -1, dtype=np.int32)
        ids = np.array([-1 if name is None else self.entity(name) for name in links], np.int64)
        self.mentions += int((ids >= 0).sum())
        inside = entity_ids >= 0
        per_token = np.full(len(entity_ids), -1, dtype=np.int64)
        per_token[inside] = ids[entity_ids[inside]]
        if title is not None:
            head = self.entity(title)
            self.triples.update(
                (head, LINKS_TO, int(t)) for t in set(ids[ids >= 0].tolist()) if t != head
            )
        self._co_occurrences(per_token, entity_ids, sentences)
        return per_token.astype(np.int32)

    def _co_occurrences(self, per_token, entity_ids, sentences) -> None:
        first = (entity_ids >= 0) & (per_token >= 0)
        first[1:] &= entity_ids[1:] != entity_ids[:-1]  # the first token of each mention
        at = np.flatnonzero(first)
        for a, b in itertools.pairwise(at):
            head, tail = int(per_token[a]), int(per_token[b])
            if sentences[a] == sentences[b] and head != tail:
                self.triples.add((head, CO_OCCURS, tail))

    def write(self, directory: Path) -> dict:
        """Write ``knowledge/`` under ``directory``; return its counts."""
        out = directory / DIRECTORY
        out.mkdir(parents=True, exist_ok=True)
        names = sorted(self.ids, key=self.ids.__getitem__)
        (out / "entities.txt").write_text("".join(f"{_one_line(n)}\n" for n in names), "utf-8")
        (out / "relations.txt").write_text("".join(f"{r}\n" for r in RELATIONS), "utf-8")
        triples = np.array(sorted(self.triples), dtype=np.int64).reshape(-1, 3)

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, triples)

        atomic_write(out / "triples.npy", save)
        counts = np.bincount(triples[:, 1], minlength=len(RELATIONS)) if len(triples) else [0, 0]
        return {
            "entities": len(names),
            "mentions": self.mentions,
            "triples": len(triples),
            **{r: int(c) for r, c in zip(RELATIONS, counts)},
        }


def _one_line(name: str) -> str:
    return " ".join(name.split())


@dataclass
class KnowledgeGraph:
    """The entity vocabulary and triples written beside the shards."""

    names: list[str]
    relations: list[str]
    triples: np.ndarray  # int64 [n, 3]: head, relation, tail

    @classmethod
    def load(cls, prepared_dir: str | Path) -> KnowledgeGraph:
        path = Path(prepared_dir) / DIRECTORY
        names = (path / "entities.txt").read_text("utf-8").split("\n")[:-1]
        relations = (path / "relations.txt").read_text("utf-8").split()
        return cls(names, relations, np.load(path / "triples.npy"))

    @staticmethod
    def exists(prepared_dir: str | Path) -> bool:
        return (Path(prepared_dir) / DIRECTORY / "triples.npy").is_file()

    @property
    def num_entities(self) -> int:
        return len(self.names)

    def degree(self) -> np.ndarray:
        """How many triples each entity takes part in."""
        ends = np.concatenate([self.triples[:, 0], self.triples[:, 2]])
        return np.bincount(ends, minlength=self.num_entities)


ENTITIES_FILE = "entities.txt"  # a pre-training run's entity vocabulary (beside its tokenizer)


def save_entity_names(prepared, run_dir: Path) -> Path:
    """Copy the entity vocabulary of ``prepared`` (a ``Prepared``) into ``run_dir``
    (``ENTITIES_FILE``), so fine-tuning links task text to the entities the run embedded."""
    text = (Path(prepared.directory) / DIRECTORY / "entities.txt").read_text("utf-8")
    return atomic_write(Path(run_dir) / ENTITIES_FILE, lambda tmp: tmp.write_text(text, "utf-8"))


class EntityLinker:
    """Finds the entities of a vocabulary in downstream text: a gazetteer of the entity names
    (``clozelab.data.gazetteer``: case-insensitive, whole words, leftmost-longest), each name
    mapped to its id. ERNIE-THU fine-tuning aligns them like pre-training: an entity on the first
    token of its mention. Like a named-entity linker, it keeps only mentions that start with a
    capital letter or a digit and are longer than one character: Wikipedia titles such as "A",
    "Take" or "Season" are also common words, which running text writes in lower case."""

    def __init__(self, names: list[str]):
        from clozelab.data.gazetteer import Gazetteer

        self.ids: dict[str, int] = {}
        for i, name in enumerate(names):
            self.ids.setdefault(name, i)
        self.gazetteer = Gazetteer((name, None) for name in self.ids)

    @classmethod
    def from_file(cls, path: str | Path) -> EntityLinker:
        return cls(Path(path).read_text("utf-8").split("\n")[:-1])

    def link_words(self, words: list[str]) -> list[tuple[int, int]]:
        """``(first word, entity id)`` of each mention in a pre-tokenized sentence."""
        starts, at = [], 0
        for word in words:
            starts.append(at)
            at += len(word) + 1
        text = " ".join(words)
        spans, names = self.gazetteer.find_names(text)
        first_word = {start: w for w, start in enumerate(starts)}
        return [(first_word[s], self.ids[n]) for (s, e), n in zip(spans, names)
                if s in first_word and e - s > 1 and not text[s].islower()]  # fmt: skip
