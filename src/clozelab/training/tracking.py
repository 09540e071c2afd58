"""Experiment trackers: CSV always; W&B that falls back to offline by itself; TensorBoard.

W&B goes offline when ``WANDB_MODE`` says so, when no API key is configured, or when its server
cannot be reached within two seconds; a W&B that still fails to start is replaced by a warning, so
a tracker never stops a run (offline runs are synced later with ``wandb sync``). A tracker that
raises later, mid-run, is switched off with one warning (``guard``); the CSV log goes on.
"""

from __future__ import annotations

import functools
import logging
import netrc
import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

from pytorch_lightning.loggers import Logger

from clozelab.training.csv_log import RunCSVLogger

log = logging.getLogger(__name__)


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(url: str, timeout: float = 2.0) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_mode(requested: str | None = None) -> str:
    """'online', 'offline' or 'disabled', deciding offline by itself when it must."""
    mode = os.environ.get("WANDB_MODE") or requested or "online"
    if mode in ("offline", "disabled", "dryrun"):
        return "offline" if mode == "dryrun" else mode
    if not _has_wandb_key():
        log.info("W&B: no API key configured; logging offline (sync later with `wandb sync`)")
        return "offline"
    if not _reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")):
        log.warning("W&B: server unreachable; logging offline (sync later with `wandb sync`)")
        return "offline"
    return "online"


def make_loggers(logger_cfg, save_dir: str | Path, run_name: str, config: dict) -> list[Logger]:
    """CSV always, plus what ``logger_cfg.kind`` asks for ("csv", "wandb", "tensorboard")."""
    save_dir = Path(save_dir)
    loggers: list[Logger] = [RunCSVLogger(save_dir, name="csv", version="")]  # kept on resume
    kinds = logger_cfg.get("kind", "csv")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    for kind in kinds:
        if kind == "csv":
            continue
        if kind == "wandb":
            wandb_logger = _wandb(logger_cfg.get("wandb", {}), save_dir, run_name, config)
            if wandb_logger is not None:
                loggers.append(guard(wandb_logger))
        elif kind == "tensorboard":
            from pytorch_lightning.loggers import TensorBoardLogger

            loggers.append(guard(TensorBoardLogger(save_dir, name="tensorboard", version="")))
        else:
            raise ValueError(f"logger.kind={kind!r}: unknown; use csv, wandb or tensorboard")
    return loggers


def wandb_run_id(save_dir: Path) -> str:
    """The W&B run id of this run directory: made once, kept in ``wandb_id.txt``, so a resumed run
    logs into the run it continues."""
    path = Path(save_dir) / "wandb_id.txt"
    agent_id = os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None
    if agent_id:  # under `wandb agent`: the run the W&B sweep created for this job
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(agent_id + "\n", "utf-8")
        return agent_id
    if path.is_file():
        run_id = path.read_text("utf-8").strip()
        if run_id:
            return run_id
    run_id = uuid.uuid4().hex[:12]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n", "utf-8")
    return run_id


def _wandb(cfg, save_dir: Path, run_name: str, config: dict):
    try:
        from pytorch_lightning.loggers import WandbLogger

        mode = wandb_mode(cfg.get("mode"))
        if mode == "disabled":
            return None
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
        group, job_type, tags, config = wandb_identity(cfg, config)
        logger = WandbLogger(
            id=wandb_run_id(save_dir),
            resume="allow",  # a re-launched (resumed) run continues the same W&B run
            project=cfg.get("project", "clozelab"),
            entity=cfg.get("entity"),
            group=group,
            job_type=job_type,
            tags=tags,
            name=run_name,
            save_dir=str(save_dir),
            mode=mode,
            config=config,
        )
        # Lightning always hands wandb.init ``anonymous=None``, a setting wandb deprecated: it
        # then warns on every run. Left out, wandb.init behaves the same.
        logger._wandb_init.pop("anonymous", None)
        _ = logger.experiment  # start now, so a failure is caught here and not mid-run
        return logger
    except Exception as exc:  # a tracker must never stop a run
        log.warning("W&B could not start (%s); continuing with CSV logging only", exc)
        return None


