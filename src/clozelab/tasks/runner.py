"""Fine-tune and score one task for one seed: features, the training loop, the metrics.

The loop is plain PyTorch (AdamW without decay on biases and LayerNorms, linear warm-up then
linear decay, gradient clipping at 1.0, dynamic padding); one task on one seed is small enough
that Lightning's machinery would only add start-up time.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig

from clozelab.errors import config_error
from clozelab.tasks.backbone import Backbone
from clozelab.tasks.features import encode_qa, encode_spans, encode_text, encode_tokens, pad_batch
from clozelab.tasks.heads import TaskModel
from clozelab.tasks.metrics import (
    best_span,
    classification_metrics,
    entity_f1,
    regression_metrics,
    span_f1,
    squad_scores,
)
from clozelab.tasks.readers import as_span_examples, iter_tags, label_names
from clozelab.tasks.spans import NONE_LABEL

log = logging.getLogger(__name__)

DEFAULT_METRICS = {
    "classification": ["accuracy"],
    "regression": ["pearson", "spearman"],
    "token": ["entity_f1"],
    "qa": ["exact_match", "f1"],
    "span_ner": ["entity_f1"],
}


@dataclass
class Prepared:
    """A task's features, encoded once and shared by every seed."""

    kind: str
    train: list[dict]
    validation: list[dict]
    num_labels: int = 2
    labels: list[str] = field(default_factory=list)
    examples: list = field(default_factory=list)  # validation examples (token / qa scoring)


def prepare(task: DictConfig, splits: dict, backbone: Backbone) -> Prepared:
    """Encode ``splits`` for ``task.kind`` with the backbone's tokenizer."""
    kind = task.kind
    tok = backbone.tokenizer
    max_len = min(int(task.get("max_seq_length", 128)), backbone.max_positions)
    if kind == "classification":
        labels = label_names(task, splits["train"] or splits["validation"])
        enc = lambda xs: encode_text(tok, xs, max_len, labels)  # noqa: E731
        return Prepared(kind, enc(splits["train"]), enc(splits["validation"]), len(labels), labels)
    if kind == "regression":
        enc = lambda xs: encode_text(tok, xs, max_len)  # noqa: E731
        return Prepared(kind, enc(splits["train"]), enc(splits["validation"]), 1)
    if kind == "token":
        if task.get("labels"):
            labels = [str(x) for x in task.labels]
        else:
            labels = sorted(set(iter_tags(splits["train"])) | {"O"})
        labels = ["O", *[t for t in labels if t != "O"]]
        index = {t: i for i, t in enumerate(labels)}
        train = encode_tokens(tok, splits["train"], max_len, index)
        validation = encode_tokens(tok, splits["validation"], max_len, index)
        return Prepared(kind, train, validation, len(labels), labels, splits["validation"])
    if kind == "qa":
        stride, query = int(task.get("doc_stride", 128)), int(task.get("max_query_length", 64))
        train = encode_qa(tok, splits["train"], max_len, stride, query)
        validation = encode_qa(tok, splits["validation"], max_len, stride, query)
        return Prepared(kind, train, validation, 2, [], splits["validation"])
    if kind == "span_ner":
        train = as_span_examples(splits["train"])
        validation = as_span_examples(splits["validation"])
        labels = [NONE_LABEL, *_span_types(task, train + validation)]
        index = {t: i for i, t in enumerate(labels)}
        k = int(task.get("max_span_length", 8))
        enc = lambda xs: encode_spans(tok, xs, max_len, index, k)  # noqa: E731
        return Prepared(kind, enc(train), enc(validation), len(labels), labels, validation)
    raise config_error(
        "task.kind", kind, "unknown task kind", "use classification|regression|token|qa|span_ner"
    )


