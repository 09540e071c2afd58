"""``clozelab report``: statistics against hand-computed values, grouping of jobs into settings by
the swept axes, the baseline (sweep_meta, --baseline, partial, first setting), failed and missing
jobs listed, several sweep dirs merged, report.md/csv/json and the PNG plots written, clear
errors; one real tiny sweep reported end to end through the CLI."""

from __future__ import annotations

import csv
import json
import math

import pytest
from report_helpers import curve_rows, write_job, write_multirun

from clozelab.cli import main
from clozelab.core.errors import ClozelabError
from clozelab.report.aggregate import build_report, report, same_value
from clozelab.report.stats import direction, holm, paired_test, sign_flip_p, summarize

RATES, SETTINGS, SEEDS = ("0.15", "0.4"), ("a", "b"), ("1", "2", "3")
# (rate, setting) -> per seed; the baseline is (0.15, a); (0.4, a) is best on both metrics
LOSS = {("0.15", "a"): [3.0, 3.2, 3.1], ("0.15", "b"): [2.9, 3.0, 3.05],
        ("0.4", "a"): [2.5, 2.75, 2.6], ("0.4", "b"): [2.8, 3.1, 2.95]}  # fmt: skip
ACC = {("0.15", "a"): [0.60, 0.62, 0.61], ("0.15", "b"): [0.58, 0.59, 0.60],
       ("0.4", "a"): [0.65, 0.70, 0.66], ("0.4", "b"): [0.61, 0.60, 0.64]}  # fmt: skip
BASELINE = {"corruption.rate": 0.15, "setting": "a"}


def hand_mean_std(values):
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def t975_df2() -> float:
    """The 97.5% quantile of Student's t with 2 degrees of freedom, from its closed-form CDF
    F(t) = 1/2 + t / (2 sqrt(2 + t^2)): t / sqrt(2 + t^2) = 0.95."""
    a = 0.95
    return a * math.sqrt(2 / (1 - a * a))


def paired_p_df2(x, y) -> float:
    """Two-sided paired t-test p for 3 pairs by hand: t = mean(d) / (sd(d) / sqrt(3)),
    p = 2 (1 - F(|t|)) = 1 - |t| / sqrt(2 + t^2)."""
    d = [a - b for a, b in zip(x, y, strict=True)]
    mean, sd = hand_mean_std(d)
    t = mean / (sd / math.sqrt(len(d)))
    return 1 - abs(t) / math.sqrt(2 + t * t)


def make_sweep(root, skip=(), fail=(), unrun=(), baseline=BASELINE, rows=True):
    """A 2 x 2 x 3 grid (corruption.rate x setting x seed) in grid order; ``skip``: no job dir,
    ``fail``: status failed, ``unrun``: no metrics.json (each a (rate, setting, seed))."""
    write_multirun(root, {"corruption.rate": "0.15,0.4", "setting": "a,b", "seed": "1,2,3"},
                   ["sweep=fake", "model=tiny"])  # fmt: skip
    num = -1
    for rate in RATES:
        for setting in SETTINGS:
            for i, seed in enumerate(SEEDS):
                num += 1
                point = (rate, setting, seed)
                if point in skip:
                    continue
                overrides = [f"corruption.rate={rate}", f"setting={setting}", f"seed={seed}",
                             "sweep=fake", "model=tiny"]  # fmt: skip
                loss, acc = LOSS[rate, setting][i], ACC[rate, setting][i]
                metrics = {"val/mlm_loss": loss, "eval/polarity/accuracy": acc}
                if point in fail:
                    metrics = {"status": "failed", "error": "RuntimeError('boom | at step 3')"}
                evals = {"polarity": {"task": "polarity", "metric": "accuracy", "value": acc,
                                      "metrics": {"accuracy": {"mean": acc},
                                                  "f1": {"mean": acc - 0.1}}}}  # fmt: skip
                write_job(root, num, overrides, None if point in unrun else metrics,
                          baseline=baseline, evals=evals,
                          rows=curve_rows(loss) if rows else None)  # fmt: skip
    return root


