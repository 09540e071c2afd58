"""A run with dialogue batches (ERNIE DLM) resumed mid-epoch sees the batches, and ends with the
weights and losses, of the uninterrupted run."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from clozelab.pretrain import pretrain
from clozelab.training.module import PretrainModule

RUN = ("experiment=ernie", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
       "initial_validation=false", "eval.suite=null", "callbacks.checkpoint_every_n_steps=3",
       "corruption.level_probs.phrase=0.0", "corruption.level_probs.basic=0.7",
       "data.dialogue.every=3")  # fmt: skip


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle)
                if r.get("train/loss")}  # fmt: skip


def _run(compose_pretrain, run_dir: Path, steps: int, *extra) -> dict:
    cfg = compose_pretrain(*RUN, f"trainer.max_steps={steps}", f"paths.output_dir={run_dir}",
                           *extra)  # fmt: skip
    return pretrain(cfg)


@pytest.mark.slow  # three tiny runs (~1 min on 2 busy cores); the loader-level resume test is fast
@pytest.mark.parametrize("schedule", ["alternate", "joint"])
def test_resumed_dialogue_run_matches_the_uninterrupted_one(
    compose_pretrain, tmp_path, monkeypatch, schedule
):
    extra = (f"data.dialogue.schedule={schedule}",)
    reference = _run(compose_pretrain, tmp_path / "reference", 7, *extra)

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step == 3:  # SIGTERM while step 4 runs (as killer.py): checkpoint, exit
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(PretrainModule, "on_train_batch_start", on_train_batch_start, raising=False)
        with pytest.raises(SystemExit):
            _run(compose_pretrain, tmp_path / "resumed", 7, *extra)
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt")["global_step"] == 4
    resumed = _run(compose_pretrain, tmp_path / "resumed", 7, *extra)  # the same command again
    assert resumed["steps"] == reference["steps"] == 7
    ours = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu")
    theirs = torch.load(tmp_path / "reference" / "checkpoints" / "last.ckpt", map_location="cpu")
    for key, value in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][key], value), f"{key} differs after resume"
    ref_losses, losses = _losses(tmp_path / "reference"), _losses(tmp_path / "resumed")
    assert len(ref_losses) == 7 and {4, 5, 6} <= set(losses)  # the resumed part's steps
    assert all(loss == ref_losses[step] for step, loss in losses.items())
    for key in ("train/dlm_loss", "val/dlm_loss", "val/mlm_loss", "tokens_seen"):
        assert resumed[key] == reference[key], key
    saved = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert saved["train/dlm_loss"] == reference["train/dlm_loss"]
