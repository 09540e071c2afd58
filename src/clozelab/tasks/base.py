"""The downstream task extension point (DESIGN §5): a task kind owns its encoding, its head and its
scoring; the fine-tuning loop (``training/finetuning.py``) and the suites
(``training/evaluation.py``) ask it, never a ``kind`` string.

A task config (``conf/task/*.yaml``) names its class with ``_target_``; ``task_for(cfg)`` builds
it. The built-in kinds: ``classification.ClassificationTask`` / ``RegressionTask``,
``tagging.TokenTask`` (softmax or CRF), ``qa.QATask``, ``span_ner.SpanNERTask``,
``generation.GenerationTask`` (text to text), and the zero-shot ``bundled.WordSimilarityTask`` /
``ResponseSelectionTask``. A user's task in their own module subclasses ``Task`` (or a built-in
kind) and is selected with ``task._target_=my_module.MyTask``.

A fine-tuned kind's model subclasses ``tasks.heads.TaskModel`` (the backbone, fine-tuned or
frozen with a layer mix, and the dropout before the head) with its own head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import DictConfig
from torch import nn

from clozelab.core.config import component_class
from clozelab.core.errors import check_int, config_error
from clozelab.tasks.backbone import Backbone

#: the shortest ``task.max_seq_length``: [CLS], [SEP] and one token (a pair's [SEP] [SEP] + one)
MIN_SEQ_LENGTH = 4


@dataclass
class TaskData:
    """A task's features, encoded once and shared by every seed.

    ``train`` / ``validation``: one dict of lists per example (``input_ids``, ``token_type_ids``,
    the labels the head reads); ``num_labels`` and ``labels`` (names) size the head; ``examples``
    keeps the validation examples a scorer needs (token tags, QA answers, entity spans)."""

    train: list[dict]
    validation: list[dict]
    num_labels: int = 2
    labels: list[str] = field(default_factory=list)
    examples: list = field(default_factory=list)


class Task:
    """Base of the downstream task kinds.

    How ``run_task`` (``training/evaluation.py``) uses a task: ``task_for(cfg)`` builds it; a
    ``zero_shot`` task returns ``score_zero_shot(backbone, seeds)``; any other is read once
    (``read``) and encoded once (``encode`` -> ``TaskData``); then per seed the loop of
    ``training/finetuning.py`` builds a fresh ``build_model``, trains it on ``model(batch)["loss"]``
    over padded batches of ``TaskData.train`` (``tasks.features.pad_batch``), runs it on the
    validation batches and asks ``score`` for the metrics; ``protocol`` adds to the result's record.

    Class attributes a subclass sets:
        kind: the name written to ``eval/<task>.json`` (``classification``, ``qa`` ...).
        default_metrics: the metrics computed when ``task.metrics`` is not given; the first is
            the main metric (``value``) unless ``task.metric`` names another.
        zero_shot: True when the task is scored without training (``score_zero_shot``).

    Args:
        cfg: the task's config node (``conf/task/NAME.yaml`` with the user's overrides).
    """

    kind: ClassVar[str] = "task"
    default_metrics: ClassVar[tuple[str, ...]] = ()
    zero_shot: ClassVar[bool] = False

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def read(self, data_dir) -> dict[str, list]:
        """``{"train": [...], "validation": [...]}`` examples (default: the configured readers)."""
        from clozelab.tasks.readers import read_task

        return read_task(self.cfg, data_dir)

    def max_length(self, backbone: Backbone) -> int:
        """``task.max_seq_length`` (default 128), capped at the backbone's positions; at least
        ``MIN_SEQ_LENGTH`` ([CLS] A [SEP] B [SEP] cuts the texts to ``max_seq_length - 3``)."""
        length = check_int(
            self.cfg.get("max_seq_length", 128),
            "task.max_seq_length",
            MIN_SEQ_LENGTH,
            "room for [CLS], the text and [SEP]",
            "e.g. task.max_seq_length=128",
        )
        return min(length, backbone.max_positions)

    def entity_linker(self, backbone: Backbone):
        """What finds the backbone's entities in this task's words (ERNIE-THU: the pre-training
        run's entity vocabulary), or None: the backbone takes no entity inputs, or
        ``task.entity_inputs=false`` (the same fine-tuning without them)."""
        return backbone.linker if self.cfg.get("entity_inputs", True) else None

    def body(self, mode: str, mix_layers: int, layer_mix: str) -> dict[str, Any]:
        """The keyword arguments of ``TaskModel`` (the body under the head) for this task."""
        dropout = float(self.cfg.get("dropout", 0.1))
        return {"mode": mode, "mix_layers": mix_layers, "layer_mix": layer_mix, "dropout": dropout}

    def encode(self, splits: dict[str, list], backbone: Backbone) -> TaskData:
        """The features of ``splits`` for ``backbone`` (its tokenizer and position limit)."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode")

    def build_model(
        self, backbone: Backbone, data: TaskData, *, mode: str, mix_layers: int, layer_mix: str
    ) -> nn.Module:
        """The backbone with this task's head: ``model(batch)`` returns a dict with ``loss``
        (when the batch has labels) and what ``score`` reads. ``mode``: ``finetune`` or
        ``features`` (frozen encoder, a mix of its last ``mix_layers`` layers)."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_model")

    def score(self, model: nn.Module, data: TaskData, outputs: list, names: list[str]) -> dict:
        """Metrics ``names`` from ``outputs``: ``(indices, batch, model(batch))`` per validation
        batch, ``indices`` into ``data.validation``."""
        raise NotImplementedError(f"{type(self).__name__} must implement score")

    def protocol(self, mode: str) -> dict[str, Any]:
        """Task-specific entries of the result's ``protocol`` (how it was fine-tuned)."""
        return {"decoder": None}

    def score_zero_shot(self, backbone: Backbone, seeds: list[int]) -> list[dict]:
        """One metrics dict per seed, for ``zero_shot`` tasks."""
        raise NotImplementedError(f"{type(self).__name__} is not a zero-shot task")


def task_for(cfg: DictConfig) -> Task:
    """The task a config node names: an instance of its ``_target_`` class (a ``Task``)."""
    if not cfg.get("_target_"):
        raise config_error(
            "task._target_",
            None,
            f"task {cfg.get('name')!r} names no task class",
            "set task._target_ to a Task subclass, e.g. "
            "clozelab.tasks.classification.ClassificationTask (see conf/task/*.yaml)",
        )
    cls = component_class(cfg, "task", Task)
    kind = cfg.get("kind")
    if kind is not None and kind != cls.kind:
        raise config_error(
            "task.kind",
            kind,
            f"a task's kind is its class: task._target_={cfg._target_} is kind {cls.kind!r}",
            "drop task.kind and name the class of the kind you want in task._target_ (e.g. "
            "clozelab.tasks.classification.RegressionTask)",
        )
    return cls(cfg)
