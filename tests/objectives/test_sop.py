"""SOP: ALBERT's pooled classifier, label convention, sentence-order instances and their balance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clozelab.core.errors import ClozelabError
from clozelab.data import instances as inst
from clozelab.data.dataset import InstanceDataset
from clozelab.data.shards import ShardWriter, open_split
from clozelab.model.encoder import EncoderOutput
from clozelab.objectives.sop import SOP

H = 16


def test_contract_and_hand_computed_loss():
    torch.manual_seed(0)
    sop = SOP(H, weight=1.0).eval()  # eval: no classifier dropout
    assert sop.requires == ("sentence_order_label",)
    assert sop.instance_kinds == ("sentence_order",)
    hidden = torch.randn(3, 5, H)
    labels = torch.tensor([0, 1, 1])
    out = sop(EncoderOutput(hidden), {"sentence_order_label": labels}, None)
    pooled = torch.tanh(hidden[:, 0] @ sop.pooler.dense.weight.T + sop.pooler.dense.bias)
    logits = pooled @ sop.classifier.weight.T + sop.classifier.bias  # (3, 2)
    log_probs = logits - logits.logsumexp(-1, keepdim=True)
    expected = -(log_probs[0, 0] + log_probs[1, 1] + log_probs[2, 1]) / 3
    torch.testing.assert_close(out.loss, expected)
    assert out.n_targets == 3 and set(out.logs) == {"sop_loss", "sop_acc"}
    out.loss.backward()
    assert all(p.grad is not None for p in sop.parameters())


def test_classifier_dropout_is_active_in_training():
    sop = SOP(H, classifier_dropout=0.5).train()
    hidden = torch.randn(64, 2, H)
    assert not torch.allclose(sop.logits(hidden), sop.logits(hidden))
    sop.eval()
    torch.testing.assert_close(sop.logits(hidden), sop.logits(hidden))


def test_refused_on_other_instances():
    with pytest.raises(ClozelabError, match="sentence_order"):
        SOP.check_compatible("full_sentences")
    with pytest.raises(ClozelabError, match="sentence_order_label"):
        SOP.check_compatible("sentence_order", ["input_ids"])


def _shards(tmp_path, documents):
    writer = ShardWriter(tmp_path / "split", vocab_size=1000, shard_tokens=10**9)
    for d, lengths in enumerate(documents):
        sentences = []
        for s, n in enumerate(lengths):
            ids = np.full(n, 10 + d * 40 + s, dtype=np.int32)  # id = (document, sentence)
            sentences.append((ids, np.arange(n, dtype=np.int32), np.full(n, -1, dtype=np.int32)))
        writer.add_document(sentences)
    writer.close()
    return open_split(tmp_path / "split")


def test_sentence_order_instances(tmp_path):
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(3, 30, size=rng.integers(1, 20))) for _ in range(200)]
    shards = _shards(tmp_path, docs)
    table = inst.build("sentence_order", shards, 64, 0.1, np.random.default_rng(1))
    data = InstanceDataset(shards, table, "sentence_order", cls_id=2, sep_id=3)
    labels = table[:, inst.LABEL]
    assert set(np.unique(labels)) == {0, 1}
    swapped = random_doc = 0
    for i in range(len(data)):
        item = data[i]
        assert "next_sentence_label" not in item
        assert item["sentence_order_label"] == labels[i]
        ids, types = item["input_ids"], item["token_type_ids"]
        assert len(ids) <= 64 and ids[0] == 2 and ids[-1] == 3
        a, b = ids[types == 0][1:-1], ids[types == 1][:-1]
        doc_a, doc_b = (a[0] - 10) // 40, (b[0] - 10) // 40
        if labels[i] == 0:  # original order: same document, A's sentences before B's
            assert doc_a == doc_b and a.max() <= b.min()
        elif doc_a == doc_b and a.min() >= b.max() and a.min() > b.min():
            swapped += 1  # B (the earlier text) now comes second
        else:
            random_doc += 1  # one-sentence chunk: a random-document B
    # Label 1 = swapped for chunks of >= 2 sentences (u < 0.5), random document otherwise.
    n_multi = len(labels) - random_doc
    assert swapped > 0 and random_doc > 0
    assert abs(swapped / n_multi - 0.5) < 0.08
    assert (labels == 0).sum() + swapped == n_multi


def test_build_dispatches_segment_pairs_to_nsp(tmp_path):
    docs = [[5, 7, 9, 4], [8, 8], [3], [12, 4, 6, 5, 9]] * 10
    shards = _shards(tmp_path, docs)
    one = inst.segment_pairs(shards, 32, 0.1, np.random.default_rng(3))
    two = inst.build("segment_pair", shards, 32, 0.1, np.random.default_rng(3))
    np.testing.assert_array_equal(one, two)


def _pair_text(shards, row):
    """The A and B token offsets of an instance row (shard-local), and its kind name."""
    return (
        (int(row[inst.A_START]), int(row[inst.A_END])),
        (int(row[inst.B_START]), int(row[inst.B_END])),
        inst.PAIR_KINDS[int(row[inst.KIND])],
    )


def _document_of(shard, offset):
    """Index of the document holding token ``offset`` (documents are sentence ranges)."""
    token_starts = np.asarray(shard.sentences)[np.asarray(shard.documents)]
    return int(np.searchsorted(token_starts, offset, side="right")) - 1


def test_sop_kinds_are_recorded_and_albert_code_leaks_random_documents(tmp_path):
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(3, 30, size=rng.integers(1, 20))) for _ in range(200)]
    shards = _shards(tmp_path, docs)
    table = inst.build("sentence_order", shards, 64, 0.1, np.random.default_rng(1))
    (shard,) = shards
    for row in table:
        a, b, kind = _pair_text(shards, row)
        same = _document_of(shard, a[0]) == _document_of(shard, b[0])
        assert kind in ("in_order", "swapped", "random_document")
        assert row[inst.LABEL] == (kind != "in_order")
        if kind == "in_order":
            assert same and a[1] <= b[0]
        elif kind == "swapped":
            assert same and b[1] <= a[0]
    shares = inst.pair_kind_shares(table)
    assert abs(sum(shares.values()) - 1.0) < 1e-3
    assert shares["random_document"] > 0.02  # ALBERT's code: one-sentence chunks


def test_sop_paper_rule_swaps_only_and_splits_one_sentence_chunks(tmp_path):
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(3, 30, size=rng.integers(1, 20))) for _ in range(200)]
    docs += [[40]] * 30  # one-sentence documents: one-sentence chunks for sure
    shards = _shards(tmp_path, docs)
    table = inst.build(
        "sentence_order", shards, 64, 0.1, np.random.default_rng(1), sop_single_sentence="split"
    )
    (shard,) = shards
    sentence_starts = np.asarray(shard.sentences)
    kinds = [inst.PAIR_KINDS[k] for k in table[:, inst.KIND]]
    assert "random_document" not in kinds
    assert {"in_order", "swapped", "split_in_order", "split_swapped"} <= set(kinds)
    for row, kind in zip(table, kinds):
        a, b = (row[inst.A_START], row[inst.A_END]), (row[inst.B_START], row[inst.B_END])
        assert _document_of(shard, a[0]) == _document_of(shard, b[0])  # never another document
        first, second = (a, b) if kind.endswith("in_order") else (b, a)
        assert first[1] <= second[0]  # the label says whether A came first
        assert row[inst.LABEL] == kind.endswith("swapped")
        if kind.startswith("split"):  # A and B inside one sentence, meeting at a token boundary
            s = np.searchsorted(sentence_starts, first[0], side="right") - 1
            assert sentence_starts[s] <= first[0] and second[1] <= sentence_starts[s + 1]
    negatives = [k for k in kinds if k.endswith("swapped")]
    assert abs(len(negatives) / len(kinds) - 0.5) < 0.08  # swap with probability 0.5, nothing else


def test_sop_split_by_hand_and_skip(tmp_path):
    shards = _shards(tmp_path, [[10]])  # one document, one sentence of 10 tokens
    table = inst.segment_pairs(
        shards, 64, 0.0, np.random.default_rng(5), sentence_order=True, single_sentence="split"
    )
    r = np.random.default_rng(5)
    r.random()  # short_seq_prob's draw
    cut = int(r.integers(1, 10))  # the token boundary: A = [0, cut), B = [cut, 10)
    if r.random() < 0.5:
        expected = (0, cut, 10, 0, 0, cut, 1, inst.SPLIT_SWAPPED)
    else:
        expected = (0, 0, cut, 0, cut, 10, 0, inst.SPLIT_IN_ORDER)
    assert tuple(table[0]) == expected and len(table) == 1
    skipped = inst.segment_pairs(
        shards, 64, 0.0, np.random.default_rng(5), sentence_order=True, single_sentence="skip"
    )
    assert len(skipped) == 0
    one_token = _shards(tmp_path / "one", [[1]])
    split = inst.segment_pairs(
        one_token, 64, 0.0, np.random.default_rng(5), sentence_order=True, single_sentence="split"
    )
    assert len(split) == 0  # a one-token sentence has no boundary: skipped
    data = InstanceDataset(shards, table, "sentence_order", cls_id=2, sep_id=3)
    assert data[0]["sentence_order_label"] == table[0, inst.LABEL]


def test_albert_recipe_states_and_uses_the_paper_rule():
    from clozelab.core.config import resource_dir
    from tests.helpers import compose_config

    cfg = compose_config("experiment=albert")
    assert cfg.data.sop_single_sentence == "split"
    header = (resource_dir("experiments") / "albert.yaml").read_text().split("defaults:")[0]
    assert "sop_single_sentence=split" in header and "random_document" in header
    with pytest.raises(ClozelabError, match="data.sop_single_sentence"):
        from clozelab.training.validate import validate_data

        validate_data(compose_config("data.sop_single_sentence=swap"))
