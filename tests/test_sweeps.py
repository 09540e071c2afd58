"""Sweeps: every sweep file and grid point composes; tiny sweeps run through joblib and submitit
(local); axes are overridden on the command line; a crashed job is isolated and marked failed; a
re-launched sweep skips finished jobs and resumes the others; Optuna gets a float; SLURM jobs
get one task per device and are requeued on SIGUSR1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY, compose_config
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from clozelab.cli import main
from clozelab.core.claim import check_relaunch, claim, config_hash
from clozelab.core.config import overlay_names, resource_dir
from clozelab.core.errors import ClozelabError
from clozelab.training.sweep import job_return
from clozelab.training.validate import validate_pretrain

REPORT_FILES = ("config.yaml", ".hydra/overrides.yaml", "metrics.json", "csv/metrics.csv")


def _grid(params: dict) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of ``hydra.sweeper.params`` (cartesian product)."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    jobs = [[]]
    for override in parsed:
        key = override.get_key_element()
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [
            override.get_value_element_as_str()]  # fmt: skip
        jobs = [[*job, f"{key}={value}"] for job in jobs for value in values]
    return jobs


def _args(corpus, cache_dir, sweep_dir, *extra):
    return ["pretrain", *TINY, f"data.corpus={corpus}", f"paths.cache_dir={cache_dir}",
            f"hydra.sweep.dir={sweep_dir}", *extra]  # fmt: skip


def _metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


SWEEPS = overlay_names("sweep")
GRID_SWEEPS = [name for name in SWEEPS if name != "optuna_lr"]


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_file_opens_with_question_paper_command_and_records_its_baseline(name):
    head = (resource_dir("sweeps") / f"{name}.yaml").read_text().splitlines()
    assert head[0] == "# @package _global_"
    assert head[1].startswith("# Question: ")
    assert any(line.startswith(("# Paper", "# Method")) for line in head[:8])
    assert any(line.startswith(f"# Command: clozelab pretrain sweep={name}") for line in head)
    cfg = compose_config(f"sweep={name}", hydra=True)
    meta, params = cfg.sweep_meta, dict(cfg.hydra.sweeper.params)
    assert meta.name == name == cfg.logger.wandb.group
    if meta.get("objective"):  # Optuna: a search space and the metric each job returns
        assert "optuna" in cfg.hydra.sweeper._target_ and "optim.lr" in params
        return
    assert "seed" in params and len(_grid({"seed": params["seed"]})) >= 3
    if meta.baseline is not None:  # the paired tests' reference: one value of each axis
        axes = {key: {job[0].split("=", 1)[1] for job in _grid({key: value})}
                for key, value in params.items()}  # fmt: skip
        for key, value in meta.baseline.items():
            assert str(value) in axes[key], (key, value)


@pytest.mark.parametrize("name", GRID_SWEEPS)
def test_every_grid_point_is_a_valid_compute_matched_config(name):
    """Each job of each grid composes and passes the compose-time checks (an impossible
    combination such as SBO without spans would fail here), with the sweep's token budget."""
    composed = compose_config(f"sweep={name}", hydra=True)
    params = dict(composed.hydra.sweeper.params)
    # A GPU sweep (masking_rate_gpu) is checked on the CPU preset where no CUDA device is seen.
    cpu = (
        []
        if torch.cuda.is_available() or composed.trainer.accelerator != "gpu"
        else ["trainer=cpu"]
    )
    budgets = set()
    for job in _grid(params):
        cfg = compose_config(f"sweep={name}", *job, *cpu)
        validate_pretrain(cfg)
        budgets.add((cfg.trainer.max_tokens, cfg.trainer.max_steps, cfg.model.hidden_size))
    assert len(budgets) == 1  # every setting gets the same budget and model


