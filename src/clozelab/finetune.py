"""``clozelab finetune`` and ``clozelab evaluate``: downstream scores of a checkpoint.

``finetune(cfg) -> dict`` fine-tunes one task (``task=NAME``) on several seeds; ``evaluate(cfg)
-> dict`` does it for every task of a suite (``suite=NAME``). Each task writes
``<eval_dir>/<task>.json``: ``task``, ``kind``, ``metric`` and ``value`` (mean of the main metric
over seeds) with ``std``, every metric's mean/std/values, ``seeds``, the per-seed runs and the
``protocol`` (split scored, example counts, epochs, learning rate, batch size, mode). The eval
directory is ``<run>/eval`` when the checkpoint is a clozelab run, else ``<output_dir>/eval``.

``evaluate_run(run_dir, eval_cfg)`` is what ``clozelab pretrain`` calls at the end of a run.
The Hydra wrappers live in cli.py.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from clozelab.config import conf_dir
from clozelab.errors import config_error
from clozelab.rundir import write_json
from clozelab.tasks.backbone import NONE, Backbone, is_run_dir, load_backbone
from clozelab.tasks.bundled import ZERO_SHOT, score_zero_shot
from clozelab.tasks.heads import resolve_pooling
from clozelab.tasks.readers import read_task
from clozelab.tasks.runner import DEFAULT_METRICS, prepare, run_seed

log = logging.getLogger(__name__)


def load_task(name: str) -> DictConfig:
    """conf/task/NAME.yaml as a config node."""
    path = conf_dir() / "task" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir() / "task").glob("*.yaml"))
        raise config_error("task", name, "no such task", f"use one of {known}")
    return OmegaConf.load(path)


def load_suite(name: str) -> DictConfig:
    """conf/suite/NAME.yaml as a config node (the ``eval`` block it fills)."""
    path = conf_dir() / "suite" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir() / "suite").glob("*.yaml"))
        raise config_error("eval.suite", name, "no such suite", f"use one of {known}")
    return OmegaConf.load(path)


def _summary(values: list[float]) -> dict:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "values": values}


def _backbone_factory(checkpoint, arch: DictConfig | None, random_init: DictConfig | None):
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
    make = _backbone_factory(checkpoint, arch, random_init)
    start = time.perf_counter()
    backbone = make()
    runs = []
    if task.kind in ZERO_SHOT:
        scores = score_zero_shot(backbone, task, list(seeds))
        runs = [{"seed": s, "metrics": m} for s, m in zip(seeds, scores, strict=True)]
        layers = task.get("layers", -1)
        layers = layers if isinstance(layers, int) else [int(i) for i in layers]
        protocol = {"training": "none (zero-shot, frozen encoder, mean-pooled)", "layers": layers}
        metric = task.get("metric") or "spearman"
    else:
        splits = read_task(task, data_dir)
        prepared = prepare(task, splits, backbone)
        for seed in seeds:
            log.info("task %s seed %d: %d train / %d validation features",
                     name, seed, len(prepared.train), len(prepared.validation))  # fmt: skip
            facts = run_seed(make, prepared, task, seed, mode, mix_layers, layer_mix)
            runs.append({"seed": seed, **facts})
        metric = task.get("metric") or DEFAULT_METRICS[task.kind][0]
        protocol = {
            "split": "validation (dev)" if not task.get("holdout") else
                     f"held-out {1 - float(task.holdout):.0%} of the validation file",
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
            "decoder": task.get("decoder") if task.kind == "token" else None,
            **({"subword_labels": task.get("subword_labels", "first"),
                "subword_decoding": task.get("subword_decoding", "first")}
               if task.kind == "token" else {}),
            **({"pooling": resolve_pooling(task.get("pooling"), mode)}
               if task.kind in ("classification", "regression") else {}),
            **({"max_span_length": task.get("max_span_length", 8),
                "span_endpoints": task.get("span_endpoints", "ffn"),
                "span_pooling": task.get("span_pooling", "attention"),
                "decoding": task.get("decoding", "nested")} if task.kind == "span_ner" else {}),
        }  # fmt: skip
    names = sorted({k for r in runs for k in r["metrics"]})
    summary = {k: _summary([float(r["metrics"][k]) for r in runs]) for k in names}
    if metric not in summary:
        raise config_error("task.metric", metric, f"not computed (have {names})", "pick one")
    result = {
        "task": name,
        "kind": task.kind,
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
    eval_dir.mkdir(parents=True, exist_ok=True)
    write_json(eval_dir / f"{name}.json", result)
    for logger in loggers:
        logger.log_metrics({f"eval/{name}/{k}": v["mean"] for k, v in summary.items()})
        logger.save()
    log.info("%s: %s = %.4f ± %.4f (%d seeds) -> %s", name, metric, result["value"],
             result["std"], len(seeds), eval_dir / f"{name}.json")  # fmt: skip
    return result


def _eval_dir(cfg: DictConfig) -> Path:
    if cfg.get("eval_dir"):
        return Path(cfg.eval_dir)
    run = is_run_dir(cfg.get("checkpoint"))
    return (run if run is not None else Path(cfg.paths.output_dir)) / "eval"


def _checkpoint(cfg: DictConfig):
    checkpoint = cfg.get("checkpoint")
    if checkpoint is None:
        raise config_error(
            "checkpoint",
            None,
            "no checkpoint given",
            "checkpoint=PATH (a clozelab run dir, a .ckpt, an HF BERT dir) or checkpoint=none",
        )
    return checkpoint


def _loggers(cfg: DictConfig, directory: Path, job: str):
    from clozelab.tracking import make_loggers

    if cfg.get("logger") is None:
        return []
    return make_loggers(cfg.logger, directory, f"{job}", OmegaConf.to_container(cfg, resolve=True))


def finetune(cfg: DictConfig) -> dict:
    """Fine-tune ``cfg.task`` from ``cfg.checkpoint`` on ``cfg.seeds``; the task's result."""
    checkpoint = _checkpoint(cfg)
    if cfg.get("task") is None:
        raise config_error("task", None, "no task given", "task=sst2 (see conf/task)")
    eval_dir = _eval_dir(cfg)
    return run_task(
        cfg.task,
        checkpoint,
        seeds=list(cfg.seeds),
        eval_dir=eval_dir,
        data_dir=cfg.get("data_dir"),
        mode=cfg.get("mode", "finetune"),
        mix_layers=int(cfg.get("mix_layers", 4)),
        layer_mix=cfg.get("layer_mix", "average"),
        arch=cfg,
        random_init=cfg.get("random_init"),
        loggers=_loggers(cfg, Path(cfg.paths.output_dir), f"finetune-{cfg.task.name}"),
    )


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
    write_json(eval_dir / "summary.json", {"suite": eval_cfg.get("suite"), "tasks": summary})
    log.info("suite %s: summary -> %s", eval_cfg.get("suite"), eval_dir / "summary.json")
    return results


