"""Kill a tiny run at several points, re-launch the same command, and get the uninterrupted run's
weights (bitwise) and losses back.

The run: 18 steps over two epochs (13 batches an epoch on the generated corpus), a checkpoint every
4 steps, validation (2 batches) every 6, dropout on. Points: mid-epoch between checkpoints, on a
checkpoint step, on a validation step, at an epoch's last batch, after the epoch boundary, and a
kill in the middle of writing a checkpoint file.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers import TINY

KILLER = Path(__file__).with_name("killer.py")
STEPS = 18
RUN = [
    "trainer.max_steps=18",
    "callbacks.checkpoint_every_n_steps=4",
    "trainer.val_check_interval=6",
    "trainer.limit_val_batches=2",  # a stop inside validation would cut it after one
    "eval.suite=null",
]


def _args(corpus, cache_dir, run_dir, *extra) -> list[str]:
    return [
        *TINY,
        f"data.corpus={corpus}",
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={run_dir}",
        *RUN,
        *extra,
    ]


def _env(cache_dir) -> dict:
    return dict(os.environ, CLOZELAB_CACHE_DIR=str(cache_dir), PYTHONUNBUFFERED="1")


def _clozelab(args, cache_dir, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clozelab", "pretrain", *args],
        cwd=cwd,
        env=_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _killed(at: int, how: str, args, cache_dir, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(KILLER), str(at), how, *args],
        cwd=cwd,
        env=_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")["state_dict"]


TIMING = ("wall_time_s", "launch_wall_time_s", "tokens_per_s", "train/tokens_per_s", "cache_reused")


def _rows(run_dir: Path) -> list[dict]:
    """Every CSV row the run (and its resumed parts) wrote, timing columns left out."""
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return [
            {k: v for k, v in row.items() if k not in TIMING and v != ""}
            for row in csv.DictReader(handle)
        ]


def _losses(run_dir: Path) -> dict[int, float]:
    """step -> train/loss, from the CSV rows."""
    return {int(r["step"]): float(r["train/loss"]) for r in _rows(run_dir) if r.get("train/loss")}


def _metrics(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k not in TIMING}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, text_corpus, cache_dir):
    """The uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = _clozelab(_args(text_corpus, cache_dir, run_dir), cache_dir, run_dir.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def _assert_same_as_reference(run_dir: Path, reference: Path) -> None:
    ours, theirs = _weights(run_dir), _weights(reference)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), f"{key} differs after resume"
    assert len(_losses(reference)) == STEPS
    # the logged history survives the kill and the resume, every step once, as uninterrupted
    assert _rows(run_dir) == _rows(reference)
    metrics, ref_metrics = _metrics(run_dir), _metrics(reference)
    assert any(k.startswith("initial/val/") for k in ref_metrics)
    assert any(k.startswith("val/") for k in ref_metrics)
    assert metrics == ref_metrics  # initial/val/* included, timings left out


def _kill_and_resume(at, how, tmp_path, text_corpus, cache_dir, reference, expect_rc):
    run_dir = tmp_path / "run"
    args = _args(text_corpus, cache_dir, run_dir)
    first = _killed(at, how, args, cache_dir, tmp_path)
    assert first.returncode == expect_rc, first.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    second = _clozelab(args, cache_dir, tmp_path)  # the same command again
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resuming from" in second.stderr + second.stdout
    _assert_same_as_reference(run_dir, reference)
    return first, run_dir


def test_sigterm_mid_epoch_checkpoints_and_resumes_exactly(
    tmp_path, text_corpus, cache_dir, reference
):
    # step 5: between two periodic checkpoints (4 and 8), so only the signal's checkpoint has it
    first, run_dir = _kill_and_resume(
        5, "SIGTERM", tmp_path, text_corpus, cache_dir, reference, 128 + signal.SIGTERM
    )
    assert "Received SIGTERM: stopping after this batch" in first.stdout + first.stderr
    # the wall time counts both launches: the first one's training up to its checkpoint, too
    metrics = json.loads((run_dir / "metrics.json").read_text())
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")["clozelab"]
    assert metrics["wall_time_s"] > metrics["launch_wall_time_s"] > 0
    assert saved["train_seconds"] >= metrics["wall_time_s"] - metrics["launch_wall_time_s"]


def test_sigterm_in_the_batch_before_validation_lets_it_run_whole(
    tmp_path, text_corpus, cache_dir, reference
):
    # step 6 is followed by a validation: it runs (both batches) before the stop, which comes
    # one batch later; a checkpoint at step 6 would have resumed past it and lost its row
    first, run_dir = _kill_and_resume(
        6, "SIGTERM", tmp_path, text_corpus, cache_dir, reference, 128 + signal.SIGTERM
    )
    log = first.stdout + first.stderr
    assert "Validation is due after this batch: running it, then stopping" in log
    assert "Checkpoint written to" in log and "at step 7;" in log
    # the initial validation, then after steps 6, 12 and 18 (the CSV's step is 0-based)
    assert [r["step"] for r in _rows(run_dir) if "val/loss" in r] == ["0", "5", "11", "17"]


