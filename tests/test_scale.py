"""Trainer presets compose and validate; per-rank sharding; the global token mean."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from clozelab.core.config import conf_dir
from clozelab.core.errors import ClozelabError
from clozelab.data.datamodule import ResumableDataLoader
from clozelab.data.sampler import EpochSampler
from clozelab.objectives.base import data_parallel, global_mean
from clozelab.training.scale import check_environment, check_trainer, trainer_kwargs, world_size

PRESETS = sorted(p.stem for p in (conf_dir() / "trainer").glob("*.yaml"))
CUDA = torch.cuda.is_available()
XLA = importlib.util.find_spec("torch_xla") is not None
DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
#: preset -> whether this machine can run it
RUNS_HERE = {"cpu": True, "ddp": True, "gpu": CUDA, "fsdp": CUDA, "multinode": False,
             "deepspeed": CUDA and DEEPSPEED, "tpu": XLA}  # fmt: skip


def test_the_issue_presets_exist():
    assert set(RUNS_HERE) <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes_and_validates(compose_pretrain, name):
    cfg = compose_pretrain(f"trainer={name}")
    check_trainer(cfg.trainer)  # the config alone: passes on any machine
    assert world_size(cfg.trainer) >= 1
    if RUNS_HERE.get(name):
        check_environment(cfg.trainer)
        kwargs = trainer_kwargs(cfg.trainer)
        assert isinstance(kwargs["plugins"], list) and kwargs["precision"] != "auto"


def test_strategy_nodes_are_built(compose_pretrain):
    from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy

    from clozelab.model.encoder import TransformerLayer

    fsdp = compose_pretrain("trainer=fsdp").trainer
    assert fsdp.strategy._target_.endswith("FSDPStrategy") and fsdp.precision == "bf16-mixed"
    built = trainer_kwargs(fsdp)["strategy"]
    assert isinstance(built, FSDPStrategy)
    assert TransformerLayer in built.kwargs["auto_wrap_policy"]._module_classes
    deepspeed = compose_pretrain("trainer=deepspeed").trainer
    assert deepspeed.strategy.stage == 2
    if DEEPSPEED:
        assert isinstance(trainer_kwargs(deepspeed)["strategy"], DeepSpeedStrategy)


def test_multinode_preset_uses_slurm_without_lightning_requeue(compose_pretrain, monkeypatch):
    from lightning_fabric.plugins.environments import SLURMEnvironment

    cfg = compose_pretrain("trainer=multinode", "trainer.num_nodes=4", "trainer.devices=8")
    assert world_size(cfg.trainer) == 32 and cfg.trainer.strategy == "ddp"
    (plugin,) = trainer_kwargs(cfg.trainer)["plugins"]
    assert isinstance(plugin, SLURMEnvironment) and plugin.auto_requeue is False
    for name in ("SLURM_NTASKS", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    cpu_nodes = compose_pretrain(
        "trainer=multinode", "trainer.accelerator=cpu", "trainer.devices=1"
    )
    with pytest.raises(ClozelabError, match=r"trainer.num_nodes=2.*hydra/launcher=slurm"):
        check_environment(cpu_nodes.trainer)
    one_node = compose_pretrain("trainer=multinode", "trainer.accelerator=cpu",
                                "trainer.devices=1", "trainer.num_nodes=1")  # fmt: skip
    with pytest.raises(ClozelabError, match=r"SLURMEnvironment.*trainer.plugins=\[\]"):
        check_environment(one_node.trainer)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    check_environment(cpu_nodes.trainer)  # started by srun: fine


@pytest.mark.skipif(CUDA, reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("name", ["gpu", "fsdp"])
def test_gpu_presets_without_cuda_name_the_cpu_preset(compose_pretrain, name):
    cfg = compose_pretrain(f"trainer={name}")
    with pytest.raises(ClozelabError, match=r"no CUDA GPU.*trainer=cpu"):
        check_environment(cfg.trainer)


@pytest.mark.skipif(DEEPSPEED, reason="checks the error when deepspeed is missing")
def test_deepspeed_without_the_package_names_the_install(compose_pretrain):
    cfg = compose_pretrain("trainer=deepspeed")
    check_trainer(cfg.trainer)
    for step in (check_environment, trainer_kwargs):
        with pytest.raises(ClozelabError, match=r"deepspeed.*pip install deepspeed"):
            step(cfg.trainer)


@pytest.mark.skipif(XLA, reason="checks the error when torch_xla is missing")
def test_tpu_without_torch_xla_is_a_clear_error(compose_pretrain):
    cfg = compose_pretrain("trainer=tpu")
    check_trainer(cfg.trainer)
    with pytest.raises(ClozelabError, match=r"torch_xla.*pip install 'torch_xla\[tpu\]'"):
        check_environment(cfg.trainer)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_preset_trains_a_step(compose_pretrain):
    from clozelab.pretrain import pretrain

    metrics = pretrain(compose_pretrain("trainer=gpu", "trainer.max_steps=2"))
    assert metrics["status"] == "completed" and metrics["steps"] == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.precision=fp8"], r"trainer.precision='fp8': unknown precision"),
        (["trainer.strategy=ddpp"], r"trainer.strategy='ddpp': unknown strategy"),
        (["trainer.devices=0"], r"trainer.devices=0: not a device count"),
        (["trainer.num_nodes=0"], r"trainer.num_nodes=0: must be an integer >= 1"),
        (["trainer.precision=16-mixed"], r"fp16 autocast does not run on CPU"),
        (["trainer=tpu", "trainer.precision=bf16-mixed"], r"XLA does not run this precision"),
        (["trainer=tpu", "trainer.strategy=ddp"], r"TPUs train with the XLA strategy"),
        (["trainer=fsdp", "trainer.accelerator=cpu"], r"fsdp shards across GPUs.*trainer=ddp"),
        (["trainer=deepspeed", "trainer.strategy.stage=4"], r"stage=4: DeepSpeed ZeRO has"),
    ],
)
def test_bad_trainer_settings_are_refused(compose_pretrain, overrides, message):
    cfg = compose_pretrain(*overrides)
    with pytest.raises(ClozelabError, match=message):
        check_trainer(cfg.trainer)


@pytest.mark.skipif(CUDA, reason="counts GPUs on a machine without CUDA")
def test_more_gpus_than_visible_and_cpu_oversubscription(compose_pretrain, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    cfg = compose_pretrain("trainer=gpu", "trainer.devices=4")
    with pytest.raises(ClozelabError, match=r"trainer.devices=4: this machine has 2 CUDA GPU"):
        check_environment(cfg.trainer)
    monkeypatch.undo()
    many = compose_pretrain("trainer=ddp", "trainer.devices=512")
    with pytest.warns(UserWarning, match="CPU processes on"):
        check_environment(many.trainer)


def test_bf16_on_a_cpu_without_native_bf16_warns(compose_pretrain, monkeypatch):
    cfg = compose_pretrain("trainer.precision=bf16-mixed")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.warns(UserWarning, match="without native bf16"):
        check_environment(cfg.trainer)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_environment(cfg.trainer)


def test_precision_auto_follows_the_device(compose_pretrain, monkeypatch):
    cfg = compose_pretrain("trainer=ddp")
    assert cfg.trainer.precision == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainer_kwargs(cfg.trainer)["precision"] == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert trainer_kwargs(cfg.trainer)["precision"] == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert trainer_kwargs(cfg.trainer)["precision"] == "16-mixed"


def test_a_local_sweep_cannot_start_ddp_processes(compose_pretrain, monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    for name in ("SLURM_NTASKS", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    cfg = compose_pretrain("trainer=ddp", "trainer.devices=2")

    class Multirun:
        mode = RunMode.MULTIRUN

    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: Multirun))
    with pytest.raises(ClozelabError, match=r"local sweep.*trainer.devices=1"):
        check_environment(cfg.trainer)
    monkeypatch.setenv("SLURM_NTASKS", "2")  # each job's ranks started by SLURM: fine
    check_environment(cfg.trainer)


# --------------------------------------------------------------------------- data sharding


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rank_batches_together_are_the_one_process_global_batch(world):
    n, batch, seed, epoch = 103, 4, 9, 2
    single = list(EpochSampler(n, seed, epoch))  # one process, batch size batch * world
    ranks = [list(EpochSampler(n, seed, epoch, rank=r, world_size=world)) for r in range(world)]
    steps = n // (batch * world)
    assert all(len(r) // batch == steps for r in ranks)
    for k in range(steps):
        together = [i for r in ranks for i in r[k * batch : (k + 1) * batch]]
        assert len(set(together)) == batch * world
        assert sorted(together) == sorted(single[k * batch * world : (k + 1) * batch * world])
    assert list(EpochSampler(n, seed, epoch + 1, rank=0, world_size=world)) != ranks[0]


def _loader(world, rank, batch, done=0):
    sampler = EpochSampler(48, 5, 0, rank=rank, world_size=world)
    loader = ResumableDataLoader(list(range(48)), batch_size=batch, sampler=sampler,
                                 drop_last=True)  # fmt: skip
    loader.epoch, loader.position = 0, lambda: done
    return loader


def test_resume_with_another_world_size_and_the_same_global_batch():
    """2 ranks x 4 stopped after 2 steps resume as 4 ranks x 2 (and as 1 x 8) on exactly the
    global batches the uninterrupted run would have trained on."""
    state = _loader(2, 0, 4, done=2).state_dict()
    assert state["world_size"] == 2
    single = [b.tolist() for b in _loader(1, 0, 8)]
    for world, batch in ((4, 2), (1, 8), (2, 4)):
        loaders = [_loader(world, r, batch) for r in range(world)]
        for loader in loaders:
            loader.load_state_dict(state)
        steps = list(zip(*([b.tolist() for b in loader] for loader in loaders)))
        together = [sorted(i for rank in step for i in rank) for step in steps]
        assert together == [sorted(b) for b in single[2:]]
    with pytest.raises(ClozelabError, match=r"data.batch_size=4 on 4 ranks.*= 8"):
        _loader(4, 0, 4).load_state_dict(state)


# --------------------------------------------------------------------------- global token mean


def test_global_mean_is_the_mean_over_all_ranks_targets():
    """Simulated ranks: the mean of their global_mean values is sum / total count (what DDP's
    gradient average then sees), whereas the mean of per-rank means is not."""
    sums, counts = [torch.tensor(2.0), torch.tensor(30.0)], [2, 10]
    totals = torch.tensor(12.0, dtype=torch.float64)
    values = []
    for s, n in zip(sums, counts):
        with data_parallel(2, lambda t: totals.clone()):
            values.append(global_mean(s / n, n))
    assert torch.allclose(sum(values) / 2, torch.tensor(32.0 / 12))
    naive = sum(s / n for s, n in zip(sums, counts)) / 2  # (1 + 3) / 2
    assert float(naive) == pytest.approx(2.0) and float(naive) != pytest.approx(32.0 / 12)
    # SpanBERT's n + 1: sum over ranks / (total + 1)
    with data_parallel(2, lambda t: totals.clone()):
        shifted = [global_mean(s / (n + 1), n, offset=1) for s, n in zip(sums, counts)]
    assert torch.allclose(sum(shifted) / 2, torch.tensor(32.0 / 13))
    # no targets anywhere: 0, no division by zero
    with data_parallel(2, lambda t: torch.zeros((), dtype=torch.float64)):
        assert float(global_mean(torch.tensor(0.0), 0)) == 0.0


def test_global_mean_is_a_no_op_on_one_process():
    loss = torch.tensor(1.2345678, requires_grad=True)
    assert global_mean(loss, 7) is loss
    with data_parallel(1, lambda t: pytest.fail("no reduction on one rank")):
        assert global_mean(loss, 7) is loss


# --------------------------------------------------------------------------- DDP launch


def test_ddp_child_processes_re_run_the_clozelab_command(monkeypatch):
    """Lightning starts ranks 1..n-1 by re-running sys.argv: the console script points it at
    rank_entry.py (command in CLOZELAB_COMMAND), ``python -m clozelab`` keeps the command."""
    import os
    import sys
    from pathlib import Path

    import __main__
    from clozelab.cli import point_rank_launcher

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.delenv("CLOZELAB_COMMAND", raising=False)
    monkeypatch.setattr(__main__, "__spec__", None, raising=False)
    point_rank_launcher("pretrain", ["model=tiny", "trainer=ddp"])
    assert Path(sys.argv[0]).name == "rank_entry.py" and Path(sys.argv[0]).is_file()
    assert sys.argv[1:] == ["model=tiny", "trainer=ddp"]
    assert os.environ["CLOZELAB_COMMAND"] == "pretrain"
    monkeypatch.setattr(__main__, "__spec__", importlib.util.find_spec("clozelab.__main__"))
    point_rank_launcher("pretrain", ["model=tiny"])
    assert sys.argv[1:] == ["pretrain", "model=tiny"]