def _span_types(task: DictConfig, examples: list) -> list[str]:
    """Entity types: ``task.labels`` when given (each gold type must be among them), else the
    sorted types found in the data."""
    found = sorted({kind for e in examples for _, _, kind in e.spans})
    types = [str(x) for x in task.labels] if task.get("labels") else found
    unknown = sorted(set(found) - set(types))
    if unknown or NONE_LABEL in types:
        raise config_error(
            "task.labels", types,
            f"entity types {unknown} are not listed" if unknown else
            f"{NONE_LABEL!r} is the label of non-entities, not a type",
            "list every entity type of the data in task.labels (or leave it null)",
        )  # fmt: skip
    return types


def _batches(features: list[dict], size: int, shuffle: bool, rng: random.Random | None):
    order = list(range(len(features)))
    if shuffle:
        rng.shuffle(order)
    else:  # by length: less padding at scoring time
        order.sort(key=lambda i: len(features[i]["input_ids"]))
    for i in range(0, len(order), size):
        idx = order[i : i + size]
        yield idx, [features[j] for j in idx]


def _optimizer(model: TaskModel, lr: float, weight_decay: float, head_lr: float | None):
    decay, no_decay, head = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if head_lr and not name.startswith("backbone."):
            head.append(p)
        elif p.ndim < 2:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if head:
        groups.append({"params": head, "weight_decay": 0.0, "lr": head_lr})
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def train(model: TaskModel, prepared: Prepared, task: DictConfig, seed: int, pad_id: int) -> dict:
    """Fine-tune ``model`` on ``prepared.train``; returns steps and wall time."""
    if not prepared.train:
        raise config_error(
            "task.train",
            task.get("train"),
            "the task has no training examples",
            "give task.train, or task.holdout=F to train on part of the validation file",
        )
    torch.manual_seed(seed)
    rng = random.Random(seed)
    batch_size = int(task.get("batch_size", 32))
    epochs = float(task.get("epochs", 3))
    per_epoch = math.ceil(len(prepared.train) / batch_size)
    total = max(1, math.ceil(per_epoch * epochs))
    if task.get("max_steps"):
        total = min(total, int(task.max_steps))
    warmup = int(total * float(task.get("warmup", 0.1)))
    head_lr = task.get("head_lr") if model.mode == "features" else None
    opt = _optimizer(model, float(task.get("lr", 5e-5)), float(task.get("weight_decay", 0.01)),
                     float(head_lr) if head_lr else None)  # fmt: skip

    def schedule(s: int) -> float:  # linear warm-up, then linear decay to 0
        if s < warmup:
            return (s + 1) / max(1, warmup)
        return max(0.0, (total - s) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    step, start, losses = 0, time.perf_counter(), []
    while step < total:
        for _, feats in _batches(prepared.train, batch_size, True, rng):
            out = model(pad_batch(feats, pad_id))
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(out["loss"].detach()))
            step += 1
            if step % 50 == 0:
                log.info("step %d/%d loss %.4f", step, total, sum(losses[-50:]) / 50)
            if step >= total:
                break
    return {
        "steps": step,
        "train_time_s": round(time.perf_counter() - start, 2),
        "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
    }


@torch.no_grad()
def score(model: TaskModel, prepared: Prepared, task: DictConfig, pad_id: int) -> dict:
    """The task's metrics on ``prepared.validation``."""
    model.eval()
    names = list(task.get("metrics") or DEFAULT_METRICS[prepared.kind])
    size = int(task.get("eval_batch_size", 64))
    outputs: list[tuple[list[int], dict]] = []
    for idx, feats in _batches(prepared.validation, size, False, None):
        batch = pad_batch(feats, pad_id)
        outputs.append((idx, batch, model(batch)))
    return SCORERS[prepared.kind](model, prepared, task, outputs, names)


def _score_sequence(model, prepared, task, outputs, names):
    n = len(prepared.validation)
    if prepared.kind == "regression":
        preds = torch.zeros(n)
        for idx, _, out in outputs:
            preds[idx] = out["logits"].squeeze(-1).float()
        target = torch.tensor([f["labels"] for f in prepared.validation])
        return regression_metrics(preds, target, names)
    preds = torch.zeros(n, dtype=torch.long)
    for idx, _, out in outputs:
        preds[idx] = out["logits"].argmax(-1)
    target = torch.tensor([f["labels"] for f in prepared.validation])
    return classification_metrics(preds, target, prepared.num_labels, names)


