"""Training callbacks: the token budget and plain-text progress for non-terminal output."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class TokenBudget(pl.Callback):
    """Stops training once ``max_tokens`` tokens (padding excluded, all ranks) have been seen."""

    def __init__(self, max_tokens: int):
        self.max_tokens = int(max_tokens)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.tokens_seen >= self.max_tokens:
            trainer.should_stop = True


class LogProgress(pl.Callback):
    """One log line every ``every`` steps: for logs and CI, where a live bar is not drawn."""

    def __init__(self, every: int = 50):
        self.every = every
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            metrics = trainer.callback_metrics
            loss = metrics.get("train/loss")
            rate = metrics.get("train/tokens_per_s")
            log.info(
                "step %d  loss %.4f  %s tokens/s  %.0fs",
                step,
                float(loss) if loss is not None else float("nan"),
                f"{float(rate):,.0f}" if rate is not None else "?",
                time.perf_counter() - self._start,
            )

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        vals = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if vals:
            log.info("step %d  %s", trainer.global_step,
                     "  ".join(f"{k} {v:.4f}" for k, v in sorted(vals.items())))  # fmt: skip
