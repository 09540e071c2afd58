"""``clozelab finetune`` and ``clozelab evaluate``: downstream scores of a checkpoint.

``finetune(cfg) -> dict`` fine-tunes one task (``task=NAME``) on several seeds; ``evaluate(cfg)
-> dict`` does it for every task of a suite (``suite=NAME``), each writing
``<eval_dir>/<task>.json`` (see ``clozelab.training.evaluation``). The eval directory is
``<run>/eval`` when the checkpoint is a clozelab run, else ``<output_dir>/eval``. The Hydra
wrappers live in cli.py.
"""

from __future__ import annotations

import copy
import difflib
import functools
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from clozelab.core.config import conf_dir
from clozelab.core.errors import config_error
from clozelab.core.rundir import run_dir_of, write_json
from clozelab.training.evaluation import evaluate_suite, load_task, run_task
from clozelab.training.multitask import check_config, run_multitask
from clozelab.training.ranks import check_devices, is_writer, join, launch


def _eval_dir(cfg: DictConfig) -> Path:
    if cfg.get("eval_dir"):
        return Path(cfg.eval_dir)
    run = run_dir_of(cfg.get("checkpoint"))
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
    from clozelab.training.tracking import make_loggers

    if cfg.get("logger") is None or not is_writer():
        return []
    return make_loggers(cfg.logger, directory, f"{job}", OmegaConf.to_container(cfg, resolve=True))


def finetune(cfg: DictConfig) -> dict:
    """Fine-tune ``cfg.task`` from ``cfg.checkpoint`` on ``cfg.seeds``; the task's result (with
    ``multitask.tasks``: several tasks together, MT-DNN, ``{task: result}``). ``devices=N``: on N
    data-parallel CPU processes (``training/ranks.py``), as are the ranks a torchrun or srun
    launch starts; rank 0 writes."""
    devices = check_devices(cfg.get("devices", 1))
    if join():  # one rank of an external launcher
        try:
            return _finetune(cfg)
        finally:
            torch.distributed.destroy_process_group()
    if devices > 1:  # the extra ranks have no Hydra runtime: fix the run directory here
        pinned = copy.deepcopy(cfg)
        with open_dict(pinned):
            pinned.paths.output_dir = str(cfg.paths.output_dir)
        return launch(devices, _finetune, pinned)
    return _finetune(cfg)


def _finetune(cfg: DictConfig) -> dict:
    checkpoint = _checkpoint(cfg)
    node = cfg.get("multitask")
    if node is not None and node.get("tasks") is not None:  # [] too: refused by check_config
        return _multitask(cfg, checkpoint, node)
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


@functools.cache
def _task_file_keys() -> frozenset:
    """Every key some conf/task/*.yaml sets (read once a process)."""
    return frozenset(
        key for path in (conf_dir() / "task").glob("*.yaml") for key in OmegaConf.load(path)
    )


def _check_task_keys(where: str, changes, bases: list[DictConfig]) -> None:
    """Refuse a key of ``changes`` that no task config has and that is a near-spelling of a key
    of ``bases`` (``epoch`` for ``epochs``): merged into the task, it would be a new key nothing
    reads, and the setting it meant would keep its default without a word. Keys far from every
    known one (``head_lr``, read by the code though no task file lists it) pass as new keys."""
    known = _task_file_keys()
    candidates = sorted({str(k) for base in bases for k in base})
    for key in changes:
        if key in known:
            continue
        near = difflib.get_close_matches(str(key), candidates, n=1, cutoff=0.85)
        if near:
            raise config_error(
                f"{where}.{key}",
                changes[key],
                f"no task config has the key {key!r} (a misspelling of {near[0]!r}?)",
                f"write {where}.{near[0]}",
            )


def _multitask(cfg: DictConfig, checkpoint, node: DictConfig) -> dict:
    """``multitask.tasks`` fine-tuned together (or alone: ``multitask.joint=false``); also writes
    ``metrics.json`` (``eval/<task>/<metric>`` means) and ``config.yaml`` in the output directory,
    the job layout ``clozelab report`` reads."""
    check_config(node)
    overrides = node.get("overrides") or {}
    unknown = sorted(set(overrides) - set(node.tasks))
    if unknown:
        raise config_error(
            "multitask.overrides",
            unknown[0],
            "not one of multitask.tasks",
            f"name one of {list(node.tasks)}",
        )
    bases = {str(name): load_task(str(name)) for name in node.tasks}
    _check_task_keys("multitask.common", node.get("common") or {}, list(bases.values()))
    for name, changes in overrides.items():
        _check_task_keys(f"multitask.overrides.{name}", changes or {}, [bases[str(name)]])
    tasks = [
        OmegaConf.merge(base, node.get("common") or {}, overrides.get(name) or {})
        for name, base in bases.items()
    ]
    out = Path(cfg.paths.output_dir)
    results = run_multitask(
        tasks,
        checkpoint,
        node=node,
        seeds=list(cfg.seeds),
        eval_dir=_eval_dir(cfg),
        data_dir=cfg.get("data_dir"),
        arch=cfg,
        random_init=cfg.get("random_init"),
        loggers=_loggers(cfg, out, "finetune-multitask"),
    )
    metrics = {
        "status": "completed",
        "tasks": list(node.tasks),
        "joint": bool(node.joint),
        "wall_time_s": max(r["wall_time_s"] for r in results.values()),
    }
    for name, result in results.items():
        metrics.update({f"eval/{name}/{k}": v["mean"] for k, v in result["metrics"].items()})
    if is_writer():
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out / "config.yaml", resolve=True)
        write_json(out / "metrics.json", metrics)
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
