"""experiments/results/pretrain_vs_none/summarize.py: pooled per-seed scores of pre-trained and
``checkpoint=none`` fine-tuning runs, Welch's t-test, written where ``--out`` says."""

from __future__ import annotations

import json

import pytest
from helpers import load_experiment_script
from scipy import stats

SCRIPT = ("results", "pretrain_vs_none", "summarize.py")


def _run(root, name, values):
    (root / name / "eval").mkdir(parents=True)
    result = {"metrics": {"accuracy": {"values": values}}, "protocol": {"epochs": 3}}
    (root / name / "eval" / "sst2.json").write_text(json.dumps(result))


def test_pools_every_run_of_each_arm_and_writes_out(tmp_path, capsys):
    _run(tmp_path, "seed1_pre", [0.71, 0.72, 0.70])
    _run(tmp_path, "seed2_pre", [0.73, 0.69, 0.72])
    _run(tmp_path, "random_none", [0.68, 0.69, 0.67, 0.70])
    out = tmp_path / "vs_none.json"
    (row,) = load_experiment_script(*SCRIPT).main(
        ["--out", str(out), f"40%:{tmp_path}:sst2:accuracy"]
    )
    pre, none = [0.71, 0.72, 0.70, 0.73, 0.69, 0.72], [0.68, 0.69, 0.67, 0.70]
    assert row["pretrained"] == pre and row["none"] == none
    assert row["welch_p"] == pytest.approx(stats.ttest_ind(pre, none, equal_var=False).pvalue)
    assert row["pretrained_mean"] == pytest.approx(sum(pre) / 6)
    assert json.loads(out.read_text())[0]["protocol"] == {"epochs": 3}
    assert "| 40% | sst2 accuracy | 0.712 ±" in capsys.readouterr().out


def test_an_arm_with_fewer_than_two_scores_is_refused(tmp_path):
    _run(tmp_path, "seed1_pre", [0.71, 0.72])
    _run(tmp_path, "random_none", [0.68])
    with pytest.raises(SystemExit, match="fewer than 2 none seeds"):
        load_experiment_script(*SCRIPT).main(
            ["--out", str(tmp_path / "x.json"), f"a:{tmp_path}:sst2:accuracy"]
        )
    with pytest.raises(SystemExit, match="--out needs a file name"):
        load_experiment_script(*SCRIPT).main(["--out"])
