"""``clozelab report SWEEP_DIR [SWEEP_DIR ...]``: one report of a sweep (or several, merged).

Every job of the sweep directories is read (report_jobs); the jobs are grouped into *settings*
(the swept axes but the seed) and, per setting and metric, the values over seeds are summarised:
mean, std (ddof=1), n and the Student-t 95% confidence interval (report_stats). Each setting is
compared with the sweep's baseline setting, paired by seed (paired t-test and exact sign-flip
permutation test), and the best setting per metric is marked. The baseline is ``--baseline
KEY=VALUE ...``, else ``sweep_meta.baseline`` of the jobs' config, else the first setting in grid
order. A baseline that fixes only some axes is taken within each value of the others
(``--baseline corruption.rate=0.15``: each masking scheme against its own 15% setting).

Metrics: the final ``val/...`` values and the downstream ``eval/<task>/<metric>`` scores of each
job's metrics.json, plus what ``--metric`` names (a metrics.json key, ``eval/<task>/<metric>``
of eval/<task>.json, or a csv/metrics.csv column, last value). Failed, interrupted and missing
jobs are listed, never dropped silently; a setting with fewer seeds than the others is marked.

Writes report.md, report.csv, report.json and plots/*.png (report_write, report_plots) to
``--out`` (default ``SWEEP_DIR/report``).
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from clozelab.core.errors import ClozelabError
from clozelab.report.jobs import (
    ABSENT,
    Job,
    fixed_overrides,
    job_seed,
    load_jobs,
    redundant_axes,
    seed_key,
    sweep_axes,
)
from clozelab.report.settings import Setting, is_summed, objective_sets, sort_values
from clozelab.report.stats import Paired, Summary, best, direction, holm, paired_test, summarize

log = logging.getLogger(__name__)

DEFAULT_PREFIXES = ("val/", "eval/")
BUDGET_METRICS = ("tokens_seen", "steps", "wall_time_s")


@dataclass
class Row:
    setting: Setting
    summary: Summary
    baseline: Setting | None
    paired: Paired | None
    p_holm: float | None = None
    is_best: bool = False


@dataclass
class MetricReport:
    name: str
    direction: str | None
    rows: list[Row]
    best: str | None  # setting label
    no_value: list[Path] = field(default_factory=list)  # completed jobs without it (or NaN)
    not_comparable: str | None = None  # why no best setting is named (objectives differ)


@dataclass
class Baseline:
    spec: dict[str, str]  # axis -> value (may fix only some axes)
    source: str  # "--baseline", "sweep_meta.baseline" or "first setting"
    note: str | None = None


@dataclass
class Report:
    sweep_dirs: list[Path]
    jobs: list[Job]
    seed: str
    axes: list[str]
    fixed: dict[str, str]
    settings: list[Setting]
    baseline: Baseline | None
    metrics: list[MetricReport]
    budget: dict[str, dict[str, Summary]]  # setting label -> budget metric -> summary
    seeds: list[str]
    command: str
    plots: list[Path] = field(default_factory=list)
    redundant: dict[str, str] = field(default_factory=dict)  # axis -> the axis it repeats


_BOOLEANS = {"true": True, "false": False}


def same_value(text: str, other) -> bool:
    """An axis value as written (``"0.15"``, ``"False"``) against a baseline value (``0.15``,
    ``"0.150"``, ``false``: Hydra writes booleans capitalised, YAML and the shell lower-case)."""
    if str(other) == text:
        return True
    flags = (_BOOLEANS.get(str(text).lower()), _BOOLEANS.get(str(other).lower()))
    if None not in flags:
        return flags[0] == flags[1]
    try:
        return math.isclose(float(text), float(other), rel_tol=1e-9, abs_tol=0.0)
    except (TypeError, ValueError):
        return False


def mark_duplicates(settings: list[Setting], seed: str) -> None:
    """A second completed job of the same setting and seed (a sweep run twice, two dirs merged)
    is listed as a duplicate and left out of the statistics (the first in grid order counts)."""
    for setting in settings:
        first: dict[str, Job] = {}
        for job in setting.jobs:
            if not job.completed:
                continue
            key = job_seed(job, seed)
            if key in first:
                job.status = "duplicate"
                job.error = f"same setting and {seed} as {first[key].path}, which is counted"
            else:
                first[key] = job


def group_settings(jobs: list[Job], axes: list[str]) -> list[Setting]:
    """Settings in grid order (the order their first job comes in)."""
    settings: dict[tuple[str, ...], Setting] = {}
    for job in jobs:
        key = tuple(job.axis_value(axis) for axis in axes)
        if key not in settings:
            label = " ".join(f"{a}={v}" for a, v in zip(axes, key, strict=True)) or "all jobs"
            settings[key] = Setting(key, label)
        settings[key].jobs.append(job)
    return list(settings.values())


# --- baseline --------------------------------------------------------------------------------


def _parse_pairs(items: list[str], option: str = "--baseline") -> dict[str, str]:
    spec = {}
    for item in items:
        if "=" not in item:
            raise ClozelabError(
                f"{option} {item!r}: not KEY=VALUE. Fix: e.g. {option} corruption.rate=0.15"
            )
        key, value = item.split("=", 1)
        spec[key] = value
    return spec


def _sweep_meta_baseline(jobs: list[Job]) -> dict | None:
    for job in jobs:
        meta = job.config.get("sweep_meta") if isinstance(job.config, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("baseline"), dict):
            return {str(k): v for k, v in meta["baseline"].items()}
    return None


def _matches(setting: Setting, axes: list[str], spec: dict) -> bool:
    return all(same_value(setting.key[axes.index(k)], v) for k, v in spec.items())


def resolve_baseline(given: list[str] | None, jobs, axes, settings) -> Baseline | None:
    """The baseline spec (see the module docstring); None when there is only one setting."""
    if len(settings) < 2:
        return None
    first = Baseline(dict(zip(axes, settings[0].key, strict=True)), "first setting")
    if given:
        spec = _parse_pairs(given)
        for key, value in spec.items():
            if key not in axes:
                raise ClozelabError(
                    f"--baseline {key}={value}: {key} is not a swept axis (the axes are {axes}). "
                    "Fix: name one of them."
                )
            if not any(_matches(s, axes, {key: value}) for s in settings):
                have = sort_values({s.key[axes.index(key)] for s in settings})
                raise ClozelabError(
                    f"--baseline {key}={value}: no setting has it ({key} takes {have}). "
                    "Fix: give one of these values."
                )
        return Baseline(spec, "--baseline")
    meta = _sweep_meta_baseline(jobs)
    if meta is None:
        first.note = (
            "no baseline given (--baseline or sweep_meta.baseline): the first setting "
            "in grid order is the baseline"
        )
        return first
    spec = {k: v for k, v in meta.items() if k in axes}
    off = {
        k: v for k, v in meta.items() if k not in axes and not same_value(jobs[0].axis_value(k), v)
    }
    if off or not spec or not any(_matches(s, axes, spec) for s in settings):
        first.note = (
            f"sweep_meta.baseline {meta} is not among the settings of these jobs: the "
            "first setting in grid order is the baseline"
        )
        return first
    return Baseline({k: str(v) for k, v in spec.items()}, "sweep_meta.baseline")


def baseline_of(setting: Setting, settings, axes, baseline: Baseline | None) -> Setting | None:
    """The setting ``setting`` is compared with: its own axis values with the baseline's put in."""
    if baseline is None:
        return None
    wanted = {a: baseline.spec.get(a, setting.key[i]) for i, a in enumerate(axes)}
    return next((s for s in settings if _matches(s, axes, wanted)), None)


