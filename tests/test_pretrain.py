"""pretrain(cfg) in-process: golden losses, determinism, budgets, trackers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from omegaconf import open_dict

from clozelab.pretrain import pretrain

# First training losses of the tiny run below (seed 1234, generated corpus, CPU fp32). A change
# in masking, instance building, initialisation or the model shows up here first.
GOLDEN_LOSSES = [6.038894, 6.011877, 5.964166, 5.972578]


def _train_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in rows]


def test_golden_losses_and_determinism(compose_pretrain, tmp_path):
    first = compose_pretrain("initial_validation=false")
    metrics = pretrain(first)
    losses = _train_losses(Path(first.paths.output_dir))
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    # 1e-3: room for another CPU's float rounding, far below what a change of masking moves
    assert losses[:4] == pytest.approx(GOLDEN_LOSSES, abs=1e-3)
    second = compose_pretrain("initial_validation=false", f"paths.output_dir={tmp_path / 'again'}")
    again = pretrain(second)
    assert _train_losses(tmp_path / "again") == losses
    assert again["val/mlm_loss"] == metrics["val/mlm_loss"]


def test_token_budget_stops_the_run(compose_pretrain):
    cfg = compose_pretrain("trainer.max_steps=-1", "trainer.max_tokens=1500",
                           "initial_validation=false")  # fmt: skip
    metrics = pretrain(cfg)
    assert metrics["tokens_seen"] >= 1500
    assert metrics["steps"] < 6  # 8 x <=64 tokens a step: stops after a few steps


def test_validation_loss_falls(compose_pretrain):
    cfg = compose_pretrain("trainer.max_steps=40", "trainer.val_check_interval=40",
                           "optim.lr=3e-3", "trainer.limit_val_batches=4")  # fmt: skip
    metrics = pretrain(cfg)
    assert metrics["val/mlm_loss"] < metrics["initial/val/mlm_loss"] - 0.5
    assert metrics["status"] == "completed"
    assert json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text()) == metrics


def test_wandb_runs_offline_without_a_key(compose_pretrain, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setenv("HOME", str(Path(compose_pretrain().paths.output_dir).parent))
    cfg = compose_pretrain("logger=wandb", "trainer.max_steps=2", "initial_validation=false")
    pretrain(cfg)
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert runs, "an offline W&B run directory is written"


def test_broken_wandb_falls_back_to_csv(compose_pretrain, monkeypatch, caplog):
    import pytorch_lightning.loggers as loggers

    class Broken:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("W&B is down")

    monkeypatch.setattr(loggers, "WandbLogger", Broken)
    cfg = compose_pretrain("logger=wandb", "trainer.max_steps=2", "initial_validation=false")
    metrics = pretrain(cfg)
    assert metrics["status"] == "completed"
    assert any("continuing with CSV" in r.getMessage() for r in caplog.records)


def test_resumed_run_keeps_its_wandb_run_id(tmp_path):
    from clozelab.training.tracking import wandb_run_id

    first = wandb_run_id(tmp_path)
    assert wandb_run_id(tmp_path) == first and len(first) == 12
    assert wandb_run_id(tmp_path / "other") != first


def test_validation_reference_is_one_yardstick_for_every_corruption(compose_pretrain, tmp_path):
    """``validation_reference``: the same sequences also scored under a fixed corruption. Equal
    to the run's own corruption it reproduces val/mlm_loss exactly (same draws); a run at another
    rate scores its untrained model (same seed, same weights) under the reference exactly as the
    first run scored it under its own 15% masking."""
    from omegaconf import OmegaConf

    run = ("trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=3")
    cfg = compose_pretrain(*run)
    reference = OmegaConf.to_container(cfg.corruption)
    with open_dict(cfg):
        cfg.validation_reference = OmegaConf.create(reference)
    same = pretrain(cfg)
    assert same["val/ref_mlm_loss"] == pytest.approx(same["val/mlm_loss"], rel=1e-6)
    assert same["val/ref_mlm_acc"] == pytest.approx(same["val/mlm_acc"], rel=1e-6)

    other = compose_pretrain(*run, "corruption.rate=0.6", f"paths.output_dir={tmp_path / 'r60'}")
    with open_dict(other):
        other.validation_reference = OmegaConf.create(reference)
    moved = pretrain(other)
    initial_own = same["initial/val/mlm_loss"]
    assert moved["initial/val/ref_mlm_loss"] == pytest.approx(initial_own, rel=1e-6)
    assert moved["initial/val/mlm_loss"] != pytest.approx(initial_own, rel=1e-6)


def test_validation_reference_needs_mlm(compose_pretrain):
    from omegaconf import OmegaConf

    from clozelab.core.errors import ClozelabError

    cfg = compose_pretrain("objective=[sop]", "data.instances=sentence_order")
    with open_dict(cfg):
        cfg.validation_reference = OmegaConf.create(OmegaConf.to_container(cfg.corruption))
    with pytest.raises(ClozelabError, match="validation_reference.*Fix: add mlm"):
        pretrain(cfg)


def test_a_corpus_that_fills_no_training_batch_is_refused(compose_pretrain):
    # the generated corpus gives about a hundred instances of 64 tokens: no batch of 256, so
    # Lightning would drop the partial one and stop after 0 steps with the run "completed"
    from clozelab.core.errors import ClozelabError

    cfg = compose_pretrain("data.batch_size=256")
    with pytest.raises(ClozelabError, match=r"data.batch_size=256: the corpus gives \d+ training"):
        pretrain(cfg)
