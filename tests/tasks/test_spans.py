"""Span-classification NER: span enumeration, the [s; e; g] representation against a hand
computation, targets and decoding (nested and flat), IOB -> spans, the entity JSONL reader,
span-level F1, and the real CoNLL-2003 dev file when present."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import SHARED_DATA
from omegaconf import OmegaConf

from clozelab.core.errors import ClozelabError
from clozelab.tasks.base import task_for
from clozelab.tasks.features import encode_spans, pad_batch
from clozelab.tasks.metrics import span_f1
from clozelab.tasks.readers import (
    SpanExample,
    as_span_examples,
    read_conll,
    read_entities_jsonl,
    read_task,
)
from clozelab.tasks.span_ner import SpanNERModel
from clozelab.tasks.spans import SpanHead, enumerate_spans, greedy_flat, span_targets
from clozelab.training.evaluation import load_task


def _expected_count(n: int, k: int) -> int:
    return sum(n - length + 1 for length in range(1, min(k, n) + 1))


@pytest.mark.parametrize("k", [1, 3, 8])
def test_enumeration_counts_every_span_up_to_the_limit_and_no_padding(k):
    lengths = [5, 2, 0, 10]
    mask = torch.tensor([[j < n for j in range(10)] for n in lengths])
    starts, ends, valid = enumerate_spans(mask, k)
    assert starts.shape == ends.shape == (10 * k,) and valid.shape == (4, 10 * k)
    for row, n in enumerate(lengths):
        assert int(valid[row].sum()) == _expected_count(n, k)
        got = {(int(starts[i]), int(ends[i])) for i in valid[row].nonzero().squeeze(-1).tolist()}
        assert got == {(i, j) for i in range(n) for j in range(i, min(n, i + k))}
    assert (ends >= starts).all() and (ends - starts < k).all()


def test_enumeration_never_crosses_a_masked_word():
    mask = torch.tensor([[True, True, False, True]])
    starts, ends, valid = enumerate_spans(mask, 4)
    got = {(int(starts[i]), int(ends[i])) for i in valid[0].nonzero().squeeze(-1).tolist()}
    assert got == {(0, 0), (1, 1), (0, 1), (3, 3)}


def _hand_head() -> SpanHead:
    head = SpanHead(hidden=2, num_labels=3, max_span_length=2, dropout=0.0, endpoints="linear")
    with torch.no_grad():
        head.start.weight.copy_(torch.eye(2))
        head.start.bias.zero_()
        head.end.weight.copy_(2 * torch.eye(2))
        head.end.bias.copy_(torch.tensor([0.0, 1.0]))
        head.pool.score.weight.copy_(torch.tensor([[1.0, 0.0]]))
        head.pool.score.bias.zero_()
    return head


def test_span_representation_matches_a_hand_computation():
    head = _hand_head()
    # [CLS], word 0 = token 1, word 1 = tokens 2..3, [SEP], [PAD]
    h = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, 0.0], [0.0, 1.0], [9.0, 9.0], [7.0, 7.0]]])
    starts_tok, ends_tok = torch.tensor([[1, 2]]), torch.tensor([[1, 3]])
    word_mask = torch.tensor([[True, True]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 0]])
    rep, starts, ends, valid = head.represent(h, starts_tok, ends_tok, word_mask, attention)
    assert rep.shape == (1, 4, 6)
    assert valid[0].tolist() == [True, True, True, False]  # slot 3: word 1 .. word 2 (none)
    slot = 0 * 2 + 1  # words 0..1
    assert (int(starts[slot]), int(ends[slot])) == (0, 1)
    w = [math.exp(1.0), math.exp(3.0), math.exp(0.0)]  # scores a_t = h_t[0], tokens 1..3
    z = sum(w)
    g = [(w[0] * 1 + w[1] * 3 + w[2] * 0) / z, (w[0] * 2 + w[1] * 0 + w[2] * 1) / z]
    s = [1.0, 2.0]  # start projection (identity) of token 1
    e = [0.0, 3.0]  # end projection 2 * h + (0, 1) of token 3
    assert rep[0, slot].tolist() == pytest.approx(s + e + g, abs=1e-6)
    single = 1 * 2 + 0  # word 1 alone: tokens 2..3
    w2 = [math.exp(3.0), math.exp(0.0)]
    g2 = [(w2[0] * 3) / sum(w2), (w2[1] * 1) / sum(w2)]
    assert rep[0, single].tolist() == pytest.approx([3.0, 0.0, 0.0, 3.0, *g2], abs=1e-6)


def _gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_default_span_head_is_ffn_endpoints_and_attention_pooling():
    head = SpanHead(hidden=2, num_labels=3)
    assert isinstance(head.start, torch.nn.Sequential) and len(head.start) == 3
    assert type(head.pool).__name__ == "AttentionPool"


def test_ffn_endpoints_and_plain_average_by_hand():
    """s_i = FFN_start(h_i) = W2 GELU(W1 h_i + b1) + b2 (and FFN_end likewise); g_ij = the plain
    mean of the span's token states."""
    head = SpanHead(hidden=2, num_labels=3, max_span_length=2, dropout=0.0, pooling="mean")
    with torch.no_grad():
        for ffn, scale in ((head.start, 1.0), (head.end, -1.0)):
            ffn[0].weight.copy_(torch.tensor([[1.0, 1.0], [scale, -1.0]]))
            ffn[0].bias.copy_(torch.tensor([0.5, 0.0]))
            ffn[2].weight.copy_(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
            ffn[2].bias.copy_(torch.tensor([0.0, -1.0]))
    h = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, 0.0], [0.0, 1.0], [9.0, 9.0]]])
    starts_tok, ends_tok = torch.tensor([[1, 2]]), torch.tensor([[1, 3]])
    rep, *_ = head.represent(h, starts_tok, ends_tok, torch.tensor([[True, True]]))

    def ffn(x, scale):
        a = [_gelu(x[0] + x[1] + 0.5), _gelu(scale * x[0] - x[1])]
        return [2.0 * a[0], a[0] + a[1] - 1.0]

    slot = 0 * 2 + 1  # words 0..1: tokens 1..3
    s = ffn([1.0, 2.0], 1.0)  # token 1
    e = ffn([0.0, 1.0], -1.0)  # token 3
    g = [(1.0 + 3.0 + 0.0) / 3, (2.0 + 0.0 + 1.0) / 3]
    assert rep[0, slot].tolist() == pytest.approx(s + e + g, abs=1e-6)
    single = 1 * 2 + 0  # word 1 alone: tokens 2..3
    expected = ffn([3.0, 0.0], 1.0) + ffn([0.0, 1.0], -1.0) + [1.5, 0.5]
    assert rep[0, single].tolist() == pytest.approx(expected, abs=1e-6)
    assert not list(head.pool.parameters())
    with pytest.raises(ClozelabError, match="task.span_pooling"):
        SpanHead(hidden=2, num_labels=3, pooling="max")
    with pytest.raises(ClozelabError, match="task.span_endpoints"):
        SpanHead(hidden=2, num_labels=3, endpoints="bilinear")


