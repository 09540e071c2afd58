"""Where entity and phrase units come from at preprocessing time (``data.entities``,
``data.phrases``).

* ``data.entities``: ``anchors`` (the corpus's own spans: Wikipedia link anchors), ``gazetteer``
  (names from ``data.gazetteer``, see ``gazetteer.py``) or ``spacy`` (NER, ``data.spacy_model``).
* ``data.phrases``: ``none``, or ``spacy_chunks`` (spaCy noun chunks, stored in the shards as
  ``phrase_ids``; the gensim collocations of ``corruption.phrase_source=collocations`` need
  nothing here, they are learnt from the shards).
* ``data.entity_links``: also keep the entity each mention names (the article a Wikipedia
  anchor links to, the gazetteer's spelling of a name, spaCy's mention text), stored in the
  shards as ``entity_links`` with the entity vocabulary and link graph of
  ``clozelab.data.knowledge`` (ERNIE-THU's knowledge inputs, SPECS §19).

Both are found per sentence and turned into token ids by the same character-span path as the
anchors (``preprocess.encode_document``). ``AnnotationSettings.cache_key`` is what the shard cache
key records (the gazetteer file's digest, the spaCy model and versions), so changing the source
rebuilds the shards; the defaults add nothing, so existing caches stay valid.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from clozelab.core.errors import check_choice, config_error

ENTITY_SOURCES = ("anchors", "gazetteer", "spacy")
PHRASE_SOURCES = ("none", "spacy_chunks")


@dataclass(frozen=True)
class AnnotationSettings:
    entities: str = "anchors"
    gazetteer: str | None = None
    entity_types: tuple[str, ...] | None = None
    spacy_model: str | None = None
    spacy_batch_size: int = 256
    phrases: str = "none"
    entity_links: bool = False

    @classmethod
    def from_config(cls, data_cfg) -> AnnotationSettings:
        get = data_cfg.get
        entities = _choice(get("entities") or "anchors", "entities", ENTITY_SOURCES)
        phrases = _choice(get("phrases") or "none", "phrases", PHRASE_SOURCES)
        gazetteer = get("gazetteer")
        if entities == "gazetteer" and not gazetteer:
            raise config_error(
                "data.gazetteer",
                gazetteer,
                "data.entities=gazetteer needs a gazetteer file",
                "set data.gazetteer=/path/to/names.txt (one entity name per line)",
            )
        types = get("entity_types")
        if types is not None:
            if isinstance(types, str) or not all(isinstance(t, str) for t in types):
                raise config_error(
                    "data.entity_types",
                    types,
                    "must be a list of type names or null",
                    "e.g. data.entity_types=[PERSON,ORG,GPE]",
                )
            types = tuple(types)
        batch = get("spacy_batch_size", 256)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise config_error(
                "data.spacy_batch_size", batch, "must be an integer >= 1", "e.g. 256"
            )
        links = get("entity_links", False)
        if not isinstance(links, bool):
            raise config_error(
                "data.entity_links", links, "must be true or false", "set data.entity_links=true"
            )
        if entities == "gazetteer" and not Path(gazetteer).expanduser().is_file():
            from clozelab.data.gazetteer import Gazetteer

            Gazetteer.from_file(gazetteer)  # its error names the key and the fix
        return cls(
            entities,
            gazetteer and str(gazetteer),
            types,
            get("spacy_model"),
            batch,
            phrases,
            links,
        )

    @property
    def uses_spacy(self) -> bool:
        return self.entities == "spacy" or self.phrases == "spacy_chunks"

    @property
    def active(self) -> bool:
        return self.entities != "anchors" or self.phrases != "none"

    def _spacy_key(self) -> tuple[str, str]:
        if self.entities == "spacy":
            return "data.entities", "spacy"
        return "data.phrases", self.phrases

    def cache_key(self) -> dict | None:
        """Settings for the shard cache key; None for the defaults (anchors, no phrases, no
        entity links)."""
        if not self.active:
            return {"entity_links": True} if self.entity_links else None
        key: dict = {"entities": self.entities, "phrases": self.phrases}
        if self.entity_links:
            key["entity_links"] = True
        if self.entities != "anchors":
            key["entity_types"] = None if self.entity_types is None else sorted(self.entity_types)
        if self.entities == "gazetteer":
            path = Path(self.gazetteer).expanduser()
            key["gazetteer"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        if self.uses_spacy:
            from clozelab.data.spacy_units import load_pipeline, model_identity

            nlp = load_pipeline(
                self.spacy_model,
                self.entities == "spacy",
                self.phrases == "spacy_chunks",
                *self._spacy_key(),
            )
            key["spacy"] = model_identity(nlp)
        return key

    def build(self) -> Annotator | None:
        """The annotator for these settings (loads the gazetteer / spaCy model), or None."""
        return Annotator(self) if self.active else None


def _choice(value, name: str, choices: tuple[str, ...]) -> str:
    return check_choice(value, f"data.{name}", choices)


class Annotator:
    """Entity and phrase character spans of sentences. Calling it returns ``(entities, phrases)``:
    per sentence a list of spans, or None where the source is not annotated here (anchors kept,
    no phrases). ``sentences`` and ``seconds`` count its work (for the throughput log)."""

    def __init__(self, settings: AnnotationSettings):
        self.settings = settings
        self.gazetteer = None
        self.spacy = None
        if settings.entities == "gazetteer":
            from clozelab.data.gazetteer import Gazetteer

            self.gazetteer = Gazetteer.from_file(settings.gazetteer, settings.entity_types)
        if settings.uses_spacy:
            from clozelab.data.spacy_units import SpacyUnits, load_pipeline

            entities = settings.entities == "spacy"
            chunks = settings.phrases == "spacy_chunks"
            nlp = load_pipeline(settings.spacy_model, entities, chunks, *settings._spacy_key())
            self.spacy = SpacyUnits(
                nlp, entities, chunks, settings.entity_types, settings.spacy_batch_size
            )
        self.sentences = 0
        self.seconds = 0.0

    def __call__(self, sentences: list[str]):
        entities, phrases, _ = self.annotate(sentences)
        return entities, phrases

    def annotate(self, sentences: list[str]):
        """``(entities, phrases, links)``: ``links`` per sentence the entity each span of
        ``entities`` names (the gazetteer's spelling, spaCy's mention text), None with
        ``entities``."""
        start = time.perf_counter()
        entities = phrases = links = None
        if self.spacy is not None:
            entities, phrases = self.spacy(sentences)
            if entities is not None:
                links = [[text[a:b] for a, b in spans] for text, spans in zip(sentences, entities)]
        if self.gazetteer is not None:
            found = [self.gazetteer.find_names(text) for text in sentences]
            entities, links = [f[0] for f in found], [f[1] for f in found]
        self.sentences += len(sentences)
        self.seconds += time.perf_counter() - start
        return entities, phrases, links
