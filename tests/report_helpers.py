"""Fake sweep directories for the report tests: the files a Hydra multirun job writes
(config.yaml, .hydra/overrides.yaml, .hydra/hydra.yaml, metrics.json, eval/<task>.json,
csv/metrics.csv) and the sweep's multirun.yaml, with the values the test chooses."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

CSV_COLUMNS = ["epoch", "step", "train/loss", "train/tokens_seen", "val/loss", "val/mlm_loss"]


def write_multirun(sweep: Path, params: dict[str, str], task: list[str] = ()) -> None:
    """A multirun.yaml of Hydra's basic sweeper with this grid and command line."""
    sweep.mkdir(parents=True, exist_ok=True)
    hydra = {
        "sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}"},
        "sweeper": {
            "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
            "max_batch_size": None,
            "params": params,
        },
        "overrides": {"hydra": [f"hydra.sweep.dir={sweep}"], "task": list(task)},
    }
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}), "utf-8")


def curve_rows(final: float, steps: int = 4, tokens_per_step: int = 100) -> list[dict]:
    """CSVLogger rows: train/loss falling to ``final`` and a validation every 2 steps."""
    rows = [{"epoch": 0, "step": 0, "val/loss": final + 2.0, "val/mlm_loss": final + 1.5}]
    for step in range(1, steps + 1):
        loss = final + (steps - step) * 0.5
        rows.append({"epoch": 0, "step": step, "train/loss": loss,
                     "train/tokens_seen": step * tokens_per_step})  # fmt: skip
        if step % 2 == 0:
            rows.append({"epoch": 0, "step": step, "val/loss": loss + 0.1,
                         "val/mlm_loss": loss - 0.4})  # fmt: skip
    return rows


def write_job(
    sweep: Path,
    num: int,
    overrides: list[str],
    metrics: dict | None,
    *,
    baseline: dict | None = None,
    evals: dict[str, dict] | None = None,
    rows: list[dict] | None = None,
    choices: dict | None = None,
    objectives: dict | None = None,
) -> Path:
    """One job directory ``sweep/num`` (``metrics=None``: no metrics.json, as a job not run)."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True, exist_ok=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)), "utf-8")
    runtime = {"choices": {"model": "tiny", **(choices or {})}}
    (job / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": runtime}}), "utf-8"
    )
    seed = next((int(o.split("=")[1]) for o in overrides if o.startswith("seed=")), 1)
    config = {"seed": seed, "sweep_meta": {"name": "fake", "baseline": baseline,
                                           "seed_key": "seed"}}  # fmt: skip
    if objectives is not None:  # name -> weight, as config.yaml's objective node
        config["objective"] = {name: {"_target_": f"x.{name}", "weight": weight}
                               for name, weight in objectives.items()}  # fmt: skip
    (job / "config.yaml").write_text(yaml.safe_dump(config), "utf-8")
    if metrics is not None:
        payload = {"status": "completed", "tokens_seen": 400, "steps": 4, "wall_time_s": 1.5,
                   "protocol": {"budget": "tokens", "max_tokens": 400, "suite": "bundled",
                                "model": {"name": "tiny", "hidden_size": 32}, "seed": seed},
                   **metrics}  # fmt: skip
        (job / "metrics.json").write_text(json.dumps(payload), "utf-8")
    for task, result in (evals or {}).items():
        (job / "eval").mkdir(exist_ok=True)
        (job / "eval" / f"{task}.json").write_text(json.dumps(result), "utf-8")
    if rows is not None:
        (job / "csv").mkdir(exist_ok=True)
        with (job / "csv" / "metrics.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return job
