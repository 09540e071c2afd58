"""Faults and bad input: NaN losses, full disks, foreign checkpoints, broken corpora and caches,
failing trackers; and determinism across data-loader worker counts."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import TINY, write_text_corpus

from clozelab.cli import main
from clozelab.core.batch import Batch
from clozelab.core.errors import ClozelabError
from clozelab.pretrain import pretrain
from clozelab.training.checkpoint import (
    check_compatible,
    remove_stale_temporaries,
    write_bytes_atomic,
)
from clozelab.training.module import NonFiniteLossError, PretrainModule

QUICK = ["initial_validation=false", "eval.suite=null"]
TIMING = ("wall_time_s", "launch_wall_time_s", "tokens_per_s", "train/tokens_per_s", "cache_reused")


def _run_dir(cfg) -> Path:
    return Path(cfg.paths.output_dir)


def _cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", *args])
    return exc.value.code, capsys.readouterr().err


def _cli_args(corpus, run_dir, cache_dir, *extra) -> list[str]:
    return [
        *TINY,
        f"data.corpus={corpus}",
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={cache_dir}",
        *QUICK,
        *extra,
    ]


# ----------------------------------------------------------------------------- determinism
def test_same_metrics_with_zero_or_two_workers(compose_pretrain, tmp_path):
    zero = pretrain(compose_pretrain(*QUICK, "data.num_workers=0"))
    two = pretrain(
        compose_pretrain(*QUICK, "data.num_workers=2", f"paths.output_dir={tmp_path / 'two'}")
    )
    assert zero["status"] == two["status"] == "completed"
    assert {k: v for k, v in zero.items() if k not in TIMING} == {
        k: v for k, v in two.items() if k not in TIMING
    }


# ----------------------------------------------------------------------------- NaN / Inf
def test_nan_loss_stops_with_step_and_objective_and_keeps_the_checkpoint(
    compose_pretrain, monkeypatch
):
    from clozelab.objectives.mlm import MLM

    original, calls = MLM.forward, {"train": 0}

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            calls["train"] += 1
            if calls["train"] == 5:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MLM, "forward", forward)
    cfg = compose_pretrain(*QUICK)
    with pytest.raises(NonFiniteLossError) as exc:
        pretrain(cfg)
    message = str(exc.value)
    assert "at training step 5" in message and "objective.mlm" in message and "Fix:" in message
    metrics = json.loads((_run_dir(cfg) / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "objective.mlm" in metrics["error"]
    last = torch.load(_run_dir(cfg) / "checkpoints" / "last.ckpt", map_location="cpu")
    assert last["global_step"] == 3  # the last good checkpoint, untouched by the failure
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_batch_without_predicted_positions_gives_zero_loss(compose_pretrain, cache_dir):
    from clozelab.core.config import build
    from clozelab.data.preprocess import prepare
    from clozelab.training.components import build_components

    cfg = compose_pretrain("objective=[mlm]")
    prepared = prepare(cfg.data, cfg.tokenizer, cache_dir)
    embedding, encoder, objectives, _ = build_components(cfg, prepared.tokenizer)
    module = PretrainModule(embedding, encoder, objectives, optimizer=build(cfg.optim, "optim"))
    ids = torch.randint(5, prepared.tokenizer.vocab_size, (2, 16))
    batch = Batch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        token_type_ids=torch.zeros_like(ids),
        mlm_labels=torch.full_like(ids, -100),
    )
    loss, _, _ = module(batch)
    assert torch.isfinite(loss) and float(loss) == 0.0
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in module.parameters())


# ----------------------------------------------------------------------------- disk full
def test_write_failure_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    write_bytes_atomic({"step": 1}, target)
    before = target.read_bytes()

    def full(obj, handle, *args, **kwargs):
        handle.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("clozelab.training.checkpoint.torch.save", full)
    with pytest.raises(ClozelabError, match="disk is full.*previous last.ckpt is intact"):
        write_bytes_atomic({"step": 2}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    (tmp_path / ".tmp-last.ckpt.abc").write_bytes(b"torn")
    assert remove_stale_temporaries(tmp_path) == 1


def test_disk_full_during_a_run_exits_with_a_clear_message(
    capsys, monkeypatch, tmp_path, text_corpus, cache_dir
):
    import clozelab.training.checkpoint as checkpoint

    original, calls = checkpoint.torch.save, {"n": 0}

    def save(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # step-6.ckpt: after step-3.ckpt and last.ckpt (3) were written
            handle.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    run_dir = tmp_path / "run"
    code, err = _cli(capsys, *_cli_args(text_corpus, run_dir, cache_dir))
    assert code == 2
    assert "could not be written (the disk is full" in err and "Fix: free space" in err
    monkeypatch.setattr(checkpoint.torch, "save", original)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    assert last["global_step"] == 3
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"


# ----------------------------------------------------------------------------- foreign checkpoints
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, text_corpus, cache_dir):
    """A short finished run whose directory the tests below re-launch with other settings."""
    from hydra import compose, initialize_config_dir

    from clozelab.core.config import conf_dir, register_overlays

    register_overlays()
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    overrides = [
        *TINY,
        f"data.corpus={text_corpus}",
        f"paths.output_dir={run_dir}",
        f"paths.cache_dir={cache_dir}",
        *QUICK,
        "trainer.max_steps=3",
    ]
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        pretrain(compose("pretrain", overrides=overrides))
    # as if interrupted after its last checkpoint: a re-launch resumes (a completed run with
    # another config is refused before its checkpoint is looked at: test_rundir.py)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "status": "interrupted"}))
    return run_dir


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """What the run wrote (Hydra's own launch record in .hydra/ is rewritten by every launch)."""
    files = [
        *(run_dir / "checkpoints").iterdir(),
        *(run_dir / "tokenizer").iterdir(),
        run_dir / "config.yaml",
        run_dir / "metrics.json",
    ]
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in files}


