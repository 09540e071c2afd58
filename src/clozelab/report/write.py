"""The files of a sweep report: report.md (tables for people), report.csv (one row per setting
and metric with every statistic) and report.json (the same for machines)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from clozelab.report.jobs import ABSENT, job_seed, protocol_summary
from clozelab.report.plots import SHARED_CURVES, curve_columns, slug
from clozelab.report.settings import SUMMED, objective_sets
from clozelab.report.stats import CONFIDENCE, EXACT_MAX_PAIRS, better_text

METHODS = (
    "Statistics over pre-training seeds (one value per job; a downstream score is already the "
    "mean over its fine-tuning seeds): mean, std with ddof=1, n, and the {ci:.0%} confidence "
    "interval mean ± t(n-1) · std/√n (Student t). Each setting is compared with its baseline "
    "on the seeds both have (difference = setting − baseline): **p (t)** is the two-sided paired "
    "t-test (`scipy.stats.ttest_rel`), **p (Holm)** the same corrected over the settings of the "
    "metric (Holm–Bonferroni), **p (exact)** the two-sided exact paired permutation test "
    "(all 2^n sign flips of the differences; a seeded Monte Carlo sample beyond {exact} pairs), "
    "which assumes no normality but can never go below 2/2^n (0.25 with 3 seeds, 0.0625 with "
    "5): with few seeds, read p (t) with caution and add seeds before calling a difference real. "
    "★ best setting (by mean), ◆ baseline, † fewer seeds than the fullest setting."
)


def fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
    return str(value)


def fmt_p(p) -> str:
    if p is None:
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _cell(text) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return text.replace("|", "\\|")


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _mean_std(summary) -> str:
    if summary.mean is None:
        return "—"
    return fmt(summary.mean) + ("" if summary.std is None else f" ± {fmt(summary.std, 2)}")


def _ci(summary) -> str:
    return "—" if summary.ci_low is None else f"[{fmt(summary.ci_low)}, {fmt(summary.ci_high)}]"


def short_seeds(report) -> dict[str, list[str]]:
    """setting label -> the seeds it lacks (completed) that another setting has."""
    every = set().union(*(set(s.seeds(report.seed)) for s in report.settings))
    out = {}
    for setting in report.settings:
        lacking = sorted(every - set(setting.seeds(report.seed)))
        if lacking:
            out[setting.label] = lacking
    return out


def _is_baseline(row) -> bool:
    return row.baseline is row.setting


def _marks(row, short) -> str:
    return (
        ("★" if row.is_best else "")
        + ("◆" if _is_baseline(row) else "")
        + ("†" if row.setting.label in short else "")
    )


def _partial_baseline(report) -> bool:
    return report.baseline is not None and set(report.baseline.spec) != set(report.axes)


def _metric_section(report, metric, short, plots_rel) -> list[str]:
    lines = [f"### {metric.name} ({better_text(metric.direction)})", ""]
    header = [
        *report.axes,
        "",
        "n",
        "mean ± std",
        f"{CONFIDENCE:.0%} CI",
        "Δ vs baseline",
        "p (t)",
        "p (Holm)",
        "p (exact)",
    ]
    if _partial_baseline(report):
        header.append("baseline")
    rows = []
    for row in metric.rows:
        p = row.paired
        cells = [
            *row.setting.key,
            _marks(row, short),
            row.summary.n,
            _mean_std(row.summary),
            _ci(row.summary),
            fmt(p.mean_diff) if p else "—",
            fmt_p(p.p_t if p else None),
            fmt_p(row.p_holm),
            fmt_p(p.p_exact if p else None),
        ]
        if _partial_baseline(report):
            cells.append(row.baseline.label if row.baseline else "—")
        rows.append(cells)
    lines += _table(header, rows)
    if metric.not_comparable:
        lines[1:1] = ["", f"**Not ranked**: {metric.not_comparable}"]
    notes = sorted({r.paired.note for r in metric.rows if r.paired and r.paired.note})
    if metric.no_value:
        jobs = ", ".join(f"`{p}`" for p in metric.no_value)
        notes.append(f"completed jobs without a (finite) value, not counted: {jobs}")
    lines += [""] + [f"- {n}" for n in notes] if notes else []
    if metric.name in plots_rel:
        lines += ["", f"![{metric.name}]({plots_rel[metric.name]})"]
    return [*lines, ""]


def _summary_section(report) -> list[str]:
    rows = []
    for metric in report.metrics:
        row = next((r for r in metric.rows if r.is_best), None)
        if metric.not_comparable:
            rows.append(
                [
                    metric.name,
                    metric.direction or "?",
                    "not comparable: the settings train different objectives (see below)",
                    "—",
                    "—",
                    "—",
                    "—",
                ]
            )
            continue
        if row is None:
            rows.append([metric.name, metric.direction or "?", "—", "—", "—", "—", "—"])
            continue
        reference = row.baseline
        base_row = next((r for r in metric.rows if r.setting is reference), None)
        p = row.paired
        rows.append(
            [
                metric.name,
                metric.direction,
                row.setting.label,
                _mean_std(row.summary),
                f"{reference.label}: {_mean_std(base_row.summary)}" if base_row else "—",
                fmt_p(p.p_t if p else None),
                fmt_p(p.p_exact if p else None),
            ]
        )
    header = ["metric", "better", "best setting", "mean ± std", "baseline", "p (t)", "p (exact)"]
    return ["## Best setting per metric", "", *_table(header, rows), ""]


def _protocol_section(report) -> list[str]:
    lines = ["## Protocol", ""]
    lines.append(f"- sweep dirs: {', '.join(f'`{d}`' for d in report.sweep_dirs)}")
    lines.append(
        f"- axes: {', '.join(f'`{a}`' for a in report.axes) or 'none (one setting)'}; "
        f"seed axis `{report.seed}`, seeds {', '.join(report.seeds) or '—'}"
    )
    for axis, same in report.redundant.items():
        lines.append(
            f"- `{axis}` is left out of the setting names: it splits the jobs exactly as "
            f"`{same}` does (one value of each always goes with one value of the other)"
        )
    sets = objective_sets(report.settings)
    if len(sets) > 1:
        listed = "; ".join(f"{o}: {', '.join(labels)}" for o, labels in sets.items())
        lines.append(
            f"- objectives differ between settings ({listed}): summed losses "
            f"({', '.join(f'val/{s}' for s in SUMMED)}) are not ranked"
        )
    if report.fixed:
        fixed = " ".join(f"{k}={v}" for k, v in report.fixed.items())
        lines.append(f"- fixed overrides: `{fixed}`")
    grouped: dict[str, list[str]] = {}
    for key, values in protocol_summary([j for j in report.jobs if j.status != "missing"]).items():
        shown = fmt(values[0]) if len(values) == 1 else "varies: " + ", ".join(map(fmt, values))
        head, _, rest = key.partition(".")
        grouped.setdefault(head, []).append(f"{rest}={shown}" if rest else shown)
    lines += [f"- {head}: {', '.join(parts)}" for head, parts in grouped.items()]
    base = report.baseline
    if base is None:
        lines.append("- baseline: none (one setting: no paired tests)")
    else:
        spec = " ".join(f"{k}={v}" for k, v in base.spec.items())
        within = " (within each value of the other axes)" if _partial_baseline(report) else ""
        lines.append(f"- baseline: `{spec}` from {base.source}{within}")
        if base.note:
            lines.append(f"- note: {base.note}")
    return [*lines, ""]


def _budget_section(report) -> list[str]:
    header = [*report.axes, "tokens seen", "steps", "wall time (s)"]
    rows = [
        [
            *s.key,
            *(
                _mean_std(report.budget[s.label][m])
                for m in ("tokens_seen", "steps", "wall_time_s")
            ),
        ]
        for s in report.settings
    ]
    return ["## Budget per setting (compute matching)", "", *_table(header, rows), ""]


def _jobs_section(report) -> list[str]:
    counts: dict[str, int] = {}
    for job in report.jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    lines = [
        "## Jobs left out: failed, interrupted, missing, damaged, duplicate",
        "",
        f"{len(report.jobs)} jobs: "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + ". Only completed jobs enter the statistics.",
        "",
    ]
    bad = [j for j in report.jobs if not j.completed]
    setting_of = {id(j): s.label for s in report.settings for j in s.jobs}
    if bad:
        rows = [
            [f"`{j.path}`", setting_of[id(j)], job_seed(j, report.seed), j.status, j.error or ""]
            for j in bad
        ]
        lines += _table(["job", "setting", "seed", "status", "error"], rows)
    else:
        lines.append("None: every job completed.")
    short = short_seeds(report)
    if short:
        lines += ["", "Settings with fewer seeds (†):", ""]
        lines += [f"- {label}: lacks seed(s) {', '.join(s)}" for label, s in short.items()]
    return [*lines, ""]


def write_markdown(report, path: Path, out_dir: Path) -> None:
    names = " + ".join(dict.fromkeys(str(p.name) for p in report.sweep_dirs))
    plots_rel = {}
    for metric in report.metrics:
        for plot in report.plots:
            if plot.stem == slug(metric.name):
                plots_rel[metric.name] = os.path.relpath(plot, out_dir)
    short = short_seeds(report)
    lines = [f"# Sweep report: {names}", "", f"Made by: `{report.command}`", ""]
    lines += _protocol_section(report)
    lines += _summary_section(report)
    lines += [
        "## Per-setting results",
        "",
        METHODS.format(ci=CONFIDENCE, exact=EXACT_MAX_PAIRS),
        "",
    ]
    for metric in report.metrics:
        lines += _metric_section(report, metric, short, plots_rel)
    lines += _budget_section(report)
    curves = [p for p in report.plots if p.name == "loss_curves.png"]
    if curves:
        lines += ["## Pre-training loss curves", ""]
        if curve_columns(report) == SHARED_CURVES:
            lines += [
                "The settings train different objectives, so their summed losses do not "
                "compare: the curves show the MLM loss.",
                "",
            ]
        lines += [f"![loss curves]({os.path.relpath(curves[0], out_dir)})", ""]
    lines += _jobs_section(report)
    path.write_text("\n".join(lines), "utf-8")


CSV_FIELDS = ["metric", "direction", "label", "n", "seeds", "mean", "std", "sem", "ci95_low",
              "ci95_high", "best", "baseline", "is_baseline", "fewer_seeds", "n_pairs",
              "mean_diff", "t", "p_t", "p_holm", "p_exact", "exact", "values"]  # fmt: skip


def _row_record(report, metric, row, short) -> dict:
    s, p = row.summary, row.paired
    record = {
        "metric": metric.name,
        "direction": metric.direction,
        "label": row.setting.label,
        "axes": dict(zip(report.axes, row.setting.key, strict=True)),
        "n": s.n,
        "seeds": list(s.values),
        "mean": s.mean,
        "std": s.std,
        "sem": s.sem,
        "ci95_low": s.ci_low,
        "ci95_high": s.ci_high,
        "best": row.is_best,
        "baseline": row.baseline.label if row.baseline else None,
        "is_baseline": _is_baseline(row),
        "fewer_seeds": row.setting.label in short,
        "n_pairs": len(p.seeds) if p else None,
        "mean_diff": p.mean_diff if p else None,
        "t": p.t if p else None,
        "p_t": p.p_t if p else None,
        "p_holm": row.p_holm,
        "p_exact": p.p_exact if p else None,
        "exact": p.exact if p else None,
        "values": s.values,
    }
    return record


def _axis_column(axis: str) -> str:
    """An axis's CSV column: its name (``axis.NAME`` where a statistic has that name)."""
    return f"axis.{axis}" if axis in CSV_FIELDS else axis


