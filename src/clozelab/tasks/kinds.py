"""The built-in downstream task kinds, one class each (``Task``): sentence (pair) classification,
regression, token labelling, extractive QA, span NER, and the zero-shot word similarity and
response selection of the bundled suite. ``task_for(cfg)`` builds the class a task config names
(``_target_``, else the class of its ``kind``)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from clozelab.core.config import component_class
from clozelab.core.errors import config_error
from clozelab.tasks.backbone import Backbone
from clozelab.tasks.base import Task, TaskData
from clozelab.tasks.features import encode_qa, encode_spans, encode_text, encode_tokens
from clozelab.tasks.heads import TaskModel, resolve_pooling
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


class _Finetuned(Task):
    """A task fine-tuned through ``TaskModel`` (the backbone and the head of ``kind``)."""

    def max_length(self, backbone: Backbone) -> int:
        return min(int(self.cfg.get("max_seq_length", 128)), backbone.max_positions)

    def build_model(self, backbone, data, *, mode, mix_layers, layer_mix) -> nn.Module:
        task = self.cfg
        return TaskModel(
            backbone,
            self.kind,
            data.num_labels,
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


class ClassificationTask(_Finetuned):
    """One sentence or a pair -> a class ([CLS] head; accuracy, F1, MCC)."""

    kind = "classification"
    default_metrics = ("accuracy",)

    summary_pooling = "cls"  # the backbone's summary token, recorded by ``encode``

    def encode(self, splits, backbone) -> TaskData:
        self.summary_pooling = backbone.summary_pooling
        labels = label_names(self.cfg, splits["train"] or splits["validation"])
        length = self.max_length(backbone)
        train = encode_text(backbone.tokenizer, splits["train"], length, labels)
        validation = encode_text(backbone.tokenizer, splits["validation"], length, labels)
        return TaskData(train, validation, len(labels), labels)

    def score(self, model, data, outputs, names) -> dict:
        preds = torch.zeros(len(data.validation), dtype=torch.long)
        for idx, _, out in outputs:
            preds[idx] = out["logits"].argmax(-1)
        target = torch.tensor([f["labels"] for f in data.validation])
        return classification_metrics(preds, target, data.num_labels, names)

    def protocol(self, mode: str) -> dict:
        pooling = resolve_pooling(self.cfg.get("pooling"), mode, self.summary_pooling)
        return {"decoder": None, "pooling": pooling}


class RegressionTask(ClassificationTask):
    """One sentence or a pair -> a real score (STS-B; Pearson, Spearman)."""

    kind = "regression"
    default_metrics = ("pearson", "spearman")

    def encode(self, splits, backbone) -> TaskData:
        self.summary_pooling = backbone.summary_pooling
        length = self.max_length(backbone)
        train = encode_text(backbone.tokenizer, splits["train"], length)
        return TaskData(train, encode_text(backbone.tokenizer, splits["validation"], length), 1)

    def score(self, model, data, outputs, names) -> dict:
        preds = torch.zeros(len(data.validation))
        for idx, _, out in outputs:
            preds[idx] = out["logits"].squeeze(-1).float()
        target = torch.tensor([f["labels"] for f in data.validation])
        return regression_metrics(preds, target, names)


class TokenTask(_Finetuned):
    """A tag per word (CoNLL NER: first-subword labels, softmax or CRF; entity-level F1)."""

    kind = "token"
    default_metrics = ("entity_f1",)

    def encode(self, splits, backbone) -> TaskData:
        if self.cfg.get("labels"):
            labels = [str(x) for x in self.cfg.labels]
        else:
            labels = sorted(set(iter_tags(splits["train"])) | {"O"})
        labels = ["O", *[t for t in labels if t != "O"]]
        index = {t: i for i, t in enumerate(labels)}
        length = self.max_length(backbone)
        train = encode_tokens(backbone.tokenizer, splits["train"], length, index)
        validation = encode_tokens(backbone.tokenizer, splits["validation"], length, index)
        return TaskData(train, validation, len(labels), labels, splits["validation"])

    def score(self, model, data, outputs, names) -> dict:
        pred_tags: list[list[str]] = [[] for _ in data.validation]
        for idx, batch, out in outputs:
            for row, tags in zip(idx, model.predict_tags(out, batch["word_mask"]), strict=True):
                n_words = data.validation[row]["n_words"]
                words = [data.labels[t] for t in tags][:n_words]
                pred_tags[row] = words + ["O"] * (n_words - len(words))  # cut words: "O"
        gold = [e.tags for e in data.examples]
        scores = entity_f1(gold, pred_tags)
        return {k: v for k, v in scores.items() if k in names or k == "entity_f1"}

    def protocol(self, mode: str) -> dict:
        task = self.cfg
        return {"decoder": task.get("decoder"),
                "subword_labels": task.get("subword_labels", "first"),
                "subword_decoding": task.get("subword_decoding", "first")}  # fmt: skip


class QATask(_Finetuned):
    """Extractive QA (SQuAD v1.1: start/end pointers over the passage; EM and F1)."""

    kind = "qa"
    default_metrics = ("exact_match", "f1")

    def encode(self, splits, backbone) -> TaskData:
        stride = int(self.cfg.get("doc_stride", 128))
        query = int(self.cfg.get("max_query_length", 64))
        length = self.max_length(backbone)
        train = encode_qa(backbone.tokenizer, splits["train"], length, stride, query)
        validation = encode_qa(backbone.tokenizer, splits["validation"], length, stride, query)
        return TaskData(train, validation, 2, [], splits["validation"])

    def score(self, model, data, outputs, names) -> dict:
        max_answer = int(self.cfg.get("max_answer_length", 30))
        best: dict[int, tuple[float, str]] = {}
        for idx, batch, out in outputs:
            for row, feature_index in enumerate(idx):
                feature = data.validation[feature_index]
                n = len(feature["input_ids"])
                allowed = batch["context_mask"][row, :n]
                s, e, value = best_span(
                    out["start_logits"][row, :n], out["end_logits"][row, :n], allowed, max_answer
                )
                if s < 0:
                    continue
                example_index = feature["example_index"]
                context = data.examples[example_index].context
                text = context[feature["offsets"][s][0] : feature["offsets"][e][1]]
                if example_index not in best or value > best[example_index][0]:
                    best[example_index] = (value, text)
        predictions = [best.get(i, (0.0, ""))[1] for i in range(len(data.examples))]
        scores = squad_scores(predictions, [e.answers for e in data.examples])
        return {k: v for k, v in scores.items() if k in names}


class SpanNERTask(_Finetuned):
    """Entities as spans ([s_i; e_j; g_ij] span representations; nested or flat decoding)."""

    kind = "span_ner"
    default_metrics = ("entity_f1",)

    def encode(self, splits, backbone) -> TaskData:
        train = as_span_examples(splits["train"])
        validation = as_span_examples(splits["validation"])
        labels = [NONE_LABEL, *self.span_types(train + validation)]
        index = {t: i for i, t in enumerate(labels)}
        k = int(self.cfg.get("max_span_length", 8))
        length = self.max_length(backbone)
        tok = backbone.tokenizer
        return TaskData(encode_spans(tok, train, length, index, k),
                        encode_spans(tok, validation, length, index, k),
                        len(labels), labels, validation)  # fmt: skip

    def span_types(self, examples: list) -> list[str]:
        """Entity types: ``task.labels`` when given (each gold type must be among them), else
        the sorted types found in the data."""
        task = self.cfg
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

    def score(self, model, data, outputs, names) -> dict:
        pred: list[set] = [set() for _ in data.validation]
        for idx, _, out in outputs:
            for row, spans in zip(idx, model.predict_spans(out), strict=True):
                pred[row] = {(s, e, data.labels[label]) for s, e, label, _ in spans}
        gold = [set(e.spans) for e in data.examples]
        return {k: v for k, v in span_f1(gold, pred).items() if k in names or k == "entity_f1"}

    def protocol(self, mode: str) -> dict:
        task = self.cfg
        return {"decoder": None, "max_span_length": task.get("max_span_length", 8),
                "span_endpoints": task.get("span_endpoints", "ffn"),
                "span_pooling": task.get("span_pooling", "attention"),
                "decoding": task.get("decoding", "nested")}  # fmt: skip


class _ZeroShot(Task):
    """Scored on the frozen encoder's mean-pooled vectors, without training."""

    zero_shot = True
    default_metrics = ("spearman",)

    def protocol(self, mode: str) -> dict:
        layers = self.cfg.get("layers", -1)
        layers = layers if isinstance(layers, int) else [int(i) for i in layers]
        return {"training": "none (zero-shot, frozen encoder, mean-pooled)", "layers": layers}