def rows_of(result, metric):
    return {tuple(r.setting.key): r for r in next(m for m in result.metrics
                                                  if m.name == metric).rows}  # fmt: skip


# --- statistics ---------------------------------------------------------------------------------


def test_summary_mean_std_and_t_interval_equal_the_hand_values():
    values = [1.0, 2.0, 4.0]
    s = summarize(dict(zip(SEEDS, values, strict=True)))
    mean, std = hand_mean_std(values)
    half = t975_df2() * std / math.sqrt(3)
    assert s.n == 3 and s.mean == pytest.approx(7 / 3) and s.std == pytest.approx(math.sqrt(7 / 3))
    assert s.std == pytest.approx(std) and s.sem == pytest.approx(std / math.sqrt(3))
    assert (s.ci_low, s.ci_high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    one = summarize({"1": 5.0})
    assert (one.n, one.mean, one.std, one.ci_low) == (1, 5.0, None, None)
    assert summarize({}).mean is None


def test_paired_t_and_exact_sign_flip_p_equal_the_hand_values():
    x, y = [1.0, 2.0, 4.0], [0.5, 1.8, 3.0]
    result = paired_test(dict(zip(SEEDS, x, strict=True)), dict(zip(SEEDS, y, strict=True)))
    assert result.seeds == list(SEEDS) and result.mean_diff == pytest.approx(1.7 / 3)
    assert result.p_t == pytest.approx(paired_p_df2(x, y), rel=1e-9)
    # all three differences positive: only +++ and --- reach |sum| = 1.7 -> 2/8
    assert result.p_exact == pytest.approx(0.25) and result.exact
    # |d| = 1, 0.2, 0.5 with signs + - +: |sum| = 1.3 is reached by +++, +-+, -+-, --- -> 4/8
    assert sign_flip_p(__import__("numpy").array([1.0, -0.2, 0.5])) == (0.5, True)


def test_paired_test_pairs_by_seed_and_says_when_it_cannot_test():
    partial = paired_test({"1": 1.0, "3": 2.0}, {"1": 0.0, "2": 9.0, "3": 0.0})
    assert partial.seeds == ["1", "3"]
    one = paired_test({"1": 1.0}, {"1": 0.5, "2": 0.1})
    assert one.p_t is None and one.mean_diff == 0.5 and "1 seed(s) in common" in one.note
    constant = paired_test({"1": 2.0, "2": 3.0}, {"1": 1.0, "2": 2.0})
    assert constant.p_t is None and "no variance" in constant.note
    assert constant.p_exact == pytest.approx(0.5)  # 2 of the 4 sign flips reach |sum| = 2


def test_holm_correction():
    assert holm([0.01, 0.04, 0.03, None]) == [pytest.approx(0.03), pytest.approx(0.06),
                                              pytest.approx(0.06), None]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "way"),
    [("val/mlm_loss", "min"), ("val/loss", "min"), ("val/mlm_acc", "max"),
     ("eval/stsb/spearman", "max"), ("eval/squad/exact_match", "max"), ("eval/cola/mcc", "max"),
     ("eval/conll2003/entity_f1", "max"), ("wall_time_s", "min"), ("tokens_per_s", "max"),
     ("val/ppl", "min"), ("tokens_seen", None)],
)  # fmt: skip
def test_direction_from_the_metric_name(name, way):
    assert direction(name) == way


# --- grouping, baseline, best -------------------------------------------------------------------


