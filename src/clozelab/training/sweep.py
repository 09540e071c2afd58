"""One job of a Hydra sweep (``clozelab pretrain sweep=NAME``, any ``-m`` multirun).

- **Crash isolation.** Any exception a job raises is logged (with its traceback unless it is a
  ClozelabError), written to its ``metrics.json`` (``status: failed``, ``error``) and the next
  job starts; Ctrl-C and preemption (KeyboardInterrupt, SystemExit) still stop the sweep.
- **Re-launch.** A job directory holds the record its run wrote (``job.json``, see
  clozelab.core.claim: a hash of the resolved config, paths left out). Re-launching the same sweep
  (same ``hydra.sweep.dir``, same grid, so the same job numbers) skips every job that finished
  with that config, and re-runs the others, which resume from their ``checkpoints/last.ckpt``. A
  job directory that holds a run of another config (the grid was changed) is refused and left
  byte-for-byte as it was, never resumed from.
- **Optuna.** With ``sweep_meta.objective`` set (e.g. ``val/mlm_loss``) a job returns that metric
  as a float, as Hydra's Optuna sweeper needs; otherwise it returns its metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from clozelab.core.claim import (
    RECORD_FILE,
    RunDirectoryRefused,
    check_relaunch,
    claim,
    config_hash,
    launch_identity,
    notice,
    read_json,
    write_hydra_record,
    write_json,
)
from clozelab.core.errors import ClozelabError, user_message

log = logging.getLogger("clozelab")


def record_launch(run_dir: Path, cfg: DictConfig) -> None:
    """The job's record (job.json, .hydra/) when it has none yet, so a job that failed before
    its run started is still a job the report can place on the grid."""
    from pytorch_lightning.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0 or (run_dir / RECORD_FILE).is_file():
        return
    overrides, choices, _ = launch_identity()
    claim(run_dir, config_hash(cfg), overrides, choices)
    write_hydra_record(run_dir, cfg)


def mark_failed(run_dir: Path, exc: BaseException, protocol: dict | None) -> None:
    """``metrics.json`` says the job failed and why (what the run wrote before is kept); written
    by global rank 0 only (every rank of a multi-task job runs the job)."""
    from pytorch_lightning.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    metrics = read_json(run_dir / "metrics.json")
    error = user_message(exc) if isinstance(exc, ClozelabError) else repr(exc)
    metrics.update(status="failed", error=error)
    if protocol is not None:
        metrics.setdefault("protocol", protocol)
    write_json(run_dir / "metrics.json", metrics)


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
    tracked = command == "pretrain"  # pretrain owns its run directory (clozelab.core.claim)
    run_dir = Path(cfg.paths.output_dir) if tracked else None
    protocol, checked = None, False
    try:
        if tracked:
            from clozelab.training.protocol import protocol as run_protocol

            key = "hydra.sweep.dir"
            done = check_relaunch(run_dir, config_hash(cfg), overrides, key, strict=True)
            if done is not None:
                notice(f"job {num}: already completed with this config in {run_dir}; skipped")
                return job_return(done, cfg)
            checked = True
            protocol = run_protocol(cfg)
        metrics = function(cfg)  # pretrain checks again, under the directory's lock
    except (KeyboardInterrupt, SystemExit):
        raise
    except RunDirectoryRefused as exc:  # the directory is left exactly as it was
        notice(f"job {num} refused: {exc}")
        return None
    except Exception as exc:  # the other jobs of the sweep go on
        if isinstance(exc, ClozelabError):
            log.error("job %s failed: %s", num, user_message(exc))
        else:
            log.exception("job %s failed", num)
        if checked:  # never in a directory that holds another config's run
            record_launch(run_dir, cfg)  # when it failed before pretrain claimed the directory
            mark_failed(run_dir, exc, protocol)
        return None
    return job_return(metrics, cfg)