class WordSimilarityTask(_ZeroShot):
    """Spearman correlation of human scores with the cosine of word vectors (SimLex, WordSim)."""

    kind = "word_similarity"

    def score_zero_shot(self, backbone, seeds) -> list[dict]:
        from clozelab.tasks.bundled import word_similarity

        return [word_similarity(backbone, self.cfg)] * len(seeds)  # deterministic


class ResponseSelectionTask(_ZeroShot):
    """The true reply ranked among distractors by cosine (chatterbot; recall@1 and MRR)."""

    kind = "response_selection"

    def score_zero_shot(self, backbone, seeds) -> list[dict]:
        from clozelab.tasks.bundled import response_selection

        return response_selection(backbone, self.cfg, seeds)


#: The built-in class of each ``task.kind``, for task configs without a ``_target_``.
BUILT_IN = (ClassificationTask, RegressionTask, TokenTask, QATask, SpanNERTask,
            WordSimilarityTask, ResponseSelectionTask)  # fmt: skip
KINDS: dict[str, type[Task]] = {cls.kind: cls for cls in BUILT_IN}


def task_for(cfg: DictConfig) -> Task:
    """The task a config node names: its ``_target_`` class (a ``Task``), else ``KINDS[kind]``."""
    if cfg.get("_target_"):
        return component_class(cfg, "task", Task)(cfg)
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise config_error(
            "task.kind", kind, "unknown task kind",
            f"use one of {list(KINDS)}, or task._target_=my_module.MyTask (a Task subclass)",
        )  # fmt: skip
    return KINDS[kind](cfg)
