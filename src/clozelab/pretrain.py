"""``clozelab pretrain``: build the components from the config and pre-train them with Lightning.

``pretrain(cfg) -> dict`` is a plain function (tests call it); the Hydra wrapper lives in cli.py.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from clozelab.api import init_components
from clozelab.callbacks import LogProgress, TokenBudget
from clozelab.config import build
from clozelab.data.datamodule import PretrainDataModule
from clozelab.data.preprocess import prepare
from clozelab.export import export_after_run
from clozelab.module import PretrainModule
from clozelab.tracking import make_loggers
from clozelab.validate import validate_pretrain

log = logging.getLogger(__name__)


def build_components(cfg: DictConfig, tokenizer):
    """Embedding, encoder, objectives and corruption, with the tokenizer's ids filled in."""
    with open_dict(cfg):
        cfg.model.vocab_size = tokenizer.vocab_size
    embedding = build(cfg.embedding, "embedding")
    encoder = build(cfg.encoder, "encoder")
    objectives = {name: build(node, f"objective.{name}") for name, node in cfg.objective.items()}
    corruption = build(
        cfg.corruption,
        "corruption",
        vocab_size=tokenizer.vocab_size,
        mask_token_id=tokenizer.mask_id,
        special_token_ids=tokenizer.special_ids,
    )
    return embedding, encoder, objectives, corruption


def _total_steps(cfg: DictConfig) -> int | None:
    steps = cfg.trainer.get("max_steps", -1)
    if steps and steps > 0:
        return int(steps)
    tokens = cfg.trainer.get("max_tokens")
    if tokens:
        return max(1, int(tokens) // (cfg.data.batch_size * cfg.data.max_seq_length))
    return None


def _trainer(cfg: DictConfig, run_dir: Path, loggers) -> pl.Trainer:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    max_tokens = kwargs.pop("max_tokens", None)
    callbacks: list[pl.Callback] = [
        pl.callbacks.ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="step-{step}",
            auto_insert_metric_name=False,
            save_last=True,
            every_n_train_steps=cfg.callbacks.checkpoint_every_n_steps,
            save_top_k=1,
        ),
        pl.callbacks.LearningRateMonitor(logging_interval="step"),
    ]
    if max_tokens:
        callbacks.append(TokenBudget(max_tokens))
    if cfg.callbacks.progress_bar and sys.stderr.isatty():
        callbacks.append(pl.callbacks.RichProgressBar())
        kwargs["enable_progress_bar"] = True
    else:
        callbacks.append(LogProgress(cfg.callbacks.log_every_n_steps))
        kwargs["enable_progress_bar"] = False
    return pl.Trainer(
        **kwargs,
        logger=loggers,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,
        enable_model_summary=False,
    )


def _last_checkpoint(run_dir: Path) -> Path | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def _final_metrics(trainer: pl.Trainer, module: PretrainModule, extra: dict) -> dict:
    metrics = {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if isinstance(v, (torch.Tensor, float, int)) and k.split("/")[0] in ("train", "val")
    }
    metrics.update(extra)
    metrics["steps"] = int(trainer.global_step)
    metrics["tokens_seen"] = int(module.tokens_seen)
    return metrics


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True), "utf-8")
    os.replace(tmp, path)


def pretrain(cfg: DictConfig) -> dict:
    """Pre-train as configured; returns (and writes to ``metrics.json``) the final metrics."""
    objective_names = validate_pretrain(cfg)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))

    prepared = prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)
    prepared.tokenizer.save(run_dir / "tokenizer")
    embedding, encoder, objectives, corruption = build_components(cfg, prepared.tokenizer)
    init_components(cfg.model.get("init_from"), embedding, encoder, objectives, prepared.tokenizer)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)

    datamodule = PretrainDataModule(
        prepared,
        corruption,
        instances=cfg.data.instances,
        max_seq_length=cfg.data.max_seq_length,
        short_seq_prob=cfg.data.short_seq_prob,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
    )
    module = PretrainModule(
        embedding,
        encoder,
        objectives,
        optimizer=build(cfg.optim, "optim"),
        scheduler_cfg=OmegaConf.to_container(cfg.scheduler, resolve=True),
        total_steps=_total_steps(cfg),
        weight_decay=cfg.optim.get("weight_decay", 0.01),
    )
    run_name = cfg.get("run_name") or run_dir.name
    loggers = make_loggers(cfg.logger, run_dir, run_name, OmegaConf.to_container(cfg, resolve=True))
    trainer = _trainer(cfg, run_dir, loggers)

    resume = _last_checkpoint(run_dir)
    initial = {}
    if resume is None and cfg.get("initial_validation", True):
        results = trainer.validate(module, datamodule=datamodule, verbose=False)
        initial = {f"initial/{k}": float(v) for k, v in (results[0] if results else {}).items()}
    else:
        log.info("Resuming from %s", resume)
    start = time.perf_counter()
    status = "completed"
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        write_json(run_dir / "metrics.json", {"status": status, "error": str(exc)})
        raise
    wall = time.perf_counter() - start
    metrics = _final_metrics(
        trainer,
        module,
        {
            **initial,
            "status": "interrupted" if trainer.interrupted else status,
            "objectives": objective_names,
            "wall_time_s": round(wall, 2),
            "tokens_per_s": round(module.tokens_seen / wall, 1) if wall > 0 else 0.0,
            "cache_reused": prepared.reused,
            "vocab_size": prepared.tokenizer.vocab_size,
            "parameters": sum(p.numel() for p in module.parameters()),
        },
    )
    write_json(run_dir / "metrics.json", metrics)
    if metrics["status"] == "completed":
        export_after_run(module, run_dir)  # RUN_DIR/hf/: what transformers loads
    log.info("Run directory: %s", run_dir)
    return metrics