def _relaunch(capsys, run_dir, text_corpus, cache_dir, *extra) -> str:
    args = [
        *TINY,
        f"data.corpus={text_corpus}",
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={cache_dir}",
        *QUICK,
        "trainer.max_steps=6",
        *extra,
    ]
    before = _snapshot(run_dir)
    code, err = _cli(capsys, *args)
    assert code == 2, err
    assert _snapshot(run_dir) == before, "a refused resume must not touch the run directory"
    return err


def test_checkpoint_of_another_architecture_is_refused(
    capsys, finished_run, text_corpus, cache_dir
):
    err = _relaunch(capsys, finished_run, text_corpus, cache_dir, "model.intermediate_size=48")
    assert "cannot resume from it" in err and "different layer sizes" in err
    assert "hydra.run.dir" in err
    err = _relaunch(capsys, finished_run, text_corpus, cache_dir, "model.num_layers=3")
    assert "different architecture" in err and "encoder" in err


def test_checkpoint_of_another_vocabulary_is_refused(
    capsys, tmp_path, finished_run, text_corpus, cache_dir
):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    path = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    key = next(k for k in ckpt["state_dict"] if k.endswith("word_embeddings.weight"))
    ckpt["state_dict"][key] = torch.cat([ckpt["state_dict"][key], ckpt["state_dict"][key][:3]])
    torch.save(ckpt, path)
    err = _relaunch(capsys, run_dir, text_corpus, cache_dir)
    assert "a different vocabulary" in err and "word_embeddings" in err


def test_tokenizer_that_differs_from_the_checkpoints_is_refused(
    capsys, tmp_path, finished_run, text_corpus, cache_dir
):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    vocab = run_dir / "tokenizer" / "vocab.txt"
    lines = vocab.read_text("utf-8").splitlines(keepends=True)
    lines[-1], lines[-2] = lines[-2], lines[-1]  # same size, two tokens swapped
    vocab.write_text("".join(lines), "utf-8")
    err = _relaunch(capsys, run_dir, text_corpus, cache_dir)
    assert "tokenizer: the vocabulary of this config differs" in err