def test_jobs_group_into_settings_by_the_varying_axes_with_the_sweep_meta_baseline(tmp_path):
    result = build_report([make_sweep(tmp_path / "sweep")])
    assert result.axes == ["corruption.rate", "setting"] and result.seed == "seed"
    assert result.fixed == {"sweep": "fake", "model": "tiny"}
    assert [s.key for s in result.settings] == [(r, s) for r in RATES for s in SETTINGS]
    assert all(s.seeds("seed") == list(SEEDS) for s in result.settings)
    assert result.baseline.source == "sweep_meta.baseline"
    assert result.baseline.spec == {"corruption.rate": "0.15", "setting": "a"}

    loss = rows_of(result, "val/mlm_loss")
    base = loss["0.15", "a"]
    assert base.baseline is base.setting and base.paired is None
    for key, row in loss.items():
        mean, std = hand_mean_std(LOSS[key])
        assert (row.summary.mean, row.summary.std) == (pytest.approx(mean), pytest.approx(std))
        if key != ("0.15", "a"):
            assert row.paired.p_t == pytest.approx(paired_p_df2(LOSS[key], LOSS["0.15", "a"]))
            assert row.paired.mean_diff == pytest.approx(mean - hand_mean_std(LOSS["0.15", "a"])[0])
    best = [k for k, r in loss.items() if r.is_best]
    assert best == [("0.4", "a")]  # lowest loss
    acc = rows_of(result, "eval/polarity/accuracy")
    assert [k for k, r in acc.items() if r.is_best] == [("0.4", "a")]  # highest accuracy
    assert {m.name: m.direction for m in result.metrics} == {
        "val/mlm_loss": "min", "eval/polarity/accuracy": "max"}  # fmt: skip


def test_given_baseline_wins_and_a_partial_one_is_taken_within_the_other_axes(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    full = build_report([sweep], baseline=["corruption.rate=0.4", "setting=b"])
    assert full.baseline.source == "--baseline"
    loss = rows_of(full, "val/mlm_loss")
    assert all(r.baseline.key == ("0.4", "b") for r in loss.values())
    partial = build_report([sweep], baseline=["corruption.rate=0.15"])
    loss = rows_of(partial, "val/mlm_loss")
    assert loss["0.4", "a"].baseline.key == ("0.15", "a")
    assert loss["0.4", "b"].baseline.key == ("0.15", "b")
    assert loss["0.4", "b"].paired.p_t == pytest.approx(
        paired_p_df2(LOSS["0.4", "b"], LOSS["0.15", "b"]))  # fmt: skip


def test_without_a_baseline_the_first_setting_is_it_and_the_report_says_so(tmp_path):
    out = tmp_path / "out"
    result = report([make_sweep(tmp_path / "sweep", baseline=None)], out)
    assert result.baseline.source == "first setting"
    assert result.baseline.spec == {"corruption.rate": "0.15", "setting": "a"}
    assert "the first setting in grid order is the baseline" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("given", "message"),
    [(["dropout=0.1"], "dropout is not a swept axis"), (["setting=z"], "no setting has it"),
     (["setting"], "not KEY=VALUE")],
)  # fmt: skip
def test_a_bad_baseline_is_a_clear_error(tmp_path, given, message):
    with pytest.raises(ClozelabError, match=message):
        build_report([make_sweep(tmp_path / "sweep")], baseline=given)


# --- failed and missing jobs ----------------------------------------------------------------------


def test_failed_missing_and_unrun_jobs_are_listed_and_their_settings_marked(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", skip=[("0.15", "b", "2")], fail=[("0.4", "b", "3")],
                       unrun=[("0.4", "a", "2")])  # fmt: skip
    out = tmp_path / "out"
    result = report([sweep], out)
    status = {(j.axis_value("corruption.rate"), j.axis_value("setting"), j.axis_value("seed")):
              j.status for j in result.jobs}  # fmt: skip
    assert len(result.jobs) == 12
    assert status["0.15", "b", "2"] == status["0.4", "a", "2"] == "missing"
    assert status["0.4", "b", "3"] == "failed"
    loss = rows_of(result, "val/mlm_loss")
    assert loss["0.4", "b"].summary.n == 2 and loss["0.4", "b"].paired.seeds == ["1", "2"]
    assert loss["0.4", "a"].summary.mean == pytest.approx((2.5 + 2.6) / 2)

    text = (out / "report.md").read_text()
    assert "RuntimeError('boom \\| at step 3')" in text  # the error, its pipe escaped
    assert "in the grid of multirun.yaml, but no job directory" in text
    assert "no metrics.json" in text and "12 jobs: 9 completed, 2 missing, 1 failed" in text
    assert "- corruption.rate=0.4 setting=b: lacks seed(s) 3" in text
    assert "| 0.4 | b | † | 2 |" in text
    payload = json.loads((out / "report.json").read_text())
    assert sorted(j["status"] for j in payload["jobs"]).count("missing") == 2
    assert payload["settings"][3]["fewer_seeds"] == ["3"]
    records = list(csv.DictReader((out / "report.csv").open()))
    marked = {r["label"] for r in records if r["fewer_seeds"] == "True"}
    assert marked == {"corruption.rate=0.15 setting=b", "corruption.rate=0.4 setting=a",
                      "corruption.rate=0.4 setting=b"}  # fmt: skip