def test_pooling_ignores_tokens_outside_the_span_and_padding():
    torch.manual_seed(0)
    head = SpanHead(hidden=4, num_labels=2, max_span_length=3, dropout=0.0)
    h = torch.randn(1, 6, 4)
    starts_tok, ends_tok = torch.tensor([[1, 2, 4]]), torch.tensor([[1, 3, 4]])
    mask = torch.tensor([[True, True, True]])
    rep, *_ = head.represent(h, starts_tok, ends_tok, mask)
    changed = h.clone()
    changed[0, [0, 5]] = 100.0  # [CLS] and [SEP]/padding: no span may see them
    rep2, *_ = head.represent(changed, starts_tok, ends_tok, mask)
    assert torch.allclose(rep, rep2)


def test_targets_keep_nested_gold_spans_and_ignore_invalid_slots():
    mask = torch.tensor([[True, True, True, False]])
    _, _, valid = enumerate_spans(mask, 3)
    gold = torch.tensor([[[0, 2, 1], [1, 1, 2], [-1, -1, -1]]])  # nested: words 0..2 and word 1
    targets = span_targets(gold, valid, 3)
    assert targets[0, 0 * 3 + 2] == 1 and targets[0, 1 * 3 + 0] == 2
    assert int((targets > 0).sum()) == 2
    assert int((targets == 0).sum()) == _expected_count(3, 3) - 2
    assert bool((targets[~valid] == -100).all())


