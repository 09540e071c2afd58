"""Pool the per-seed scores of the pre-trained and ``checkpoint=none`` arms and test the gap.

Each argument is ``LABEL:ROOT:TASK:METRIC``; ROOT holds fine-tuning run folders whose names end in
``_pre`` or ``_none``, each with ``eval/TASK.json`` (``clozelab finetune ... eval_dir=DIR/eval``).
Prints a markdown table row per argument (mean ± sample std, Welch's t-test) and writes every
row, with the per-seed values and the protocol, to ``results.json`` beside this script, or to
the file given by ``--out``.

usage: python summarize.py [--out FILE.json] LABEL:ROOT:TASK:METRIC [...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from scipy import stats

from clozelab.report.stats import summarize


def arm_values(root: Path, arm: str, task: str, metric: str) -> tuple[list[float], dict]:
    values: list[float] = []
    protocol: dict = {}
    for run in sorted(root.glob(f"*_{arm}")):
        path = run / "eval" / f"{task}.json"
        if path.exists():
            result = json.loads(path.read_text())
            values += result["metrics"][metric]["values"]
            protocol = result["protocol"]
    if len(values) < 2:
        sys.exit(f"{root}: fewer than 2 {arm} seeds of {task} {metric}")
    return values, protocol


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(__file__).with_name("results.json")
    if argv[:1] == ["--out"]:
        if len(argv) < 2:
            sys.exit("error: --out needs a file name, e.g. --out results.json")
        out, argv = Path(argv[1]), argv[2:]
    rows = []
    for spec in argv:
        label, root, task, metric = spec.split(":")
        pre, protocol = arm_values(Path(root), "pre", task, metric)
        none, _ = arm_values(Path(root), "none", task, metric)
        welch = stats.ttest_ind(pre, none, equal_var=False)
        a, b = (summarize(dict(enumerate(v))) for v in (pre, none))
        row = {
            "study": label, "task": task, "metric": metric, "pretrained": pre, "none": none,
            "pretrained_mean": a.mean, "pretrained_std": a.std,
            "none_mean": b.mean, "none_std": b.std,
            "welch_t": float(welch.statistic), "welch_p": float(welch.pvalue),
            "protocol": protocol,
        }  # fmt: skip
        rows.append(row)
        print(
            f"| {label} | {task} {metric} | {row['pretrained_mean']:.3f} ± "
            f"{row['pretrained_std']:.3f} | {row['none_mean']:.3f} ± {row['none_std']:.3f} | "
            f"{len(pre)} / {len(none)} | t = {row['welch_t']:.2f}, p = {row['welch_p']:.2g} |"
        )
    out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
