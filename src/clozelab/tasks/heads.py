"""The body every fine-tuned task kind's model shares (``TaskModel``) and the pooling helpers of
its heads. Each task kind subclasses ``TaskModel`` with its own head next to its ``Task`` class
(``tasks/classification.py``, ``tasks/tagging.py``, ``tasks/qa.py``, ``tasks/span_ner.py``).

Feature-based use (``mode=features``): a frozen encoder whose last ``k`` layers are combined by
``layer_mix`` (``model/layer_pool.py``): their fixed average (``average``, the seeds' recipe) or
a learned ELMo scalar mix (``learned``, initialised to the average).

Shapes: B batch, T tokens, W words, H hidden, L labels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.model.layer_pool import layer_mix as build_layer_mix
from clozelab.tasks.backbone import Backbone

MODES = ("finetune", "features")
POOLINGS = ("cls", "mean", "last")


def resolve_pooling(pooling: str | None, mode: str, summary: str = "cls") -> str:
    """``task.pooling`` in effect: null is the backbone's ``summary`` token when fine-tuning
    (``cls`` for BERT-style encoders, ``last`` for XLNet), ``mean`` for features."""
    pooling = pooling or ("mean" if mode == "features" else summary)
    if pooling not in POOLINGS:
        raise config_error(
            "task.pooling", pooling, "unknown pooling", f"use one of {POOLINGS} or null"
        )
    return pooling


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``h`` (B, T, H) over the positions where ``mask`` (B, T) is set -> (B, H)."""
    m = mask[..., None].to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


class TaskModel(nn.Module):
    """A backbone, fine-tuned or frozen, and the dropout before a task's head: the base of every
    fine-tuned task kind's model.

    A subclass calls ``super().__init__`` first, then builds its head from
    ``self.backbone.hidden_size`` and implements ``forward(batch) -> dict``: the head's outputs
    (what its ``Task.score`` reads) and ``loss`` when the batch carries labels. ``hidden(batch)``
    gives the token vectors the head reads.

    Args:
        backbone: the pre-trained (or random) body.
        mode: ``finetune`` trains everything; ``features`` freezes the backbone and feeds its
            last ``mix_layers`` hidden states, combined by ``layer_mix``, to the head.
        layer_mix: ``average`` (fixed average, the seeds' feature-based recipe) or ``learned``
            (ELMo's softmax-weighted scalar mix with a scale).
        dropout: dropout before the output layer.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        mode: str = "finetune",
        mix_layers: int = 4,
        layer_mix: str = "average",
        dropout: float = 0.1,
    ):
        super().__init__()
        if mode not in MODES:
            raise config_error("mode", mode, "unknown mode", f"use one of {MODES}")
        self.backbone = backbone
        self.mode = mode
        self.mix = build_layer_mix(layer_mix, mix_layers) if mode == "features" else None
        if self.mix is not None:
            backbone.requires_grad_(False)
        self.dropout = nn.Dropout(dropout)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.mix is not None:
            self.backbone.eval()  # frozen features: no dropout inside the encoder
        return self

    def hidden(self, batch: dict[str, Tensor]) -> Tensor:
        """The token vectors the head reads: the last layer, or the mix of the frozen layers."""
        args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        entities = {"entity_links": batch["entity_links"]} if "entity_links" in batch else {}
        if self.mix is None:
            return self.backbone(*args, **entities).last_hidden_state  # (B, T, H)
        with torch.no_grad():
            states = self.backbone(*args, output_hidden_states=True, **entities).hidden_states
        return self.mix(states)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")
