"""The training logs of the objectives of a round-robin schedule (ERNIE 2.0,
``training/schedule.py``), without stale values.

A round-robin step trains one objective, so ``train/<objective>_loss`` (and its accuracy) is
measured on that step only. Lightning's ``self.log`` repeats a key's last value in every later row
until the key is logged again, so the CSV and W&B rows of the steps an objective did not run used
to show its old loss as if it were current. Instead, every ``trainer.log_every_n_steps`` steps the
module writes these logs as a row of their own (``ObjectiveWindow.row``):

- ``train/<key>``: the mean of the key over the steps of the window (the steps since the previous
  row) on which its objective ran; absent (a blank CSV cell) when it did not run in the window;
- ``train/<objective>_steps``: how many steps the objective has trained since the run began.

Both travel in the checkpoint, so a resumed run writes the rows of the uninterrupted one.

Why a window mean and not the value of the row's own step: with n active objectives and a logging
interval that is a multiple of n, every row's step trains the same objective, and the others would
never reach the log. With ``trainer.log_every_n_steps=1`` a row holds exactly the objective that
ran at that step.
"""

from __future__ import annotations

from collections import Counter


class ObjectiveWindow:
    """Per-key sums and counts since the last row, and each objective's step count."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = {}
        self.steps: Counter[str] = Counter()

    def add(self, objectives: tuple[str, ...], logs: dict[str, float]) -> None:
        """One training step: the ``objectives`` it trained and their ``logs`` (already reduced
        over the ranks)."""
        self.steps.update(objectives)
        for key, value in logs.items():
            total = self.sums.setdefault(key, [0.0, 0])
            total[0] += float(value)
            total[1] += 1

    def row(self) -> dict[str, float]:
        """The window's means and the step counts, as logger metrics; starts a new window."""
        out = {f"train/{key}": total / count for key, (total, count) in self.sums.items()}
        out.update({f"train/{name}_steps": float(n) for name, n in self.steps.items()})
        self.sums = {}
        return out

    def state_dict(self) -> dict:
        return {"sums": {k: list(v) for k, v in self.sums.items()}, "steps": dict(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        self.sums = {key: [float(t), int(n)] for key, (t, n) in state.get("sums", {}).items()}
        self.steps = Counter({name: int(n) for name, n in state.get("steps", {}).items()})
