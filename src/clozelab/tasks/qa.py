"""Extractive QA (SQuAD v1.1): start/end pointers over the passage tokens of each window; the best
span of an example over its windows is its answer, scored by exact match and F1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.model.layers import init_bert_weights
from clozelab.tasks.backbone import Backbone
from clozelab.tasks.base import Task, TaskData
from clozelab.tasks.features import encode_qa
from clozelab.tasks.heads import TaskModel
from clozelab.tasks.metrics import best_span, squad_scores


class QAModel(TaskModel):
    """The backbone and a linear layer to a start and an end score per token, restricted to the
    passage (``context_mask``) and [CLS] (the target of windows without the answer)."""

    def __init__(self, backbone: Backbone, **body):
        super().__init__(backbone, **body)
        self.output = nn.Linear(backbone.hidden_size, 2)
        init_bert_weights(self.output)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = self.output(self.dropout(self.hidden(batch)))  # (B, T, 2)
        allowed = batch["context_mask"].clone()
        allowed[:, 0] = True  # [CLS]: the target of windows without the answer
        neg = torch.finfo(logits.dtype).min
        start = logits[..., 0].masked_fill(~allowed, neg)
        end = logits[..., 1].masked_fill(~allowed, neg)
        out = {"start_logits": start, "end_logits": end}
        if "start_positions" in batch:
            out["loss"] = (
                F.cross_entropy(start, batch["start_positions"])
                + F.cross_entropy(end, batch["end_positions"])
            ) / 2
        return out


class QATask(Task):
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

    def build_model(self, backbone, data, *, mode, mix_layers, layer_mix) -> nn.Module:
        return QAModel(backbone, **self.body(mode, mix_layers, layer_mix))

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
