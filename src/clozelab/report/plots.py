"""PNG plots of a sweep report (matplotlib, Agg, no pyplot state):

- per metric: the metric against the first numeric axis (e.g. ``corruption.rate``), one line per
  combination of the other axes (e.g. 80/10/10 vs mask-only), the mean with its 95% confidence
  interval over seeds; without a numeric axis, grouped bars from 0 (groups: the first axis;
  bars: the others) with the same intervals, so a bar's length is its value and the whisker
  says how far it can be trusted;
  the seeds' own values as dots, the best setting starred;
- ``loss_curves.png``: the pre-training ``train/loss`` and ``val/loss`` of csv/metrics.csv per
  setting (the MLM losses when the settings train different objectives), mean over seeds with a
  ±std band, against tokens seen (else steps).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
from matplotlib.figure import Figure

from clozelab.report.jobs import as_float, read_csv_rows
from clozelab.report.stats import better_text

CURVES = ("train/loss", "val/loss")
SHARED_CURVES = ("train/mlm_loss", "val/mlm_loss")  # when the settings' objectives differ
TOKENS = "train/tokens_seen"
MAX_LEGEND = 12


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "metric"


def _colors(count: int):
    cmap = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def numeric_axis(report) -> int | None:
    """Index of the first axis whose values are all numbers (at least two of them)."""
    for i, _ in enumerate(report.axes):
        values = {s.key[i] for s in report.settings}
        try:
            [float(v) for v in values]
        except ValueError:
            continue
        if len(values) > 1:
            return i
    return None


def _hue(setting, keep: list[int], axes: list[str]) -> str:
    return " ".join(f"{axes[i]}={setting.key[i]}" for i in keep) or "all"


def _err(summary) -> float:
    """Half the 95% confidence interval of the mean (0 with one seed: no interval)."""
    return summary.ci_high - summary.mean if summary.ci_high is not None else 0.0


CAPTION = "mean and its 95% CI over seeds (t); dots: seeds; ★ best"


def _finish(fig, ax, metric, way, path: Path, legend: bool, caption: str = CAPTION) -> Path:
    ax.set_title(f"{metric} ({better_text(way)})")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.annotate(
        caption,
        (0, 0),
        xytext=(0, -34),
        xycoords="axes fraction",
        textcoords="offset points",
        fontsize=7,
        va="top",
        color="0.35",
    )
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _lines(metric, report, x_axis: int, path: Path) -> Path:
    keep = [i for i in range(len(report.axes)) if i != x_axis]
    groups: dict[str, list] = defaultdict(list)
    for row in metric.rows:
        groups[_hue(row.setting, keep, report.axes)].append(row)
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    every = [float(r.setting.key[x_axis]) for r in metric.rows]
    dodge = 0.012 * (max(every) - min(every))  # the lines' points side by side, not on top
    for index, (color, (label, rows)) in enumerate(
        zip(_colors(len(groups)), groups.items(), strict=True)
    ):
        rows = sorted(
            (r for r in rows if r.summary.mean is not None),
            key=lambda r: float(r.setting.key[x_axis]),
        )
        if not rows:
            continue
        shift = (index - (len(groups) - 1) / 2) * dodge
        xs = [float(r.setting.key[x_axis]) + shift for r in rows]
        ax.errorbar(
            xs,
            [r.summary.mean for r in rows],
            yerr=[_err(r.summary) for r in rows],
            marker="o",
            capsize=3,
            color=color,
            label=label,
        )
        for x, row in zip(xs, rows, strict=True):
            seeds = list(row.summary.values.values())
            ax.scatter([x] * len(seeds), seeds, s=10, color=color, alpha=0.45, zorder=3)
            if row.is_best:
                ax.scatter(
                    [x],
                    [row.summary.mean],
                    marker="*",
                    s=180,
                    color=color,
                    edgecolors="black",
                    zorder=4,
                )
    ax.set_xlabel(report.axes[x_axis])
    legend = 1 < len(groups) <= MAX_LEGEND  # e.g. Optuna trials: one point each, no legend
    return _finish(fig, ax, metric.name, metric.direction, path, legend=legend)


def _bars(metric, report, path: Path) -> Path:
    axes = report.axes
    group_of = (lambda s: s.key[0]) if axes else (lambda s: "all jobs")
    keep = list(range(1, len(axes)))
    groups = list(dict.fromkeys(group_of(r.setting) for r in metric.rows))
    hues = list(dict.fromkeys(_hue(r.setting, keep, axes) for r in metric.rows))
    width = 0.8 / len(hues)
    fig = Figure(figsize=(max(6.4, 1.1 * len(groups) * max(1, len(hues)) ** 0.5), 4.2))
    ax = fig.subplots()
    colors = dict(zip(hues, _colors(len(hues)), strict=True))
    drawn = set()
    for row in metric.rows:
        summary = row.summary
        if summary.mean is None:
            continue
        hue = _hue(row.setting, keep, axes)
        x = groups.index(group_of(row.setting)) + (hues.index(hue) - (len(hues) - 1) / 2) * width
        ax.bar(
            x,
            summary.mean,
            width * 0.9,
            yerr=_err(summary),
            capsize=3,
            color=colors[hue],
            label=hue if hue not in drawn else None,
            alpha=0.85,
        )
        drawn.add(hue)
        seeds = list(summary.values.values())
        ax.scatter([x] * len(seeds), seeds, s=10, color="black", alpha=0.6, zorder=3)
        if row.is_best:
            ax.scatter(
                [x],
                [summary.mean + _err(summary)],
                marker="*",
                s=180,
                color="gold",
                edgecolors="black",
                zorder=4,
            )
    ax.axhline(0.0, color="0.3", lw=0.8)  # bars start at 0: their lengths compare honestly
    crowded = len(groups) > 4 or sum(len(str(g)) for g in groups) > 48
    ax.set_xticks(
        range(len(groups)),
        groups,
        rotation=20 if crowded else 0,
        ha="right" if crowded else "center",
    )
    ax.set_xlabel(axes[0] if axes else "")
    return _finish(
        fig,
        ax,
        metric.name,
        metric.direction,
        path,
        legend=1 < len(hues) <= MAX_LEGEND,
        caption="bars from 0: " + CAPTION,
    )


def _curve(job, column: str, use_tokens: bool) -> list[tuple[int, float, float]]:
    """(step, x, value) of one column of a job's csv/metrics.csv."""
    rows = read_csv_rows(job.path / "csv" / "metrics.csv")
    steps, tokens = [0.0], [0.0]
    for row in rows:
        step, seen = as_float(row.get("step")), as_float(row.get(TOKENS))
        if step is not None and seen is not None:
            steps.append(step)
            tokens.append(seen)
    out = []
    for row in rows:  # a damaged cell (not a number) leaves its point out
        step, value = as_float(row.get("step")), as_float(row.get(column))
        if step is not None and value is not None:
            x = float(np.interp(step, steps, tokens)) if use_tokens else step
            out.append((int(step), x, value))
    return out


