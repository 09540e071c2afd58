"""PretrainModule: corrupt (in the data loader) -> embed -> encode -> objectives -> weighted sum."""

from __future__ import annotations

import math
import time

import pytorch_lightning as pl
import torch
from torch import nn

from clozelab.core.batch import Batch, JointBatch
from clozelab.core.errors import ClozelabError
from clozelab.objectives.base import data_parallel
from clozelab.training.fused_clipping import clip_fused_under_amp
from clozelab.training.objective_window import ObjectiveWindow
from clozelab.training.optim import build_scheduler, parameter_groups

MODEL_KEYS = ("input_ids", "token_type_ids", "attention_mask")


class NonFiniteLossError(ClozelabError):
    """The loss became NaN or Inf."""


def exact_losses(means: dict[str, float], objectives: dict) -> dict[str, float]:
    """Each objective's loss from the exact means of its terms (a term without targets in the
    whole set counts 0, as in a batch without them), and each stream's weighted total
    (``loss``, ``dialogue_loss``). ``objectives``: name -> (weight, total key, terms, loss log)."""
    out: dict[str, float] = {}
    for weight, total_key, terms, loss_key in objectives.values():
        if not any(term in means for term in terms):
            continue  # no batch of this stream ran (e.g. only a reference stream)
        loss = sum(c * means.get(term, 0.0) for term, c in terms.items())
        out[loss_key] = loss
        out[total_key] = out.get(total_key, 0.0) + weight * loss
    return out


