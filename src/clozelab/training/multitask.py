"""Multi-task fine-tuning, MT-DNN (Liu et al. 2019; SPECS.md §20): ``clozelab finetune
multitask.tasks=[rte,mrpc,stsb]``.

One shared encoder (the checkpoint's backbone) and each task's own head (its ``Task.build_model``
on the shared backbone: classification, pair classification, regression, tagging ...). Every
step trains one task on a task-pure mini-batch, chosen by ``multitask.sampling``:

- ``proportional`` (MT-DNN): each epoch packs every task's training data into mini-batches,
  shuffles all of them together and runs each once, so a task's share of the steps is its share
  of the batches;
- ``temperature``: each step draws a task with probability proportional to ``n_task^(1/T)``
  (``multitask.temperature``: T = 1 is proportional to size, large T tends to uniform).

The run has ``multitask.epochs`` passes worth of steps over all tasks' batches, with
pre-training's optimizer groups and linear warm-up/decay (``training/optim.py``). Afterwards
each task is scored with its own metrics; ``multitask.save`` writes the multi-task checkpoint
(shared body and every head); ``multitask.refine`` then fine-tunes a copy of each task's model
alone from the multi-task weights (the task's own ``epochs``/``lr``) and scores it again, as
MT-DNN's per-task fine-tuning. ``multitask.joint=false`` is the single-task baseline: every task
fine-tuned alone from the checkpoint on the same seeds (same writer, same job layout), so a sweep
over ``multitask.joint`` compares the two arms under ``clozelab report``.

``devices=N`` runs all of it data-parallel on N CPU processes (``training/ranks.py``): the ranks
draw the same task order from the seed, so they train the same task at every step, each on its
own share of the task's global batch; the other tasks' heads are DDP's unused parameters.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from clozelab.core.errors import check_choice, config_error
from clozelab.tasks.base import TaskData, task_for
from clozelab.tasks.features import pad_batch
from clozelab.training.evaluation import backbone_factory, task_protocol, write_task_result
from clozelab.training.finetuning import run_seed, score, train, training_pass
from clozelab.training.optim import adamw, parameter_groups, warmup_decay_lambda
from clozelab.training.ranks import is_writer, parallel, rank_and_world

log = logging.getLogger(__name__)

SAMPLINGS = ("proportional", "temperature")


def sampling_shares(
    sizes: dict[str, int], batch_size: int, sampling: str, temperature: float = 1.0
) -> dict[str, float]:
    """The expected share of steps of each task: its share of the batches (``proportional``) or
    ``n^(1/T)`` normalised (``temperature``)."""
    if sampling == "proportional":
        weights = {name: math.ceil(n / batch_size) for name, n in sizes.items()}
    else:
        weights = {name: n ** (1.0 / temperature) for name, n in sizes.items()}
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


def task_order(
    sizes: dict[str, int],
    batch_size: int,
    steps: int,
    sampling: str,
    temperature: float,
    generator: torch.Generator,
) -> list[str]:
    """The task of each of ``steps`` steps (see the module docstring), every draw from
    ``generator``."""
    names = list(sizes)
    if sampling == "proportional":
        epoch = [name for name in names for _ in range(math.ceil(sizes[name] / batch_size))]
        order: list[str] = []
        while len(order) < steps:  # whole epochs of every batch once, shuffled together
            order += [epoch[i] for i in torch.randperm(len(epoch), generator=generator).tolist()]
        return order[:steps]
    shares = sampling_shares(sizes, batch_size, sampling, temperature)
    weights = torch.tensor([shares[name] for name in names], dtype=torch.float64)
    picks = torch.multinomial(weights, steps, replacement=True, generator=generator)
    return [names[i] for i in picks.tolist()]


def _stream(features: list[dict], size: int, rng: random.Random) -> Iterator[list[dict]]:
    """A task's training batches (this rank's share), reshuffled at every pass, forever."""
    while True:
        yield from training_pass(features, size, rng)


class TaskModels(nn.Module):
    """The task models on one shared backbone (its parameters appear once); ``forward(task,
    batch)`` runs one task's model, so DDP can wrap all of them."""

    def __init__(self, models: dict[str, nn.Module]) -> None:
        super().__init__()
        self.tasks = nn.ModuleDict(models)

    def forward(self, task: str, batch: dict) -> dict:
        return self.tasks[task](batch)