def _decode_out(probs: dict[tuple[int, int], tuple[int, float]], words: int, k: int, labels=3):
    mask = torch.ones(1, words, dtype=torch.bool)
    starts, ends, valid = enumerate_spans(mask, k)
    logits = torch.zeros(1, words * k, labels)
    logits[..., 0] = 5.0  # none everywhere
    for (s, e), (label, value) in probs.items():
        logits[0, s * k + (e - s), label] = value
    return {"span_logits": logits, "span_mask": valid, "span_starts": starts, "span_ends": ends}


def test_nested_decoding_keeps_every_entity_and_flat_resolves_overlaps_by_score():
    scores = {(0, 2): (1, 9.0), (1, 1): (2, 8.0), (2, 3): (2, 10.0), (4, 4): (1, 7.0)}
    out = _decode_out(scores, 5, 3)
    nested = SpanHead(4, 3, 3, decoding="nested").decode(out)[0]
    assert [(s, e, lab) for s, e, lab, _ in nested] == [(0, 3, 1), (1, 2, 2), (2, 4, 2), (4, 5, 1)]
    flat = SpanHead(4, 3, 3, decoding="flat").decode(out)[0]
    # (2,3) scores best; (0,2) overlaps it; (1,1) does not
    assert [(s, e, lab) for s, e, lab, _ in flat] == [(1, 2, 2), (2, 4, 2), (4, 5, 1)]
    assert greedy_flat([(0, 2, 1, 0.5), (1, 3, 1, 0.5)]) == [(0, 2, 1, 0.5)]


def test_bad_span_settings_are_clear_errors():
    with pytest.raises(ClozelabError, match="task.decoding"):
        SpanHead(4, 3, decoding="viterbi")
    with pytest.raises(ClozelabError, match="task.max_span_length"):
        SpanHead(4, 3, max_span_length=0)


def test_iob1_tags_become_gold_spans(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "Peter I-PER\nBlackburn I-PER\nB-side B-PER\nand O\nB I-LOC\nC I-ORG\n\n"
        "the O\nEU I-ORG\nB-LOC-x B-LOC\nLondon I-LOC\n\n"
        "B-first B-MISC\nthen O\n"
    )
    path = tmp_path / "d.txt"
    path.write_text(text, "utf-8")
    spans = [e.spans for e in as_span_examples(read_conll(path, scheme="iob1"))]
    assert spans == [
        [(0, 2, "PER"), (2, 3, "PER"), (4, 5, "LOC"), (5, 6, "ORG")],
        [(1, 2, "ORG"), (2, 4, "LOC")],  # B- between two types still opens one entity
        [(0, 1, "MISC")],
    ]
    iob2 = [e.spans for e in as_span_examples(read_conll(path, scheme="iob2"))]
    assert iob2[0] == [(0, 2, "PER"), (2, 3, "PER"), (4, 5, "LOC"), (5, 6, "ORG")]


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", "utf-8")


NESTED = [
    {
        "tokens": ["Bank", "of", "China", "said"],
        "entities": [
            {"start": 0, "end": 3, "type": "ORG"},
            {"start": 2, "end": 3, "type": "GPE"},
            {"start": 2, "end": 3, "type": "GPE"},
        ],
    },
    {"tokens": ["nothing", "here"], "entities": []},
]


