"""Timing of training steps for ``clozelab bench``: synthetic instances, moving batches to a
device, AdamW steps under fp32 or bf16 autocast, and ``time_models`` (models alternating round by
round so they see the same machine)."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from omegaconf import DictConfig

from clozelab.core.errors import config_error

PRECISIONS = ("fp32", "bf16")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- peak
def synthetic_instances(
    n: int, seq_len: int, vocab: int, short_fraction: float, rng, min_length: int | None = None
) -> list[dict]:
    """Segment-pair-like instances: [CLS] A [SEP] B [SEP], most at full length; with
    ``min_length``, every length uniform in [min_length, seq_len]."""
    items = []
    for i in range(n):
        if min_length is not None:
            length = int(rng.integers(max(min_length, 5), seq_len + 1))
        elif rng.random() >= short_fraction:
            length = seq_len
        else:
            length = int(rng.integers(8, seq_len))
        ids = rng.integers(5, vocab, length)
        cut = int(rng.integers(2, length - 2))
        ids[0], ids[cut], ids[-1] = 2, 3, 3
        types = np.zeros(length, dtype=np.int64)
        types[cut + 1 :] = 1
        special = np.zeros(length, dtype=np.int64)
        special[[0, cut, length - 1]] = 1
        items.append(
            {
                "input_ids": ids,
                "token_type_ids": types,
                "special_tokens_mask": special,
                "index": i,
                "next_sentence_label": int(rng.integers(0, 2)),
            }
        )
    return items


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def adamw(model, lr: float):
    from clozelab.training.optim import adamw as fused_adamw
    from clozelab.training.optim import parameter_groups

    return fused_adamw(parameter_groups(model, 0.01), lr=lr, eps=1e-6)  # both sides alike


def train_steps(model, loss_fn, optimizer, batches, steps: int, precision: str) -> float:
    """Seconds for ``steps`` optimizer steps, cycling over ``batches``."""
    device = next(model.parameters()).device
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        batch = batches[i % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device):
            loss = loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    sync(device)
    return time.perf_counter() - start


def compiled_graphs() -> int:
    """Graphs torch.compile has traced in this process so far (each recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def time_models(
    models: dict[str, tuple],
    batches,
    p: DictConfig,
    precision: str,
    graphs: dict | None = None,
    cpu: dict | None = None,
) -> dict:
    """Seconds per training step of each ``(model, loss_fn)``: warm-up, then ``p.rounds``
    rounds of ``p.steps`` steps, the models alternating so they see the same machine.
    ``graphs``, when given, receives the compiled graphs after the warm-up (``warmup``) and
    those traced while timing (``timing``: recompiles; 0 when every batch has one shape);
    ``cpu`` receives each model's CPU seconds (this process) per step: on a loaded machine the
    work done, where wall time also counts the other processes' turns."""
    seconds = dict.fromkeys(models, 0.0)
    cpu_seconds = dict.fromkeys(models, 0.0)
    optimizers = {name: adamw(m, p.lr) for name, (m, _) in models.items()}
    for name, (model, fn) in models.items():
        train_steps(model, fn, optimizers[name], batches, p.warmup_steps, precision)
    warm = compiled_graphs()
    for _ in range(p.rounds):
        for name, (model, fn) in models.items():
            used = time.process_time()
            seconds[name] += train_steps(model, fn, optimizers[name], batches, p.steps, precision)
            cpu_seconds[name] += time.process_time() - used
    if graphs is not None:
        graphs.update(warmup=warm, timing=compiled_graphs() - warm)
    if cpu is not None:
        cpu.update({name: total / (p.rounds * p.steps) for name, total in cpu_seconds.items()})
    return {name: total / (p.rounds * p.steps) for name, total in seconds.items()}


def check_precisions(key: str, precisions) -> None:
    for precision in precisions:
        if precision not in PRECISIONS:
            raise config_error(
                key, precision, "unknown precision", f"use a list of {list(PRECISIONS)}"
            )


def to_device(batches: list[dict], device: torch.device) -> list[dict]:
    return [
        type(b)({k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()})
        for b in batches
    ]


def module_loss(model, batch) -> torch.Tensor:
    """The total loss of a ``PretrainModule`` step (the loss function of our side in a bench)."""
    return model(batch)[0]


def eval_losses(models: dict[str, tuple], batch) -> dict[str, float]:
    """Each model's loss on ``batch`` in eval mode (dropout off); ``models``: name -> (model,
    loss_fn(model, batch))."""
    losses = {}
    for name, (model, fn) in models.items():
        model.eval()
        with torch.no_grad():
            losses[name] = float(fn(model, batch))
        model.train()
    return losses