# --- merged dirs, outputs, metrics --------------------------------------------------------------


def test_one_seed_per_setting_and_a_nan_value_are_reported_not_dropped(tmp_path):
    """Optuna-like: every trial its own setting with one seed (from config.yaml, not an
    override); a diverged trial's NaN loss is named under the table."""
    root = tmp_path / "optuna"
    for num, (lr, loss) in enumerate([("0.001", 3.0), ("0.0003", 2.5), ("0.003", float("nan"))]):
        write_job(root, num, [f"optim.lr={lr}"], {"val/mlm_loss": loss})
    out = tmp_path / "out"
    result = report([root], out)
    assert result.axes == ["optim.lr"] and result.seeds == ["1"]
    loss = rows_of(result, "val/mlm_loss")
    assert [k for k, r in loss.items() if r.is_best] == [("0.0003",)]
    assert loss["0.0003",].summary.std is None and loss["0.0003",].paired.p_t is None
    assert loss["0.003",].summary.n == 0
    text = (out / "report.md").read_text()
    assert f"completed jobs without a (finite) value, not counted: `{root / '2'}`" in text
    assert "| 0.0003 | ★ | 1 | 2.5 | — | -0.5 | — |" in text  # one seed: no std, CI, test


def test_two_sweep_dirs_merge_into_one_report(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for root, setting, rate in ((first, "a", "0.15"), (second, "b", "0.15")):
        for num, seed in enumerate(SEEDS):
            metrics = {"val/mlm_loss": LOSS[rate, setting][num]}
            write_job(root, num, [f"setting={setting}", f"seed={seed}"], metrics,
                      baseline={"setting": "a"})  # fmt: skip
    with pytest.raises(ClozelabError, match="give --out DIR"):
        report([first, second])
    result = report([first, second], tmp_path / "merged")
    assert result.axes == ["setting"] and [s.key for s in result.settings] == [("a",), ("b",)]
    row = rows_of(result, "val/mlm_loss")["b",]
    assert row.summary.n == 3 and row.baseline.key == ("a",)
    assert row.paired.p_t == pytest.approx(paired_p_df2(LOSS["0.15", "b"], LOSS["0.15", "a"]))
    text = (tmp_path / "merged" / "report.md").read_text()
    assert "# Sweep report: first + second" in text and str(second) in text


def test_an_axis_that_repeats_another_is_left_out_so_the_arms_are_compared(tmp_path):
    """Two sweeps merged, each naming itself (``sweep=``) and holding one arm at the rate the
    other varies (as nsp_ablation_cpu + masking_rate_cpu): ``sweep`` splits the jobs exactly as
    ``setting`` does, so it is not an axis of its own and b@0.15 is compared with a@0.15."""
    first, second = tmp_path / "first", tmp_path / "second"
    grid = ((first, "a", "first", ["0.15"]), (second, "b", "second", ["0.15", "0.4"]))
    num = 0
    for root, setting, sweep, rates in grid:
        for rate in rates:
            for seed, loss in zip(SEEDS, LOSS[rate, setting], strict=True):
                overrides = [f"setting={setting}", f"sweep={sweep}", f"corruption.rate={rate}",
                             f"seed={seed}"]  # fmt: skip
                write_job(root, num, overrides, {"val/mlm_loss": loss}, baseline={"setting": "a"})
                num += 1
    result = report([first, second], tmp_path / "merged")
    assert result.axes == ["setting", "corruption.rate"]
    assert result.redundant == {"sweep": "setting"}
    rows = rows_of(result, "val/mlm_loss")
    assert rows["b", "0.15"].baseline.key == ("a", "0.15")
    assert rows["b", "0.15"].paired.p_t == pytest.approx(
        paired_p_df2(LOSS["0.15", "b"], LOSS["0.15", "a"])
    )
    assert rows["b", "0.4"].baseline is None  # no arm a at 0.4: nothing to pair with
    text = (tmp_path / "merged" / "report.md").read_text()
    assert "`sweep` is left out of the setting names" in text
    only = report([first, second], tmp_path / "only", only=["corruption.rate=0.15"])
    assert [s.key for s in only.settings] == [("a",), ("b",)] and only.axes == ["setting"]
    assert rows_of(only, "val/mlm_loss")["b",].baseline.key == ("a",)
    with pytest.raises(ClozelabError, match=r"--only corruption.rate=0.8: no job matches"):
        report([first, second], tmp_path / "none", only=["corruption.rate=0.8"])
    with pytest.raises(ClozelabError, match="--only 'rate': not KEY=VALUE"):
        report([first, second], tmp_path / "none", only=["rate"])


def test_a_folder_of_sweeps_finds_each_grid_and_lists_repeated_seeds_as_duplicates(tmp_path):
    make_sweep(tmp_path / "all" / "first", skip=[("0.4", "b", "1")])
    make_sweep(tmp_path / "all" / "second")
    out = tmp_path / "out"
    result = report([tmp_path / "all"], out)
    status = [j.status for j in result.jobs]
    assert len(status) == 24 and status.count("missing") == 1
    assert status.count("duplicate") == 11  # the second sweep repeats the first one's seeds
    assert all(r.summary.n == 3 for r in rows_of(result, "val/mlm_loss").values())
    text = (out / "report.md").read_text()
    assert f"same setting and seed as {tmp_path / 'all' / 'first' / '0'}, which is counted" in text


def test_report_files_tables_and_plots(tmp_path):
    out = tmp_path / "out"
    result = report([make_sweep(tmp_path / "sweep")], out, command="clozelab report SWEEP")
    text = (out / "report.md").read_text()
    assert "Made by: `clozelab report SWEEP`" in text
    assert "### val/mlm_loss (lower is better)" in text
    assert "| corruption.rate | setting |  | n | mean ± std | 95% CI |" in text
    mean, std = hand_mean_std(LOSS["0.4", "a"])
    assert f"| 0.4 | a | ★ | 3 | {mean:.4g} ± {std:.2g} |" in text
    assert "| 0.15 | a | ◆ | 3 |" in text
    assert "- budget: tokens" in text and "- suite: bundled" in text
    assert "scipy.stats.ttest_rel" in text and "exact paired permutation test" in text
    assert "![val/mlm_loss](plots/val_mlm_loss.png)" in text
    assert "![loss curves](plots/loss_curves.png)" in text

    records = list(csv.DictReader((out / "report.csv").open()))
    assert len(records) == 2 * 4  # metrics x settings
    best = next(r for r in records if r["metric"] == "val/mlm_loss" and r["best"] == "True")
    assert (best["corruption.rate"], best["setting"], best["n"]) == ("0.4", "a", "3")
    assert float(best["mean"]) == pytest.approx(mean) and float(best["std"]) == pytest.approx(std)
    assert float(best["p_t"]) == pytest.approx(paired_p_df2(LOSS["0.4", "a"], LOSS["0.15", "a"]))
    payload = json.loads((out / "report.json").read_text())
    assert payload["metrics"]["val/mlm_loss"]["best"] == "corruption.rate=0.4 setting=a"
    assert payload["axes"] == ["corruption.rate", "setting"]

    names = sorted(p.name for p in result.plots)
    assert names == ["eval_polarity_accuracy.png", "loss_curves.png", "val_mlm_loss.png"]
    for plot in result.plots:
        data = plot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_categorical_axes_get_grouped_bars(tmp_path):
    root = tmp_path / "sweep"
    for num, (setting, corruption) in enumerate([("a", "mask"), ("a", "span"), ("b", "mask")]):
        for seed in SEEDS:
            overrides = [f"setting={setting}", f"corruption={corruption}", f"seed={seed}"]
            metrics = {"val/mlm_loss": 3.0 - 0.1 * num + 0.01 * int(seed)}
            write_job(root, num * 3 + int(seed), overrides, metrics)
    result = report([root])
    assert result.axes == ["setting", "corruption"]
    plot = root / "report" / "plots" / "val_mlm_loss.png"
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "loss_curves.png" not in {p.name for p in result.plots}  # no csv/metrics.csv


def test_metric_option_adds_eval_json_and_csv_values(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    result = build_report([sweep], metrics=["eval/polarity/f1", "val/loss:min"])
    names = [m.name for m in result.metrics]
    assert names[-2:] == ["eval/polarity/f1", "val/loss"]
    f1 = rows_of(result, "eval/polarity/f1")["0.4", "a"]
    assert f1.summary.mean == pytest.approx(sum(ACC["0.4", "a"]) / 3 - 0.1)
    val = rows_of(result, "val/loss")["0.15", "a"]  # last val/loss of csv/metrics.csv
    assert val.summary.values == {s: pytest.approx(v + 0.1) for s, v in
                                  zip(SEEDS, LOSS["0.15", "a"], strict=True)}  # fmt: skip
    with pytest.raises(ClozelabError, match="no completed job has it"):
        build_report([sweep], metrics=["val/nope_loss"])
    with pytest.raises(ClozelabError, match="tokens_seen:min or --metric tokens_seen:max"):
        build_report([sweep], metrics=["tokens_seen"])


def test_missing_or_empty_dirs_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ClozelabError, match="no such directory"):
        build_report([tmp_path / "absent"])
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    with pytest.raises(ClozelabError, match=r"holds no job directories \(expected .*config.yaml"):
        build_report([tmp_path / "empty"])
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "absent")])
    assert exit_info.value.code == 2 and "no such directory" in capsys.readouterr().err


