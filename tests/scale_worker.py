"""One rank of the 2-process CPU DDP runs in tests/test_ddp.py (started by torch.multiprocessing).

Each rank is set up the way torchrun or srun would set it up (RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR/PORT in the environment) and runs the real ``pretrain(cfg)`` with ``trainer=ddp``.
Hooks record, under ``out/<variant>/``, what the test compares against one process: the
initial weights, every batch each rank trained on, the objectives of each step and the final
weights of each rank.
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

    def on_train_batch_start(self, batch, batch_idx):  # by step: batch_idx restarts each epoch
        torch.save(batch, out / f"batch{rank}_{self.global_step}.pt")

    ran = []  # the objectives each step trained (a scheduled run's ranks must agree)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        ran.append(sorted(self._objective_losses))

    def on_train_end(self):
        torch.save(self.state_dict(), out / f"final{rank}.pt")
        torch.save(ran, out / f"objectives{rank}.pt")

    module_cls.on_train_start = on_train_start
    module_cls.on_train_batch_start = on_train_batch_start
    module_cls.on_train_batch_end = on_train_batch_end
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


def run_finetune_rank(rank: int, world: int, port: int, cfg, out) -> None:
    """One rank of a data-parallel ``finetune(cfg)`` started as torchrun would start it; records
    under ``out`` each rank's multi-task weights after training (``mt<rank>_seed<S>.pt``), the
    examples of every batch it trained on (``batches<rank>.pt``) and the files it wrote
    (``writes<rank>.json``)."""
    import json

    from torch import nn

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    import clozelab.finetune as command
    import clozelab.training.evaluation as evaluation
    import clozelab.training.multitask as multitask

    out = Path(out)
    trained, batches, writes = multitask.train_multitask, [], []

    def train_multitask(models, datas, node, seed, pad_id):
        facts = trained(models, datas, node, seed, pad_id)
        torch.save(nn.ModuleDict(models).state_dict(), out / f"mt{rank}_seed{seed}.pt")
        return facts

    def training_pass(features, size, rng, original=multitask.training_pass):
        position = {id(row): i for i, row in enumerate(features)}  # the same on every rank
        for rows in original(features, size, rng):
            batches.append(sorted(position[id(row)] for row in rows))
            yield rows

    def recording(module):
        original = module.write_json
        return lambda path, data: (writes.append(Path(path).name), original(path, data))

    multitask.train_multitask, multitask.training_pass = train_multitask, training_pass
    command.write_json, evaluation.write_json = recording(command), recording(evaluation)
    command.finetune(cfg)
    torch.save(batches, out / f"batches{rank}.pt")
    (out / f"writes{rank}.json").write_text(json.dumps(writes))