def test_grid_settings_are_what_their_names_say():
    settings = compose_config("sweep=nsp_ablation", hydra=True).hydra.sweeper.params.setting
    nsp = {
        job[0]: compose_config("sweep=nsp_ablation", *job) for job in _grid({"setting": settings})
    }
    table = {k.split("=")[1]: (c.data.instances, sorted(c.objective)) for k, c in nsp.items()}
    assert table == {
        "segment_pair_nsp": ("segment_pair", ["mlm", "nsp"]),
        "sentence_pair_nsp": ("sentence_pair", ["mlm", "nsp"]),
        "full_sentences": ("full_sentences", ["mlm"]),
        "doc_sentences": ("doc_sentences", ["mlm"]),
        "sentence_order_sop": ("sentence_order", ["mlm", "sop"]),
    }
    sbo = compose_config("sweep=objectives", "setting=span_sbo", "experiment=bert")
    assert sbo.corruption._target_.endswith("SpanMasking")
    assert sorted(sbo.objective) == ["mlm", "sbo"]
    only = compose_config("sweep=masking_rate", "experiment=roberta", "setting=ops_mask_only")
    assert (only.corruption.mask_prob, only.corruption.random_prob) == (1.0, 0.0)
    assert only.data.instances == "full_sentences"  # the recipe under the sweep stays


def test_axis_override_runs_through_joblib(tmp_path, text_corpus, cache_dir):
    """`sweep=masking_rate corruption.rate=0.15,0.4` runs those two rates only (x the given
    setting and seed), in parallel through joblib; each job dir has what a report reads."""
    sweep = tmp_path / "sweep"
    main(_args(text_corpus, cache_dir, sweep, "sweep=masking_rate", "corruption.rate=0.15,0.4",
               "setting=ops_mask_only", "seed=1", "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=2"))  # fmt: skip
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job, rate in zip(jobs, (0.15, 0.4)):
        job_dir = sweep / job
        assert all((job_dir / name).is_file() for name in REPORT_FILES)
        overrides = yaml.safe_load((job_dir / ".hydra/overrides.yaml").read_text())
        assert f"corruption.rate={rate}" in overrides and "setting=ops_mask_only" in overrides
        config = OmegaConf.load(job_dir / "config.yaml")
        assert config.corruption.rate == rate and config.corruption.mask_prob == 1.0
        assert dict(config.sweep_meta.baseline) == {"corruption.rate": 0.15,
                                                    "setting": "ops_80_10_10"}  # fmt: skip
        metrics = _metrics(job_dir)
        assert metrics["status"] == "completed" and metrics["steps"] == 6
        protocol = metrics["protocol"]
        assert protocol["budget"] == "tokens+steps" and protocol["max_tokens"] == 300_000
        assert protocol["model"]["name"] == "tiny" and protocol["sweep"] == "masking_rate"
        assert protocol["choices"]["setting"] == "ops_mask_only" and protocol["seed"] == 1


def test_tiny_sweep_runs_through_submitit_local(tmp_path, text_corpus, cache_dir):
    sweep = tmp_path / "sweep"
    main(_args(text_corpus, cache_dir, sweep, "sweep=seeds", "seed=1,2",
               "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"))  # fmt: skip
    for job in ("0", "1"):
        assert all((sweep / job / name).is_file() for name in REPORT_FILES)
        assert _metrics(sweep / job)["status"] == "completed"
    assert list((sweep / ".submitit").iterdir())  # submitit's job folders and logs


def test_crashed_job_is_isolated_and_a_relaunch_skips_finished_jobs(
    tmp_path, text_corpus, cache_dir, monkeypatch, capsys
):
    """Job 1 crashes at step 4 with a plain RuntimeError (after its step-3 checkpoint); job 0
    completes. Re-launched, job 0 is skipped (not re-trained) and job 1 resumes from step 3."""
    import clozelab.pretrain
    import clozelab.training.module

    sweep = tmp_path / "sweep"
    args = _args(text_corpus, cache_dir, sweep, "sweep=seeds", "seed=1,2")
    current = {}
    validate, step = (
        clozelab.pretrain.validate_pretrain,
        clozelab.training.module.PretrainModule.training_step,
    )

    def remember_seed(cfg):
        current["seed"] = cfg.seed
        return validate(cfg)

    def crashing_step(self, batch, batch_idx):
        if current["seed"] == 2 and self.trainer.global_step == 4:
            raise RuntimeError("injected crash")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(clozelab.pretrain, "validate_pretrain", remember_seed)
    monkeypatch.setattr(clozelab.training.module.PretrainModule, "training_step", crashing_step)
    main(args)
    done, crashed = _metrics(sweep / "0"), _metrics(sweep / "1")
    assert done["status"] == "completed" and done["steps"] == 6
    assert crashed["status"] == "failed" and "injected crash" in crashed["error"]
    assert crashed["protocol"]["seed"] == 2
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()

    monkeypatch.undo()
    finished_at = (sweep / "0" / "metrics.json").stat().st_mtime_ns
    main(args)
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == finished_at  # not re-trained
    assert "already completed with this config" in capsys.readouterr().err
    resumed = _metrics(sweep / "1")
    assert resumed["status"] == "completed" and resumed["steps"] == 6
    assert "Resuming from" in (sweep / "1" / "pretrain.log").read_text()
    assert json.loads((sweep / "1" / "job.json").read_text())["launches"] == 2


