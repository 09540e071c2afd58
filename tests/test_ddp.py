"""DDP on 2 CPU processes (gloo) computes the update of one process on the same global batch.

Two ranks run the real ``pretrain(cfg)`` with ``trainer=ddp trainer.devices=2`` (set up as
torchrun would), record the batches they trained on, and their weights after 3 AdamW steps are
compared with one process trained on the same global batches (each step: rank 0's batch and rank
1's batch, side by side). The ranks hold different numbers of MLM targets, so the global token
mean matters: the same run with the per-rank mean (the SPECS §5 pitfall) ends elsewhere.
"""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from clozelab.core.batch import Batch

STEPS = 3
PAD = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "mlm_labels": -100}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(runs, deadline_s: float = 300.0, worker=None) -> None:
    """Both ranks (``worker(rank, 2, port, *runs)``; default: ``run_rank(rank, 2, port, runs)``);
    a hung collective fails the test instead of blocking the suite."""
    from scale_worker import run_rank

    args = (2, _free_port(), *runs) if worker else (2, _free_port(), runs)
    context = mp.start_processes(worker or run_rank, args=args, nprocs=2, join=False,
                                 start_method="spawn")  # fmt: skip
    end = time.monotonic() + deadline_s
    while not context.join(timeout=5):
        if time.monotonic() > end:
            for process in context.processes:
                process.kill()
            pytest.fail("the DDP ranks did not finish")


def _side_by_side(a: dict, b: dict, pad_id: int) -> Batch:
    """One batch holding the rows of ``a`` then ``b`` (padded to the wider of the two)."""
    width = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    out = Batch()
    for key, fill in PAD.items():
        fill = pad_id if fill is None else fill
        rows = [torch.nn.functional.pad(x[key], (0, width - x[key].shape[1]), value=fill)
                for x in (a, b)]  # fmt: skip
        out[key] = torch.cat(rows)
    out["next_sentence_label"] = torch.cat([a["next_sentence_label"], b["next_sentence_label"]])
    return out


def _one_process(cfg, out, pad_id):
    """The update of one process on the ranks' global batches, from the same initial weights."""
    import pytorch_lightning as pl

    from clozelab.core.config import build
    from clozelab.data.preprocess import prepare
    from clozelab.training.components import build_components
    from clozelab.training.module import PretrainModule

    prepared = prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)
    embedding, encoder, objectives, _ = build_components(cfg, prepared.tokenizer, prepared)
    module = PretrainModule(embedding, encoder, objectives, optimizer=build(cfg.optim, "optim"),
                            scheduler_cfg=OmegaConf.to_container(cfg.scheduler, resolve=True),
                            total_steps=STEPS, weight_decay=cfg.optim.weight_decay)  # fmt: skip
    module.load_state_dict(torch.load(out / "initial.pt"))
    load = lambda rank, step: torch.load(out / f"batch{rank}_{step}.pt")  # noqa: E731
    batches = [_side_by_side(load(0, k), load(1, k), pad_id) for k in range(STEPS)]
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         gradient_clip_val=cfg.trainer.gradient_clip_val)  # fmt: skip
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return module.state_dict(), batches


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_two_cpu_ranks_make_the_update_of_one_process_on_the_global_batch(
    compose_pretrain, tmp_path
):
    overrides = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
                 f"trainer.max_steps={STEPS}", "trainer.val_check_interval=1000",
                 "data.max_seq_length=32", "data.batch_size=4", "model.dropout=0.0",
                 "model.attention_dropout=0.0", "initial_validation=false",
                 "callbacks.checkpoint_every_n_steps=1000"]  # fmt: skip
    runs = []
    for variant in ("global", "naive"):
        cfg = compose_pretrain(*overrides, f"paths.output_dir={tmp_path / variant / 'run'}")
        runs.append((variant, cfg, tmp_path / variant))
    from clozelab.data.preprocess import prepare

    prepared = prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)  # cached before the ranks
    _spawn(runs)

    out = tmp_path / "global"
    final = [torch.load(out / f"final{r}.pt") for r in (0, 1)]
    assert _max_diff(final[0], final[1]) == 0.0  # DDP keeps the replicas identical
    expected, batches = _one_process(runs[0][1], out, prepared.tokenizer.pad_id)
    initial = torch.load(out / "initial.pt")
    assert _max_diff(expected, initial) > 1e-4  # the steps did move the weights
    assert _max_diff(final[0], expected) < 1e-6

    # Each rank trains on its own slice: disjoint samples, different MLM target counts.
    for k in range(STEPS):
        ranks = [torch.load(out / f"batch{r}_{k}.pt") for r in (0, 1)]
        assert not set(ranks[0]["index"].tolist()) & set(ranks[1]["index"].tolist())
    counts = [[int((torch.load(out / f"batch{r}_{k}.pt")["mlm_labels"] != -100).sum())
               for r in (0, 1)] for k in range(STEPS)]  # fmt: skip
    assert any(c0 != c1 for c0, c1 in counts), counts

    # The per-rank mean (each rank divides by its own count) is a different update.
    naive = torch.load(tmp_path / "naive" / "final0.pt")
    assert _max_diff(torch.load(tmp_path / "naive" / "initial.pt"), initial) == 0.0
    for k in range(STEPS):  # same batches
        assert torch.equal(torch.load(tmp_path / "naive" / f"batch0_{k}.pt")["input_ids"],
                           torch.load(out / f"batch0_{k}.pt")["input_ids"])  # fmt: skip
    assert _max_diff(naive, expected) > 1e-5
    assert len(batches) == STEPS


