"""Entity knowledge from the corpus (SPECS §19): anchors -> (mention, entity) alignments, the link
graph, TransE vectors. The Wikipedia tests read the real English sample bundled with gensim."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from clozelab.data.corpus import iter_documents
from clozelab.data.corpus_stats import CorpusStats
from clozelab.data.dataset import InstanceDataset
from clozelab.data.gazetteer import Gazetteer
from clozelab.data.knowledge import CO_OCCURS, LINKS_TO, KnowledgeGraph
from clozelab.data.preprocess import prepare
from clozelab.data.shards import open_split
from clozelab.data.transe import TransESettings, corrupt, nearest, train_transe
from clozelab.data.wikipedia import clean_wikitext_links, iter_wikipedia

N_DOCS = 24  # of the bundled sample: its longest articles have hundreds of links each

LINK = re.compile(r"\[\[([^\[\]|#]+)(?:#[^\[\]|]*)?(?:\|([^\[\]]*))?\]\]([a-z]*)")


def _prepare(corpus: str, cache, **data):
    base = {"corpus": corpus, "entity_links": True, "max_documents": N_DOCS}
    cfg = OmegaConf.create({**base, "preprocessing_workers": 0, "validation_fraction": 0.1, **data})
    return prepare(cfg, OmegaConf.create({"vocab_size": 3000}), cache)


@pytest.fixture(scope="module")
def wiki(tmp_path_factory):
    return _prepare("bundled:wikipedia", tmp_path_factory.mktemp("kg-cache"))


def test_link_targets_are_kept_with_their_anchors():
    text, spans, targets = clean_wikitext_links(
        "The [[river_Thames#Course|Thames]] and [[london]]ers, [[File:x.png|a [[b]]]] "
        "[[wikt:word|word]], [[ Paris (France) |]] and [[#Here|here]]."
    )
    assert text == "The Thames and londoners, word, Paris and here."
    assert [text[s:e] for s, e in spans] == ["Thames", "londoners", "Paris"]
    assert targets == ["River Thames", "London", "Paris (France)"]


def test_wikipedia_documents_carry_title_and_links():
    doc = next(iter(iter_documents("bundled:wikipedia", max_docs=1)))
    assert doc.title and doc.links and len(doc.links) == len(doc.entities)
    assert all(t is None or t[:1] == t[:1].upper() for t in doc.links)


def test_alignment_on_real_anchors(wiki):
    """Every token that carries an entity lies inside a link anchor of the raw wikitext whose
    target is that entity: checked against an independent regex over the dump's [[links]]."""
    graph = KnowledgeGraph.load(wiki.directory)
    raw = {}  # title -> {(anchor casefolded, target)}
    for doc in iter_wikipedia(_bundled_path(), max_docs=N_DOCS):
        raw[doc.title] = set()
    pairs = set()
    for wikitext in _raw_pages(set(raw)):
        for target, anchor, trail in LINK.findall(wikitext):
            title = " ".join(target.replace("_", " ").split())
            title = title[:1].upper() + title[1:]
            shown = (anchor.strip() or target.strip()) + trail
            pairs.add((" ".join(shown.split()).casefold(), title))
    tokenizer = wiki.tokenizer
    checked = matched = 0
    examples = []
    for split in ("train", "validation"):
        for shard in open_split(wiki.directory / split):
            links = np.asarray(shard.entity_links)
            units = np.asarray(shard.entity_ids)
            tokens = np.asarray(shard.tokens)
            for unit in np.unique(units[links >= 0])[:400]:
                at = np.flatnonzero(units == unit)
                assert len(set(links[at].tolist())) == 1  # one entity per mention
                mention = tokenizer.hf.decode(tokens[at].tolist()).replace(" ##", "")
                entity = graph.names[links[at[0]]]
                checked += 1
                found = any(entity == t and _same(mention, a) for a, t in pairs if t == entity)
                matched += found
                if len(examples) < 8 and found:
                    examples.append(f"{mention!r} -> {entity!r}")
    print("\nanchor alignments:", "; ".join(examples))
    assert checked > 300
    assert matched / checked > 0.95, (matched, checked)


