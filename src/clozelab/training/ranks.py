"""Data-parallel fine-tuning (``clozelab finetune ... devices=N``) on CPU processes (gloo).

Fine-tuning is a plain PyTorch loop (``training/finetuning.py``, ``training/multitask.py``); this
module gives it what Lightning gives pre-training under ``trainer=ddp``:

- ``launch``: ``devices=N`` makes the command's own process rank 0 and starts ranks 1..N-1 on
  this machine (``torch.multiprocessing``, spawn), each running the same function on the same
  resolved config. A process that torchrun or srun started (``WORLD_SIZE`` > 1 in the
  environment) joins its ranks instead (``join``).
- Every rank builds the same model from the same seed and draws the same task order and the same
  shuffles from it, so all ranks train the same task at every step; each takes its own share of
  every global batch (``shard``: rows ``rank, rank + N, ...``; a pass over a task's data is padded
  to a multiple of N by repeating its first examples, as ``DistributedSampler`` does) and DDP
  averages the gradients (``parallel``).
- Heads of the tasks a step does not train: ``find_unused_parameters=True``. DDP then leaves
  their gradients ``None`` on every rank, so AdamW neither moves nor decays them, exactly as in
  one process; a zero-weight loss for every idle head would instead give them zero gradients,
  which AdamW turns into updates (momentum from earlier steps, decoupled weight decay).
- Every rank scores (the weights are the same on all of them); rank 0 alone writes results,
  checkpoints and ``metrics.json`` (``is_writer``).
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from clozelab.core.errors import config_error

BACKEND = "gloo"  # fine-tuning runs on CPU; gloo is torch.distributed's CPU backend
TIMEOUT = datetime.timedelta(minutes=30)


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of ranks); (0, 1) outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_writer() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return rank_and_world()[0] == 0


def shard(rows: list, rank: int, world: int) -> list:
    """This rank's rows of one global batch: ``rows[rank::world]``."""
    return rows[rank::world]


def pad_to_ranks(order: list[int], world: int) -> list[int]:
    """``order`` lengthened to a multiple of ``world`` by repeating its first entries, so every
    rank gets the same number of rows in every global batch of the pass."""
    short = -len(order) % world
    return order + (order * (short // max(len(order), 1) + 1))[:short]


def parallel(model: nn.Module) -> nn.Module:
    """``model`` under DDP when several ranks run (idle heads found unused), else itself."""
    if rank_and_world()[1] == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)


def check_devices(devices) -> int:
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise config_error(
            "devices", devices, "must be an integer >= 1", "devices=2 for two CPU processes"
        )
    return devices


def join() -> bool:
    """Join the ranks of an external launcher (torchrun, srun: ``WORLD_SIZE`` > 1 and
    ``MASTER_ADDR``/``MASTER_PORT`` in the environment); whether this process joined."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group(BACKEND, timeout=TIMEOUT)
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(index: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    """Extra rank ``index + 1`` started by ``launch``."""
    rank = index + 1
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(BACKEND, rank=rank, world_size=world, timeout=TIMEOUT)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def launch(devices: int, fn: Callable, *args):
    """``fn(*args)`` on ``devices`` ranks of this machine: this process is rank 0 and returns
    its result; the others are started here and joined before returning."""
    port = _free_port()
    context = mp.start_processes(
        _rank,
        args=(devices, port, fn, args),
        nprocs=devices - 1,
        join=False,
        start_method="spawn",
    )
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // devices))
    dist.init_process_group(BACKEND, rank=0, world_size=devices, timeout=TIMEOUT)
    try:
        result = fn(*args)
    finally:
        dist.destroy_process_group()
    while not context.join():
        pass
    return result
