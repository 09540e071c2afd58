"""A continual multi-task run (ERNIE 2.0 schedule, round robin with task embeddings) killed inside
a stage and resumed crosses the next stage boundary exactly as the uninterrupted run: the same
losses at every step and the same final weights."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import pytest
import torch

from clozelab.pretrain import pretrain
from clozelab.training.module import PretrainModule

RUN = ("experiment=ernie2", "schedule.stages.0.until_steps=2", "schedule.stages.1.until_steps=5",
       "corruption.level_probs.phrase=0.0", "corruption.level_probs.basic=0.7",
       "trainer.val_check_interval=3", "trainer.limit_val_batches=1", "initial_validation=false",
       "callbacks.checkpoint_every_n_steps=3", "trainer.max_steps=7")  # fmt: skip


def _objective_rows(run_dir: Path) -> dict[int, dict]:
    """The round-robin objective rows (window means and step counts, training/objective_window)."""
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return {int(r["step"]): {k: v for k, v in r.items() if v}
                for r in csv.DictReader(handle) if r.get("train/mlm_steps")}  # fmt: skip


def _rows(run_dir: Path) -> dict[int, tuple[float, float]]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return {int(r["step"]): (float(r["train/loss"]), float(r["train/stage"]))
                for r in csv.DictReader(handle) if r.get("train/loss")}  # fmt: skip


@pytest.mark.slow  # two tiny runs and a resume (~40 s on 2 busy cores)
def test_resume_inside_a_stage_crosses_the_boundary_exactly(
    compose_pretrain, tmp_path, monkeypatch
):
    reference = pretrain(compose_pretrain(*RUN, f"paths.output_dir={tmp_path / 'reference'}"))

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step == 3:  # SIGTERM while step 4 (stage 1) runs: checkpoint, exit
            os.kill(os.getpid(), signal.SIGTERM)

    resumed_cfg = compose_pretrain(*RUN, f"paths.output_dir={tmp_path / 'resumed'}")
    with monkeypatch.context() as patch:
        patch.setattr(PretrainModule, "on_train_batch_start", on_train_batch_start, raising=False)
        with pytest.raises(SystemExit):
            pretrain(resumed_cfg)
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt")["global_step"] == 4
    resumed = pretrain(resumed_cfg)  # the same command again: steps 4 (stage 1), 5-6 (stage 2)
    assert resumed["steps"] == reference["steps"] == 7
    ours = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu")
    theirs = torch.load(tmp_path / "reference" / "checkpoints" / "last.ckpt", map_location="cpu")
    assert ours["global_step"] == theirs["global_step"]
    for key, value in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][key], value), f"{key} differs after resume"
    ref_rows, rows = _rows(tmp_path / "reference"), _rows(tmp_path / "resumed")
    assert [ref_rows[s][1] for s in range(7)] == [0, 0, 1, 1, 1, 2, 2]  # stage of each step
    assert {4, 5, 6} <= set(rows) and all(rows[s] == ref_rows[s] for s in rows)
    ref_objectives, objectives = (
        _objective_rows(tmp_path / "reference"),
        _objective_rows(tmp_path / "resumed"),
    )  # the step counts travel in the checkpoint: the resumed rows go on counting
    assert objectives[6] == ref_objectives[6] and objectives[6]["train/mlm_steps"] == "4.0"
    for key in ("val/loss", "val/sentence_reorder_loss", "train/loss", "tokens_seen"):
        assert resumed[key] == reference[key], key
