"""One job of a Hydra sweep (``clozelab pretrain sweep=NAME``, any ``-m`` multirun).

- **Crash isolation.** Any exception a job raises is logged (with its traceback unless it is a
  ClozelabError), written to its ``metrics.json`` (``status: failed``, ``error``) and the next
  job starts; Ctrl-C and preemption (KeyboardInterrupt, SystemExit) still stop the sweep.
- **Re-launch.** A job directory remembers the config it ran (``job.json``: a hash of the
  resolved config, paths left out). Re-launching the same sweep (same ``hydra.sweep.dir``, same
  grid, so the same job numbers) skips every job that finished with that config, and re-runs
  the others, which resume from their ``checkpoints/last.ckpt``. A job directory that holds a run
  of another config (the grid was changed) is refused, never resumed from.
- **Optuna.** With ``sweep_meta.objective`` set (e.g. ``val/mlm_loss``) a job returns that metric
  as a float, as Hydra's Optuna sweeper needs; otherwise it returns its metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from clozelab.core.errors import ClozelabError
from clozelab.core.rundir import read_json, write_json

log = logging.getLogger("clozelab")

JOB_FILE = "job.json"


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config without ``paths`` (where the job lives is not what it is)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("paths", None)
    text = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _write(path: Path, payload: dict) -> None:
    """Atomic JSON write, by global rank 0 only (every rank of a multi-task job runs the job)."""
    from pytorch_lightning.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    write_json(path, payload)


def finished_metrics(run_dir: Path, digest: str) -> dict | None:
    """The metrics of a job that ran to its end (training and evaluation) with this config."""
    job, metrics = read_json(run_dir / JOB_FILE), read_json(run_dir / "metrics.json")
    if job.get("config_hash") == digest and job.get("finished") and metrics:
        return metrics if metrics.get("status") == "completed" else None
    return None


def claim(run_dir: Path, digest: str, overrides: list[str]) -> None:
    """Record that this job directory runs this config (raises when it holds another one)."""
    job = read_json(run_dir / JOB_FILE)
    if job and job.get("config_hash") != digest:
        raise ClozelabError(
            f"hydra.sweep.dir: the job directory {run_dir} holds a run of another config "
            f"(overrides {job.get('overrides')}, this job {overrides}); it is left as it is. Fix: "
            "re-launch with the grid that wrote the sweep, or use a new hydra.sweep.dir."
        )
    launches = int(job.get("launches", 0)) + 1
    _write(run_dir / JOB_FILE, {"config_hash": digest, "overrides": overrides,
                                "launches": launches, "finished": False})  # fmt: skip


def mark_finished(run_dir: Path, metrics: dict) -> None:
    job = read_json(run_dir / JOB_FILE)
    job["finished"] = metrics.get("status") == "completed"
    _write(run_dir / JOB_FILE, job)


def mark_failed(run_dir: Path, exc: BaseException, protocol: dict | None) -> None:
    """``metrics.json`` says the job failed and why (what the run wrote before is kept)."""
    metrics = read_json(run_dir / "metrics.json")
    error = str(exc) if isinstance(exc, ClozelabError) else repr(exc)
    metrics.update(status="failed", error=error)
    if protocol is not None:
        metrics.setdefault("protocol", protocol)
    _write(run_dir / "metrics.json", metrics)


def job_return(metrics, cfg: DictConfig):
    """What the job gives its sweeper: the ``sweep_meta.objective`` metric as a float (Optuna)
    when one is named, else the metrics."""
    key = OmegaConf.select(cfg, "sweep_meta.objective", default=None)
    if key is None or metrics is None:
        return metrics
    value = metrics.get(key) if isinstance(metrics, dict) else None
    if value is None:
        log.error(
            "sweep_meta.objective=%s: the job's metrics have no such key (it has %s); the trial "
            "counts as failed. Fix: name one of the val/... or eval/... keys of metrics.json.",
            key,
            sorted(metrics) if isinstance(metrics, dict) else metrics,
        )
        return None
    return float(value)


def run_job(command: str, function: Callable[[DictConfig], dict], cfg: DictConfig):
    """Run one sweep job of ``command`` with failures isolated (see the module docstring)."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    num, overrides = hydra.job.num, list(hydra.overrides.task)
    tracked = command == "pretrain"
    run_dir = Path(cfg.paths.output_dir) if tracked else None
    protocol, claimed = None, False
    try:
        if tracked:
            from clozelab.training.protocol import protocol as run_protocol

            digest = config_hash(cfg)
            done = finished_metrics(run_dir, digest)
            if done is not None:
                log.info("job %s: already completed with this config in %s; skipped", num, run_dir)
                return job_return(done, cfg)
            claim(run_dir, digest, overrides)
            claimed = True
            protocol = run_protocol(cfg)
        metrics = function(cfg)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # the other jobs of the sweep go on
        if isinstance(exc, ClozelabError):
            log.error("job %s failed: %s", num, exc)
        else:
            log.exception("job %s failed", num)
        if claimed:  # never in a directory that holds another config's run
            mark_failed(run_dir, exc, protocol)
        return None
    if tracked:
        mark_finished(run_dir, metrics)
    return job_return(metrics, cfg)
