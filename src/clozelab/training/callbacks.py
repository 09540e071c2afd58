"""Training callbacks: the token budget, plain-text progress for non-terminal output, the
initial metrics carried in checkpoints, the step of the last validation, and the two that make a
run resumable exactly (RNG state in checkpoints; a checkpoint on SIGTERM/SIGINT/SIGUSR1 before
exiting)."""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from clozelab.core.progress import Budget, shown_metrics
from clozelab.core.signals import STOP_SIGNALS

log = logging.getLogger(__name__)


class TokenBudget(pl.Callback):
    """Stops training once ``max_tokens`` tokens (padding excluded, all ranks) have been seen."""

    def __init__(self, max_tokens: int):
        self.max_tokens = int(max_tokens)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.tokens_seen >= self.max_tokens:
            trainer.should_stop = True


class LogProgress(pl.Callback):
    """Plain progress lines, for logs and CI where a live bar is not drawn: one after the first
    step, then every ``every`` steps or ``seconds`` (whichever comes first), and at the end;
    each says where the run stands against its budget, with the elapsed time and an ETA."""

    def __init__(self, every: int = 50, budget: Budget | None = None, seconds: float = 60.0):
        self.every, self.seconds = every, seconds
        self.budget = budget or Budget()
        self._first = 0
        self._last = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._first = trainer.global_step
        self.budget.start(trainer.global_step, pl_module.tokens_seen)
        self._last = time.perf_counter()
        if trainer.is_global_zero:
            log.info("training: %s", self.budget.line(trainer.global_step, pl_module.tokens_seen))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero:  # one line per step, not one per rank
            return
        due = (
            step == self._first + 1
            or step % self.every == 0
            or step == trainer.max_steps
            or time.perf_counter() - self._last >= self.seconds
        )
        if due:
            self._last = time.perf_counter()
            shown = shown_metrics(
                {k: v for k, v in trainer.progress_bar_metrics.items() if k.startswith("train/")}
            )
            log.info("%s · %s", self.budget.line(step, pl_module.tokens_seen), shown)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        vals = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if vals:
            log.info(
                "validation at step %d: %s",
                trainer.global_step,
                " · ".join(f"{k} {v:.4f}" for k, v in sorted(vals.items())),
            )


class InitialMetrics(pl.Callback):
    """The untrained model's validation metrics (``initial/val/...``), carried in every checkpoint
    so that a resumed run reports them even when the launch it continues wrote no metrics.json
    (SIGKILL, out of memory)."""

    def __init__(self):
        self.metrics: dict[str, float] = {}

    def state_dict(self) -> dict:
        return {"metrics": dict(self.metrics)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.metrics = dict(state_dict.get("metrics") or {})


class ValidatedAt(pl.Callback):
    """The global step of the last validation during training (None before any)."""

    def __init__(self):
        self.step: int | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.step = trainer.global_step


class RNGState(pl.Callback):
    """Stores the global RNG states (torch, numpy, random) in each checkpoint and puts them back
    right before the first training batch of a resumed run.

    The global torch RNG drives dropout; restoring it late (``on_train_start``, after the data
    loaders are built and any initial work is done) makes the resumed steps draw exactly the
    numbers the uninterrupted run drew. The data path never touches it (corruption, sampler and
    worker seeds use their own generators).
    """

    def __init__(self):
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        # tensors, ints and tuples only: Lightning loads checkpoints with weights_only=True
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        if self._pending is None:
            return
        name, keys, pos, has_gauss, gauss = self._pending["numpy"]
        torch.set_rng_state(self._pending["torch"])
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(self._pending["python"])
        self._pending = None


def _validation_due(trainer) -> bool:
    """Whether Lightning validates at the end of the training batch that just ran (False when
    this Lightning version does not say)."""
    loop = trainer.fit_loop
    try:
        return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))
    except (AttributeError, TypeError):
        return False


