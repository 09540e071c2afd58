"""Fine-tune and score one task for one seed: the training loop and the scoring loop around the
task's own encoding, head and scoring (``clozelab.tasks.base.Task``).

The loop is plain PyTorch with pre-training's optimizer groups and schedule (``training/optim.py``:
AdamW without decay on biases and LayerNorms, linear warm-up then linear decay), gradient
clipping at 1.0 and dynamic padding; one task on one seed is small enough that Lightning's
machinery would only add start-up time. Under several ranks (``devices=N``, ``training/ranks.py``)
``task.batch_size`` is per rank and DDP averages the gradients.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable

import torch
from omegaconf import DictConfig
from torch import nn

from clozelab.core.errors import config_error
from clozelab.tasks.backbone import Backbone
from clozelab.tasks.base import Task, TaskData
from clozelab.tasks.features import pad_batch
from clozelab.training.optim import adamw, parameter_groups, warmup_decay_lambda
from clozelab.training.ranks import pad_to_ranks, parallel, rank_and_world, shard

log = logging.getLogger(__name__)


def _scoring_batches(features: list[dict], size: int):
    """(indices, features) batches sorted by length: less padding at scoring time."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    for i in range(0, len(order), size):
        idx = order[i : i + size]
        yield idx, [features[j] for j in idx]


def training_pass(features: list[dict], size: int, rng: random.Random):
    """One shuffled pass over ``features`` in batches of ``size`` per rank: under several ranks
    (``training/ranks.py``) every rank draws the same shuffle and takes its share of each global
    batch of ``size x ranks`` rows."""
    rank, world = rank_and_world()
    order = list(range(len(features)))
    rng.shuffle(order)
    order = pad_to_ranks(order, world)
    for i in range(0, len(order), size * world):
        yield [features[j] for j in shard(order[i : i + size * world], rank, world)]


def _optimizer(model: nn.Module, lr: float, weight_decay: float, head_lr: float | None):
    """AdamW over ``parameter_groups`` (no decay on biases and LayerNorms); with ``head_lr``
    (feature-based training) everything outside the backbone trains at that rate, undecayed."""
    if not head_lr:
        groups = parameter_groups(model, weight_decay)
    else:
        head = [
            p
            for name, p in model.named_parameters()
            if p.requires_grad and not name.startswith("backbone.")
        ]
        groups = [
            *parameter_groups(model.backbone, weight_decay),
            {"params": head, "weight_decay": 0.0, "lr": head_lr},
        ]
    return adamw(groups, lr)


def train(
    model: nn.Module, prepared: TaskData, task: DictConfig, seed: int, pad_id: int, mode: str
) -> dict:
    """Fine-tune ``model`` on ``prepared.train``; returns steps and wall time."""
    if not prepared.train:
        raise config_error(
            "task.train",
            task.get("train"),
            "the task has no training examples",
            "give task.train, or task.holdout=F to train on part of the validation file",
        )
    torch.manual_seed(seed)
    rng = random.Random(seed)
    batch_size = int(task.get("batch_size", 32))  # per rank
    epochs = float(task.get("epochs", 3))
    per_epoch = math.ceil(len(prepared.train) / (batch_size * rank_and_world()[1]))
    total = max(1, math.ceil(per_epoch * epochs))
    if task.get("max_steps"):
        total = min(total, int(task.max_steps))
    warmup = int(total * float(task.get("warmup", 0.1)))
    head_lr = task.get("head_lr") if mode == "features" else None
    opt = _optimizer(
        model,
        float(task.get("lr", 5e-5)),
        float(task.get("weight_decay", 0.01)),
        float(head_lr) if head_lr else None,
    )

    # linear warm-up, then linear decay to 0 at the last step (pre-training's schedule)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_decay_lambda(warmup, total, "linear"))
    model.train()
    net = parallel(model)  # DDP under several ranks (gradients averaged), else the model
    step, start, losses = 0, time.perf_counter(), []
    while step < total:
        for feats in training_pass(prepared.train, batch_size, rng):
            out = net(pad_batch(feats, pad_id))
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(out["loss"].detach()))
            step += 1
            if step % 50 == 0:
                log.info("step %d/%d loss %.4f", step, total, sum(losses[-50:]) / 50)
            if step >= total:
                break
    return {
        "steps": step,
        "train_time_s": round(time.perf_counter() - start, 2),
        "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
    }


@torch.no_grad()
def score(model: nn.Module, prepared: TaskData, task: Task, pad_id: int) -> dict:
    """The task's metrics on ``prepared.validation``."""
    model.eval()
    names = list(task.cfg.get("metrics") or task.default_metrics)
    size = int(task.cfg.get("eval_batch_size", 64))
    outputs: list[tuple[list[int], dict, dict]] = []
    for idx, feats in _scoring_batches(prepared.validation, size):
        batch = pad_batch(feats, pad_id)
        outputs.append((idx, batch, model(batch)))
    return task.score(model, prepared, outputs, names)


def run_seed(
    make_backbone: Callable[[], Backbone],
    prepared: TaskData,
    task: Task,
    seed: int,
    mode: str = "finetune",
    mix_layers: int = 4,
    layer_mix: str = "average",
) -> dict:
    """Fresh backbone + the task's head for ``seed``, fine-tuned then scored: metrics and facts."""
    torch.manual_seed(seed)
    backbone = make_backbone()
    model = task.build_model(
        backbone, prepared, mode=mode, mix_layers=mix_layers, layer_mix=layer_mix
    )
    pad_id = backbone.tokenizer.pad_id
    facts = train(model, prepared, task.cfg, seed, pad_id, mode)
    start = time.perf_counter()
    metrics = score(model, prepared, task, pad_id)
    facts["eval_time_s"] = round(time.perf_counter() - start, 2)
    return {"metrics": metrics, **facts}
