"""``BudgetBar``: the Rich bar of a pre-training run on a terminal: steps, tokens or time against
the run's budget (whichever ends it first), elapsed time and ETA, loss and throughput, and a line
for each validation. Lightning's own bar shows epochs ("Epoch 0/-2" on a step or token budget)
and a ``v_num``; this one shows what ends the run."""

from __future__ import annotations

from pytorch_lightning.callbacks import ProgressBar
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from clozelab.core.progress import Budget, shown_metrics


class BudgetBar(ProgressBar):
    """A Rich bar of the run against its budget (steps, tokens or time: whichever ends it first)
    with the elapsed time and an ETA, the loss and throughput; validation gets its own line."""

    def __init__(self, budget: Budget):
        super().__init__()
        self.budget = budget
        self._enabled = True
        self._bar: Progress | None = None
        self._train = self._val = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def _display(self) -> Progress:
        if self._bar is None:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[where]}"),
                TextColumn("{task.fields[metrics]}"),
                console=Console(stderr=True),
            )
            self._bar.start()
        return self._bar

    def _stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar, self._train, self._val = None, None, None

    def _train_fields(self, trainer, pl_module) -> dict:
        step, tokens = trainer.global_step, int(getattr(pl_module, "tokens_seen", 0))
        done = self.budget.fraction(step, tokens, self.budget.elapsed())
        shown = shown_metrics(trainer.progress_bar_metrics)
        return {
            "completed": done or 0.0,
            "where": self.budget.line(step, tokens),
            "metrics": f"· {shown}" if shown else "",
        }

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.is_enabled:
            return
        self.budget.start(trainer.global_step, int(getattr(pl_module, "tokens_seen", 0)))
        fields = self._train_fields(trainer, pl_module)
        total = 1.0 if self.budget.fraction(0, 0, 0.0) is not None else None
        self._train = self._display().add_task("train", total=total, **fields)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._train is not None:
            self._bar.update(self._train, **self._train_fields(trainer, pl_module))

    def on_validation_start(self, trainer, pl_module) -> None:
        if not self.is_enabled or trainer.sanity_checking:
            return
        total = self.total_val_batches
        total = int(total) if total != float("inf") else None
        self._val = self._display().add_task("validate", total=total, where="", metrics="")

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._val is not None:
            done = self._bar.tasks[[t.id for t in self._bar.tasks].index(self._val)].completed
            self._bar.update(self._val, completed=done + 1, where=f"batch {int(done) + 1}")

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._val is None:
            return
        self._bar.remove_task(self._val)
        self._val = None
        if self._train is None:  # a validation outside training (the initial one)
            self._stop()
        else:
            self._bar.update(self._train, **self._train_fields(trainer, pl_module))

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._stop()

    def print(self, *args, **kwargs) -> None:
        (self._bar.console if self._bar else Console(stderr=True)).print(*args, **kwargs)