class CheckpointOnSignal(pl.Callback):
    """SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 (SLURM's warning before preemption) stop training at
    the end of the current batch and write ``path`` (the run's ``last.ckpt``) before exiting.

    The handlers only raise Lightning's stop flag; Lightning then raises ``SIGTERMException``
    between batches, where the state is consistent, and ``on_exception`` saves it. A second
    SIGINT interrupts at once (no checkpoint) for a user who really wants out. ``signum`` tells
    the caller which signal stopped the run (None when none did); ``hand_on`` then passes it to
    the handler installed before training (submitit's, which requeues a SLURM job).

    A signal that arrives in a batch after which validation is due stops one batch later: the
    validation runs whole first. (A checkpoint written before it would lose it: Lightning cut
    it after one batch, and the resumed run skips a validation its checkpoint says is done.)

    With several processes (DDP), a signal may reach one rank only (``kill`` of the launching
    process) or the ranks in different batches; a rank that stopped alone would leave the others
    waiting in a collective forever. There the handler only notes the signal, and at the end of
    every training batch the ranks agree (one all-reduce of "any rank signalled?") and stop,
    save and exit together, at the same step.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.signum: int | None = None
        self._saved = False
        self._deferred = False  # the stop waits for a validation due after this batch
        self._previous: dict[int, object] = {}
        self._before: dict[int, object] = {}  # the handlers of the last training, kept

    def _handler(self, trainer):
        def handle(signum, frame):
            if signum == signal.SIGINT and self.signum == signal.SIGINT:
                raise KeyboardInterrupt
            if self.signum is None:
                log.warning(
                    "Received %s: stopping after this batch and writing %s",
                    signal.Signals(signum).name,
                    self.path,
                )
                self.signum = signum
            if trainer.world_size == 1:  # several ranks stop when they agree, not on their own
                trainer._signal_connector.received_sigterm = True

        return handle

    def _stop_requested(self, trainer) -> bool:
        """Whether to stop after this batch: this process's signal, or with several processes,
        any rank's (every rank calls this at the end of every training batch)."""
        local = self.signum is not None or trainer.received_sigterm or self._deferred
        if trainer.world_size > 1:
            return trainer.strategy.reduce_boolean_decision(local, all=False)
        return local

    def on_train_start(self, trainer, pl_module) -> None:
        self.signum, self._saved, self._deferred = None, False, False
        if threading.current_thread() is not threading.main_thread():
            return
        handle = self._handler(trainer)
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, handle)
        self._before = dict(self._previous)

    def hand_on(self) -> None:
        """Call the handler that was installed before training for the signal that stopped it,
        when that is a Python function (e.g. submitit's checkpoint-and-requeue, which exits)."""
        handler = self._before.get(self.signum) if self.signum is not None else None
        if callable(handler) and handler is not signal.default_int_handler:
            log.info("Passing %s on to %s", signal.Signals(self.signum).name, handler)
            handler(self.signum, None)

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Save here, in the same loop state as the periodic checkpoints (Lightning resumes those
        # exactly, also at a validation step or an epoch's last batch); Lightning raises
        # SIGTERMException at the end of this batch.
        if self._saved or not self._stop_requested(trainer):
            return
        if not self._deferred and _validation_due(trainer):
            log.warning("Validation is due after this batch: running it, then stopping")
            self._deferred = True
            trainer._signal_connector.received_sigterm = False  # else Lightning cuts it short
            return
        trainer._signal_connector.received_sigterm = True
        self._save(trainer)

    def _save(self, trainer) -> None:
        if self.signum is None:  # Lightning's own handler caught it (signal sent earlier)
            self.signum = signal.SIGTERM
        self._own_last(trainer)
        trainer.save_checkpoint(self.path)
        self._saved = True
        log.warning(
            "Checkpoint written to %s at step %d; re-launch the same command to resume",
            self.path,
            trainer.global_step,
        )

    def _own_last(self, trainer) -> None:
        """Record ``path`` as the ``last`` file of the ModelCheckpoint that writes into its
        directory, in the state this checkpoint carries: the resumed run then overwrites it.
        Without this, a stop before the first periodic checkpoint leaves that callback's
        ``last_model_path`` empty, and the resumed run, finding a ``last.ckpt`` it does not own,
        writes its final weights to ``last-v1.ckpt`` while ``last.ckpt`` keeps the stop's."""
        for callback in trainer.checkpoint_callbacks:
            mine = isinstance(callback, pl.callbacks.ModelCheckpoint) and callback.save_last
            if mine and Path(callback.dirpath or "") == self.path.parent:
                callback.last_model_path = str(self.path)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, SIGTERMException) and not self._saved:
            self._save(trainer)  # the signal came outside a training batch (e.g. in validation)
