"""``clozelab pretrain``: build the components from the config and pre-train them with Lightning.

``pretrain(cfg) -> dict`` is a plain function (tests call it); the Hydra wrapper lives in cli.py.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from clozelab.core.claim import RunDirectory
from clozelab.core.config import build
from clozelab.core.errors import ClozelabError, user_message
from clozelab.core.progress import Budget
from clozelab.core.rundir import write_json
from clozelab.data.corpus import resolve_corpus
from clozelab.data.datamodule import PretrainDataModule
from clozelab.data.dialogue_stream import DialogueStream
from clozelab.data.knowledge import save_entity_names
from clozelab.data.preprocess import prepare
from clozelab.data.token_features import TOKEN_FEATURES
from clozelab.model.compile import apply_model_compile
from clozelab.training.callbacks import (
    CheckpointOnSignal,
    InitialMetrics,
    LogProgress,
    RNGState,
    TokenBudget,
    ValidatedAt,
)
from clozelab.training.checkpoint import (
    AtomicCheckpointIO,
    check_compatible,
    remove_stale_temporaries,
)
from clozelab.training.components import build_components, build_corruption
from clozelab.training.hf_export import export_after_run
from clozelab.training.loading import init_components
from clozelab.training.module import PretrainModule
from clozelab.training.progress_bar import BudgetBar
from clozelab.training.protocol import protocol
from clozelab.training.scale import trainer_kwargs, world_size
from clozelab.training.schedule import Schedule
from clozelab.training.tracking import finish_run, make_loggers, mark_run
from clozelab.training.validate import validate_pretrain

log = logging.getLogger(__name__)


def _total_steps(cfg: DictConfig, datamodule: PretrainDataModule) -> int | None:
    """The run's length in steps, for the LR schedule: max_steps, or the steps max_tokens lasts
    (padding is not counted, so a step adds batch_size x ranks x the mean sequence length)."""
    steps = cfg.trainer.get("max_steps", -1)
    if steps and steps > 0:
        return int(steps)
    tokens = cfg.trainer.get("max_tokens")
    if tokens:
        per_sequence = datamodule.mean_train_tokens() or cfg.data.max_seq_length
        global_batch = cfg.data.batch_size * world_size(cfg.trainer)
        return max(1, round(int(tokens) / (global_batch * per_sequence)))
    return None


def _warn_untrained_stages(schedule: Schedule | None, metrics: dict) -> None:
    """A completed scheduled run whose budget ended before its last stage (trainer.max_tokens
    under bounds in steps: compose time cannot tell when tokens run out) says which objectives
    never trained; their val/ scores are the untrained heads'."""
    if schedule is None or metrics["status"] != "completed" or "train/stage" not in metrics:
        return
    missed = schedule.untrained(int(metrics["train/stage"]))
    if missed:
        log.warning(
            "The run ended in schedule.stages[%d] (of %d stages): %s never trained. Fix: "
            "raise trainer.max_tokens / trainer.max_steps or lower the schedule.stages bounds",
            int(metrics["train/stage"]),
            len(schedule.stages),
            list(missed),
        )
        metrics["schedule_untrained"] = list(missed)


def _trainer(cfg: DictConfig, run_dir: Path, loggers) -> pl.Trainer:
    kwargs = trainer_kwargs(cfg.trainer)  # strategy/plugin nodes built, precision resolved
    if cfg.get("schedule") is not None and kwargs.get("strategy") == "ddp":
        # a scheduled step leaves the heads of the objectives it does not train idle: DDP must
        # look for them (they keep no gradient on any rank, so AdamW skips them as in one process)
        kwargs["strategy"] = "ddp_find_unused_parameters_true"
        log.info("schedule: trainer.strategy=ddp runs as ddp_find_unused_parameters_true")
    max_tokens = kwargs.pop("max_tokens", None)
    plugins = [*kwargs.pop("plugins"), AtomicCheckpointIO()]
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
        RNGState(),
        InitialMetrics(),
        ValidatedAt(),
        CheckpointOnSignal(run_dir / "checkpoints" / "last.ckpt"),
    ]
    if max_tokens:
        callbacks.append(TokenBudget(max_tokens))
    budget = Budget.of(kwargs.get("max_steps"), max_tokens, kwargs.get("max_time"))
    if cfg.callbacks.progress_bar and sys.stderr.isatty():
        callbacks.append(BudgetBar(budget))
        kwargs["enable_progress_bar"] = True
    else:
        callbacks.append(LogProgress(cfg.callbacks.log_every_n_steps, budget))
        kwargs["enable_progress_bar"] = False
    return pl.Trainer(
        **kwargs,
        logger=loggers,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,
        enable_model_summary=False,
        plugins=plugins,
        reload_dataloaders_every_n_epochs=1,  # train instances and order are rebuilt per epoch
    )


def _last_checkpoint(run_dir: Path) -> Path | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def _vocab_text(tokenizer) -> str:
    vocab = sorted(tokenizer.hf.get_vocab().items(), key=lambda kv: kv[1])
    return "".join(f"{token}\n" for token, _ in vocab)


