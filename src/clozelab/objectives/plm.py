"""XLNet's permutation language modelling loss (Yang et al. 2019; SPECS §18).

The query stream of the two-stream encoder (``encoder=xlnet``) at the m-th predicted position
(``target_mapping`` row m) has seen the content of the tokens before it in the factorisation order
and its own position, never its own content; it predicts ``plm_labels[:, m]``. The decoder is
XLNet's: the input embedding table (tied) plus an own bias, straight from the query state (no
transform), decoded only at the real prediction rows. The loss is the mean cross-entropy over the
predicted tokens of the batch (partial prediction: only the last ~1/K of each order has a loss).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.model.xlnet import TwoStreamOutput
from clozelab.objectives.base import Objective, ObjectiveOutput, global_mean
from clozelab.objectives.mlm import IGNORE_INDEX, tied_decoder_cross_entropy


class PermutationLM(Objective):
    """Args:
    vocab_size: rows of the embedding table the decoder is tied to.
    weight: factor of this loss in the total loss.
    """

    name = "plm"
    requires = ("perm_mask", "target_mapping", "plm_labels")
    instance_kinds = None
    requires_fix = "use corruption=plm (XLNet's permutation targets; experiment=xlnet)"
    reads_encoder_output = False  # the query stream only: the last content layer is skipped

    def __init__(self, vocab_size: int, weight: float = 1.0):
        super().__init__(weight=weight)
        self.bias = nn.Parameter(torch.zeros(vocab_size))  # HF lm_loss.bias

    def logits(self, query_hidden_state: Tensor, embedding: nn.Module) -> Tensor:
        """[B, M, V] logits of every prediction row (HF ``XLNetLMHeadModel.logits``); for
        inspection and parity, training never builds them."""
        return query_hidden_state @ embedding.word_embeddings.weight.T + self.bias

    def forward(
        self, encoder_output, batch: Mapping[str, Tensor], embedding: nn.Module
    ) -> ObjectiveOutput:
        query = (
            encoder_output.query_hidden_state
            if isinstance(encoder_output, TwoStreamOutput)
            else None
        )
        if query is None:
            raise config_error(
                "encoder",
                type(encoder_output).__name__,
                "objective plm reads the query stream of a two-stream encoder, and this "
                "encoder output has none",
                "use encoder=xlnet (experiment=xlnet)",
            )
        labels = batch["plm_labels"]  # (B, M)
        rows = labels != IGNORE_INDEX
        targets = labels[rows]  # (N,)
        n = targets.numel()
        loss_sum, correct = tied_decoder_cross_entropy(
            query[rows], embedding.word_embeddings.weight, self.bias, targets
        )
        loss = global_mean(loss_sum / max(n, 1), n)
        return ObjectiveOutput(
            loss=loss,
            n_targets=n,
            logs={"plm_loss": loss.detach(), "plm_acc": correct.float() / max(n, 1)},
        )

    @classmethod
    def check_config(cls, cfg, name: str) -> None:
        """Refuse an encoder without a query stream (compose time; Transformer-XL memory is
        refused by the encoder's ``check_pretraining``)."""
        from clozelab.core.config import target_class

        encoder = target_class(cfg.encoder, "encoder")
        if not {"perm_mask", "target_mapping"} <= set(encoder.batch_inputs):  # Encoder hook
            raise config_error(
                "encoder",
                cfg.encoder.get("_target_"),
                f"objective.{name} (permutation LM) reads the query stream of a two-stream "
                "encoder, which this encoder does not have",
                "use encoder=xlnet embedding=word (experiment=xlnet)",
            )