# --- end to end ---------------------------------------------------------------------------------


def test_a_real_tiny_sweep_is_reported_through_the_cli(tmp_path, text_corpus, cache_dir, capsys):
    """Two seeds x two masking rates, one of them invalid (rate 1.5: the job fails at
    validation, the others run); the report has every job and the failure's error."""
    from helpers import TINY

    sweep = tmp_path / "sweep"
    main(["pretrain", *TINY, f"data.corpus={text_corpus}", f"paths.cache_dir={cache_dir}",
          f"hydra.sweep.dir={sweep}", "sweep=seeds", "seed=1,2",
          "corruption.rate=0.15,1.5"])  # fmt: skip
    main(["report", str(sweep), "--metric", "train/loss"])
    assert "report of 4 jobs (2 completed, 2 settings)" in capsys.readouterr().out
    out = sweep / "report"
    payload = json.loads((out / "report.json").read_text())
    assert payload["axes"] == ["corruption.rate"] and payload["seeds"] == ["1", "2"]
    assert sorted(j["status"] for j in payload["jobs"]) == ["completed"] * 2 + ["failed"] * 2
    rows = payload["metrics"]["val/mlm_loss"]["rows"]
    assert rows[0]["label"] == "corruption.rate=0.15" and rows[0]["n"] == 2
    assert rows[1]["n"] == 0
    text = (out / "report.md").read_text()
    assert "corruption.rate=1.5" in text and "failed" in text
    assert (out / "plots" / "loss_curves.png").stat().st_size > 5000