@pytest.mark.slow
def test_clozelab_pretrain_trainer_ddp_runs_two_cpu_processes(tmp_path, cache_dir, text_corpus):
    """The command users type: Lightning's launcher starts rank 1 by re-running it."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from helpers import TINY

    run = tmp_path / "run"
    command = [str(Path(sys.executable).with_name("clozelab")), "pretrain", *TINY,
               f"data.corpus={text_corpus}", f"paths.cache_dir={cache_dir}",
               f"hydra.run.dir={run}", "trainer=ddp", "trainer.devices=2",
               "trainer.accelerator=cpu"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 6
    assert (run / "train_ddp_process_1.log").is_file()  # rank 1 ran, in the same directory
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stdout + done.stderr


@pytest.mark.slow  # two CPU ranks of a 7-step ERNIE 2.0 schedule (~1 min on the busy machine)
def test_ernie2_schedule_runs_under_plain_ddp_with_the_ranks_in_step(compose_pretrain, tmp_path):
    """``experiment=ernie2 trainer=ddp``: both ranks train the same objective at every step (the
    schedule reads the global step and the all-reduced tokens seen), each on its own samples,
    and end with identical weights; the head of an objective that never ran is untouched (no
    gradient on any rank, so AdamW neither moves nor decays it); one CSV row per logged step."""
    import csv
    import json

    from test_schedule import ERNIE2

    from clozelab.data.preprocess import prepare

    out = tmp_path / "ernie2"
    cfg = compose_pretrain(*ERNIE2, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
                           "trainer.max_steps=7", "trainer.val_check_interval=7",
                           "callbacks.checkpoint_every_n_steps=1000",
                           f"paths.output_dir={out / 'run'}")  # fmt: skip
    prepare(cfg.data, cfg.tokenizer, cfg.paths.cache_dir)  # cached before the ranks
    _spawn([("global", cfg, out)], deadline_s=900.0)  # the shared machine can be slow

    final = [torch.load(out / f"final{r}.pt") for r in (0, 1)]
    assert _max_diff(final[0], final[1]) == 0.0
    initial = torch.load(out / "initial.pt")
    assert _max_diff(final[0], initial) > 1e-4
    ran = [torch.load(out / f"objectives{r}.pt") for r in (0, 1)]
    assert ran[0] == ran[1] == [["mlm"], ["mlm"], ["token_document"], ["mlm"],
                                ["sentence_reorder"], ["mlm"], ["capitalization"]]  # fmt: skip
    idle = [k for k in initial if k.startswith("objectives.sentence_distance.")]
    assert idle and all(torch.equal(final[0][k], initial[k]) for k in idle)
    for k in range(7):
        ranks = [torch.load(out / f"batch{r}_{k}.pt") for r in (0, 1)]
        assert not set(ranks[0]["index"].tolist()) & set(ranks[1]["index"].tolist())
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 7
    with open(out / "run" / "csv" / "metrics.csv", newline="") as handle:
        steps = [int(r["step"]) for r in csv.DictReader(handle) if r.get("train/loss")]
    assert steps == list(range(7))
