"""Metric values against hand-computed ones."""

from __future__ import annotations

import math

import pytest
import torch

from clozelab.tasks.metrics import (
    best_span,
    classification_metrics,
    entity_f1,
    entity_spans,
    normalize_answer,
    regression_metrics,
    squad_scores,
)


def test_classification_metrics_by_hand():
    preds = torch.tensor([1, 1, 0, 0, 1])
    target = torch.tensor([1, 0, 0, 1, 1])
    m = classification_metrics(preds, target, 2, ["accuracy", "f1", "mcc"])
    # tp=2 fp=1 fn=1 tn=1
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["mcc"] == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))


def test_regression_metrics_by_hand():
    m = regression_metrics(torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([1.0, 3.0, 2.0, 4.0]),
                           ["pearson", "spearman"])  # fmt: skip
    assert m["spearman"] == pytest.approx(1 - 6 * 2 / (4 * 15))  # rank diffs 0,1,1,0
    x, y = [1, 2, 3, 5], [1, 3, 2, 4]
    mx, my = sum(x) / 4, sum(y) / 4
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    assert m["pearson"] == pytest.approx(cov / (sx * sy), abs=1e-6)


def test_entity_spans_follow_conlleval():
    assert entity_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == {
        (0, 2, "PER"), (3, 4, "LOC"), (4, 5, "LOC"), (5, 6, "ORG")
    }  # fmt: skip


def test_entity_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "B-MISC"]]
    m = entity_f1(gold, pred)  # gold 3, pred 4, correct 2 (LOC, ORG)
    assert m["entity_precision"] == pytest.approx(2 / 4)
    assert m["entity_recall"] == pytest.approx(2 / 3)
    assert m["entity_f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an Apple a day") == "apple day"
    m = squad_scores(["the cat sat", "Paris"], [["a cat sat down", "dog"], ["paris", "x"]])
    assert m["exact_match"] == pytest.approx(50.0)
    # "cat sat" vs "cat sat down": p=1, r=2/3 -> f1=0.8 ; second exact -> 1
    assert m["f1"] == pytest.approx(100 * (0.8 + 1.0) / 2)


def test_best_span_stays_in_the_passage_and_length_limit():
    start = torch.tensor([9.0, 8.0, 0.0, 1.0, 0.5, 0.0])
    end = torch.tensor([9.0, 0.0, 0.0, 0.2, 0.1, 3.0])
    allowed = torch.tensor([False, False, True, True, True, True])
    s, e, _ = best_span(start, end, allowed, max_answer_length=2)
    assert (s, e) == (4, 5)  # 3..5 is longer than 2; nothing before position 2
    s, e, _ = best_span(start, end, allowed, max_answer_length=3)
    assert (s, e) == (3, 5)
    assert best_span(start, end, torch.zeros(6, dtype=torch.bool), 3)[0] == -1
