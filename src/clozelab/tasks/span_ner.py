"""Span NER: every word span up to ``max_span_length`` classified as an entity type or none
([s_i; e_j; g_ij] span representations, ``tasks/spans.py``), decoded nested or flat; scored by
entity-level F1."""

from __future__ import annotations

from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.model.layers import init_bert_weights
from clozelab.tasks.backbone import Backbone
from clozelab.tasks.base import Task, TaskData
from clozelab.tasks.features import encode_spans
from clozelab.tasks.heads import TaskModel
from clozelab.tasks.metrics import span_f1
from clozelab.tasks.readers import as_span_examples, read_task
from clozelab.tasks.spans import NONE_LABEL, SpanHead


class SpanNERModel(TaskModel):
    """The backbone and a ``SpanHead`` over ``num_labels`` (entity types + none).

    Args:
        backbone, mode, mix_layers, layer_mix, dropout: see ``TaskModel`` (the dropout is the
            span head's).
        max_span_length, decoding, endpoints, pooling: the ``SpanHead``'s (decoding nested |
            flat, endpoints ffn | linear, pooling attention | mean).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_labels: int,
        *,
        max_span_length: int = 8,
        decoding: str = "nested",
        endpoints: str = "ffn",
        pooling: str = "attention",
        **body,
    ):
        super().__init__(backbone, **body)
        self.output = SpanHead(
            backbone.hidden_size,
            num_labels,
            max_span_length,
            self.dropout.p,
            decoding,
            endpoints,
            pooling,
        )
        init_bert_weights(self.output)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.output(self.hidden(batch), batch)

    def predict_spans(self, out: dict[str, Tensor]) -> list[list[tuple[int, int, int, float]]]:
        """Per row, the predicted ``(start, end_exclusive, label, probability)`` word spans."""
        return self.output.decode(out)


class SpanNERTask(Task):
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
        tok, linker = backbone.tokenizer, self.entity_linker(backbone)
        return TaskData(
            encode_spans(tok, train, length, index, k, linker),
            encode_spans(tok, validation, length, index, k, linker),
            len(labels),
            labels,
            validation,
        )

    def read(self, data_dir) -> dict[str, list]:
        """The configured readers; ``jsonl`` files hold tokens and entity spans."""
        return read_task(self.cfg, data_dir, entities=True)

    def build_model(self, backbone, data, *, mode, mix_layers, layer_mix) -> nn.Module:
        task = self.cfg
        return SpanNERModel(
            backbone,
            data.num_labels,
            max_span_length=int(task.get("max_span_length", 8)),
            decoding=task.get("decoding", "nested"),
            endpoints=task.get("span_endpoints", "ffn"),
            pooling=task.get("span_pooling", "attention"),
            **self.body(mode, mix_layers, layer_mix),
        )

    def span_types(self, examples: list) -> list[str]:
        """Entity types: ``task.labels`` when given (each gold type must be among them), else
        the sorted types found in the data."""
        task = self.cfg
        found = sorted({kind for e in examples for _, _, kind in e.spans})
        types = [str(x) for x in task.labels] if task.get("labels") else found
        unknown = sorted(set(found) - set(types))
        if unknown or NONE_LABEL in types:
            raise config_error(
                "task.labels",
                types,
                f"entity types {unknown} are not listed"
                if unknown
                else f"{NONE_LABEL!r} is the label of non-entities, not a type",
                "list every entity type of the data in task.labels (or leave it null)",
            )
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
        return {
            "decoder": None,
            "max_span_length": task.get("max_span_length", 8),
            "span_endpoints": task.get("span_endpoints", "ffn"),
            "span_pooling": task.get("span_pooling", "attention"),
            "decoding": task.get("decoding", "nested"),
        }