def _resume_point(run_dir: Path, module: PretrainModule, tokenizer) -> tuple[Path | None, dict]:
    """``last.ckpt`` of the run directory when there is one (and its contents), after checking
    that it fits this config (architecture, vocabulary, tokenizer); raises ClozelabError before
    anything in the run directory is overwritten."""
    removed = remove_stale_temporaries(run_dir / "checkpoints")
    if removed:
        log.warning("Removed %d partial checkpoint file(s) left by a killed write", removed)
    last = _last_checkpoint(run_dir)
    if last is None:
        return None, {}
    checkpoint = check_compatible(last, module)
    saved_vocab = run_dir / "tokenizer" / "vocab.txt"
    if saved_vocab.is_file() and saved_vocab.read_text("utf-8") != _vocab_text(tokenizer):
        raise ClozelabError(
            f"tokenizer: the vocabulary of this config differs from {saved_vocab}, which trained "
            f"the checkpoint {last} (same size, different tokens). Fix: re-launch with the "
            "tokenizer/data settings in config.yaml beside it, or use a new hydra.run.dir."
        )
    return last, checkpoint


def _previous_initial(run_dir: Path, checkpoint: dict) -> dict:
    """The ``initial/...`` metrics of the interrupted run being resumed: carried in its checkpoint
    (so a SIGKILL, which writes no metrics.json, keeps them), else in its metrics.json."""
    state = (checkpoint.get("callbacks") or {}).get(InitialMetrics.__qualname__) or {}
    if state.get("metrics"):
        return dict(state["metrics"])
    try:
        previous = json.loads((run_dir / "metrics.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in previous.items() if k.startswith("initial/")}


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


def _record_failure(run_dir: Path, trainer, loggers, exc: BaseException, signum, initial) -> None:
    """metrics.json (and the tracker) say how the run ended: interrupted or failed, and why."""
    if signum is not None:
        status = "interrupted"
        error = f"stopped by {signal.Signals(signum).name}; checkpoint written, re-launch to resume"
    elif isinstance(exc, (KeyboardInterrupt, SystemExit)):
        status, error = "interrupted", f"{type(exc).__name__}"
    else:
        status, error = "failed", user_message(exc) if isinstance(exc, ClozelabError) else repr(exc)
    payload = {**initial, "status": status, "error": error, "steps": int(trainer.global_step)}
    write_json(run_dir / "metrics.json", payload)
    mark_run(loggers, status, error)


def _shares(shares: dict[str, float]) -> str:
    return ", ".join(f"{name} {100 * share:.1f}%" for name, share in shares.items() if share)


def pretrain(cfg: DictConfig) -> dict:
    """Pre-train as configured; returns (and writes to ``metrics.json``) the final metrics.

    The run directory is held for the whole run (clozelab.core.claim): a second launch on it is
    refused, and a launch after the run completed with the same config does nothing (returns
    its metrics)."""
    objective_names = validate_pretrain(cfg)
    resolve_corpus(cfg.data.corpus)  # it exists (files are looked at, not read) before the
    # run directory is touched, so a wrong path is named as such, not as another config
    run = RunDirectory(cfg.paths.output_dir, cfg, writer=rank_zero_only.rank == 0)
    done = run.open()
    if done is not None:
        return done
    try:
        metrics = _pretrain(cfg, run.path, objective_names)
        run.finish(metrics)
    finally:
        run.close()
    return metrics


def _initial_validation(cfg, trainer, module, datamodule, run_dir, resume, checkpoint) -> dict:
    """``initial/val/...``: the untrained model's validation (a new run), or the interrupted run's
    (a resume); kept in every checkpoint by the InitialMetrics callback."""
    if resume is not None:
        log.info("Resuming from %s", resume)
        initial = _previous_initial(run_dir, checkpoint)
    elif cfg.get("initial_validation", True):
        results = trainer.validate(module, datamodule=datamodule, verbose=False)
        initial = {f"initial/{k}": float(v) for k, v in (results[0] if results else {}).items()}
    else:
        initial = {}
    next(c for c in trainer.callbacks if isinstance(c, InitialMetrics)).metrics = initial
    return initial


def _final_validation(trainer, module, datamodule) -> None:
    """Validate the final weights unless the run just did (``trainer.max_steps`` below
    ``trainer.val_check_interval``, a token or time budget, a resume after the last validation),
    so every completed run reports ``val/...``."""
    validated = next(c for c in trainer.callbacks if isinstance(c, ValidatedAt))
    if validated.step == trainer.global_step or not trainer.limit_val_batches:
        return
    train = {k: v for k, v in trainer.callback_metrics.items() if not k.startswith("val/")}
    trainer.validate(module, datamodule=datamodule, verbose=False)
    for key, value in train.items():  # validate() resets the training metrics
        trainer.callback_metrics.setdefault(key, value)


def _pretrain(cfg: DictConfig, run_dir: Path, objective_names: list[str]) -> dict:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))

    prepared = prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)
    embedding, encoder, objectives, corruption = build_components(cfg, prepared.tokenizer, prepared)
    init_components(cfg.model.get("init_from"), embedding, encoder, objectives, prepared.tokenizer)
    # in place: state_dict keys unchanged
    apply_model_compile(embedding, encoder, cfg.model, objectives)

    reference = cfg.get("validation_reference")  # validation's fixed yardstick, off by default
    if reference is not None:
        reference = build_corruption(
            reference, "validation_reference", prepared.tokenizer, prepared
        )
    datamodule = PretrainDataModule.from_config(
        cfg.data,
        prepared,
        corruption,
        cfg.seed,
        dialogue=DialogueStream.from_config(cfg.data, prepared.tokenizer, cfg.seed),  # ERNIE DLM
        reference_corruption=reference,
        features=tuple(
            f for f in TOKEN_FEATURES if any(f in o.requires for o in objectives.values())
        ),
    )
    datamodule.check_training_batches(world_size(cfg.trainer))
    pair_kinds = datamodule.pair_kinds()
    if pair_kinds is not None:  # e.g. SOP negatives: swaps vs random-document pairs
        log.info("Pairs of %s (epoch 0): %s", cfg.data.instances, _shares(pair_kinds))
    module = PretrainModule(
        embedding,
        encoder,
        objectives,
        optimizer=build(cfg.optim, "optim"),
        scheduler_cfg=OmegaConf.to_container(cfg.scheduler, resolve=True),
        total_steps=_total_steps(cfg, datamodule),
        weight_decay=cfg.optim.get("weight_decay", 0.01),
        schedule=Schedule.from_config(cfg.get("schedule"), objective_names),
    )
    # before anything is overwritten
    resume, checkpoint = _resume_point(run_dir, module, prepared.tokenizer)
    if rank_zero_only.rank == 0:  # one writer of the run directory (every rank runs this)
        prepared.tokenizer.save(run_dir / "tokenizer")
        if "entity_links" in encoder.batch_inputs:  # Encoder hook: fine-tuning links to these
            save_entity_names(prepared, run_dir)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    run_name = cfg.get("run_name") or run_dir.name
    loggers = make_loggers(cfg.logger, run_dir, run_name, OmegaConf.to_container(cfg, resolve=True))
    trainer = _trainer(cfg, run_dir, loggers)

    initial = _initial_validation(cfg, trainer, module, datamodule, run_dir, resume, checkpoint)
    del checkpoint
    start = time.perf_counter()
    stopper = next(c for c in trainer.callbacks if isinstance(c, CheckpointOnSignal))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
        wall = time.perf_counter() - start
        if not trainer.interrupted:
            _final_validation(trainer, module, datamodule)
    except BaseException as exc:
        _record_failure(run_dir, trainer, loggers, exc, stopper.signum, initial)
        if stopper.signum is not None and isinstance(exc, SystemExit):
            # preempted: the checkpoint is written; a scheduler's own handler (submitit requeues
            # the job) gets the signal, then exit like a process killed by it
            stopper.hand_on()
            raise SystemExit(128 + int(stopper.signum)) from None
        raise
    metrics = _final_metrics(
        trainer,
        module,
        {
            **initial,
            "status": "interrupted" if trainer.interrupted else "completed",
            "objectives": objective_names,
            # every launch of the run (a resumed one adds its earlier launches up to the
            # checkpoint it resumed from); this launch alone: launch_wall_time_s
            "wall_time_s": round(module.train_seconds_before + wall, 2),
            "launch_wall_time_s": round(wall, 2),
            # this launch's tokens only: a resumed run restores the earlier count
            "tokens_per_s": round((module.tokens_seen - module.tokens_at_train_start) / wall, 1)
            if wall > 0
            else 0.0,
            "cache_reused": prepared.reused,
            "vocab_size": prepared.tokenizer.vocab_size,
            "parameters": sum(p.numel() for p in module.parameters()),
            "protocol": protocol(cfg),  # budget, model, data, suite: what runs compare on
        },
    )
    _warn_untrained_stages(module.schedule, metrics)
    if not trainer.is_global_zero:
        return metrics  # rank 0 writes metrics.json, exports and evaluates
    write_json(run_dir / "metrics.json", metrics)
    if metrics["status"] == "completed":
        export_after_run(module, run_dir)  # RUN_DIR/hf/: what transformers loads
    if metrics["status"] == "completed" and cfg.get("eval") and cfg.eval.get("suite"):
        from clozelab.training.evaluation import evaluate_run  # RUN_DIR/eval/<task>.json

        metrics.update(evaluate_run(run_dir, cfg.eval, cfg.get("task"), loggers, module=module))
        write_json(run_dir / "metrics.json", metrics)
    finish_run(loggers, metrics)  # the W&B summary: flat val/... and eval/... keys
    log.info("Run directory: %s", run_dir)
    return metrics
