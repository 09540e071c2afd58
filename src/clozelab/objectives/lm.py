"""Left-to-right and bidirectional language modelling, for the GPT- and ELMo-style baselines.

* ``direction="forward"`` (GPT, Radford et al. 2018): the state at t predicts token t+1. Needs a
  causal encoder (``encoder=causal``), whose state at t has read tokens <= t only.
* ``direction="both"`` (ELMo's biLM, Peters et al. 2018): the forward half of the state at t
  predicts token t+1 and the backward half predicts token t-1; the two directions share one
  softmax. Needs ``encoder=bilstm``, whose halves read tokens <= t and >= t.

Targets are the real, non-special tokens (never [CLS], [SEP] or padding). Decoding goes through
dense -> activation -> LayerNorm and the input embedding table (tied) plus an own bias, only at
the target positions. The loss is the mean cross-entropy over every prediction of the batch (both
directions together).

These baselines read the original text: a masking corruption still runs in the data loader (the
pipeline always has one), and ``prepare_inputs`` puts the original tokens back (``mlm_labels`` hold
them), so use a masking corruption (corruption=mask; the recipes do). Corruptions that delete or
reorder tokens, other objectives next to it, and an encoder that would let a position see its
target are refused when the config is composed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from clozelab.core.batch import IGNORE_INDEX
from clozelab.core.errors import config_error
from clozelab.model.layers import LMTransform
from clozelab.objectives.base import Objective, ObjectiveOutput, global_mean
from clozelab.objectives.mlm import tied_decoder_cross_entropy

DIRECTIONS = ("forward", "both")


class LanguageModel(Objective):
    """Next-token (and previous-token) prediction.

    Args:
        hidden_size: encoder width H (with ``both``, each direction is H/2 wide).
        vocab_size: rows of the embedding table the decoder is tied to.
        direction: ``forward`` (GPT) or ``both`` (ELMo).
        activation: activation of the transform.
        layer_norm_eps: LayerNorm epsilon of the transform.
        embedding_size: width E of the tied table when it differs from H.
        weight: factor of this loss in the total loss.
        initializer_range: std of the normal initialisation (0.02).
    """

    name = "lm"
    rewrites_inputs = True  # prepare_inputs puts the original tokens back
    requires = ()
    instance_kinds = None

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        direction: str = "forward",
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
        embedding_size: int | None = None,
        weight: float = 1.0,
        initializer_range: float = 0.02,
    ):
        super().__init__(weight=weight)
        if direction not in DIRECTIONS:
            raise config_error("objective.lm.direction", direction, "unknown", f"use {DIRECTIONS}")
        if direction == "both" and hidden_size % 2:
            raise config_error(
                "model.hidden_size",
                hidden_size,
                "a biLM splits H into two directions",
                "use an even hidden size",
            )
        self.direction, self.hidden_size = direction, hidden_size
        width = hidden_size if direction == "forward" else hidden_size // 2
        out = embedding_size or hidden_size
        self.transform = LMTransform(
            width, activation, layer_norm_eps, out_size=out, initializer_range=initializer_range
        )
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def prepare_inputs(self, batch: Mapping[str, Tensor], embedding: nn.Module) -> dict:
        """The batch with the original tokens put back where a masking corruption changed them."""
        if "mlm_labels" not in batch:
            return dict(batch)
        labels = batch["mlm_labels"]
        return {
            **batch,
            "input_ids": torch.where(labels != IGNORE_INDEX, labels, batch["input_ids"]),
        }

    def forward(
        self, encoder_output, batch: Mapping[str, Tensor], embedding: nn.Module
    ) -> ObjectiveOutput:
        hidden = encoder_output.last_hidden_state  # (B, T, H)
        ids = batch["input_ids"]  # (B, T), the original text after prepare_inputs
        target_ok = torch.ones_like(ids, dtype=torch.bool)
        if "attention_mask" in batch:
            target_ok &= batch["attention_mask"].bool()
        if "special_tokens_mask" in batch:
            target_ok &= ~batch["special_tokens_mask"].bool()
        if self.direction == "forward":
            pairs = [(hidden[:, :-1], ids[:, 1:], target_ok[:, 1:])]
        else:
            half = hidden.shape[-1] // 2
            pairs = [
                (hidden[:, :-1, :half], ids[:, 1:], target_ok[:, 1:]),  # t predicts t+1
                (hidden[:, 1:, half:], ids[:, :-1], target_ok[:, :-1]),  # t predicts t-1
            ]
        states = torch.cat([h[ok] for h, _, ok in pairs])  # (N, width)
        targets = torch.cat([t[ok] for _, t, ok in pairs])  # (N,)
        n = targets.numel()
        loss_sum, correct = tied_decoder_cross_entropy(
            self.transform(states), embedding.word_embeddings.weight, self.bias, targets
        )
        loss = global_mean(loss_sum / max(n, 1), n)
        return ObjectiveOutput(
            loss=loss,
            n_targets=n,
            logs={"lm_loss": loss.detach(), "lm_acc": correct.float() / max(n, 1)},
        )

    @classmethod
    def check_config(cls, cfg, name: str) -> None:
        """Refuse an encoder that shows a position its target, reordering corruptions, others."""
        from clozelab.core.config import component_class
        from clozelab.model.encoder import Encoder
        from clozelab.objectives.rtd import corruption_keys

        node = cfg.objective[name]
        direction = node.get("direction", "forward")
        context = component_class(cfg.encoder, "encoder", Encoder).context_for(cfg.encoder)
        if direction == "forward" and context != "causal":
            raise config_error(
                "encoder",
                cfg.encoder.get("_target_"),
                f"objective.{name} (next-token LM) with a bidirectional encoder lets every "
                "position see the token it predicts",
                "use encoder=causal (experiment=gpt_baseline)",
            )
        if direction == "both" and context != "split_directions":
            raise config_error(
                "encoder",
                cfg.encoder.get("_target_"),
                f"objective.{name} with direction=both needs separate forward/backward states",
                "use encoder=bilstm (experiment=elmo_baseline)",
            )
        others = [o for o in (cfg.get("objective") or {}) if o != name]
        if others:
            raise config_error(
                "objective",
                f"[{name}, {', '.join(others)}]",
                f"objective.{name} trains on the uncorrupted text, which the other objectives "
                "would read too",
                f"use objective=[{name}] alone",
            )
        produces = corruption_keys(cfg.corruption)
        if produces & {"deletion_labels", "order_labels"} or "mlm_labels" not in produces:
            raise config_error(
                "corruption",
                cfg.corruption.get("_target_"),
                f"objective.{name} restores the original text from a masking corruption's "
                "mlm_labels; this corruption deletes or reorders tokens or keeps no originals",
                "use corruption=mask",
            )
