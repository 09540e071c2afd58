"""The batch contract shared by data, corruptions, objectives and tasks (DESIGN.md §3).

A collated pre-training batch is a ``Batch``: a dict of tensors under the HF key names whose class
declares the stream it belongs to, so the training module dispatches on the declared type instead
of guessing it from the keys. The data pipeline that builds a batch names its class (the text
collator: ``Batch``; the dialogue collator: ``DialogueBatch``; the reference-corruption validation
loader: ``ReferenceBatch``); a joint training step over several streams is a ``JointBatch``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

IGNORE_INDEX = -100
"""Target value of positions that carry no loss (HF and PyTorch cross-entropy convention)."""


class Batch(dict):
    """One stream's collated batch (``input_ids``, ``attention_mask``, ... and the corruption's
    targets). A dict: corruptions and objectives read it by key; Lightning and the DataLoader
    keep its class when they move or pin it.

    Class attributes:
        stream: the data stream it comes from: ``text`` (pre-training text), ``dialogue``
            (ERNIE's dialogue triples: only objectives whose ``streams`` include it run),
            ``reference`` (validation under the reference corruption: MLM alone).
    """

    stream: ClassVar[str] = "text"

    def streams(self) -> list[Batch]:
        """The one-stream batches of the step: this batch."""
        return [self]

    def __reduce__(self):  # pickled as its class and a plain dict (weights_only loads it)
        return type(self), (dict(self),)


class DialogueBatch(Batch):
    """A batch of dialogue triples (ERNIE DLM)."""

    stream = "dialogue"


class ReferenceBatch(Batch):
    """A validation batch under the reference corruption (``ref_mlm_*`` logs)."""

    stream = "reference"


class JointBatch(dict):
    """One training step over several streams (``data.dialogue.schedule=joint``):
    ``{stream: Batch}``; the module sums the streams' totals."""

    stream: ClassVar[str] = "joint"

    def streams(self) -> list[Batch]:
        return list(self.values())

    def __reduce__(self):
        return type(self), (dict(self),)


# A saved batch (``torch.save``) loads with ``torch.load(..., weights_only=True)``: each class is
# rebuilt from a plain dict (``__reduce__``) and runs nothing else when unpickled.
torch.serialization.add_safe_globals([Batch, DialogueBatch, ReferenceBatch, JointBatch])