def _has_tokens(jobs) -> bool:
    return all(
        any(r.get(TOKENS) for r in read_csv_rows(j.path / "csv" / "metrics.csv")) for j in jobs
    )


def curve_columns(report) -> tuple[str, str]:
    """train/val loss, or the MLM loss when the settings sum different objectives."""
    from clozelab.report.settings import objective_sets

    return CURVES if len(objective_sets(report.settings)) < 2 else SHARED_CURVES


def loss_curves(report, path: Path) -> Path | None:
    jobs = {s.label: [j for j in s.jobs if j.completed] for s in report.settings}
    every = [j for js in jobs.values() for j in js]
    columns = [c for c in curve_columns(report) if any(_curve(j, c, False) for j in every)]
    if not columns:
        return None
    use_tokens = _has_tokens(every)
    fig = Figure(figsize=(6.0 * len(columns) + 2.5, 4.2))
    panels = np.atleast_1d(fig.subplots(1, len(columns)))
    colors = _colors(len(jobs))
    for ax, column in zip(panels, columns, strict=True):
        for color, (label, members) in zip(colors, jobs.items(), strict=True):
            by_step: dict[int, list[tuple[float, float]]] = defaultdict(list)
            for job in members:
                for step, x, value in _curve(job, column, use_tokens):
                    by_step[step].append((x, value))
            if not by_step:
                continue
            steps = sorted(by_step)
            xs = np.array([np.mean([p[0] for p in by_step[s]]) for s in steps])
            values = [np.array([p[1] for p in by_step[s]]) for s in steps]
            mean = np.array([v.mean() for v in values])
            std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
            ax.plot(xs, mean, color=color, label=f"{label} (n={len(members)})", lw=1.4)
            ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.18, lw=0)
        ax.set_title(f"{column} during pre-training")
        ax.set_xlabel("tokens seen" if use_tokens else "step")
        ax.set_ylabel(column)
        ax.grid(True, alpha=0.3)
    panels[-1].legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
        frameon=False,
        title="mean ± std over seeds",
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def write_plots(report, directory: Path) -> list[Path]:
    """Every plot of the report, in ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    x_axis = numeric_axis(report)
    written = []
    for metric in report.metrics:
        if metric.not_comparable or not any(r.summary.mean is not None for r in metric.rows):
            continue  # no plot sets sums of different objectives side by side
        path = directory / f"{slug(metric.name)}.png"
        if x_axis is not None:
            written.append(_lines(metric, report, x_axis, path))
        else:
            written.append(_bars(metric, report, path))
    curves = loss_curves(report, directory / "loss_curves.png")
    if curves is not None:
        written.append(curves)
    return written
