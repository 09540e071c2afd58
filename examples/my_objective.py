"""An objective in the user's own module: detect which tokens were corrupted.

Add it next to MLM from the command line, in the directory that holds this file (its config is
``conf/objective/detect.yaml``)::

    clozelab pretrain hydra.searchpath=[file://conf] objective=[mlm,detect]

It subclasses ``clozelab.objectives.base.Objective``: it owns its head and loss, and declares the
batch keys it reads (``requires``), so a corruption that writes no ``mlm_labels`` (e.g.
``corruption=delete``) is refused before any data is read, with the fix in ``requires_fix``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clozelab.core.batch import IGNORE_INDEX
from clozelab.objectives.base import Objective, ObjectiveOutput, global_mean


class CorruptionDetection(Objective):
    """A linear head on every real token predicts whether the corruption chose it (its
    ``mlm_labels`` is set); the loss is the sigmoid cross-entropy over the real tokens.

    Args:
        hidden_size: encoder width H.
        weight: factor of this loss in the total loss.
    """

    name = "detect"
    requires = ("mlm_labels", "attention_mask")
    requires_fix = "use a corruption that writes mlm_labels (a masking corruption)"

    def __init__(self, hidden_size: int, weight: float = 1.0):
        super().__init__(weight)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, encoder_output, batch, embedding) -> ObjectiveOutput:
        self.check_batch(batch)
        real = batch["attention_mask"].bool()
        logits = self.head(encoder_output.last_hidden_state).squeeze(-1)[real].float()
        targets = (batch["mlm_labels"] != IGNORE_INDEX)[real].float()
        n = targets.numel()
        loss = global_mean(
            F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / max(n, 1), n
        )
        with torch.no_grad():
            acc = ((logits > 0).float() == targets).float().mean()
        return ObjectiveOutput(loss, n, {"detect_loss": loss.detach(), "detect_acc": acc})
