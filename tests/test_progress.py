"""Progress of a pre-training run against its budget: steps, tokens or time (the first reached),
with the elapsed time and an ETA, in the plain log lines and in the Rich bar; no epochs, no
v_num; the first plain line right after the first step."""

from __future__ import annotations

import logging
import sys

import pytest

from clozelab.core.progress import Budget, clock, shown_metrics
from clozelab.pretrain import pretrain


def test_budget_fraction_where_and_eta(monkeypatch):
    steps = Budget.of(max_steps=500)
    assert steps.fraction(125, 10_000, 3.0) == 0.25
    assert steps.where(125, 512_000) == "step 125/500 · 512k tokens"
    tokens = Budget.of(max_steps=-1, max_tokens=2_000_000)
    assert tokens.max_steps is None and tokens.fraction(10, 500_000, 1.0) == 0.25
    assert tokens.where(10, 500_000) == "step 10 · 500k/2M tokens"
    both = Budget.of(max_steps=100, max_tokens=1000, max_time="00:00:01:00")
    assert both.max_time_s == 60.0
    assert both.fraction(10, 800, 6.0) == 0.8  # the budget nearest its end decides
    assert Budget.of().fraction(10, 10, 1.0) is None and Budget.of().eta(10, 10) == "?"

    now = [100.0]
    monkeypatch.setattr("clozelab.core.progress.time.perf_counter", lambda: now[0])
    steps.start(100, 0)  # a resumed run: 100 of 500 steps done before this launch
    assert steps.eta(100, 0) == "?"
    now[0] = 160.0  # 50 steps in 60 s: 350 left take 420 s
    assert steps.eta(150, 0) == "7:00"
    assert steps.line(150, 1_000) == "step 150/500 · 1k tokens (30%) · elapsed 1:00 · ETA 7:00"
    assert clock(3725) == "1:02:05" and clock(59.6) == "1:00"


def test_shown_metrics_leave_out_v_num():
    text = shown_metrics({"train/loss": 7.12345, "train/tokens_per_s": 4100.4, "v_num": 3,
                          "val/mlm_loss": 6.5})  # fmt: skip
    assert text == "loss 7.1235 · 4,100 tokens/s · val/mlm_loss 6.5000"


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_plain_lines_start_at_the_first_step_with_budget_and_eta(compose_pretrain, monkeypatch):
    from clozelab.training.callbacks import log

    handler = _Lines()  # on the logger itself: whatever an earlier test did to logging's config
    monkeypatch.setattr(log, "disabled", False)
    level = log.level
    log.setLevel(logging.INFO)  # setLevel, not an attribute: it clears logging's isEnabledFor cache
    log.addHandler(handler)
    try:
        pretrain(compose_pretrain("callbacks.log_every_n_steps=4", "initial_validation=false"))
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    lines = handler.lines
    steps = [line for line in lines if line.startswith("step ")]
    assert lines[0].startswith("training: step 0/6 · 0 tokens (0%)")
    assert steps[0].startswith("step 1/6 · ") and "ETA" in steps[0] and "tokens/s" in steps[0]
    assert [s.split(" · ")[0] for s in steps] == ["step 1/6", "step 4/6", "step 6/6"]
    assert "(100%)" in steps[-1] and "ETA 0:00" in steps[-1]
    assert any(line.startswith("validation at step 3: ") for line in lines)
    assert not any("v_num" in line or "Epoch" in line for line in lines)


def test_rich_bar_shows_the_budget_not_epochs(compose_pretrain, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    if not sys.stderr.isatty():
        pytest.skip("stderr cannot pose as a terminal here")
    cfg = compose_pretrain("trainer.max_steps=-1", "trainer.max_tokens=2000",
                           "initial_validation=false")  # fmt: skip
    pretrain(cfg)
    err = capsys.readouterr().err
    assert "train" in err and "/2k tokens" in err and "ETA" in err and "tokens/s" in err
    assert "Epoch" not in err and "v_num" not in err