@pytest.mark.slow  # 3 launches with a DataLoader worker (~35 s on 2 cores)
@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_to_the_process_group_spares_the_dataloader_worker(
    name, tmp_path, text_corpus, cache_dir, reference
):
    """A terminal's Ctrl-C (SIGINT) or a scheduler's SIGTERM to every process of the job: the
    whole process group, the DataLoader worker included, in the batch after which validation is
    due (step 6), so the stop trains one batch more. Before, the worker died (SIGINT: of the
    KeyboardInterrupt; SIGTERM: PyTorch's worker handler re-raised it), that fetch raised
    'DataLoader worker exited unexpectedly' and the run ended with a traceback and without its
    checkpoint."""
    run_dir = tmp_path / "run"
    args = _args(text_corpus, cache_dir, run_dir, "data.num_workers=1")
    first = subprocess.run([sys.executable, str(KILLER), "6", f"{name}@GROUP", *args],
                           cwd=tmp_path, env=_env(cache_dir), capture_output=True, text=True,
                           timeout=600, start_new_session=True)  # fmt: skip
    out = first.stdout + first.stderr
    assert first.returncode == 128 + getattr(signal, name), out[-3000:]
    assert "Traceback" not in out and out.count("Checkpoint written to") == 1
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")["global_step"] == 7
    second = _clozelab(args, cache_dir, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    _assert_same_as_reference(run_dir, reference)


@pytest.mark.slow
def test_sigkill_resumes_from_the_last_periodic_checkpoint(
    tmp_path, text_corpus, cache_dir, reference
):
    # step 15: past the epoch boundary (13); the last checkpoint is step 12, steps 13-15 are redone
    _kill_and_resume(15, "SIGKILL", tmp_path, text_corpus, cache_dir, reference, -signal.SIGKILL)


def test_kill_in_the_middle_of_a_checkpoint_write_leaves_the_previous_one(
    tmp_path, text_corpus, cache_dir, reference
):
    # writes: 1 step-4.ckpt, 2 last.ckpt (4), 3 step-8.ckpt, 4 last.ckpt (8) <- killed half-way
    run_dir = tmp_path / "run"
    args = _args(text_corpus, cache_dir, run_dir)
    first = _killed(4, "MIDWRITE", args, cache_dir, tmp_path)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    leftovers = list((run_dir / "checkpoints").glob(".tmp-*"))
    assert leftovers, "the torn temporary file is there"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    assert last["global_step"] == 4  # the previous good checkpoint, whole
    second = _clozelab(args, cache_dir, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    _assert_same_as_reference(run_dir, reference)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("at", "how"),
    [(6, "SIGINT"), (8, "SIGUSR1"), (13, "SIGTERM"), (14, "SIGINT"), (9, "SIGKILL")],
    ids=[
        "sigint-at-validation",
        "sigusr1-at-checkpoint",
        "sigterm-at-epoch-end",
        "sigint-after-epoch-boundary",
        "sigkill-after-checkpoint",
    ],
)
def test_kill_and_resume_at_more_points(at, how, tmp_path, text_corpus, cache_dir, reference):
    rc = -signal.SIGKILL if how == "SIGKILL" else 128 + getattr(signal, how)
    _kill_and_resume(at, how, tmp_path, text_corpus, cache_dir, reference, rc)


@pytest.mark.slow
def test_interrupted_run_is_marked_in_metrics_json(tmp_path, text_corpus, cache_dir):
    run_dir = tmp_path / "run"
    first = _killed(
        3,
        "SIGINT",
        _args(text_corpus, cache_dir, run_dir, "trainer.max_steps=6"),
        cache_dir,
        tmp_path,
    )
    assert first.returncode == 128 + signal.SIGINT, first.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and "SIGINT" in metrics["error"]
    assert metrics["steps"] == 3
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")["global_step"] == 3


def test_stop_before_the_first_periodic_checkpoint_is_overwritten_by_the_resumed_run(tmp_path):
    """A stop before any periodic checkpoint: the signal's last.ckpt is the one the resumed run
    overwrites at its end (not a last-v1.ckpt beside a stale last.ckpt)."""
    from pytorch_lightning.demos.boring_classes import BoringModel

    from clozelab.training.callbacks import CheckpointOnSignal

    class StopAt(BoringModel):
        stop_at: int | None = None

        def on_train_batch_start(self, batch, batch_idx):
            if self.global_step == self.stop_at:
                os.kill(os.getpid(), signal.SIGTERM)

    def fit(max_steps, stop_at=None, resume=None):
        model = StopAt()
        model.stop_at = stop_at
        checkpoints = pl.callbacks.ModelCheckpoint(
            dirpath=tmp_path, filename="step-{step}", save_last=True, every_n_train_steps=4
        )
        stopper = CheckpointOnSignal(tmp_path / "last.ckpt")
        trainer = pl.Trainer(max_steps=max_steps, callbacks=[checkpoints, stopper], logger=False,
                             enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        with contextlib.suppress(SystemExit):  # the stop exits, as in a run
            trainer.fit(model, ckpt_path=resume)
        return stopper

    assert fit(8, stop_at=1).signum == signal.SIGTERM  # stopped in step 2, before step 4's file
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 2
    fit(8, resume=tmp_path / "last.ckpt")  # its last periodic checkpoint: step 8
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 8
    assert not list(tmp_path.glob("last-v*.ckpt"))


@pytest.fixture(scope="module")
def xlnet_reference(tmp_path_factory, text_corpus, cache_dir):
    """The uninterrupted run of the xlnet recipe (permutation targets, two-stream encoder)."""
    run_dir = tmp_path_factory.mktemp("xlnet_reference") / "run"
    args = _args(text_corpus, cache_dir, run_dir, "experiment=xlnet", "trainer.max_steps=8")
    proc = _clozelab(args, cache_dir, run_dir.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_xlnet_recipe_resumes_exactly(tmp_path, text_corpus, cache_dir, xlnet_reference):
    """Stopped at step 3 (before the first periodic checkpoint) and re-launched, the xlnet recipe
    reaches the uninterrupted run's weights bitwise and logs the same loss at every step: its
    permutations and targets are drawn again exactly as they were."""
    run_dir = tmp_path / "run"
    args = _args(text_corpus, cache_dir, run_dir, "experiment=xlnet", "trainer.max_steps=8")
    first = _killed(3, "SIGTERM", args, cache_dir, tmp_path)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    second = _clozelab(args, cache_dir, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resuming from" in second.stderr + second.stdout
    assert not list((run_dir / "checkpoints").glob("last-v*.ckpt"))
    ours, theirs = _weights(run_dir), _weights(xlnet_reference)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), f"{key} differs after resume"
    reference = _losses(xlnet_reference)
    assert len(reference) == 8
    assert _losses(run_dir) == reference


@pytest.mark.slow  # 3 launches that each compile with inductor (~3 min on 2 cores)
def test_an_inductor_compiled_run_resumes_bitwise_on_two_threads(tmp_path, text_corpus, cache_dir):
    """``model.compile=true`` on CPU with the default threads: stopped at step 3 and re-launched,
    the run reaches the uninterrupted compiled run's weights bitwise. Before ``Lookup`` the
    compiled embedding's backward added repeated ids' rows in thread order: two compiled runs
    differed by ~1e-7 in every weight after 10 steps."""
    extra = ("model.compile=true", "trainer.max_steps=6")
    reference = tmp_path / "reference"
    proc = _clozelab(_args(text_corpus, cache_dir, reference, *extra), cache_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    args = _args(text_corpus, cache_dir, run_dir, *extra)
    first = _killed(3, "SIGTERM", args, cache_dir, tmp_path)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    second = _clozelab(args, cache_dir, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resuming from" in second.stderr + second.stdout
    ours, theirs = _weights(run_dir), _weights(reference)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), f"{key} differs after resume"
    assert _losses(run_dir) == _losses(reference)


# ---------------------------------------------------------------------------------- DDP
# A signal that reaches one rank of a 2-process CPU DDP run (``kill`` of the launching process,
# or of rank 1 alone) stops every rank at the same step: one checkpoint, every process exits,
# and the same command resumes to the uninterrupted DDP run's weights. Before the ranks agreed,
# the signalled rank stopped and saved alone while the other waited in its next collective: the
# run hung (``kill`` of the launcher: rank 0 wrote its checkpoint, then both processes blocked).
DDP = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory, text_corpus, cache_dir):
    run_dir = tmp_path_factory.mktemp("ddp_reference") / "run"
    proc = _clozelab(_args(text_corpus, cache_dir, run_dir, *DDP), cache_dir, run_dir.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.slow  # 5 launches of 2 processes (~2 min on 2 cores)
@pytest.mark.parametrize("rank", [0, 1])
def test_a_signal_to_one_rank_stops_every_rank_together(
    tmp_path, text_corpus, cache_dir, ddp_reference, rank
):
    run_dir = tmp_path / "run"
    args = _args(text_corpus, cache_dir, run_dir, *DDP)
    try:  # the signal arrives while step 5 runs on that rank only
        first = subprocess.run([sys.executable, str(KILLER), "5", f"SIGTERM@{rank}", *args],
                               cwd=tmp_path, env=_env(cache_dir), capture_output=True, text=True,
                               timeout=300)  # fmt: skip
    except subprocess.TimeoutExpired:
        subprocess.run(["pkill", "-f", str(run_dir)], check=False)  # the other rank, too
        pytest.fail("the ranks did not stop")
    out = first.stdout + first.stderr
    assert first.returncode in (0, 128 + signal.SIGTERM), out[-3000:]
    assert out.count("Checkpoint written to") == 2  # both ranks, at the same step
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    assert saved["global_step"] == 5
    second = _clozelab(args, cache_dir, tmp_path)  # the same command again
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resuming from" in second.stderr + second.stdout
    ours, theirs = _weights(run_dir), _weights(ddp_reference)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), f"{key} differs after resume"