def check_config(node: DictConfig) -> None:
    """The ``multitask`` knobs: sampling, temperature, batch size, epochs."""
    sampling = node.get("sampling", "proportional")
    check_choice(
        sampling, "multitask.sampling", SAMPLINGS, "set multitask.sampling=proportional (MT-DNN)"
    )
    temperature = node.get("temperature", 1.0)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not (temperature > 0)
    ):
        raise config_error(
            "multitask.temperature",
            temperature,
            "must be a number > 0",
            "e.g. multitask.temperature=2",
        )
    for key in ("batch_size", "epochs"):
        value = node.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            example = 32 if key == "batch_size" else 3
            raise config_error(
                f"multitask.{key}", value, "must be a number > 0", f"e.g. multitask.{key}={example}"
            )
    tasks = node.get("tasks") or []
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)  # multitask.tasks=rte: not r, t, e
    if len(tasks) < 2 or len(set(tasks)) != len(tasks):
        raise config_error(
            "multitask.tasks",
            tasks,
            "needs two or more distinct task names",
            "e.g. multitask.tasks=[rte,mrpc,stsb], or task=NAME for one task",
        )


def train_multitask(
    models: dict[str, nn.Module],
    datas: dict[str, TaskData],
    node: DictConfig,
    seed: int,
    pad_id: int,
) -> dict:
    """Train the task models (one shared backbone) together; returns steps, time, losses and the
    steps each task got. Under several ranks (``training/ranks.py``) ``multitask.batch_size`` is
    per rank: every rank draws the same task order from ``seed`` and trains its share of each
    global batch of that task."""
    batch_size = int(node.get("batch_size", 32))
    world = rank_and_world()[1]
    sizes = {name: len(data.train) for name, data in datas.items()}
    empty = [name for name, n in sizes.items() if n == 0]
    if empty:
        raise config_error(
            "multitask.tasks",
            empty[0],
            "the task has no training examples",
            f"give task {empty[0]} a train split or drop it",
        )
    per_epoch = sum(math.ceil(n / (batch_size * world)) for n in sizes.values())
    total = max(1, math.ceil(per_epoch * float(node.get("epochs", 3))))
    if node.get("max_steps"):
        total = min(total, int(node.max_steps))
    generator = torch.Generator().manual_seed(seed)
    order = task_order(
        sizes,
        batch_size * world,  # global batches
        total,
        node.get("sampling", "proportional"),
        float(node.get("temperature", 1.0)),
        generator,
    )
    streams = {
        name: _stream(data.train, batch_size, random.Random(f"{seed}/{name}"))
        for name, data in datas.items()
    }
    container = TaskModels(models)
    net = parallel(container)  # DDP under several ranks: idle heads found unused
    opt = adamw(
        parameter_groups(container, float(node.get("weight_decay", 0.01))),
        lr=float(node.get("lr", 5e-5)),
    )
    warmup = int(total * float(node.get("warmup", 0.1)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_decay_lambda(warmup, total, "linear"))
    torch.manual_seed(seed)
    container.train()
    losses: dict[str, list[float]] = {name: [] for name in models}
    start = time.perf_counter()
    for step, name in enumerate(order, 1):
        out = net(name, pad_batch(next(streams[name]), pad_id))
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(container.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses[name].append(float(out["loss"].detach()))
        if step % 50 == 0:
            log.info("multitask step %d/%d (%s) loss %.4f", step, total, name, losses[name][-1])
    return {
        "steps": total,
        "steps_per_task": dict(Counter(order)),
        "train_time_s": round(time.perf_counter() - start, 2),
        "final_train_loss": {n: sum(v[-20:]) / len(v[-20:]) for n, v in losses.items() if v},
    }


def _joint_seed(make, kinds, datas, node, seed: int, save_dir: Path | None) -> dict[str, dict]:
    """One seed of MT-DNN: the shared body trained on every task, each task scored (then, with
    ``refine``, fine-tuned alone from the multi-task weights and scored again)."""
    torch.manual_seed(seed)
    backbone = make()
    pad_id = backbone.tokenizer.pad_id
    body = {"mode": "finetune", "mix_layers": 4, "layer_mix": "average"}
    models = {name: kind.build_model(backbone, datas[name], **body) for name, kind in kinds.items()}
    facts = train_multitask(models, datas, node, seed, pad_id)
    runs = {}
    for name, model in models.items():
        metrics = score(model, datas[name], kinds[name], pad_id)
        runs[name] = {
            "seed": seed,
            "metrics": metrics,
            "multitask_metrics": metrics,
            "multitask": facts,
        }
    if save_dir is not None and is_writer():
        save_dir.mkdir(parents=True, exist_ok=True)
        path = save_dir / f"seed-{seed}.pt"
        torch.save(
            {"tasks": list(models), "seed": seed, "state_dict": nn.ModuleDict(models).state_dict()},
            path,
        )
        log.info("multi-task checkpoint (shared body + %d heads) -> %s", len(models), path)
    if node.get("refine"):
        for name, model in models.items():  # MT-DNN's per-task fine-tuning from the joint model
            alone = copy.deepcopy(model)
            refined = train(alone, datas[name], kinds[name].cfg, seed, pad_id, "finetune")
            runs[name]["metrics"] = score(alone, datas[name], kinds[name], pad_id)
            runs[name]["refine"] = refined
    return runs


def run_multitask(
    tasks: list[DictConfig],
    checkpoint,
    *,
    node: DictConfig,
    seeds: list[int],
    eval_dir: Path,
    data_dir=None,
    arch=None,
    random_init=None,
    loggers=(),
) -> dict:
    """Every task of ``tasks`` fine-tuned together (``node.joint``, MT-DNN) or alone (the
    baseline) on each seed; writes ``<eval_dir>/<task>.json`` per task as ``run_task`` does and
    returns ``{task: result}``."""
    check_config(node)
    if not seeds:
        raise config_error("seeds", seeds, "no seeds given", "give e.g. seeds=[1,2,3]")
    start = time.perf_counter()
    make = backbone_factory(checkpoint, arch, random_init)
    kinds = {str(t.name): task_for(t) for t in tasks}
    zero_shot = [name for name, kind in kinds.items() if kind.zero_shot]
    if zero_shot:
        raise config_error(
            "multitask.tasks",
            zero_shot[0],
            "a zero-shot task has no head to train",
            "list fine-tuned tasks only",
        )
    splits = {name: kind.read(data_dir) for name, kind in kinds.items()}
    first = make()
    datas = {name: kind.encode(splits[name], first) for name, kind in kinds.items()}
    del first
    joint = bool(node.get("joint", True))
    save_dir = eval_dir / "multitask" if joint and node.get("save", True) else None
    runs: dict[str, list[dict]] = {name: [] for name in kinds}
    for seed in seeds:
        if joint:
            for name, run in _joint_seed(make, kinds, datas, node, seed, save_dir).items():
                runs[name].append(run)
        else:
            for name, kind in kinds.items():
                runs[name].append({"seed": seed, **run_seed(make, datas[name], kind, seed)})
    sizes = {name: len(data.train) for name, data in datas.items()}
    batch = int(node.get("batch_size", 32))
    shares = sampling_shares(
        sizes, batch, node.get("sampling", "proportional"), float(node.get("temperature", 1.0))
    )
    results = {}
    for name, kind in kinds.items():
        protocol = task_protocol(kind.cfg, kind, splits[name], "finetune", 4, "average")
        protocol["multitask"] = {
            "joint": joint,
            "tasks": list(kinds),
            "sampling": node.get("sampling"),
            "temperature": node.get("temperature"),
            "share_of_steps": round(shares[name], 4),
            "epochs": node.get("epochs"),
            "lr": node.get("lr"),
            "batch_size": batch,
            "refine": bool(node.get("refine")) if joint else None,
        }
        results[name] = write_task_result(
            kind.cfg, kind, runs[name], seeds, protocol, checkpoint, eval_dir, loggers, start
        )
    return results
