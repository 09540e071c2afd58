"""Bad input at the command line, as a hostile user gives it: every case exits with status 2 and
one message (no traceback) that names the key or file and the fix, and leaves the files of the
run directory it points at as they were. Type and range errors are found when the config is
composed, before any data is read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY, write_text_corpus

from clozelab.cli import main
from clozelab.core.errors import ClozelabError


def _files(directory: Path) -> dict[str, bytes]:
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}  # fmt: skip


def _refused(capsys, args: list[str], watched: Path) -> str:
    """Run ``clozelab ARGS``: exit status 2, one ``error:`` message with a fix, ``watched``
    unchanged; returns the message."""
    before = _files(watched)
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err and err.startswith("error: ") and "Fix:" in err, err
    assert _files(watched) == before, "a refused command changed the directory"
    return err


@pytest.fixture(scope="module")
def run(tmp_path_factory, text_corpus, cache_dir) -> Path:
    """A completed tiny run (3 steps) the cases below point at."""
    run_dir = tmp_path_factory.mktemp("bad_input") / "run"
    main(["pretrain", *TINY, f"data.corpus={text_corpus}", f"paths.cache_dir={cache_dir}",
          f"hydra.run.dir={run_dir}", "trainer.max_steps=3", "eval.suite=null"])  # fmt: skip
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    return run_dir


def _pretrain(run_dir, corpus, cache_dir, *extra) -> list[str]:
    return ["pretrain", *TINY, f"data.corpus={corpus}", f"paths.cache_dir={cache_dir}",
            f"hydra.run.dir={run_dir}", "trainer.max_steps=3", "eval.suite=null",
            *extra]  # fmt: skip


PRETRAIN_CASES = {
    "seed=-1": "seed=-1",
    "seed=1.5": "seed=1.5",
    "optim.lr=fast": "optim.lr='fast'",
    "optim.lr=-1": "optim.lr=-1",
    "optim.weight_decay=-0.1": "optim.weight_decay=-0.1",
    "optim.betas=[0.9]": "optim.betas=[0.9]",
    "optim.fused=maybe": "optim.fused='maybe'",
    "+optim.foreach=true": "optim.foreach=True",
    "scheduler.decay=exponential": "scheduler.decay='exponential'",
    "trainer.max_time=banana": "trainer.max_time='banana'",
    "trainer.max_steps=ten": "trainer.max_steps='ten'",
    "trainer.val_check_interval=0": "trainer.val_check_interval=0",
    "trainer.limit_val_batches=-1": "trainer.limit_val_batches=-1",
    "trainer.accumulate_grad_batches=0": "trainer.accumulate_grad_batches=0",
    "callbacks.checkpoint_every_n_steps=0": "callbacks.checkpoint_every_n_steps=0",
}


@pytest.mark.parametrize("override", list(PRETRAIN_CASES), ids=list(PRETRAIN_CASES))
def test_wrong_value_is_refused_before_any_data_is_read(
    override, capsys, monkeypatch, run, text_corpus, cache_dir
):
    import clozelab.pretrain

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the config was checked")

    monkeypatch.setattr(clozelab.pretrain, "prepare", no_data)
    err = _refused(capsys, _pretrain(run, text_corpus, cache_dir, override), run)
    assert PRETRAIN_CASES[override] in err


def test_corpus_symlink_loop(capsys, tmp_path, run, cache_dir):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    err = _refused(capsys, _pretrain(run, tmp_path / "a", cache_dir), run)
    assert "data.corpus" in err and "cannot be resolved" in err


def test_missing_corpus_leaves_a_new_run_dir_empty(capsys, tmp_path, cache_dir):
    run_dir = tmp_path / "new"
    _refused(capsys, _pretrain(run_dir, tmp_path / "nope.txt", cache_dir), run_dir)
    assert _files(run_dir) == {}


def test_export_to_an_existing_file_or_a_non_empty_dir(capsys, tmp_path, run):
    file = tmp_path / "model.bin"
    file.write_bytes(b"keep me")
    err = _refused(capsys, ["export", str(run), str(file)], tmp_path)
    assert "exists and is not a directory" in err
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    err = _refused(capsys, ["export", str(run), str(out)], tmp_path)
    assert "notes.txt" in err and "--force" in err
    main(["export", str(run), str(out), "--force"])
    assert (out / "config.json").is_file() and (out / "notes.txt").read_text() == "mine"


def _damaged_copy(run: Path, tmp_path: Path, how: str) -> Path:
    copy = tmp_path / f"run_{how}"
    shutil.copytree(run, copy)
    ckpt = copy / "checkpoints" / "last.ckpt"
    if how == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    elif how == "random":
        ckpt.write_bytes(bytes(range(256)) * 40)
    elif how == "sizes":
        config = copy / "config.yaml"
        config.write_text(config.read_text().replace("hidden_size: 32", "hidden_size: 16"))
    elif how == "hf_config":
        (copy / "hf" / "config.json").write_text('{"hidden_size": ')
        return copy / "hf"
    return copy


@pytest.mark.parametrize("how", ["truncated", "random", "sizes", "hf_config"])
def test_finetune_and_export_refuse_a_damaged_checkpoint(how, capsys, tmp_path, run):
    source = _damaged_copy(run, tmp_path, how)
    out = tmp_path / "ft"
    args = ["finetune", "task=sst2", f"checkpoint={source}", "seeds=[1]", f"hydra.run.dir={out}"]
    err = _refused(capsys, args, source)
    assert str(source) in err and "checkpoint" in err
    err = _refused(capsys, ["export", str(source), str(tmp_path / "hf_out")], source)
    assert str(source) in err
    if how == "sizes":
        assert "different layer sizes" in err and "vocabulary" not in err


def test_report_names_binary_records_as_damaged(capsys, tmp_path, run):
    sweep = tmp_path / "sweep"
    for num in range(2):
        shutil.copytree(run, sweep / str(num))
    (sweep / "1" / "metrics.json").write_bytes(bytes(range(256)))
    (sweep / "1" / "config.yaml").write_bytes(bytes(range(255, -1, -1)))
    main(["report", str(sweep), "--out", str(tmp_path / "report")])
    assert "Traceback" not in capsys.readouterr().err
    jobs = json.loads((tmp_path / "report" / "report.json").read_text())["jobs"]
    damaged = next(j for j in jobs if j["path"].endswith("/1"))
    assert damaged["status"] == "damaged"
    assert "metrics.json" in damaged["error"] and "config.yaml" in damaged["error"]


def test_help_into_a_closed_pipe_is_quiet(tmp_path):
    for args in (["--help"], ["pretrain", "--help"]):
        proc = subprocess.run(
            f"{sys.executable} -m clozelab {' '.join(args)} | head -c 10",
            shell=True, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_tsv_given_as_csv_names_the_right_format(tmp_path):
    from clozelab.tasks.readers import read_delimited

    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\na fine film , really\t1\nawful\t0\n")
    with pytest.raises(ClozelabError, match="Fix: set task.format=tsv"):
        read_delimited(path, ",", "sentence", label="label")
    assert len(read_delimited(path, "\t", "sentence", label="label")) == 2


def test_resume_with_other_sizes_does_not_blame_the_vocabulary():
    import torch

    from clozelab.training.checkpoint import state_differences

    stored = {"embedding.word_embeddings.weight": torch.zeros(100, 32)}
    wider = {"embedding.word_embeddings.weight": torch.zeros(100, 64)}
    more = {"embedding.word_embeddings.weight": torch.zeros(120, 32)}
    assert "different layer sizes" in state_differences(stored, wider)[0]
    assert "vocabulary" not in " ".join(state_differences(stored, wider))
    assert "a different vocabulary" in state_differences(stored, more)[0]


def test_one_document_corpus_gets_advice_that_can_work(tmp_path):
    from omegaconf import OmegaConf

    from clozelab.data.preprocess import prepare

    corpus = write_text_corpus(tmp_path / "one.txt", documents=1)
    data = OmegaConf.create({"corpus": str(corpus), "validation_fraction": 0.05,
                             "preprocessing_workers": 0, "max_documents": None})  # fmt: skip
    tok = OmegaConf.create({"path": None, "vocab_size": 200, "lowercase": True})
    with pytest.raises(ClozelabError) as exc:
        prepare(data, tok, tmp_path / "cache")
    message = str(exc.value)
    assert "larger fraction" not in message and "data.validation_fraction=0" in message
