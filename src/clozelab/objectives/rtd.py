"""Replaced-token detection (ELECTRA, SPECS §12).

A small generator, trained with MLM on the masked input, fills the masked positions with tokens
sampled from its softmax (Gumbel-max, temperature 1, no gradient through the sample); the
discriminator (the main encoder) then tells, for every token, whether it differs from the original.
A correct sample counts as original (label 0).

* Generator: the main embedding (shared, tied decoder) -> Linear(H -> h_g) -> a post-LN
  Transformer of the same depth, hidden h_g = ``generator_fraction`` x H, FFN 4 h_g, max(1, h_g/64)
  heads -> dense -> GeLU -> LayerNorm -> embedding table + own bias.
* Discriminator head: dense H -> H, GeLU, dense H -> 1; sigmoid CE averaged over every non-pad
  token of the batch ([CLS]/[SEP] included).
* Loss: ``generator_weight * MLM_gen + discriminator_weight * disc`` (1.0 and 50).

Runs as a ``prepare_inputs(batch, embedding)`` hook (PretrainModule calls it before embedding the
discriminator's input) followed by the usual ``forward``. Masking comes from the corruption, which
must not replace tokens itself: ELECTRA masks 85% of the selected tokens and keeps 15%.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.core.batch import IGNORE_INDEX
from clozelab.core.errors import ClozelabError, config_error
from clozelab.model.encoder import TransformerEncoder
from clozelab.model.layers import LMTransform
from clozelab.objectives.base import Objective, ObjectiveOutput, global_mean
from clozelab.objectives.deletion import BinaryTokenHead


def corruption_keys(corruption) -> set[str]:
    """The batch keys a configured corruption produces (a composition: all its steps')."""
    from clozelab.core.config import target_class

    return set(target_class(corruption, "corruption").produces_for(corruption))


def _default(node, parameter: str):
    """The default of ``parameter`` in the constructor of the class ``node`` names (or None)."""
    import inspect

    from clozelab.core.config import target_class

    if not node.get("_target_"):
        return None
    found = inspect.signature(target_class(node, "corruption")).parameters.get(parameter)
    return None if found is None or found.default is inspect.Parameter.empty else found.default


def generator_heads(hidden: int) -> int:
    """ELECTRA's max(1, h/64) heads, lowered until it divides ``hidden``."""
    heads = max(1, hidden // 64)
    while hidden % heads:
        heads -= 1
    return heads


def gumbel_sample(logits: Tensor, temperature: float = 1.0, generator=None) -> Tensor:
    """argmax(logits / T + Gumbel noise) along the last axis: a sample of softmax(logits / T)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    gumbel = -torch.log(-torch.log(u.clamp(1e-9, 1.0 - 1e-7)))
    return (logits.float() / temperature + gumbel).argmax(-1)


class RTD(Objective):
    """ELECTRA's generator + replaced-token detection; reads ``mlm_labels`` [B, T].

    Args:
        hidden_size: discriminator (encoder) width H.
        vocab_size: rows of the shared embedding table.
        num_layers: generator depth (ELECTRA: the discriminator's).
        generator_fraction: generator hidden size as a fraction of H (Small/Large 0.25, Base 1/3).
        activation, layer_norm_eps, dropout, attention_dropout: as the encoder's.
        embedding_size: width E of the shared embedding table when it differs from H.
        generator_weight: factor of the generator's MLM loss (1.0).
        discriminator_weight: factor of the discriminator's loss (ELECTRA: 50).
        temperature: sampling temperature (1.0).
        weight: factor of this objective's (combined) loss in the total loss.
        initializer_range: std of the normal initialisation (0.02).
    """

    name = "rtd"
    requires = ("mlm_labels",)
    instance_kinds = None
    requires_fix = "use a masking corruption (corruption=mask with random_prob=0, as ELECTRA)"
    rewrites_inputs = True  # the generator's samples replace the masked tokens

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        num_layers: int,
        generator_fraction: float = 0.25,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        embedding_size: int | None = None,
        generator_weight: float = 1.0,
        discriminator_weight: float = 50.0,
        temperature: float = 1.0,
        weight: float = 1.0,
        initializer_range: float = 0.02,
    ):
        super().__init__(weight=weight)
        if not 0.0 < generator_fraction <= 1.0:
            raise config_error(
                "objective.rtd.generator_fraction",
                generator_fraction,
                "must lie in (0, 1]",
                "use 0.25 (ELECTRA Small/Large) or 1/3 (Base)",
            )
        if not temperature > 0:
            raise config_error("objective.rtd.temperature", temperature, "must be > 0", "use 1.0")
        self.vocab_size = vocab_size
        self.generator_hidden = max(1, round(hidden_size * generator_fraction))
        g = self.generator_hidden
        self.generator_weight, self.discriminator_weight = generator_weight, discriminator_weight
        self.temperature = temperature
        self.generator_in = nn.Linear(hidden_size, g)  # the shared embedding's output -> h_g
        self.generator = TransformerEncoder(
            g,
            num_layers,
            generator_heads(g),
            4 * g,
            dropout,
            attention_dropout,
            activation,
            layer_norm_eps,
            initializer_range,
        )
        self.generator_head = LMTransform(
            g,
            activation,
            layer_norm_eps,
            out_size=embedding_size or hidden_size,
            initializer_range=initializer_range,
        )
        self.generator_bias = nn.Parameter(torch.zeros(vocab_size))
        self.discriminator_head = BinaryTokenHead(hidden_size, activation, initializer_range)
        nn.init.normal_(self.generator_in.weight, std=initializer_range)
        nn.init.zeros_(self.generator_in.bias)
        self._generator_out: tuple[Tensor, Tensor, int] | None = None

    def generator_logits(self, batch: Mapping[str, Tensor], embedding: nn.Module, positions):
        """Generator logits [N, V] at the flat ``positions`` (N,) of the masked input."""
        emb = embedding(batch["input_ids"], batch.get("token_type_ids"))  # (B, T, H)
        h = self.generator(self.generator_in(emb), batch.get("attention_mask")).last_hidden_state
        picked = h.reshape(-1, h.shape[-1]).index_select(0, positions)  # (N, h_g)
        table = embedding.word_embeddings.weight  # (V, E), shared
        return F.linear(self.generator_head(picked), table, self.generator_bias)  # (N, V)

    def prepare_inputs(self, batch: Mapping[str, Tensor], embedding: nn.Module) -> dict:
        """Run the generator; returns the batch with sampled tokens in the masked positions and
        ``rtd_labels`` [B, T] (1 where the input now differs from the original)."""
        self.check_batch(batch)
        labels = batch["mlm_labels"]  # (B, T)
        flat = labels.reshape(-1)
        positions = (flat != IGNORE_INDEX).nonzero().squeeze(1)  # (N,)
        targets = flat.index_select(0, positions)  # (N,)
        logits = self.generator_logits(batch, embedding, positions).float()  # (N, V)
        n = targets.numel()
        loss = global_mean(F.cross_entropy(logits, targets, reduction="sum") / max(n, 1), n)
        with torch.no_grad():
            sampled = gumbel_sample(logits.detach(), self.temperature)  # (N,)
            acc = (logits.argmax(-1) == targets).float().sum() / max(n, 1)
        self._generator_out = (loss, acc, n)
        ids = batch["input_ids"]
        original = torch.where(labels != IGNORE_INDEX, labels, ids)  # (B, T)
        new_ids = ids.reshape(-1).index_copy(0, positions, sampled.to(ids.dtype)).view_as(ids)
        return {**batch, "input_ids": new_ids, "rtd_labels": (new_ids != original).long()}

    def forward(
        self, encoder_output, batch: Mapping[str, Tensor], embedding: nn.Module | None = None
    ) -> ObjectiveOutput:
        if "rtd_labels" not in batch or self._generator_out is None:
            raise ClozelabError(
                "objective.rtd: the batch has no rtd_labels: the generator did not run. Fix: call "
                "rtd.prepare_inputs(batch, embedding) before embedding the input (PretrainModule "
                "does)."
            )
        gen_loss, gen_acc, n_gen = self._generator_out
        self._generator_out = None
        labels = batch["rtd_labels"]  # (B, T)
        logits = self.discriminator_head(encoder_output.last_hidden_state).float()  # (B, T)
        keep = (
            batch["attention_mask"].bool()
            if "attention_mask" in batch
            else torch.ones_like(labels, dtype=torch.bool)
        )
        z, y = logits[keep], labels[keep].float()
        n = y.numel()
        disc = global_mean(F.binary_cross_entropy_with_logits(z, y, reduction="sum") / max(n, 1), n)
        loss = self.generator_weight * gen_loss + self.discriminator_weight * disc
        with torch.no_grad():
            logs = {
                "rtd_loss": loss.detach(),
                "rtd_discriminator_loss": disc.detach(),
                "rtd_generator_loss": gen_loss.detach(),
                "rtd_acc": ((z > 0).float() == y).float().sum() / max(n, 1),
                "rtd_generator_acc": gen_acc,
                "rtd_replaced_fraction": y.sum() / max(n, 1),
            }
        return ObjectiveOutput(
            loss=loss,
            n_targets=n,
            logs=logs,
            weights={"rtd_generator_loss": n_gen, "rtd_generator_acc": n_gen},
            loss_terms={
                "rtd_generator_loss": self.generator_weight,
                "rtd_discriminator_loss": self.discriminator_weight,
            },
        )

    @classmethod
    def check_config(cls, cfg, name: str) -> None:
        """Refuse another replacement of the inputs next to the generator's (compose time)."""
        corruption = cfg.get("corruption") or {}
        steps = [("corruption", corruption)] + [
            (f"corruption.steps[{i}]", step) for i, step in enumerate(corruption.get("steps") or [])
        ]  # a composition's steps too
        probs = [
            (key, node.get("random_prob", _default(node, "random_prob")) or 0.0)
            for key, node in steps
        ]
        key, random_prob = max(probs, key=lambda kv: kv[1])
        if random_prob > 0:
            raise config_error(
                f"{key}.random_prob",
                random_prob,
                f"objective.{name} (RTD) replaces the masked tokens with the generator's samples; "
                "a corruption that also writes random tokens makes the originals ambiguous",
                "set corruption.random_prob=0 with corruption.mask_prob=0.85 "
                "corruption.keep_prob=0.15 (ELECTRA), or use experiment=electra",
            )
        from clozelab.core.config import target_class

        moved = corruption_keys(corruption) & {"deletion_labels", "order_labels"}
        if moved:
            raise config_error(
                "corruption",
                corruption.get("_target_"),
                f"objective.{name} (RTD) needs the inputs unchanged except for masking; this "
                f"corruption also deletes or reorders tokens ({sorted(moved)})",
                "use corruption=mask (random_prob=0) with RTD",
            )
        for other, node in (cfg.get("objective") or {}).items():
            if other != name and target_class(node, f"objective.{other}").rewrites_inputs:
                raise config_error(
                    "objective",
                    f"[{name}, {other}]",
                    "both objectives rewrite the inputs before the encoder",
                    f"keep one of {name}, {other}",
                )