def _nsp_ablation(root):
    """SEGMENT-PAIR with NSP (loss = MLM + NSP) against FULL-SENTENCES (MLM alone): the summed
    val/loss of the first is larger although its MLM loss is the same or better."""
    settings = {
        "segment_pair_nsp": {"mlm": 1.0, "nsp": 1.0},
        "segment_pair_mlm": {"mlm": 1.0},
        "full_sentences": {"mlm": 1.0},
        "doc_sentences_nsp": {"mlm": 1.0, "nsp": 1.0},
    }
    mlm = {"segment_pair_nsp": 8.5, "segment_pair_mlm": 8.6, "full_sentences": 8.7,
           "doc_sentences_nsp": 8.45}  # fmt: skip
    num = 0
    for setting, objectives in settings.items():
        for seed in SEEDS:
            m = mlm[setting] + 0.01 * int(seed)
            nsp = 0.7 + 0.02 * int(seed) if "nsp" in objectives else 0.0
            write_job(root, num, [f"setting={setting}", f"seed={seed}"],
                      {"val/loss": m + nsp, "val/mlm_loss": m}, objectives=objectives,
                      baseline={"setting": "segment_pair_nsp"}, rows=curve_rows(m))  # fmt: skip
            num += 1
    return root


def test_summed_loss_of_different_objectives_is_not_ranked(tmp_path):
    """val/loss adds the objectives' losses: MLM+NSP against MLM alone is not like for like, so
    no best setting is named and paired tests run only between settings of equal objectives."""
    out = tmp_path / "out"
    result = report([_nsp_ablation(tmp_path / "sweep")], out)
    loss = next(m for m in result.metrics if m.name == "val/loss")
    assert loss.best is None and not any(r.is_best for r in loss.rows)
    assert "mlm+nsp" in loss.not_comparable and "mlm:" in loss.not_comparable
    rows = {r.setting.key: r for r in loss.rows}
    assert rows[("segment_pair_mlm",)].paired is None  # mlm vs the mlm+nsp baseline: no test
    assert rows[("full_sentences",)].paired is None
    assert rows[("doc_sentences_nsp",)].paired is not None  # same objectives: tested
    mlm = next(m for m in result.metrics if m.name == "val/mlm_loss")  # like for like: ranked
    assert mlm.best == "setting=doc_sentences_nsp" and mlm.not_comparable is None
    assert all(r.paired is not None for r in mlm.rows if r.baseline is not r.setting)

    text = (out / "report.md").read_text()
    assert "| val/loss | min | not comparable: the settings train different objectives" in text
    assert "**Not ranked**: not comparable across these settings: val/loss adds up" in text
    assert "- objectives differ between settings (mlm+nsp: setting=segment_pair_nsp" in text
    assert "the curves show the MLM loss" in text
    payload = json.loads((out / "report.json").read_text())
    assert payload["metrics"]["val/loss"]["comparable"] is False
    assert payload["metrics"]["val/loss"]["best"] is None
    assert payload["metrics"]["val/mlm_loss"]["comparable"] is True
    assert "val_loss.png" not in {p.name for p in result.plots}  # no side-by-side picture


def test_summed_loss_of_one_objective_set_is_ranked(tmp_path):
    root = tmp_path / "sweep"
    for num, (setting, seed) in enumerate([(s, seed) for s in "ab" for seed in SEEDS]):
        value = 3.0 + (setting == "b") + 0.01 * int(seed)
        write_job(root, num, [f"setting={setting}", f"seed={seed}"], {"val/loss": value},
                  objectives={"mlm": 1.0, "nsp": 1.0})  # fmt: skip
    loss = next(m for m in build_report([root]).metrics if m.name == "val/loss")
    assert loss.best == "setting=a" and loss.not_comparable is None


@pytest.mark.parametrize(
    ("written", "given", "same"),
    [
        ("False", "false", True),
        ("True", "true", True),
        ("False", "True", False),
        ("false", "False", True),
        ("0.15", "0.150", True),
        ("0.15", "0.4", False),
        ("mask", "false", False),
    ],
)
def test_same_value_reads_booleans_in_either_spelling(written, given, same):
    """Hydra writes a swept boolean as False; `--baseline multitask.joint=false` names it."""
    assert same_value(written, given) is same
