"""``clozelab report`` over damaged job directories: whatever is truncated, overwritten with
random bytes, swapped for another JSON/YAML type, deleted or replaced by a folder, the report
runs to its end without a traceback, and a job whose record is damaged is named as damaged with
the file (never taken for a job that has not run). A damaged csv/metrics.csv only loses the job's
curves (named in a warning): its results are in metrics.json."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from report_helpers import curve_rows, write_job, write_multirun

from clozelab.cli import main
from clozelab.report.jobs import read_job

FILES = ("metrics.json", "config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml",
         "csv/metrics.csv", "eval/polarity.json")  # fmt: skip
RECORDS = ("metrics.json", "config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml",
           "eval/polarity.json")  # a damaged one of these makes the job "damaged"  # fmt: skip


def _sweep(root: Path) -> Path:
    write_multirun(root, {"corruption.rate": "0.15,0.4", "seed": "1,2,3,4"}, ["model=tiny"])
    num = 0
    for rate in ("0.15", "0.4"):
        for seed in (1, 2, 3, 4):
            loss = 3.0 + float(rate) + 0.1 * seed
            evals = {"polarity": {"metrics": {"accuracy": {"mean": 0.6 + 0.01 * seed}}}}
            write_job(root, num, [f"corruption.rate={rate}", f"seed={seed}", "model=tiny"],
                      {"val/mlm_loss": loss, "eval/polarity/accuracy": 0.6}, evals=evals,
                      baseline={"corruption.rate": 0.15}, rows=curve_rows(loss))  # fmt: skip
            num += 1
    return root


def _damage(file: Path, how: str, rng: random.Random) -> None:
    data = file.read_bytes()
    if how == "truncate":
        file.write_bytes(data[: rng.randrange(1, max(2, len(data) - 1))])
    elif how == "random":
        file.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
    elif how == "empty":
        file.write_bytes(b"")
    elif how == "other_type":
        file.write_text(rng.choice(['"a string"', "[1, 2]", "42", "null", "- x\n- {a: 1}\n"]))
    elif how == "delete":
        file.unlink()
    elif how == "folder":
        file.unlink()
        file.mkdir()
    elif how == "garbage_cells":
        file.write_text(data.decode().replace("0", "x").replace("1", "nan"))


CASES = [(f, h) for f in FILES
         for h in ("truncate", "random", "empty", "other_type", "delete", "folder")]  # fmt: skip
CASES += [("csv/metrics.csv", "garbage_cells")]
PER_RUN = 7  # jobs damaged at once (one case each) in one report run; job 0 stays whole
CHUNKS = [CASES[i : i + PER_RUN] for i in range(0, len(CASES), PER_RUN)]


@pytest.fixture(scope="module")
def clean_sweep(tmp_path_factory) -> Path:
    return _sweep(tmp_path_factory.mktemp("sweep") / "sweep")


@pytest.mark.parametrize(
    "chunk",
    [pytest.param(c, marks=() if i == 0 else pytest.mark.slow) for i, c in enumerate(CHUNKS)],
    ids=[f"cases{i * PER_RUN}-{i * PER_RUN + len(c) - 1}" for i, c in enumerate(CHUNKS)],
)
def test_report_over_damaged_jobs(chunk, clean_sweep, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    shutil.copytree(clean_sweep, sweep)
    for num, (name, how) in enumerate(chunk, start=1):
        _damage(sweep / str(num) / name, how, random.Random(f"{name}{how}"))
    try:
        main(["report", str(sweep), "--out", str(tmp_path / "report")])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err, err
    if code == 2:
        assert err.startswith("error: ") and "Fix:" in err
        return
    listed = {}
    for entry in json.loads((tmp_path / "report" / "report.json").read_text())["jobs"]:
        listed.setdefault(Path(entry["path"]).name, []).append(entry["status"])
    assert listed["0"] == ["completed"]
    for num, (name, how) in enumerate(chunk, start=1):
        job = read_job(sweep / str(num), sweep, 0)
        if job.status == "damaged":  # named with the file, listed once, as damaged
            assert name.split("/")[-1] in job.error and "Fix:" in job.error
            assert listed[str(num)] == ["damaged"], (name, how)
        else:  # still readable as what it should be, or a record that may be absent
            lenient = ("delete", "truncate", "other_type", "empty")
            assert name.startswith("csv/") or how in lenient, (name, how, job.status, job.error)
            assert name != "metrics.json" or how == "delete", (how, job.status)


def test_damaged_metrics_json_is_not_called_unrun(clean_sweep, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(clean_sweep, sweep)
    metrics = sweep / "2" / "metrics.json"
    metrics.write_text(metrics.read_text()[:20])
    job = read_job(sweep / "2", sweep, 0)
    assert job.status == "damaged" and "metrics.json" in job.error
    assert "has not run" not in job.error
    overrides = sweep / "3" / ".hydra" / "overrides.yaml"
    overrides.write_text("corruption.rate: [0.4\n")
    job = read_job(sweep / "3", sweep, 0)
    assert job.status == "damaged" and "overrides.yaml" in job.error