# --- metrics ---------------------------------------------------------------------------------


def _metric_spec(item: str) -> tuple[str, str | None]:
    name, _, way = item.rpartition(":")
    if way in ("min", "max") and name:
        return name, way
    return item, None


def metric_names(jobs: list[Job], extra: list[str]) -> list[tuple[str, str | None]]:
    """(name, direction): every val/ and eval/ value of the completed jobs' metrics.json, then
    the ``--metric`` names (``NAME:min`` / ``NAME:max`` to give the direction)."""
    done = [job for job in jobs if job.completed]
    names = sorted(
        {
            k
            for job in done
            for k, v in job.metrics.items()
            if k.startswith(DEFAULT_PREFIXES) and isinstance(v, (int, float))
        },
        key=lambda k: (not k.startswith("val/"), k),
    )
    out = [(name, direction(name)) for name in names]
    for item in extra:
        name, way = _metric_spec(item)
        way = way or direction(name)
        if way is None:
            raise ClozelabError(
                f"--metric {item}: cannot tell whether lower or higher is better. Fix: "
                f"--metric {name}:min or --metric {name}:max"
            )
        if done and not any(job.value(name) is not None for job in done):
            known = sorted(
                {k for job in done for k, v in job.metrics.items() if isinstance(v, (int, float))}
            )
            raise ClozelabError(
                f"--metric {name}: no completed job has it (in metrics.json, eval/<task>.json or "
                f"csv/metrics.csv). Fix: name one of {known}"
            )
        out = [(n, w) for n, w in out if n != name] + [(name, way)]
    return out