def test_entity_jsonl_keeps_nested_spans(tmp_path):
    path = tmp_path / "n.jsonl"
    _write_jsonl(path, NESTED)
    first, second = read_entities_jsonl(path)
    assert first.spans == [(0, 3, "ORG"), (2, 3, "GPE")] and second.spans == []
    task = OmegaConf.merge(load_task("nested_ner"), {"train": str(path), "validation": str(path)})
    splits = task_for(task).read(None)  # the span NER task reads jsonl as entity spans
    assert isinstance(splits["train"][0], SpanExample)
    bad = tmp_path / "bad.jsonl"
    _write_jsonl(bad, [{"tokens": ["a"], "entities": [{"start": 0, "end": 2, "type": "X"}]}])
    with pytest.raises(ClozelabError, match="end exclusive"):
        read_entities_jsonl(bad)


def test_encoded_gold_spans_and_word_boundaries(tiny_tokenizer_dir):
    from clozelab.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_tokenizer_dir)
    words = ["Paris", "riverking", "the", "city", "of", "London", "a", "b", "c"]
    ex = SpanExample(words, [(0, 2, "LOC"), (1, 2, "PER"), (0, 9, "MISC")])
    index = {"none": 0, "LOC": 1, "PER": 2, "MISC": 3}
    (f,) = encode_spans(tok, [ex], 64, index, max_span_length=4)
    enc = tok.hf.encode_batch([words], is_pretokenized=True, add_special_tokens=False)[0]
    wids = enc.word_ids
    assert f["word_starts"] == [wids.index(w) + 1 for w in range(len(words))]
    assert f["word_ends"] == [len(wids) - wids[::-1].index(w) for w in range(len(words))]
    assert f["span_gold"] == [(0, 1, 1), (1, 1, 2)]  # the 9-word entity exceeds the limit
    batch = pad_batch([f, {**f, "span_gold": []}], tok.pad_id)
    assert batch["span_gold"].shape == (2, 2, 3) and bool((batch["span_gold"][1] == -1).all())


def test_nested_gold_spans_train_and_decode(tiny_backbone):
    """The head learns two nested entities of one sentence and decodes both."""
    backbone = tiny_backbone()
    ex = SpanExample(["the", "king", "of", "Paris"], [(1, 4, "PER"), (3, 4, "LOC")])
    index = {"none": 0, "PER": 1, "LOC": 2}
    feats = encode_spans(backbone.tokenizer, [ex], 32, index, 4)
    batch = pad_batch(feats, backbone.tokenizer.pad_id)
    torch.manual_seed(0)
    model = SpanNERModel(backbone, 3, dropout=0.0, max_span_length=4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        spans = model.predict_spans(model(batch))[0]
    assert [(s, e, lab) for s, e, lab, _ in spans] == [(1, 4, 1), (3, 4, 2)]


def test_span_f1_by_hand():
    gold = [{(0, 3, "ORG"), (2, 3, "GPE")}, {(1, 2, "PER")}]
    pred = [{(0, 3, "ORG"), (2, 3, "LOC"), (0, 1, "PER")}, {(1, 2, "PER")}]
    m = span_f1(gold, pred)  # gold 3, pred 4, correct 2
    assert m["entity_precision"] == pytest.approx(2 / 4)
    assert m["entity_recall"] == pytest.approx(2 / 3)
    assert m["entity_f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert span_f1([set()], [set()])["entity_f1"] == 0.0


@pytest.mark.skipif(not (SHARED_DATA / "conll2003").is_dir(), reason="no ../shared/data")
def test_real_conll_dev_gives_its_entity_spans():
    task = OmegaConf.merge(load_task("conll2003_spans"), {"train": None})
    examples = as_span_examples(read_task(task, SHARED_DATA)["validation"])
    assert len(examples) == 3250
    counts = {}
    for e in examples:
        for s, end, kind in e.spans:
            assert 0 <= s < end <= len(e.words)
            counts[kind] = counts.get(kind, 0) + 1
    # the official dev (testa) entity counts
    assert counts == {"LOC": 1837, "MISC": 922, "ORG": 1341, "PER": 1842}
