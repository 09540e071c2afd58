"""The CLI end to end on a tiny model, and every bad input of the foundation issue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY

from clozelab.cli import main


def _tiny(corpus, run_dir, cache_dir, *extra):
    return [*TINY, f"data.corpus={corpus}", f"hydra.run.dir={run_dir}",
            f"paths.cache_dir={cache_dir}", *extra]  # fmt: skip


def test_cli_pretrain_end_to_end_from_another_directory(tmp_path, text_corpus, cache_dir):
    run_dir = tmp_path / "run"
    env = dict(os.environ, CLOZELAB_CACHE_DIR=str(cache_dir))
    args = _tiny(text_corpus, run_dir, cache_dir, "experiment=bert")
    proc = subprocess.run(
        [sys.executable, "-m", "clozelab", "pretrain", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 6
    assert metrics["tokens_seen"] > 0 and metrics["tokens_per_s"] > 0
    for key in ("train/mlm_loss", "train/nsp_loss", "train/loss", "val/mlm_loss", "val/mlm_acc",
                "val/nsp_acc", "initial/val/mlm_loss"):  # fmt: skip
        assert key in metrics, key
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "tokenizer" / "vocab.txt").is_file()
    assert (run_dir / "csv" / "metrics.csv").is_file()
    config = (run_dir / "config.yaml").read_text()
    assert "vocab_size: 400" in config and "${" not in config


def _run_cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", *args])
    return exc.value.code, capsys.readouterr().err


BAD_INPUTS = [
    (["corruption.rate=1.5"], "corruption.rate=1.5"),
    (["corruption.rate=0"], "corruption.rate=0"),
    (["corruption.keep_prob=0.3"], "sum to"),
    (["model.hidden_size=30", "model.num_heads=4"], "model.hidden_size=30 is not divisible"),
    (["data.max_seq_length=1024"], "data.max_seq_length=1024 exceeds the position table"),
    (["objective=[mlm,nsp]", "data.instances=full_sentences"], "objective.nsp needs"),
    (["data.batch_size=0"], "data.batch_size=0"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS, ids=lambda x: str(x))
def test_bad_config_values_exit_with_a_clear_message(
    capsys, tmp_path, text_corpus, cache_dir, overrides, message
):
    code, err = _run_cli(capsys, *_tiny(text_corpus, tmp_path / "run", cache_dir, *overrides))
    assert code == 2
    assert message in err and "Fix:" in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any work


def test_unknown_option_is_refused(capsys, tmp_path, text_corpus, cache_dir):
    code, err = _run_cli(capsys, *_tiny(text_corpus, tmp_path / "run", cache_dir, "data.bogus=1"))
    assert code != 0 and "bogus" in err


def test_unknown_component_argument_is_refused(capsys, tmp_path, text_corpus, cache_dir):
    args = _tiny(text_corpus, tmp_path / "run", cache_dir, "+corruption.bogus=1")
    code, err = _run_cli(capsys, *args)
    assert code == 2 and "corruption" in err and "bogus" in err


def test_missing_corpus(capsys, tmp_path, cache_dir):
    code, err = _run_cli(capsys, *_tiny(tmp_path / "nope.txt", tmp_path / "run", cache_dir))
    assert code == 2 and "nope.txt" in err and "data.corpus" in err


def test_empty_corpus(capsys, tmp_path, cache_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, err = _run_cli(capsys, *_tiny(empty, tmp_path / "run", cache_dir))
    assert code == 2 and "empty.txt" in err


def test_binary_corpus(capsys, tmp_path, cache_dir):
    binary = tmp_path / "image.txt"
    binary.write_bytes(bytes(range(256)) * 64)
    code, err = _run_cli(capsys, *_tiny(binary, tmp_path / "run", cache_dir))
    assert code == 2 and "image.txt" in err


def test_unknown_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["pretrian"])
    assert exc.value.code == 2 and "unknown command" in capsys.readouterr().err


def test_help(capsys):
    main(["--help"])
    assert "pretrain" in capsys.readouterr().out


@pytest.mark.timeout(900)
def test_non_editable_install_finds_configs(tmp_path):
    """A wheel carries conf/, experiments/ and sweeps/; experiment= and sweep= resolve from it."""
    root = Path(__file__).resolve().parents[1]
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
         str(root)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if build.returncode != 0 and "hatchling" in build.stderr:
        pytest.skip("hatchling could not be installed (no package index)")
    assert build.returncode == 0, build.stderr[-2000:]
    script = (
        "import clozelab.core.config as c\n"
        "from hydra import compose, initialize_config_dir\n"
        f"assert str(c.conf_dir()).startswith({str(target)!r}), c.conf_dir()\n"
        "c.register_overlays()\n"
        "with initialize_config_dir(str(c.conf_dir()), version_base='1.3'):\n"
        "    e = compose('pretrain', overrides=['experiment=bert'])\n"
        "    s = compose('pretrain', overrides=['sweep=seeds'], return_hydra_config=True)\n"
        "print(e.corruption.replace_from, s.hydra.mode)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["vocab", "RunMode.MULTIRUN"]


def test_prepare_command_builds_then_reuses_the_cache(tmp_path, text_corpus):
    cache = tmp_path / "cache"
    args = ["prepare", f"data.corpus={text_corpus}", "tokenizer.vocab_size=300",
            f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    main(args)
    shards = list((cache / "shards").iterdir())
    assert len(shards) == 1 and (shards[0] / "train" / "split.json").is_file()
    assert (shards[0] / "tokenizer" / "vocab.txt").is_file()
    main(args)
    (log,) = (tmp_path / "run").glob("*.log")  # Hydra's job log
    assert "Reusing cached shards" in log.read_text()


def test_seeds_sweep_runs_every_job(tmp_path, text_corpus, cache_dir):
    """`sweep=NAME` is a Hydra multirun: one run directory per job, each with its metrics."""
    overrides = [
        o for o in _tiny(text_corpus, tmp_path / "unused", cache_dir) if "hydra.run" not in o
    ]
    main(["pretrain", "sweep=seeds", *overrides, "seed=1,2", "trainer.max_steps=2",
          f"hydra.sweep.dir={tmp_path / 'sweep'}"])  # fmt: skip
    for job in ("0", "1"):
        metrics = json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["steps"] == 2


def test_an_error_raised_in_a_dataloader_worker_prints_as_its_one_line_message():
    """A ClozelabError a corruption raises in a DataLoader worker (T5's sentinel overflow) comes
    back with the worker's traceback as its message; the CLI prints the message alone."""
    from torch._utils import ExceptionWrapper

    from clozelab.core.errors import ClozelabError, user_message

    message = "corruption.n_sentinels=100: a sequence has 166 noise spans. Fix: raise it"
    try:
        raise ClozelabError(message)
    except ClozelabError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ClozelabError) as caught:
        wrapped.reraise()
    assert "Original Traceback" in str(caught.value)
    assert user_message(caught.value) == message
    assert user_message(ClozelabError(message)) == message  # raised in the main process