def not_comparable_note(name: str, settings: list[Setting]) -> str | None:
    """Why ``name`` ranks no setting: it sums the objectives' losses and the settings train
    different objectives (None when it is comparable)."""
    sets = objective_sets(settings)
    if not is_summed(name) or len(sets) < 2:
        return None
    listed = "; ".join(f"{objectives}: {', '.join(labels)}" for objectives, labels in sets.items())
    return (
        f"not comparable across these settings: {name} adds up the losses of each "
        f"setting's objectives, and the objectives differ ({listed}). A setting with more "
        "objectives has a larger sum, not a worse model. No best setting is named and paired "
        "tests are kept only between settings with the same objectives; compare the "
        "per-objective losses (e.g. val/mlm_loss) instead."
    )


def metric_report(name, way, settings, axes, baseline, seed) -> MetricReport:
    note = not_comparable_note(name, settings)
    rows = []
    for setting in settings:
        values = setting.values(name, seed)
        reference = baseline_of(setting, settings, axes, baseline)
        paired = None
        comparable = note is None or (
            reference is not None and reference.objectives() == setting.objectives()
        )
        if reference is not None and reference is not setting and values and comparable:
            paired = paired_test(values, reference.values(name, seed))
        rows.append(Row(setting, summarize(values), reference, paired))
    for row, p in zip(rows, holm([r.paired.p_t if r.paired else None for r in rows]), strict=True):
        row.p_holm = p
    lacking = [j.path for s in settings for j in s.jobs if j.completed and j.value(name) is None]
    if note is not None:
        return MetricReport(name, way, rows, None, lacking, not_comparable=note)
    winner = best({r.setting.label: r.summary.mean for r in rows}, way)
    top = next((r.summary.mean for r in rows if r.setting.label == winner), None)
    for row in rows:  # equal means are all best
        row.is_best = winner is not None and row.summary.mean == top
    return MetricReport(name, way, rows, winner, lacking)


def select_jobs(jobs: list[Job], only: list[str] | None) -> list[Job]:
    """The jobs whose values match every ``KEY=VALUE`` of ``only`` (``--only``)."""
    if not only:
        return jobs
    spec = _parse_pairs(only, "--only")
    kept = [job for job in jobs if all(same_value(job.axis_value(k), v) for k, v in spec.items())]
    if not kept:
        key = next(iter(spec))
        have = sort_values({job.axis_value(key) for job in jobs})
        raise ClozelabError(
            f"--only {' '.join(only)}: no job matches ({key} takes {have}). Fix: give values "
            "the jobs have."
        )
    return kept


