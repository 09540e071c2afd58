"""The downstream task extension point (DESIGN §5): a task kind owns its encoding, its head and its
scoring; the fine-tuning loop (``training/finetuning.py``) and the suites
(``training/evaluation.py``) ask it, never a ``kind`` string.

A task config (``conf/task/*.yaml``) names its class with ``_target_`` (without one, the built-in
class of its ``kind``: ``tasks/kinds.py``). A user's task in their own module subclasses ``Task``
and is selected with ``task._target_=my_module.MyTask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import DictConfig
from torch import nn

from clozelab.tasks.backbone import Backbone


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
