"""One rank of the 2-process CPU DDP runs in tests/test_ddp.py (started by torch.multiprocessing).

Each rank is set up the way torchrun or srun would set it up (RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR/PORT in the environment) and runs the real ``pretrain(cfg)`` with ``trainer=ddp``.
Hooks record, under ``out/<variant>/``, what the test compares against one process: the
initial weights, every batch each rank trained on, and the final weights of each rank.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch


def _record(module_cls, out: Path, rank: int):
    original_start = getattr(module_cls, "_unrecorded_on_train_start", module_cls.on_train_start)
    module_cls._unrecorded_on_train_start = original_start

    def on_train_start(self):
        if rank == 0:
            torch.save(self.state_dict(), out / "initial.pt")
        original_start(self)

    def on_train_batch_start(self, batch, batch_idx):
        torch.save(batch, out / f"batch{rank}_{batch_idx}.pt")

    def on_train_end(self):
        torch.save(self.state_dict(), out / f"final{rank}.pt")

    module_cls.on_train_start = on_train_start
    module_cls.on_train_batch_start = on_train_batch_start
    module_cls.on_train_end = on_train_end


def run_rank(rank: int, world: int, port: int, runs: list) -> None:
    """``runs``: (variant, cfg, out_dir) triples, trained one after the other in this process;
    variant ``naive`` turns the global token mean off (each rank's loss is its own mean)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")  # fmt: skip
    os.environ.setdefault("WANDB_MODE", "offline")
    torch.set_num_threads(1)
    import clozelab.training.module
    from clozelab.pretrain import pretrain
    from clozelab.training.module import PretrainModule

    global_mean_context = clozelab.training.module.data_parallel
    for variant, cfg, out in runs:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _record(PretrainModule, out, rank)
        if variant == "naive":
            clozelab.training.module.data_parallel = lambda world, reduce: contextlib.nullcontext()
        else:
            clozelab.training.module.data_parallel = global_mean_context
        pretrain(cfg)
