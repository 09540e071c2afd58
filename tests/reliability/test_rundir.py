"""One run per directory: the lock (refusal naming the holder, released by a crash), a completed
run re-launched (a no-op with the same config, refused with another), and the CSV history kept
across launches."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY

from clozelab.cli import main
from clozelab.core.claim import LOCK_FILE, RunLock
from clozelab.core.errors import ClozelabError
from clozelab.training.csv_log import RunCSVLogger

QUICK = ["eval.suite=null", "trainer.limit_val_batches=1"]


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}  # fmt: skip


def _args(corpus, run_dir, cache_dir, *extra) -> list[str]:
    return ["pretrain", *TINY, f"data.corpus={corpus}", f"hydra.run.dir={run_dir}",
            f"paths.cache_dir={cache_dir}", *QUICK, *extra]  # fmt: skip


def _cli(capsys, args) -> tuple[int, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


HOLDER = """
import sys, time
from clozelab.core.claim import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def _holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ))  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_names_its_holder_and_a_killed_holder_leaves_it_free(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(ClozelabError, match=f"another run is using.*pid {holder.pid}.*Fix:"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()  # a crash leaves the file, not the lock
    with RunLock(tmp_path), pytest.raises(ClozelabError, match="another run"):
        RunLock(tmp_path).acquire()  # also within one process
    assert not (tmp_path / LOCK_FILE).exists()


def test_second_launch_on_a_live_run_dir_is_refused_and_changes_nothing(
    tmp_path, text_corpus, cache_dir, capsys
):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "clozelab", *_args(text_corpus, run_dir, cache_dir)[0:],
         "trainer.max_steps=100000"],
        cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (run_dir / "metrics.json").exists() and not (run_dir / "config.yaml").exists():
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.5)
        live = ("csv", "checkpoints", "pretrain.log")  # what the first run goes on writing
        before = {k: v for k, v in _files(run_dir).items() if not k.startswith(live)}
        code, err = _cli(capsys, _args(text_corpus, run_dir, cache_dir))
        assert code == 2 and "Traceback" not in err
        assert f"pid {first.pid}" in err and "another run is using this directory" in err
        assert {k: v for k, v in _files(run_dir).items() if not k.startswith(live)} == before
        assert "another run" not in (run_dir / "pretrain.log").read_text()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_completed_run_relaunched_is_a_noop_and_another_config_is_refused(
    tmp_path, text_corpus, cache_dir, capsys
):
    run_dir = tmp_path / "run"
    # max_steps below val_check_interval: the run still ends with a validation
    args = _args(text_corpus, run_dir, cache_dir, "trainer.max_steps=3",
                 "trainer.val_check_interval=50")  # fmt: skip
    code, err = _cli(capsys, args)
    assert code == 0, err
    before = _files(run_dir)
    metrics = json.loads(before["metrics.json"])
    assert metrics["status"] == "completed" and "val/loss" in metrics
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        assert any(r["step"] == "3" and r.get("val/loss") for r in csv.DictReader(handle))
    code, err = _cli(capsys, args)
    assert code == 0 and "already holds this run, completed with the same config" in err
    assert _files(run_dir) == before
    code, err = _cli(capsys, [*args, "trainer.max_steps=5"])
    assert code == 2 and "Traceback" not in err
    assert "completed run of another config" in err and "trainer.max_steps=3 there, 5 now" in err
    assert "Fix:" in err
    assert _files(run_dir) == before


def _log(directory: Path, rows: list[tuple[int, dict]], checkpoint_at=None) -> None:
    logger = RunCSVLogger(directory, name="csv", version="")
    for step, metrics in rows:
        logger.log_metrics(metrics, step=step)
        if step == checkpoint_at:
            logger.after_save_checkpoint(None)


def _read(directory: Path) -> list[dict]:
    with open(directory / "csv" / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_history_survives_a_kill_and_a_resume_without_duplicated_steps(tmp_path):
    # launch 1: steps 0-5, checkpoint at 3 flushes the rows; killed (no finalize) after step 5
    _log(tmp_path, [(s, {"train/loss": 10.0 - s}) for s in range(6)], checkpoint_at=3)
    assert [r["step"] for r in _read(tmp_path)] == ["0", "1", "2", "3"]
    # launch 2 resumes from step 3: redoes 4-5 (same values), adds validation, finishes
    logger = RunCSVLogger(tmp_path, name="csv", version="")
    for step in (4, 5, 6):
        logger.log_metrics({"train/loss": 10.0 - step}, step=step)
    logger.log_metrics({"val/loss": 1.5}, step=6)
    logger.finalize("success")
    rows = _read(tmp_path)
    assert [(r["step"], r["train/loss"], r["val/loss"]) for r in rows] == [
        *((str(s), str(10.0 - s), "") for s in range(7)), ("6", "", "1.5")]  # fmt: skip