def _same(mention: str, anchor: str) -> bool:
    squash = re.compile(r"[\W_]+")
    return squash.sub("", mention.casefold()) == squash.sub("", anchor)


def _bundled_path():
    from clozelab.data.corpus import bundled_wikipedia_path

    return bundled_wikipedia_path()


def _raw_pages(titles: set[str]):
    import bz2
    import xml.etree.ElementTree as ET

    with bz2.open(_bundled_path(), "rb") as stream:
        title = None
        for _, elem in ET.iterparse(stream):
            tag = elem.tag.rpartition("}")[2]
            if tag == "title":
                title = elem.text
            elif tag == "text" and title in titles:
                yield elem.text or ""
            elif tag == "page":
                elem.clear()


def test_link_graph_of_the_sample(wiki):
    graph = KnowledgeGraph.load(wiki.directory)
    assert graph.relations == ["links_to", "co_occurs"]
    heads = {graph.names[h] for h in graph.triples[graph.triples[:, 1] == LINKS_TO, 0]}
    titles = {d.title for d in iter_documents("bundled:wikipedia", max_docs=N_DOCS)}
    assert heads <= titles and len(heads) >= N_DOCS - 2
    assert (graph.triples[:, 1] == CO_OCCURS).any()
    assert len(np.unique(graph.triples, axis=0)) == len(graph.triples)
    assert wiki.stats["knowledge"]["entities"] == graph.num_entities


def test_dataset_aligns_entities_to_the_first_token(wiki):
    shards = open_split(wiki.directory / "train")
    table = np.array([[0, 0, 120]], dtype=np.int64)
    for start in range(0, 5000, 120):
        table = np.array([[0, start, start + 120]], dtype=np.int64)
        item = InstanceDataset(shards, table, "full_sentences", 2, 3)[0]
        if (item["entity_links"] >= 0).sum() >= 2:
            break
    links, units = item["entity_links"], item["entity_ids"]
    assert ((links >= 0) <= (units >= 0)).all()
    for unit in np.unique(units[units >= 0]):
        at = np.flatnonzero(units == unit)
        assert (links[at[1:]] == -1).all()  # only the first token of a mention
    raw = np.asarray(shards[0].entity_links[table[0, 1] : table[0, 2]])
    assert set(links[links >= 0]) <= set(raw[raw >= 0])


def test_gazetteer_mentions_name_their_entity(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("New York\tGPE\nHudson River\nnew york\n", "utf-8")
    gazetteer = Gazetteer.from_file(names)
    spans, found = gazetteer.find_names("The hudson river meets NEW YORK here.")
    assert found == ["Hudson River", "New York"] and len(spans) == 2
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n\n".join(f"The Hudson River flows past New York {i}.\nIt is long." for i in range(8)),
        "utf-8",
    )
    prepared = _prepare(str(corpus), tmp_path / "cache", entities="gazetteer",
                        gazetteer=str(names), validation_fraction=0.2)  # fmt: skip
    graph = KnowledgeGraph.load(prepared.directory)
    assert graph.names == ["Hudson River", "New York"]
    assert graph.triples.tolist() == [[0, CO_OCCURS, 1]]  # no titles: co-occurrence only


def test_corrupt_replaces_head_or_tail_uniformly():
    triples = torch.tensor([[0, 0, 1]] * 4000)
    out = corrupt(triples, 1000, torch.Generator().manual_seed(0))
    heads_changed = (out[:, 0] != 0).float().mean()
    assert (out[:, 1] == 0).all() and ((out[:, 0] == 0) | (out[:, 2] == 1)).all()
    assert abs(heads_changed - 0.5) < 0.03


