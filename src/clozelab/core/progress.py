"""Progress displays: a Rich display for long work whose total may be unknown, and where a
pre-training run stands against its budget (``Budget``: steps, tokens or time, with an ETA),
shown as a Rich bar on a terminal (``clozelab.progress_bar.BudgetBar``) and in the plain log
lines otherwise (``clozelab.training.callbacks.LogProgress``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


@contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n)`` callable; the display is off when stderr is not a terminal."""
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    with Progress(*columns, TimeElapsedColumn(), disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def _seconds(max_time) -> float | None:
    """Lightning's ``max_time`` ("DD:HH:MM:SS", a dict of days/hours/minutes/seconds, or a
    timedelta) in seconds; None when there is none."""
    if max_time is None:
        return None
    if isinstance(max_time, timedelta):
        return max_time.total_seconds()
    if isinstance(max_time, Mapping):
        return timedelta(**{k: float(v) for k, v in max_time.items()}).total_seconds()
    days, hours, minutes, seconds = (float(part) for part in str(max_time).split(":"))
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()


def clock(seconds: float) -> str:
    """``7:05`` or ``1:02:03``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _count(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.0f}"


@dataclass
class Budget:
    """What ends a run (steps, tokens, wall time: the first reached), and where it stands.

    ``start`` is taken when training starts (a resumed run starts part way), and the ETA comes
    from the progress made since then."""

    max_steps: int | None = None
    max_tokens: int | None = None
    max_time_s: float | None = None
    _start: tuple[float, float] | None = field(default=None, repr=False)  # (time, fraction)

    @classmethod
    def of(cls, max_steps=None, max_tokens=None, max_time=None) -> Budget:
        steps = int(max_steps) if max_steps is not None and int(max_steps) > 0 else None
        tokens = int(max_tokens) if max_tokens else None
        return cls(steps, tokens, _seconds(max_time))

    def fraction(self, step: int, tokens: int, elapsed: float) -> float | None:
        parts = [
            step / self.max_steps if self.max_steps else None,
            tokens / self.max_tokens if self.max_tokens else None,
            elapsed / self.max_time_s if self.max_time_s else None,
        ]
        known = [p for p in parts if p is not None]
        return min(1.0, max(known)) if known else None

    def where(self, step: int, tokens: int) -> str:
        """``step 120/500 · 0.49M tokens`` or ``step 30 · 0.12M/0.30M tokens``."""
        steps = f"step {step}/{self.max_steps}" if self.max_steps else f"step {step}"
        seen = _count(tokens) + (f"/{_count(self.max_tokens)}" if self.max_tokens else "")
        return f"{steps} · {seen} tokens"

    def start(self, step: int, tokens: int) -> None:
        self._start = (time.perf_counter(), self.fraction(step, tokens, 0.0) or 0.0)
        self._started_at_step = step

    def elapsed(self) -> float:
        return time.perf_counter() - self._start[0] if self._start else 0.0

    def eta(self, step: int, tokens: int) -> str:
        """The time left at the pace since training started ("?" before it can be told)."""
        elapsed = self.elapsed()
        done = self.fraction(step, tokens, elapsed)
        if done is None or self._start is None:
            return "?"
        progress = done - self._start[1]
        if progress <= 0 or elapsed <= 0:
            return "?"
        return clock((1.0 - done) * elapsed / progress)

    def line(self, step: int, tokens: int) -> str:
        """``step 120/500 · 0.49M tokens (24%) · elapsed 1:40 · ETA 5:12``."""
        done = self.fraction(step, tokens, self.elapsed())
        percent = f" ({done:.0%})" if done is not None else ""
        return (
            f"{self.where(step, tokens)}{percent} · elapsed {clock(self.elapsed())} · "
            f"ETA {self.eta(step, tokens)}"
        )


def shown_metrics(metrics: Mapping) -> str:
    """The progress-bar metrics as ``loss 7.1234 · 4,100 tokens/s · val/mlm_loss 6.7012``
    (Lightning's ``v_num`` left out)."""
    parts = []
    for key, value in metrics.items():
        if key == "v_num":
            continue
        value = float(value)
        if key.endswith("tokens_per_s"):
            parts.append(f"{value:,.0f} tokens/s")
        else:
            parts.append(f"{key.removeprefix('train/')} {value:.4f}")
    return " · ".join(parts)
