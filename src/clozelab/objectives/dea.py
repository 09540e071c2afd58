"""ERNIE-THU's denoising entity auto-encoder (dEA; Zhang et al. 2019, §3.4; SPECS §19).

For every token aligned to an entity (``entity_labels`` >= 0, written by
``corruption.entity_alignment.EntityAlignmentNoise`` before 5% of the alignments were replaced and
15% dropped), predict that entity from the token's output w_i:

    p(e_j | w_i) = softmax_j( transform(w_i) · e_j )

``transform`` is dense(H -> E) -> activation -> LayerNorm (the released code's
``BertEntPredictionHead``) and e_j the rows of the encoder's entity table (``KnowledgeOutput``).
The softmax runs over a candidate set instead of every entity: ``candidates="batch"`` (default,
the released code: the distinct entities of the batch's alignments and inputs) or ``"sequence"``
(the paper's text and SPECS: only the entities of the token's own sequence). Loss = mean
cross-entropy over the aligned tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from clozelab.core.batch import IGNORE_INDEX
from clozelab.core.errors import config_error
from clozelab.model.layers import LMTransform
from clozelab.objectives.base import Objective, ObjectiveOutput, global_mean

CANDIDATES = ("batch", "sequence")


class DenoisingEntityAutoencoder(Objective):
    """dEA; reads ``entity_labels`` (and ``entity_links``, the noised inputs) and the entity table
    of a knowledge encoder's output.

    Args:
        hidden_size: encoder width H.
        entity_dim: width E of the entity table (``encoder.entity_dim``).
        candidates: ``batch`` or ``sequence`` (see the module doc).
        activation, layer_norm_eps, initializer_range: of the transform.
        weight: factor of this loss in the total loss.
    """

    name = "dea"
    requires = ("entity_labels",)
    requires_fix = (
        "use corruption=ernie_thu (token masking + the dEA alignment noise) with "
        "data.entity_links=true"
    )

    def __init__(
        self,
        hidden_size: int,
        entity_dim: int,
        candidates: str = "batch",
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        weight: float = 1.0,
    ):
        super().__init__(weight)
        if candidates not in CANDIDATES:
            raise config_error("objective.dea.candidates", candidates,
                               f"must be one of {list(CANDIDATES)}", "use batch")  # fmt: skip
        self.candidates = candidates
        self.transform = LMTransform(
            hidden_size, activation, layer_norm_eps, entity_dim, initializer_range
        )

    def forward(
        self, encoder_output: Any, batch: Mapping[str, Tensor], embedding
    ) -> ObjectiveOutput:
        labels = batch["entity_labels"]  # (B, T), -100 where no alignment
        aligned = labels != IGNORE_INDEX
        rows, cols = aligned.nonzero(as_tuple=True)
        targets = labels[rows, cols]  # (n,)
        n = targets.numel()
        if n == 0:
            zero = encoder_output.last_hidden_state.sum() * 0.0
            return ObjectiveOutput(zero, 0, {"dea_loss": zero.detach(), "dea_acc": zero.detach()})
        inputs = batch.get("entity_links")
        seen = targets if inputs is None else torch.cat([targets, inputs[inputs >= 0]])
        candidates = seen.unique()  # sorted (C,)
        table = encoder_output.entity_table[candidates]  # (C, E)
        query = self.transform(encoder_output.last_hidden_state[rows, cols])  # (n, E)
        logits = query @ table.to(query.dtype).T  # (n, C)
        if self.candidates == "sequence":
            logits = logits.masked_fill(~_in_sequence(labels, inputs, candidates)[rows], -1e4)
        index = torch.searchsorted(candidates, targets)  # (n,)
        loss = F.cross_entropy(logits.float(), index, reduction="sum") / n
        loss = global_mean(loss, n)
        correct = (logits.argmax(-1) == index).float().sum()
        return ObjectiveOutput(
            loss=loss, n_targets=n, logs={"dea_loss": loss.detach(), "dea_acc": correct / n}
        )

    @classmethod
    def check_config(cls, cfg, name: str) -> None:
        """Refuse an encoder without entity inputs, and shards without entity links."""
        from clozelab.core.config import target_class

        encoder = target_class(cfg.encoder, "encoder")
        if "entity_links" not in encoder.batch_inputs:  # Encoder hook
            raise config_error(
                "encoder", cfg.encoder.get("_target_"),
                f"objective.{name} (dEA) predicts entities from an encoder that fuses entity "
                "inputs and holds their table, which this encoder does not",
                "use encoder=ernie_thu (experiment=ernie_thu)",
            )  # fmt: skip
        if not (cfg.get("data") or {}).get("entity_links"):
            raise config_error(
                "data.entity_links", (cfg.get("data") or {}).get("entity_links"),
                f"objective.{name} (dEA) needs token-entity alignments, which the shards carry "
                "only with entity links",
                "set data.entity_links=true (experiment=ernie_thu does)",
            )  # fmt: skip


def _in_sequence(labels: Tensor, inputs: Tensor | None, candidates: Tensor) -> Tensor:
    """[B, C] bool: candidate c is an entity of row b (an alignment target or an input)."""
    present = torch.zeros(labels.shape[0], candidates.numel(), dtype=torch.bool,
                          device=labels.device)  # fmt: skip
    for ids in (labels, inputs):
        if ids is None:
            continue
        rows, cols = (ids >= 0).nonzero(as_tuple=True)
        present[rows, torch.searchsorted(candidates, ids[rows, cols])] = True
    return present