class PretrainModule(pl.LightningModule):
    """Receives built components (Hydra ``_target_``); composes them and logs.

    Logged: ``train/<objective>_loss`` (and the objectives' other logs), ``train/loss``,
    ``train/tokens_seen``, ``train/tokens_per_s``, ``val/<...>`` (token-weighted means), and with
    a ``schedule`` (continual multi-task pre-training, ``training/schedule.py``) ``train/stage``:
    each training step runs the objectives the schedule gives it; validation runs all of them.
    Under a round-robin schedule the objectives' own logs reach the loggers as window means on
    rows of their own, never as stale values (``training/objective_window.py``); ``train/loss``
    stays the loss of the row's step.
    """

    def __init__(
        self,
        embedding: nn.Module,
        encoder: nn.Module,
        objectives: dict[str, nn.Module],
        optimizer,
        scheduler_cfg: dict | None = None,
        total_steps: int | None = None,
        weight_decay: float = 0.01,
        schedule=None,
    ):
        super().__init__()
        self.schedule = schedule  # a training.schedule.Schedule, or None: every objective
        one_a_step = schedule is not None and schedule.mix == "round_robin"
        self.objective_window = ObjectiveWindow() if one_a_step else None
        self.embedding, self.encoder = embedding, encoder
        self.objectives = nn.ModuleDict(objectives)
        self.optimizer_factory, self.scheduler_cfg = optimizer, scheduler_cfg or {}
        self.total_steps, self.weight_decay = total_steps, weight_decay
        self.tokens_seen = 0
        self._val_sums: dict[str, list[float]] = {}
        # objective (tagged) -> (its weight, its stream's total key, loss terms, its loss log)
        self._val_losses: dict[str, tuple[float, str, dict[str, float], str]] = {}
        self._loss_terms: dict[str, tuple[float, str, dict[str, float], str]] = {}
        self._train_start: float | None = None
        self.tokens_at_train_start = 0
        # training seconds of the earlier launches of this run, up to the checkpoint resumed from
        self.train_seconds_before = 0.0

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch | JointBatch, active: tuple[str, ...] | None = None):
        """``(total, logs, counts)`` of one step. A joint dialogue step (``data.dialogue``) gets
        a ``JointBatch`` ``{"text": batch, "dialogue": batch}``: the two streams' totals are
        summed. ``active``: the objectives to run (None: all)."""
        self._objective_losses, self._loss_terms = {}, {}
        parts = batch.streams()
        if len(parts) == 1:
            return self._forward_stream(parts[0], active)
        total, logs, counts = 0.0, {}, {}
        for part in parts:
            part_total, part_logs, part_counts = self._forward_stream(part, active)
            total = total + part_total
            logs.update(part_logs)
            counts.update(part_counts)
        logs["loss"] = total
        return total, logs, counts

    def _encode(self, batch: dict[str, torch.Tensor], objectives=None) -> torch.Tensor:
        """Embedding then encoder: the (B, T, H) states every objective reads (``objectives``:
        the step's, which say whether they read ``last_hidden_state``; None: all of them)."""
        roles = {"role_ids": batch["role_ids"]} if "role_ids" in batch else {}  # dialogue (DLM)
        roles.update({k: batch[k] for k in self.embedding.batch_inputs if k in batch})  # hook
        hidden = self.embedding(batch["input_ids"], batch.get("token_type_ids"), **roles)
        extra = {k: batch[k] for k in self.encoder.batch_inputs if k in batch}  # Encoder hook
        if self.encoder.skips_unread_output:  # Encoder / Objective hooks
            readers = self.objectives.values() if objectives is None else objectives.values()
            extra["content_output"] = any(o.reads_encoder_output for o in readers)
        return self.encoder(hidden, batch.get("attention_mask"), **extra)

    def _forward_stream(self, batch: Batch, active=None):
        """One stream's batch. On a ``DialogueBatch`` (ERNIE DLM) only the objectives whose
        ``streams`` include "dialogue" run; those that train on text too log as
        ``dialogue_<key>`` (e.g. ``dialogue_mlm_loss``), and its total also as ``dialogue_loss``.
        ``active``: the objectives to run (None: all)."""
        stream = batch.stream
        objectives = {
            name: objective
            for name, objective in self.objectives.items()
            if stream in objective.streams and (active is None or name in active)
        }
        for objective in objectives.values():  # e.g. RTD: the generator rewrites input_ids
            if objective.rewrites_inputs:
                batch = objective.prepare_inputs(batch, self.embedding)
        encoded = self._encode(batch, objectives)
        total, logs, counts = None, {}, {}
        for name, objective in objectives.items():
            out = objective(encoded, batch, self.embedding)
            tag = "dialogue_" if stream == "dialogue" and "text" in objective.streams else ""
            self._objective_losses[tag + name] = out.loss
            weighted = objective.weight * out.loss
            total = weighted if total is None else total + weighted
            for key, value in out.logs.items():
                logs[tag + key] = value
                counts[tag + key] = out.weight(key)
            total_key = "dialogue_loss" if stream == "dialogue" else "loss"
            terms = {tag + key: c for key, c in out.terms().items()}
            self._loss_terms[tag + name] = (objective.weight, total_key, terms, tag + out.loss_key)
        if total is None:
            raise ClozelabError(
                f"objective: none of {list(self.objectives)} trains on {stream} batches. Fix: add "
                "one that does (mlm trains on both text and dialogue batches)."
            )
        logs["loss"] = total
        if stream == "dialogue":
            logs["dialogue_loss"] = total
        return total, logs, counts

    # ------------------------------------------------------------------ training
    def on_train_start(self) -> None:
        self._train_start = time.perf_counter()
        self.tokens_at_train_start = self.tokens_seen

    def _with_task(self, batch: Batch | JointBatch, name: str) -> Batch | JointBatch:
        """``batch`` (each stream of it) given ``task_ids`` [B]: objective ``name``'s task id
        (read by ``embedding=task``); the batch is the loader's own, so it is set in place."""
        task = self.schedule.task_id(name)
        for part in batch.streams():
            part["task_ids"] = torch.full_like(part["input_ids"][:, 0], task)
        return batch

    def training_step(self, batch, batch_idx):
        world = self.trainer.world_size
        active = None
        if self.schedule is not None:  # continual multi-task: this step's objectives
            stage, active = self.schedule.step(self.global_step, self.tokens_seen)
            if len(active) == 1:
                batch = self._with_task(batch, active[0])
            self.log("train/stage", float(stage))
        with data_parallel(world, self._sum_across_ranks):  # losses: global-batch means
            loss, logs, _ = self(batch, active)
        if not torch.isfinite(loss):
            self._raise_non_finite(loss, batch)
        logs = {k: torch.as_tensor(v).detach() for k, v in logs.items()}
        tokens = sum(part["attention_mask"].sum() for part in batch.streams())
        if world > 1:
            logs, tokens = self._mean_across_ranks(logs, tokens)
        self.tokens_seen += int(tokens)
        self._log_objectives(active, {k: v for k, v in logs.items() if k != "loss"})
        self.log("train/loss", logs["loss"], prog_bar=True)
        self.log("train/tokens_seen", float(self.tokens_seen), reduce_fx="max")
        if self._train_start is not None:
            elapsed = max(time.perf_counter() - self._train_start, 1e-9)
            rate = (self.tokens_seen - self.tokens_at_train_start) / elapsed
            self.log("train/tokens_per_s", rate, prog_bar=True)
        return loss

    def _log_objectives(self, active, logs: dict[str, torch.Tensor]) -> None:
        """The objectives' logs of this step: through ``self.log`` (every row), or, under a
        round-robin schedule, into the window whose means are written every
        ``trainer.log_every_n_steps`` steps (``self.log`` still feeds the run's final metrics,
        without writing to the loggers)."""
        named = {f"train/{k}": v for k, v in logs.items()}
        if self.objective_window is None:
            self.log_dict(named)
            return
        self.log_dict(named, logger=False)
        self.objective_window.add(active, {k: float(v) for k, v in logs.items()})
        every = self.trainer.log_every_n_steps
        if not every or (self.global_step + 1) % every:
            return
        row = self.objective_window.row()
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(row, step=self.global_step)

    def _sum_across_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(tensor, reduce_op="sum")

    def _mean_across_ranks(self, logs: dict, tokens: torch.Tensor) -> tuple[dict, int]:
        """One all-reduce for the step's logs: their mean over the ranks (for the losses, the mean
        over the global batch: see ``global_mean``; accuracies: the mean of the ranks' values)
        and the non-padding tokens of all ranks, so every rank counts the same tokens_seen."""
        keys = sorted(logs)
        values = [logs[k].to(self.device, torch.float64).reshape(()) for k in keys]
        summed = self._sum_across_ranks(torch.stack([*values, tokens.to(torch.float64)]))
        world = self.trainer.world_size
        return {k: v / world for k, v in zip(keys, summed[:-1])}, int(summed[-1])

    def _raise_non_finite(self, loss: torch.Tensor, batch) -> None:
        bad = {
            name: float(value)
            for name, value in getattr(self, "_objective_losses", {}).items()
            if not torch.isfinite(value)
        }
        which = ", ".join(f"objective.{k} loss={v}" for k, v in bad.items()) or "the weighted sum"
        indices = batch.get("index")
        sample = (
            f" (samples {indices[:8].tolist()} of epoch {self.current_epoch})"
            if (indices is not None)
            else ""
        )
        raise NonFiniteLossError(
            f"train/loss={float(loss)} at training step {self.global_step + 1}: non-finite loss "
            f"from {which}{sample}. The run is stopped and marked failed; the last good "
            "checkpoint in checkpoints/ is kept. Fix: lower optim.lr, raise optim.eps, clip "
            "gradients (trainer.gradient_clip_val) or inspect these samples; then re-launch the "
            "same command to resume from the last checkpoint."
        )

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if batch.stream == "reference":
            logs, counts = self._reference_mlm(batch)
        elif self.schedule is not None and self.schedule.mix == "round_robin":
            logs, counts = {}, {}  # each objective on the input of its own task id
            for name in self.schedule.order:
                _, one_logs, one_counts = self(self._with_task(batch, name), (name,))
                for key in ("loss", "dialogue_loss"):
                    one_logs.pop(key, None)
                logs.update(one_logs)
                counts.update(one_counts)
                self._val_losses.update(self._loss_terms)
        else:
            _, logs, counts = self(batch)
            logs.pop("loss")  # the weighted sums are rebuilt from exact means at the end
            logs.pop("dialogue_loss", None)
            self._val_losses.update(self._loss_terms)
        for key, value in logs.items():
            weight = float(counts[key])
            if weight > 0 and math.isfinite(float(value)):
                total = self._val_sums.setdefault(key, [0.0, 0.0])
                total[0] += float(value) * weight
                total[1] += weight

    def _reference_mlm(self, batch: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """MLM alone on the reference-corrupted validation batch, logged as ``ref_mlm_*``: one
        yardstick for runs whose own corruption differs (e.g. masking rates)."""
        out = self.objectives["mlm"](self._encode(batch), batch, self.embedding)
        logs = {f"ref_{key}": value for key, value in out.logs.items()}
        return logs, {key: out.n_targets for key in logs}

    def on_validation_epoch_end(self) -> None:
        """Exact means over the whole validation set: each log's sum of value x targets over
        the batches (and ranks) divided by its targets; each objective's loss rebuilt from the
        means of its terms, and ``val/loss`` (``val/dialogue_loss``) as the weighted sum of the
        objectives' exact losses, like ``train/loss`` of one batch, never a mean of batch sums."""
        if not self._val_sums:
            return
        keys = sorted(self._val_sums)
        sums = torch.tensor(
            [self._val_sums[k] for k in keys], dtype=torch.float64, device=self.device
        )
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        means = {
            key: total / weight for key, (total, weight) in zip(keys, sums.tolist()) if weight > 0
        }
        means.update(exact_losses(means, self._val_losses))
        for key, value in means.items():
            self.log(f"val/{key}", value, prog_bar=key == "mlm_loss")
        self._val_sums, self._val_losses = {}, {}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(parameter_groups(self, self.weight_decay))
        scheduler = build_scheduler(optimizer, self.scheduler_cfg, self.total_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """``trainer.gradient_clip_val`` also under mixed precision with the fused AdamW, which
        Lightning's plugin refuses to clip (``clip_fused_under_amp``)."""
        if not clip_fused_under_amp(
            self.trainer.precision_plugin, optimizer, gradient_clip_val, gradient_clip_algorithm
        ):
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )

    # ------------------------------------------------------------------ state
    def train_seconds(self) -> float:
        """Training seconds of this run over all its launches (each up to its checkpoint)."""
        if self._train_start is None:
            return self.train_seconds_before
        return self.train_seconds_before + time.perf_counter() - self._train_start

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["clozelab"] = {
            "tokens_seen": self.tokens_seen,
            "train_seconds": self.train_seconds(),
        }
        if self.objective_window is not None:
            checkpoint["clozelab"]["objective_window"] = self.objective_window.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("clozelab", {})
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.train_seconds_before = float(state.get("train_seconds", 0.0))
        if self.objective_window is not None:
            self.objective_window.load_state_dict(state.get("objective_window", {}))