def test_a_job_dir_of_another_config_is_refused(tmp_path):
    cfg = OmegaConf.create({"seed": 1, "paths": {"output_dir": str(tmp_path)}})
    claim(tmp_path, config_hash(cfg), ["seed=1"])
    other = OmegaConf.create({"seed": 2, "paths": {"output_dir": "/elsewhere"}})
    moved = OmegaConf.create({"seed": 1, "paths": {"output_dir": "/elsewhere"}})
    assert config_hash(moved) == config_hash(cfg)  # where the job lives is not part of it
    assert check_relaunch(tmp_path, config_hash(moved), ["seed=1"], "hydra.sweep.dir", True) is None
    with pytest.raises(ClozelabError, match="holds a run of another config.*seed=1 there, 2 now"):
        check_relaunch(tmp_path, config_hash(other), ["seed=2"], "hydra.sweep.dir", True)
    # a single run may resume an unfinished run of a compatible config, not a completed one
    assert check_relaunch(tmp_path, config_hash(other), ["seed=2"], "hydra.run.dir", False) is None
    (tmp_path / "metrics.json").write_text('{"status": "completed"}')
    with pytest.raises(ClozelabError, match="holds a completed run of another config"):
        check_relaunch(tmp_path, config_hash(other), ["seed=2"], "hydra.run.dir", False)


def test_job_return_gives_optuna_the_named_metric():
    cfg = OmegaConf.create({"sweep_meta": {"objective": "val/mlm_loss"}})
    assert job_return({"val/mlm_loss": 3, "steps": 6}, cfg) == 3.0
    assert job_return({"steps": 6}, cfg) is None  # a trial Optuna records as failed
    metrics = {"val/mlm_loss": 3.0}
    assert job_return(metrics, OmegaConf.create({})) is metrics


def test_optuna_sweep_searches_and_gets_floats(tmp_path, text_corpus, cache_dir):
    sweep = tmp_path / "sweep"
    main(_args(text_corpus, cache_dir, sweep, "sweep=optuna_lr", "hydra.sweeper.n_trials=2"))
    losses = {job: _metrics(sweep / job)["val/mlm_loss"] for job in ("0", "1")}
    lrs = {OmegaConf.load(sweep / job / "config.yaml").optim.lr for job in losses}
    assert len(lrs) == 2 and all(1e-4 <= lr <= 3e-3 for lr in lrs)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(losses.values()))


def test_slurm_launcher_gives_one_task_per_device_and_requeues_on_usr1(tmp_path, monkeypatch):
    """The sbatch script submitit writes for hydra/launcher=slurm, with the parameters mapped as
    the Hydra launcher maps them (a stand-in ``srun`` on PATH: no SLURM needed)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    (tmp_path / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_config("hydra/launcher=slurm", "trainer.devices=4", f"hydra.sweep.dir={tmp_path}",
                   hydra=True)  # fmt: skip
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_").endswith("SlurmLauncher")
    folder, timeouts = params.pop("submitit_folder"), params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(folder, cluster="slurm", slurm_max_num_timeout=timeouts)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    assert "#SBATCH --ntasks-per-node=4" in script and "#SBATCH --nodes=1" in script
    assert "#SBATCH --signal=USR1@120" in script  # the run checkpoints on USR1 ...
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR1" in script  # ... then submitit requeues it
    assert executor._executor.max_num_timeout == 3


def test_stop_signal_is_handed_on_to_the_handler_installed_before(monkeypatch):
    """After writing its checkpoint the run passes SIGUSR1 to submitit's handler (requeue)."""
    from clozelab.training.callbacks import CheckpointOnSignal

    received = []
    monkeypatch.setattr(signal, "getsignal", lambda signum: lambda s, f: received.append(s))
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)
    stopper = CheckpointOnSignal("last.ckpt")
    stopper.on_train_start(trainer=None, pl_module=None)
    stopper.signum = signal.SIGUSR1
    stopper.hand_on()
    assert received == [signal.SIGUSR1]