def test_transe_loss_falls_and_neighbours_are_linked(wiki):
    graph = wiki.corpus_stats.knowledge()
    settings = TransESettings(dim=32, epochs=30, lr=0.01, seed=3)
    vectors, _, losses = train_transe(
        graph.triples, graph.num_entities, len(graph.relations), settings
    )
    assert losses[-1] < 0.5 * losses[0], losses
    norms = vectors.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    heads = torch.as_tensor(graph.triples[:, 0])
    tails = torch.as_tensor(graph.triples[:, 2])
    generator = torch.Generator().manual_seed(0)
    random = torch.randint(graph.num_entities, (len(heads),), generator=generator)
    linked = (vectors[heads] - vectors[tails]).norm(dim=-1).mean()
    unlinked = (vectors[heads] - vectors[random]).norm(dim=-1).mean()
    print(f"\nTransE mean loss {losses[0]:.3f} -> {losses[-1]:.3f}; mean distance linked "
          f"{linked:.3f} vs random {unlinked:.3f}")  # fmt: skip
    assert linked < 0.9 * unlinked
    degree = graph.degree()
    nearer = 0
    hubs = np.argsort(-degree)[:5]
    for hub in hubs:
        neighbours = nearest(vectors, int(hub), 5)
        print(f"  {graph.names[hub]!r}: {[graph.names[i] for i in neighbours]}")
        linked_to = set(graph.triples[graph.triples[:, 0] == hub, 2].tolist())
        linked_to |= set(graph.triples[graph.triples[:, 2] == hub, 0].tolist())
        nearer += len(linked_to & set(neighbours)) > 0
    assert nearer >= 3  # most hubs have one of their own links among their 5 nearest


def test_transe_is_seeded_and_cached(wiki):
    stats = CorpusStats(wiki.train_dir)
    settings = TransESettings(dim=8, epochs=2, seed=1)
    first = stats.entity_embeddings(settings)
    path = stats.cache_dir / f"transe-{settings.key()}.npy"
    stamp = path.stat().st_mtime_ns
    assert torch.equal(stats.entity_embeddings(settings), first)
    assert path.stat().st_mtime_ns == stamp  # read from the cache
    graph = stats.knowledge()
    again, _, _ = train_transe(graph.triples, graph.num_entities, 2, settings)
    assert torch.equal(again, first)
    other = stats.entity_embeddings(TransESettings(dim=8, epochs=2, seed=2))
    assert not torch.equal(other, first)


def test_transe_settings_are_checked():
    from clozelab.core.errors import ClozelabError

    with pytest.raises(ClozelabError, match="encoder.transe.norm"):
        TransESettings(norm=3)
    with pytest.raises(ClozelabError, match="encoder.transe.dim"):
        TransESettings(dim=0)


def test_shards_without_links_refuse_knowledge(tmp_path, text_corpus):
    cfg = OmegaConf.create({"corpus": str(text_corpus), "preprocessing_workers": 0})
    prepared = prepare(cfg, OmegaConf.create({"vocab_size": 500}), tmp_path)
    from clozelab.core.errors import ClozelabError

    with pytest.raises(ClozelabError, match="data.entity_links=true"):
        prepared.corpus_stats.knowledge()


def test_links_that_found_no_entity_refuse_knowledge(tmp_path, text_corpus):
    """Plain text has no Wikipedia anchors: ``data.entity_links=true`` with the default
    ``data.entities=anchors`` yields an empty entity table. The knowledge components refuse it
    when they are built (one message naming the fix), not with a DataLoader-worker traceback
    at the first batch."""
    from clozelab.core.errors import ClozelabError
    from clozelab.corruption.entity_alignment import EntityAlignmentNoise

    cfg = {"corpus": str(text_corpus), "preprocessing_workers": 0, "entity_links": True}
    prepared = prepare(OmegaConf.create(cfg), OmegaConf.create({"vocab_size": 500}), tmp_path)
    assert KnowledgeGraph.load(prepared.directory).num_entities == 0
    with pytest.raises(ClozelabError, match="no entity mention.*data.entities=gazetteer"):
        prepared.corpus_stats.knowledge()
    with pytest.raises(ClozelabError, match="no entity mention"):
        EntityAlignmentNoise(corpus=prepared.corpus_stats)


def test_transe_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    train_transe(np.array([[0, 0, 1], [1, 0, 2]]), 3, 1, TransESettings(dim=4, epochs=2))
    assert torch.equal(torch.get_rng_state(), before)
