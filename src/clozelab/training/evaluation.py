"""Downstream scores of a checkpoint: one task on several seeds (``run_task``), a suite of tasks
(``evaluate_suite``), and the suite at the end of a pre-training run (``evaluate_run``).

``clozelab finetune`` / ``clozelab evaluate`` (finetune.py) call these. Each task writes
``<eval_dir>/<task>.json``: ``task``, ``kind``, ``metric`` and ``value`` (mean of the main metric
over seeds) with ``std``, every metric's mean/std/values, ``seeds``, the per-seed runs and the
``protocol`` (split scored, example counts, epochs, learning rate, batch size, mode). The eval
directory is ``<run>/eval`` when the checkpoint is a clozelab run, else ``<output_dir>/eval``.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from clozelab.core.config import conf_dir
from clozelab.core.errors import config_error
from clozelab.core.rundir import write_json
from clozelab.tasks.backbone import NONE, Backbone
from clozelab.tasks.base import task_for
from clozelab.training.finetuning import run_seed
from clozelab.training.loading import load_backbone
from clozelab.training.ranks import is_writer

log = logging.getLogger(__name__)


def _load_group_file(group: str, key: str, name: str) -> DictConfig:
    """conf/GROUP/NAME.yaml as a config node; an unknown NAME is refused under ``key``."""
    path = conf_dir() / group / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
        raise config_error(key, name, f"no such {group}", f"use one of {known}")
    return OmegaConf.load(path)


def load_task(name: str) -> DictConfig:
    """conf/task/NAME.yaml as a config node."""
    return _load_group_file("task", "task", name)


def load_suite(name: str) -> DictConfig:
    """conf/suite/NAME.yaml as a config node (the ``eval`` block it fills)."""
    return _load_group_file("suite", "eval.suite", name)


def _summary(values: list[float]) -> dict:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "values": values}


def backbone_factory(checkpoint, arch: DictConfig | None, random_init: DictConfig | None):
    """A function returning a fresh backbone of ``checkpoint`` (a copy per call)."""
    if isinstance(checkpoint, Backbone):  # in memory (the end of a pretrain run): a copy a seed
        return lambda: copy.deepcopy(checkpoint)
    random_init = random_init or {}
    like = random_init.get("like")
    tokenizer = random_init.get("tokenizer")

    def make():
        return load_backbone(checkpoint, like=like, arch=arch, tokenizer=tokenizer)

    return make


def run_task(
    task: DictConfig,
    checkpoint,
    *,
    seeds: list[int],
    eval_dir: Path,
    data_dir=None,
    mode: str = "finetune",
    mix_layers: int = 4,
    layer_mix: str = "average",
    arch: DictConfig | None = None,
    random_init: DictConfig | None = None,
    loggers=(),
) -> dict:
    """Fine-tune (or score zero-shot) ``task`` on each seed; write and return its result."""
    if not seeds:
        raise config_error("seeds", seeds, "no seeds given", "give e.g. seeds=[1,2,3]")
    name = task.get("name")
    if not name:
        raise config_error("task.name", name, "a task needs a name", "set task.name")
    make = backbone_factory(checkpoint, arch, random_init)
    start = time.perf_counter()
    backbone = make()
    runs = []
    kind = task_for(task)
    if kind.zero_shot:
        scores = kind.score_zero_shot(backbone, list(seeds))
        runs = [{"seed": s, "metrics": m} for s, m in zip(seeds, scores, strict=True)]
        protocol = kind.protocol(mode)
    else:
        splits = kind.read(data_dir)
        prepared = kind.encode(splits, backbone)
        for seed in seeds:
            log.info(
                "task %s seed %d: %d train / %d validation features",
                name,
                seed,
                len(prepared.train),
                len(prepared.validation),
            )
            facts = run_seed(make, prepared, kind, seed, mode, mix_layers, layer_mix)
            runs.append({"seed": seed, **facts})
        protocol = task_protocol(task, kind, splits, mode, mix_layers, layer_mix)
    return write_task_result(
        task, kind, runs, seeds, protocol, checkpoint, eval_dir, loggers, start
    )


def task_protocol(
    task: DictConfig, kind, splits: dict, mode: str, mix_layers: int, layer_mix: str
) -> dict:
    """How a fine-tuned task was trained and scored (the ``protocol`` of its result)."""
    return {
        "split": "validation (dev)"
        if not task.get("holdout")
        else f"held-out {1 - float(task.holdout):.0%} of the validation file",
        "train_examples": len(splits["train"]),
        "eval_examples": len(splits["validation"]),
        "epochs": task.get("epochs", 3),
        "max_steps": task.get("max_steps"),
        "lr": task.get("lr", 5e-5),
        "batch_size": task.get("batch_size", 32),
        "max_seq_length": task.get("max_seq_length", 128),
        "warmup": task.get("warmup", 0.1),
        "weight_decay": task.get("weight_decay", 0.01),
        "mode": mode,
        "mix_layers": mix_layers if mode == "features" else None,
        "layer_mix": layer_mix if mode == "features" else None,
        **kind.protocol(mode),
    }


def write_task_result(
    task: DictConfig,
    kind,
    runs: list[dict],
    seeds: list[int],
    protocol: dict,
    checkpoint,
    eval_dir: Path,
    loggers,
    start: float,
) -> dict:
    """Summarise a task's per-seed ``runs`` (mean/std of every metric), write
    ``<eval_dir>/<task>.json`` and log it; returns the result."""
    name = task.get("name")
    metric = task.get("metric") or kind.default_metrics[0]
    names = sorted({k for r in runs for k in r["metrics"]})
    summary = {k: _summary([float(r["metrics"][k]) for r in runs]) for k in names}
    if metric not in summary:
        raise config_error("task.metric", metric, f"not computed (have {names})", "pick one")
    result = {
        "task": name,
        "kind": kind.kind,
        "metric": metric,
        "value": summary[metric]["mean"],
        "std": summary[metric]["std"],
        "metrics": summary,
        "seeds": list(seeds),
        "runs": runs,
        "checkpoint": checkpoint.source if isinstance(checkpoint, Backbone) else str(checkpoint),
        "protocol": {**protocol, "seeds": len(seeds)},
        "task_config": OmegaConf.to_container(task, resolve=True),
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    if not is_writer():  # another rank of a data-parallel fine-tuning: rank 0 writes
        return result
    eval_dir.mkdir(parents=True, exist_ok=True)
    write_json(eval_dir / f"{name}.json", result)
    for logger in loggers:
        logger.log_metrics({f"eval/{name}/{k}": v["mean"] for k, v in summary.items()})
        logger.save()
    log.info(
        "%s: %s = %.4f ± %.4f (%d seeds) -> %s",
        name,
        metric,
        result["value"],
        result["std"],
        len(seeds),
        eval_dir / f"{name}.json",
    )
    return result


def _suite_tasks(eval_cfg: DictConfig, extra: DictConfig | None = None) -> list[DictConfig]:
    tasks = []
    overrides = eval_cfg.get("overrides") or {}
    for name in eval_cfg.get("tasks") or []:
        node = load_task(str(name))
        if name in overrides:
            node = OmegaConf.merge(node, overrides[name])
        tasks.append(node)
    if extra is not None:
        tasks.append(extra)
    return tasks


def evaluate_suite(
    eval_cfg: DictConfig,
    checkpoint,
    eval_dir: Path,
    *,
    extra_task: DictConfig | None = None,
    arch: DictConfig | None = None,
    loggers=(),
) -> dict:
    """Every task of the suite described by ``eval_cfg``; ``{task: result}`` plus a
    ``summary.json`` of the main metrics next to the per-task files."""
    results = {}
    for task in _suite_tasks(eval_cfg, extra_task):
        results[task.name] = run_task(
            task,
            checkpoint,
            seeds=list(eval_cfg.get("seeds") or [1]),
            eval_dir=eval_dir,
            data_dir=eval_cfg.get("data_dir"),
            mode=eval_cfg.get("mode", "finetune"),
            mix_layers=int(eval_cfg.get("mix_layers", 4)),
            layer_mix=eval_cfg.get("layer_mix", "average"),
            arch=arch,
            random_init=eval_cfg.get("random_init"),
            loggers=loggers,
        )
    summary = {
        name: {"metric": r["metric"], "value": r["value"], "std": r["std"]}
        for name, r in results.items()
    }
    if is_writer():
        write_json(eval_dir / "summary.json", {"suite": eval_cfg.get("suite"), "tasks": summary})
    log.info("suite %s: summary -> %s", eval_cfg.get("suite"), eval_dir / "summary.json")
    return results


def evaluate_run(
    run_dir, eval_cfg: DictConfig, task: DictConfig | None = None, loggers=(), module=None
) -> dict:
    """The end of ``clozelab pretrain``: score the finished run on its ``eval`` suite (from the
    in-memory ``module`` when given, else from the run's checkpoint); returns
    ``{"eval/<task>/<metric>": value}`` for the run's metrics.json."""
    run_dir = Path(run_dir)
    if str(eval_cfg.get("suite")).lower() in NONE:
        return {}
    source = run_dir
    if module is not None:
        source = _module_backbone(module, run_dir)
    results = evaluate_suite(eval_cfg, source, run_dir / "eval", extra_task=task, loggers=loggers)
    return {f"eval/{name}/{r['metric']}": r["value"] for name, r in results.items()}


def _module_backbone(module, run_dir: Path) -> Backbone:
    """A Backbone sharing nothing with the trained PretrainModule (a CPU copy, eval mode)."""
    from clozelab.data.tokenizer import load_tokenizer

    objectives = module.objectives.values()
    pooler = next((p for o in objectives if (p := o.summary_pooler()) is not None), None)
    pooler = copy.deepcopy(pooler).cpu().float() if pooler is not None else None
    embedding = copy.deepcopy(module.embedding).cpu().float()
    encoder = copy.deepcopy(module.encoder).cpu().float()
    backbone = Backbone(embedding, encoder, load_tokenizer(run_dir), pooler, str(run_dir))
    return backbone