def write_csv(report, path: Path) -> None:
    short = short_seeds(report)
    columns = [_axis_column(a) for a in report.axes]
    fields = [*CSV_FIELDS[:3], *columns, *CSV_FIELDS[3:]]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for metric in report.metrics:
            for row in metric.rows:
                record = _row_record(report, metric, row, short)
                axes = record.pop("axes")
                record.update({_axis_column(a): v for a, v in axes.items()})
                record["seeds"] = ";".join(record["seeds"])
                record["values"] = ";".join(f"{k}:{v!r}" for k, v in record["values"].items())
                writer.writerow({k: "" if v is None else v for k, v in record.items()})


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(report, path: Path) -> None:
    short = short_seeds(report)
    base = report.baseline
    setting_of = {id(j): s.label for s in report.settings for j in s.jobs}
    payload = {
        "command": report.command,
        "sweep_dirs": report.sweep_dirs,
        "axes": report.axes,
        "redundant_axes": report.redundant,
        "seed_axis": report.seed,
        "seeds": report.seeds,
        "fixed_overrides": report.fixed,
        "baseline": None
        if base is None
        else {"spec": base.spec, "source": base.source, "note": base.note},
        "protocol": protocol_summary([j for j in report.jobs if j.status != "missing"]),
        "settings": [
            {
                "label": s.label,
                "axes": dict(zip(report.axes, s.key, strict=True)),
                "seeds": s.seeds(report.seed),
                "fewer_seeds": short.get(s.label),
                "jobs": [str(j.path) for j in s.jobs],
                "budget": {m: v.__dict__ for m, v in report.budget[s.label].items()},
            }
            for s in report.settings
        ],
        "metrics": {
            m.name: {
                "direction": m.direction,
                "best": m.best,
                "no_value": m.no_value,
                "comparable": m.not_comparable is None,
                "not_comparable": m.not_comparable,
                "rows": [_row_record(report, m, r, short) for r in m.rows],
            }
            for m in report.metrics
        },
        "jobs": [
            {
                "path": j.path,
                "status": j.status,
                "error": j.error,
                "setting": setting_of[id(j)],
                "seed": None if job_seed(j, report.seed) == ABSENT else job_seed(j, report.seed),
            }
            for j in report.jobs
        ],
        "plots": report.plots,
    }
    path.write_text(json.dumps(_clean(payload), indent=2), "utf-8")