def _score_tokens(model, prepared, task, outputs, names):
    pred_tags: list[list[str]] = [[] for _ in prepared.validation]
    for idx, batch, out in outputs:
        for row, tags in zip(idx, model.predict_tags(out, batch["word_mask"]), strict=True):
            n_words = prepared.validation[row]["n_words"]
            words = [prepared.labels[t] for t in tags][:n_words]
            pred_tags[row] = words + ["O"] * (n_words - len(words))  # cut words: "O"
    gold = [e.tags for e in prepared.examples]
    return {k: v for k, v in entity_f1(gold, pred_tags).items() if k in names or k == "entity_f1"}


def _score_spans(model, prepared, task, outputs, names):
    pred: list[set] = [set() for _ in prepared.validation]
    for idx, _, out in outputs:
        for row, spans in zip(idx, model.predict_spans(out), strict=True):
            pred[row] = {(s, e, prepared.labels[label]) for s, e, label, _ in spans}
    gold = [set(e.spans) for e in prepared.examples]
    return {k: v for k, v in span_f1(gold, pred).items() if k in names or k == "entity_f1"}


def _score_qa(model, prepared, task, outputs, names):
    max_answer = int(task.get("max_answer_length", 30))
    best: dict[int, tuple[float, str]] = {}
    for idx, batch, out in outputs:
        for row, feature_index in enumerate(idx):
            feature = prepared.validation[feature_index]
            n = len(feature["input_ids"])
            allowed = batch["context_mask"][row, :n]
            s, e, value = best_span(
                out["start_logits"][row, :n], out["end_logits"][row, :n], allowed, max_answer
            )
            if s < 0:
                continue
            example_index = feature["example_index"]
            context = prepared.examples[example_index].context
            text = context[feature["offsets"][s][0] : feature["offsets"][e][1]]
            if example_index not in best or value > best[example_index][0]:
                best[example_index] = (value, text)
    predictions = [best.get(i, (0.0, ""))[1] for i in range(len(prepared.examples))]
    answers = [e.answers for e in prepared.examples]
    scores = squad_scores(predictions, answers)
    return {k: v for k, v in scores.items() if k in names}


SCORERS: dict[str, Callable] = {
    "classification": _score_sequence,
    "regression": _score_sequence,
    "token": _score_tokens,
    "qa": _score_qa,
    "span_ner": _score_spans,
}


def run_seed(
    make_backbone: Callable[[], Backbone],
    prepared: Prepared,
    task: DictConfig,
    seed: int,
    mode: str = "finetune",
    mix_layers: int = 4,
    layer_mix: str = "average",
) -> dict:
    """Fresh backbone + head for ``seed``, fine-tuned then scored: metrics and run facts."""
    torch.manual_seed(seed)
    backbone = make_backbone()
    model = TaskModel(
        backbone,
        prepared.kind,
        prepared.num_labels,
        mode=mode,
        mix_layers=mix_layers,
        layer_mix=layer_mix,
        decoder=task.get("decoder", "softmax"),
        subword_labels=task.get("subword_labels", "first"),
        subword_decoding=task.get("subword_decoding", "first"),
        dropout=float(task.get("dropout", 0.1)),
        max_span_length=int(task.get("max_span_length", 8)),
        span_decoding=task.get("decoding", "nested"),
        span_endpoints=task.get("span_endpoints", "ffn"),
        span_pooling=task.get("span_pooling", "attention"),
        pooling=task.get("pooling"),
    )
    pad_id = backbone.tokenizer.pad_id
    facts = train(model, prepared, task, seed, pad_id)
    start = time.perf_counter()
    metrics = score(model, prepared, task, pad_id)
    facts["eval_time_s"] = round(time.perf_counter() - start, 2)
    return {"metrics": metrics, **facts}