def wandb_identity(cfg, config: dict) -> tuple[str | None, str, list[str], dict]:
    """Group, job type, tags and config of a W&B run, so its grouping and parallel-coordinates
    views work: group = ``logger.wandb.group``, else the sweep (``sweep_meta.name``), else the
    recipe; job type = ``logger.wandb.job_type``, else the command (pretrain, finetune,
    evaluate); tags = ``logger.wandb.tags`` plus the corruption, the objectives, the recipe and
    the setting; the config gets the config-group choices (``choices.setting`` ...)."""
    from clozelab.training.protocol import hydra_choices

    choices = hydra_choices()
    sweep = (config.get("sweep_meta") or {}).get("name")
    group = cfg.get("group") or sweep or choices.get("experiment")
    job_type = cfg.get("job_type") or _command() or "pretrain"
    derived = [choices.get("corruption") or _target_name(config.get("corruption"))]
    derived += list(config.get("objective") or {})
    derived += [choices.get("experiment"), choices.get("setting")]
    tags = list(dict.fromkeys(t for t in [*(cfg.get("tags") or []), *derived] if t))
    return group, job_type, tags, {**config, "choices": choices}


def _command() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().job.name if HydraConfig.initialized() else None


def _target_name(node) -> str | None:
    target = node.get("_target_") if isinstance(node, dict) else None
    return target.rsplit(".", 1)[-1].lower() if target else None


def finish_run(loggers, metrics: dict) -> None:
    """Put a run's final numbers (metrics.json's flat keys: ``val/mlm_loss``,
    ``eval/<task>/<metric>``, status, tokens) in its W&B summary and finish the W&B run, so the
    next job of a sweep in this process starts its own run; never raises."""
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
    for logger in loggers:
        if getattr(logger, "clozelab_guard", {}).get("failed"):
            continue
        if type(logger).__name__ != "WandbLogger" or logger._experiment is None:
            continue
        try:
            logger.experiment.summary.update(flat)
            logger.experiment.finish(exit_code=0 if metrics.get("status") == "completed" else 1)
        except Exception as exc:
            log.warning("Could not write the W&B summary (%s)", exc)


GUARDED = ("log_metrics", "log_hyperparams", "log_graph", "save", "finalize",
           "after_save_checkpoint")  # fmt: skip


def guard(logger: Logger) -> Logger:
    """Make ``logger`` harmless: the first exception any of its calls raises is logged as a warning
    and the logger goes quiet for the rest of the run, instead of stopping training.

    The methods are wrapped on the instance, so the logger keeps its class (Lightning treats W&B
    specially by ``isinstance``).
    """
    state = {"failed": False}
    name = type(logger).__name__

    def wrap(method):
        @functools.wraps(method)
        def guarded(*args, **kwargs):
            if state["failed"]:
                return None
            try:
                return method(*args, **kwargs)
            except Exception as exc:  # a tracker must never stop a run
                state["failed"] = True
                log.warning(
                    "%s failed in %s (%s: %s); it is switched off for the rest of the run, "
                    "training goes on with CSV logging",
                    name,
                    method.__name__,
                    type(exc).__name__,
                    exc,
                )
                _close(logger)
                return None

        return guarded

    for attr in GUARDED:
        method = getattr(logger, attr, None)
        if callable(method):
            setattr(logger, attr, wrap(method))
    logger.clozelab_guard = state
    return logger


def _close(logger: Logger) -> None:
    """Finish a switched-off W&B run, so it does not linger as the process's active run (a later
    WandbLogger in the same process would otherwise attach to it)."""
    run = getattr(logger, "_experiment", None)
    if run is None or not hasattr(run, "finish"):
        return
    try:
        run.finish(exit_code=1)
    except Exception as exc:
        log.debug("could not finish the switched-off %s run (%s)", type(logger).__name__, exc)


def mark_run(loggers, status: str, error: str | None = None) -> None:
    """Tell the trackers how the run ended ("failed" or "interrupted"); never raises."""
    for logger in loggers:
        if getattr(logger, "clozelab_guard", {}).get("failed"):
            continue
        try:
            if type(logger).__name__ == "WandbLogger" and logger._experiment is not None:
                run = logger.experiment
                run.summary["status"] = status
                if error:
                    run.summary["error"] = error
                if status == "interrupted" and hasattr(run, "mark_preempting"):
                    run.mark_preempting()
                run.finish(exit_code=1)  # not completed: W&B shows it failed/preempted
        except Exception as exc:
            log.warning("Could not mark the %s run %s (%s)", type(logger).__name__, status, exc)