def evaluate(cfg: DictConfig) -> dict:
    """``clozelab evaluate suite=NAME checkpoint=PATH``: ``{task: result}``."""
    checkpoint = _checkpoint(cfg)
    if not cfg.get("eval") or not cfg.eval.get("suite"):
        raise config_error("suite", None, "no suite selected", "suite=glue|bundled|ner|qa")
    eval_cfg = cfg.eval
    if cfg.get("seeds"):
        eval_cfg = OmegaConf.merge(eval_cfg, {"seeds": list(cfg.seeds)})
    if cfg.get("data_dir"):
        eval_cfg = OmegaConf.merge(eval_cfg, {"data_dir": cfg.data_dir})
    return evaluate_suite(
        eval_cfg,
        checkpoint,
        _eval_dir(cfg),
        extra_task=cfg.get("task"),
        arch=cfg,
        loggers=_loggers(cfg, Path(cfg.paths.output_dir), f"evaluate-{cfg.eval.suite}"),
    )


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
    results = evaluate_suite(eval_cfg, source, run_dir / "eval", extra_task=task,
                             loggers=loggers)  # fmt: skip
    return {f"eval/{name}/{r['metric']}": r["value"] for name, r in results.items()}


def _module_backbone(module, run_dir: Path) -> Backbone:
    """A Backbone sharing nothing with the trained PretrainModule (a CPU copy, eval mode)."""
    from clozelab.data.tokenizer import load_tokenizer

    objectives = getattr(module, "objectives", {}) or {}
    pooler = None
    for name in ("nsp", "sop"):
        if name in objectives and hasattr(objectives[name], "pooler"):
            pooler = copy.deepcopy(objectives[name].pooler).cpu().float()
            break
    embedding = copy.deepcopy(module.embedding).cpu().float()
    encoder = copy.deepcopy(module.encoder).cpu().float()
    backbone = Backbone(embedding, encoder, load_tokenizer(run_dir), pooler, str(run_dir))
    return backbone
