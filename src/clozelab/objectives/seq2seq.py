"""Sequence-to-sequence denoising: teacher-forced cross-entropy on the target tokens
(T5, Raffel et al. 2020 §3.3; BART, Lewis et al. 2020; MASS, Song et al. 2019).

The objective owns the decoder (``clozelab.model.decoder``), as ELECTRA's RTD owns its generator:
the encoder reads the corrupted source (``input_ids``), the decoder reads ``decoder_input_ids``
(the targets shifted right behind the decoder start token) and attends to the encoder output;
its state at position t predicts ``labels[t]``. Only the N positions with a target
(``labels != -100``) are gathered and decoded against the shared word table, in chunks, so no
[B, L, V] tensor exists. The loss is the sum of token cross-entropies over the batch divided by
N (the global N on several ranks).

Batch keys (SEQ2SEQ contract): ``labels`` [B, L] (-100: no loss), ``decoder_input_ids`` [B, L],
optional ``decoder_position_ids`` [B, L] (MASS: the fragment's positions in the sentence).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from clozelab.core.batch import IGNORE_INDEX
from clozelab.core.errors import config_error
from clozelab.model.compile import layer_targets
from clozelab.model.decoder import Decoder
from clozelab.objectives.base import Objective, ObjectiveOutput, global_mean
from clozelab.objectives.mlm import tied_decoder_cross_entropy

log = logging.getLogger(__name__)

#: The batch keys that make a batch a seq2seq batch (a corruption producing them needs a decoder).
TARGET_KEYS = ("labels", "decoder_input_ids")


class Seq2Seq(Objective):
    """Teacher-forced cross-entropy of the decoder's predictions of ``labels``.

    Args:
        decoder: the decoder (``decoder=t5|bart``; Hydra builds it from the ``decoder`` group).
        weight: factor of this loss in the total loss.
        label_smoothing: BART's fine-tuning recipes use 0.1; pre-training uses 0.
    """

    name = "seq2seq"
    requires = TARGET_KEYS
    instance_kinds = None
    requires_fix = (
        "use a seq2seq corruption (corruption=t5_span, bart, mass or a T5 Table 4 "
        "variant), or experiment=t5|bart|mass"
    )

    def __init__(self, decoder: Decoder | None, weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(weight=weight)
        if not isinstance(decoder, Decoder):
            raise config_error(
                "decoder",
                type(decoder).__name__ if decoder is not None else None,
                "objective.seq2seq needs a decoder",
                "add decoder=t5 or decoder=bart",
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise config_error(
                f"objective.{self.name}.label_smoothing",
                label_smoothing,
                "must be in [0, 1)",
                "use 0.0 (or 0.1)",
            )
        self.decoder = decoder
        self.label_smoothing = float(label_smoothing)

    def seq2seq_decoder(self) -> Decoder:
        return self.decoder

    def compile_targets(self) -> dict[str, nn.Module]:
        """Each decoder layer: the half of an encoder-decoder's work that is not the encoder's."""
        return layer_targets("decoder", self.decoder)

    def decode(self, encoder_output, batch: Mapping[str, Tensor], embedding: nn.Module) -> Tensor:
        """The decoder states [B, L, H] of a batch (teacher forcing)."""
        return self.decoder(
            batch["decoder_input_ids"],
            embedding,
            encoder_output.last_hidden_state,
            batch.get("attention_mask"),
            batch.get("decoder_position_ids"),
        )

    def forward(
        self, encoder_output, batch: Mapping[str, Tensor], embedding: nn.Module
    ) -> ObjectiveOutput:
        self.check_batch(batch)
        labels = batch["labels"]
        keep = labels != IGNORE_INDEX
        length = int(keep.any(0).nonzero().max()) + 1 if bool(keep.any()) else 1
        # the decoder runs on the columns up to the last target only (padding columns cut off)
        trimmed = {
            key: batch[key][:, :length]
            for key in ("decoder_input_ids", "decoder_position_ids")
            if key in batch
        }
        hidden = self.decode(encoder_output, {**batch, **trimmed}, embedding)  # (B, L', H)
        keep = keep[:, :length]
        rows = hidden[keep]  # (N, H): the target positions only
        targets = labels[:, :length][keep]  # (N,)
        n = targets.numel()
        projected, table, bias = self.decoder.output(rows, embedding)
        if self.label_smoothing > 0:
            logits = torch.nn.functional.linear(projected, table, bias)  # (N, V)
            loss_sum = torch.nn.functional.cross_entropy(
                logits, targets, reduction="sum", label_smoothing=self.label_smoothing
            )
            correct = (logits.argmax(-1) == targets).sum()
        else:
            loss_sum, correct = tied_decoder_cross_entropy(projected, table, bias, targets)
        loss = global_mean(loss_sum / max(n, 1), n)
        acc = correct.float() / max(n, 1)
        return ObjectiveOutput(
            loss=loss, n_targets=n, logs={"seq2seq_loss": loss.detach(), "seq2seq_acc": acc}
        )

    @classmethod
    def check_config(cls, cfg, name: str) -> None:
        """A decoder must be configured (``decoder=t5|bart``); ``model.compile_dynamic=false``
        is warned about (every target length then traces new decoder graphs)."""
        if cfg.get("decoder") is None or cfg.objective[name].get("decoder") is None:
            raise config_error(
                "decoder",
                None,
                f"objective.{name} trains an encoder-decoder, but no decoder is selected",
                "add decoder=t5 or decoder=bart (experiment=t5|bart|mass set one)",
            )
        model = cfg.get("model") or {}
        if model.get("compile", False) and model.get("compile_dynamic") is False:
            log.warning(
                "model.compile_dynamic=false with objective.%s: the decoder runs up to each "
                "batch's last target, and source lengths change with the corruption, so each "
                "new length traces new graphs (Dynamo falls back to eager after %d); "
                "model.compile_dynamic=null makes them dynamic after the first change",
                name,
                torch._dynamo.config.recompile_limit,
            )


__all__ = ["TARGET_KEYS", "Seq2Seq"]