def test_unreadable_checkpoint_is_named(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ClozelabError, match="last.ckpt: unreadable"):
        check_compatible(path, torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------- corpora and caches
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file or directory"),
        (b"", "the file is empty"),
        (bytes(range(256)) * 20, "not a text file"),
    ],
    ids=["missing", "empty", "binary"],
)
def test_bad_corpus_files_are_refused(capsys, tmp_path, cache_dir, content, message):
    corpus = tmp_path / "corpus.txt"
    if content is not None:
        corpus.write_bytes(content)
    code, err = _cli(capsys, *_cli_args(corpus, tmp_path / "run", cache_dir))
    assert code == 2 and message in err and str(corpus) in err and "Fix:" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_non_utf8_lines_are_skipped_and_counted(tmp_path, cache_dir):
    corpus = write_text_corpus(tmp_path / "corpus.txt")
    lines = corpus.read_bytes().split(b"\n")
    lines[4:4] = [b"caf\xe9 au lait \xff\xfe broken", b"\x80\x81 more"]
    corpus.write_bytes(b"\n".join(lines))
    run_dir = tmp_path / "run"
    main(["pretrain", *_cli_args(corpus, run_dir, cache_dir, "trainer.max_steps=1")])
    log_text = (run_dir / "pretrain.log").read_text()  # Hydra's log of the run
    assert "skipped 2 line(s) that are not valid UTF-8 (first at line 5)" in log_text
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_or_truncated_cache_shard_is_rebuilt(compose_pretrain, tmp_path, damage, caplog):
    cache = tmp_path / "cache"
    first = pretrain(compose_pretrain(*QUICK, "trainer.max_steps=1", f"paths.cache_dir={cache}"))
    assert first["cache_reused"] is False
    tokens = sorted(cache.rglob("train/shard-*/tokens.bin"))[0]
    data = bytearray(tokens.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    tokens.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = pretrain(
            compose_pretrain(
                *QUICK,
                "trainer.max_steps=1",
                f"paths.cache_dir={cache}",
                f"paths.output_dir={tmp_path / 'again'}",
            )
        )
    assert any(
        "unusable" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records
    )
    assert again["cache_reused"] is False and again["status"] == "completed"
    assert again["train/loss"] == first["train/loss"]  # rebuilt to the same data


# ----------------------------------------------------------------------------- trackers
def test_wandb_raising_mid_run_does_not_stop_training(compose_pretrain, monkeypatch, caplog):
    from pytorch_lightning.loggers import WandbLogger

    original, calls = WandbLogger.log_metrics, {"n": 0}

    def log_metrics(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConnectionError("wandb: network is gone")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(WandbLogger, "log_metrics", log_metrics)
    cfg = compose_pretrain(*QUICK, "logger=wandb")
    with caplog.at_level(logging.WARNING):
        metrics = pretrain(cfg)
    assert metrics["status"] == "completed" and metrics["steps"] == 6
    assert calls["n"] == 3, "the failed tracker is not called again"
    assert any(
        "switched off" in r.getMessage() and "network is gone" in r.getMessage()
        for r in caplog.records
    )
    rows = (_run_dir(cfg) / "csv" / "metrics.csv").read_text().splitlines()
    assert sum(1 for row in rows[1:] if row.split(",")[0] != "") >= 6  # CSV goes on


def test_failed_run_is_marked_in_the_tracker():
    from clozelab.training.tracking import mark_run

    class Run:
        def __init__(self):
            self.summary, self.exit_code = {}, None

        def finish(self, exit_code=0):
            self.exit_code = exit_code

    class WandbLogger:  # what mark_run needs of Lightning's WandbLogger
        def __init__(self):
            self._experiment = self.experiment = Run()

    logger = WandbLogger()
    mark_run([logger], "failed", "train/loss=nan at training step 5")
    assert logger.experiment.summary["status"] == "failed"
    assert logger.experiment.exit_code == 1
