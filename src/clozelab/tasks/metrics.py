"""Task metrics: torchmetrics for accuracy / F1 / MCC / Pearson / Spearman, entity-level F1 over
IOB2 tags or entity spans (exact span and type match, micro-averaged as conlleval), and SQuAD
v1.1 exact match and token F1 with the official answer normalisation (lower case, no
punctuation, no articles a/an/the, single spaces), each a maximum over the gold answers, in
percent."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import torch
from torchmetrics.functional import (
    accuracy,
    f1_score,
    matthews_corrcoef,
    pearson_corrcoef,
    spearman_corrcoef,
)

from clozelab.core.errors import config_error


def classification_metrics(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, names: Sequence[str]
) -> dict[str, float]:
    """``names`` among accuracy, f1 (binary: of class 1; else macro), mcc."""
    task = "binary" if num_classes == 2 else "multiclass"
    kwargs = {"num_classes": num_classes} if task == "multiclass" else {}
    out = {}
    for name in names:
        if name == "accuracy":
            out[name] = accuracy(preds, target, task=task, **kwargs)
        elif name == "f1":
            avg = {} if task == "binary" else {"average": "macro"}
            out[name] = f1_score(preds, target, task=task, **kwargs, **avg)
        elif name == "mcc":
            out[name] = matthews_corrcoef(preds, target, task=task, **kwargs)
        else:
            raise config_error(
                "task.metrics", name, "not a classification metric", "use accuracy, f1, mcc"
            )
    return {k: float(v) for k, v in out.items()}


def regression_metrics(
    preds: torch.Tensor, target: torch.Tensor, names: Sequence[str]
) -> dict[str, float]:
    """``names`` among pearson, spearman (and their mean, ``pearson_spearman``)."""
    preds, target = preds.double(), target.double()
    values = {
        "pearson": float(pearson_corrcoef(preds, target)),
        "spearman": float(spearman_corrcoef(preds, target)),
    }
    values["pearson_spearman"] = (values["pearson"] + values["spearman"]) / 2
    unknown = [n for n in names if n not in values]
    if unknown:
        raise config_error(
            "task.metrics", unknown, "not a regression metric", "use pearson, spearman"
        )
    return {n: values[n] for n in names}


# --- entities -----------------------------------------------------------------------------------


def entity_spans(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """``(start, end_exclusive, type)`` of the entities in an IOB2 sequence. As conlleval, an
    ``I-X`` after ``O`` or after another type opens a new entity."""
    spans = set()
    start, kind = None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        opens = prefix == "B" or (prefix == "I" and (kind != label or start is None))
        if start is not None and (prefix == "O" or opens):
            spans.add((start, i, kind))
            start, kind = None, None
        if opens:
            start, kind = i, label
    return spans


def entity_f1(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 of exact entity matches over sentences of IOB2 tags."""
    return span_f1([entity_spans(g) for g in gold], [entity_spans(p) for p in pred])


def span_f1(gold: Sequence[set], pred: Sequence[set]) -> dict[str, float]:
    """Micro precision, recall and F1 of exact ``(start, end, type)`` matches, sentence by
    sentence (sets, so nested and overlapping entities count each)."""
    tp = n_gold = n_pred = 0
    for gs, ps in zip(gold, pred, strict=True):
        gs, ps = set(gs), set(ps)
        tp += len(gs & ps)
        n_gold += len(gs)
        n_pred += len(ps)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_f1": f1, "entity_precision": precision, "entity_recall": recall}


# --- SQuAD --------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lower, strip punctuation, drop a/an/the, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """``exact_match`` and ``f1`` in percent, each the max over the gold answers per question."""
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for pred, golds in zip(predictions, answers, strict=True):
        golds = list(golds) or [""]
        em += max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds)
        f1 += max(_token_f1(pred, g) for g in golds)
    return {"exact_match": 100 * em / len(predictions), "f1": 100 * f1 / len(predictions)}


def best_span(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    allowed: torch.Tensor,
    max_answer_length: int,
) -> tuple[int, int, float]:
    """The (start, end) with start <= end < start + max_answer_length, both on ``allowed``
    (passage) positions, maximising start + end logit. Returns (-1, -1, -inf) if none is
    allowed."""
    t = start_logits.shape[0]
    neg = torch.finfo(start_logits.dtype).min
    s = start_logits.masked_fill(~allowed, neg)
    e = end_logits.masked_fill(~allowed, neg)
    scores = s[:, None] + e[None, :]  # (T, T)
    idx = torch.arange(t)
    valid = (idx[None, :] >= idx[:, None]) & (idx[None, :] < idx[:, None] + max_answer_length)
    valid &= allowed[:, None] & allowed[None, :]
    if not bool(valid.any()):
        return -1, -1, float("-inf")
    scores = scores.masked_fill(~valid, float("-inf"))
    flat = int(scores.argmax())
    return flat // t, flat % t, float(scores.view(-1)[flat])