def build_report(
    sweep_dirs: list[Path],
    baseline: list[str] | None = None,
    metrics: list[str] | None = None,
    command: str = "clozelab report",
    only: list[str] | None = None,
) -> Report:
    """Read the sweeps and compute every statistic (nothing is written); ``only``: keep the
    jobs with these ``KEY=VALUE`` values (e.g. one rate of a merged sweep)."""
    jobs = select_jobs(load_jobs([Path(d) for d in sweep_dirs]), only)
    seed = seed_key(jobs)
    axes = sweep_axes(jobs, seed)
    fixed = fixed_overrides(jobs, axes, seed)
    redundant = redundant_axes(jobs, axes)
    axes = [axis for axis in axes if axis not in redundant]
    settings = group_settings(jobs, axes)
    mark_duplicates(settings, seed)
    base = resolve_baseline(baseline, jobs, axes, settings)
    reports = [
        metric_report(n, w, settings, axes, base, seed)
        for n, w in metric_names(jobs, list(metrics or []))
    ]
    budget = {s.label: {m: summarize(s.values(m, seed)) for m in BUDGET_METRICS} for s in settings}
    seeds = sort_values({job_seed(job, seed) for job in jobs} - {ABSENT})
    return Report(
        [Path(d) for d in sweep_dirs],
        jobs,
        seed,
        axes,
        fixed,
        settings,
        base,
        reports,
        budget,
        seeds,
        command,
        redundant=redundant,
    )


def report(
    sweep_dirs: list[str | Path],
    out: str | Path | None = None,
    baseline: list[str] | None = None,
    metrics: list[str] | None = None,
    command: str = "clozelab report",
    only: list[str] | None = None,
) -> Report:
    """Build the report of the sweeps and write report.md, report.csv, report.json, plots/."""
    from clozelab.report.plots import write_plots
    from clozelab.report.write import write_csv, write_json, write_markdown

    dirs = [Path(d) for d in sweep_dirs]
    if out is None:
        if len(dirs) > 1:
            raise ClozelabError(
                f"--out: {len(dirs)} sweep dirs are merged into one report, which has no default "
                "place. Fix: give --out DIR."
            )
        out = dirs[0] / "report"
    result = build_report(dirs, baseline, metrics, command, only)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.plots = write_plots(result, out / "plots")
    write_csv(result, out / "report.csv")
    write_json(result, out / "report.json")
    write_markdown(result, out / "report.md", out)
    return result


def main(argv: list[str]) -> None:
    """``clozelab report SWEEP_DIR [SWEEP_DIR ...] [--out DIR] [--baseline KEY=VALUE ...]
    [--metric NAME[:min|:max] ...] [--only KEY=VALUE ...]``."""
    parser = argparse.ArgumentParser(
        prog="clozelab report",
        description="Aggregate the jobs of one or more sweeps (merged): per setting mean ± std "
        "over seeds, 95% t confidence intervals, paired tests against the baseline setting, "
        "the best setting per metric; report.md, report.csv, report.json and PNG plots.",
    )
    parser.add_argument(
        "sweep_dirs",
        nargs="+",
        metavar="SWEEP_DIR",
        help="a sweep's hydra.sweep.dir (multirun/DATE/TIME)",
    )
    parser.add_argument("--out", help="where to write (default: SWEEP_DIR/report)")
    parser.add_argument(
        "--baseline",
        nargs="+",
        metavar="KEY=VALUE",
        help="the baseline setting (default: sweep_meta.baseline, else the first setting)",
    )
    parser.add_argument(
        "--metric",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME[:min|:max]",
        help="more metrics: a metrics.json key, eval/TASK/METRIC, a csv column",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="KEY=VALUE",
        help="report only the jobs with these values (e.g. corruption.rate=0.15)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    command = shlex.join(["clozelab", "report", *argv])
    try:
        result = report(args.sweep_dirs, args.out, args.baseline, args.metric, command, args.only)
    except ClozelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    out = Path(args.out) if args.out else Path(args.sweep_dirs[0]) / "report"
    done = sum(job.completed for job in result.jobs)
    print(
        f"report of {len(result.jobs)} jobs ({done} completed, {len(result.settings)} settings) "
        f"-> {out / 'report.md'}"
    )