def _job_process(sweep: Path) -> int | None:
    """pid of the submitit task running a job of ``sweep`` (its command line names the folder)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "submitit.core._submit" in cmdline and str(sweep) in cmdline:
            return int(proc.name)
    return None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_preempted_submitit_job_is_requeued_and_resumes(tmp_path, text_corpus, cache_dir):
    """SIGUSR1 mid-training: the run writes last.ckpt, submitit requeues the job (locally: a
    restart), and the new process resumes from the checkpoint and completes."""
    sweep = tmp_path / "sweep"
    args = _args(text_corpus, cache_dir, sweep, "sweep=seeds", "seed=1", "trainer.max_steps=400",
                 "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20")  # fmt: skip
    env = dict(os.environ, SUBMITIT_PREEMPT_SIGNAL="USR1", CLOZELAB_CACHE_DIR=str(cache_dir))
    proc = subprocess.Popen([sys.executable, "-m", "clozelab", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    pid = _job_process(sweep)
    assert pid is not None, proc.stdout.read() if proc.poll() is not None else "no job process"
    os.kill(pid, signal.SIGUSR1)
    out, _ = proc.communicate(timeout=540)
    assert proc.returncode == 0, out[-3000:]
    metrics = _metrics(sweep / "0")
    assert metrics["status"] == "completed" and metrics["steps"] == 400
    log = (sweep / "0" / "pretrain.log").read_text()
    assert "Received SIGUSR1" in log and "Resuming from" in log


def _start_methods():
    import multiprocessing

    from clozelab.data.datamodule import worker_context

    context = worker_context(2)
    return multiprocessing.get_start_method(allow_none=True), context and context.get_start_method()


def test_loader_workers_start_inside_a_joblib_job():
    """joblib's loky workers install the "loky" start method, which cannot start torch's
    DataLoader workers (data.num_workers > 0 in a hydra/launcher=joblib sweep): the loaders then
    fork on Linux; outside such a pool they keep the platform's own method."""
    import sys

    from joblib import Parallel, delayed

    from clozelab.data.datamodule import worker_context

    inside = Parallel(n_jobs=2, backend="loky")(delayed(_start_methods)() for _ in range(2))
    expected = "fork" if sys.platform.startswith("linux") else "spawn"
    assert inside == [("loky", expected)] * 2
    assert worker_context(0) is None


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}  # fmt: skip


def test_a_changed_grid_leaves_the_refused_job_dir_byte_for_byte(
    tmp_path, text_corpus, cache_dir, capsys
):
    """Job 0 ran corruption.rate=0.15; the sweep re-launched with rate 0.3 is refused there, and
    the report still files the job under 0.15 (from the record the job itself wrote)."""
    from clozelab.report.jobs import read_job

    sweep = tmp_path / "sweep"
    main(_args(text_corpus, cache_dir, sweep, "sweep=seeds", "seed=1", "corruption.rate=0.15"))
    job = sweep / "0"
    assert _metrics(job)["status"] == "completed"
    before = _files(job)
    capsys.readouterr()
    main(_args(text_corpus, cache_dir, sweep, "sweep=seeds", "seed=1", "corruption.rate=0.3"))
    err = capsys.readouterr().err
    assert "job 0 refused" in err and "corruption.rate=0.15 there, 0.3 now" in err and "Fix:" in err
    assert _files(job) == before  # .hydra/ included
    read = read_job(job, sweep, 0)
    assert read.overrides["corruption.rate"] == "0.15" and read.status == "completed"
