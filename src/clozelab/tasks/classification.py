"""Sentence (pair) classification and regression: a head on one pooled vector per example.

``pooling``: ``cls`` (the [CLS] vector through the pooler, pre-trained when the checkpoint has
one, BERT), ``mean`` (the mean of the non-padding token vectors through a fresh pooler) or
``last`` (the last real token through a fresh dense + tanh: XLNet's sequence summary); null: the
backbone's summary token (``cls``; ``last`` for XLNet) when fine-tuning, ``mean`` for frozen
features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.model.layers import Pooler, init_bert_weights
from clozelab.tasks.backbone import Backbone
from clozelab.tasks.base import Task, TaskData
from clozelab.tasks.features import encode_text
from clozelab.tasks.heads import TaskModel, masked_mean, resolve_pooling
from clozelab.tasks.metrics import classification_metrics, regression_metrics
from clozelab.tasks.readers import label_names


class ClassificationModel(TaskModel):
    """The backbone, a pooled vector and a linear layer to ``num_labels`` classes
    (cross-entropy). ``pooling`` and the body's arguments: see the module and ``TaskModel``."""

    def __init__(self, backbone: Backbone, num_labels: int, *, pooling: str | None = None, **body):
        super().__init__(backbone, **body)
        self.pooling = resolve_pooling(pooling, self.mode, backbone.summary_pooling)
        hidden = backbone.hidden_size
        self.pooler = None
        if self.pooling in ("mean", "last"):
            self.pooler = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
        elif backbone.pooler is None:
            self.pooler = Pooler(hidden)  # fresh: the checkpoint has no pre-trained pooler
        self.output = nn.Linear(hidden, num_labels)
        init_bert_weights(self.output)
        if self.pooler is not None:
            init_bert_weights(self.pooler)

    def _pooled(self, h: Tensor, mask: Tensor) -> Tensor:
        if self.pooling == "mean":
            return self.pooler(masked_mean(h, mask))
        if self.pooling == "last":  # XLNet's summary: the last real token (its [CLS] sits last)
            last = mask.long().sum(-1).clamp_min(1) - 1  # (B,)
            return self.pooler(h[torch.arange(h.shape[0], device=h.device), last])
        pooler = self.pooler if self.pooler is not None else self.backbone.pooler
        return pooler(h)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        h = self.hidden(batch)
        logits = self.output(self.dropout(self._pooled(h, batch["attention_mask"])))
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = self.loss(logits, batch["labels"])
        return out


class RegressionModel(ClassificationModel):
    """``ClassificationModel`` with one output, a real score trained by mean squared error."""

    def __init__(self, backbone: Backbone, *, pooling: str | None = None, **body):
        super().__init__(backbone, 1, pooling=pooling, **body)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.mse_loss(logits.squeeze(-1), labels.float())


class ClassificationTask(Task):
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

    def build_model(self, backbone, data, *, mode, mix_layers, layer_mix) -> nn.Module:
        body = self.body(mode, mix_layers, layer_mix)
        return ClassificationModel(
            backbone, data.num_labels, pooling=self.cfg.get("pooling"), **body
        )

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

    def build_model(self, backbone, data, *, mode, mix_layers, layer_mix) -> nn.Module:
        body = self.body(mode, mix_layers, layer_mix)
        return RegressionModel(backbone, pooling=self.cfg.get("pooling"), **body)

    def score(self, model, data, outputs, names) -> dict:
        preds = torch.zeros(len(data.validation))
        for idx, _, out in outputs:
            preds[idx] = out["logits"].squeeze(-1).float()
        target = torch.tensor([f["labels"] for f in data.validation])
        return regression_metrics(preds, target, names)
