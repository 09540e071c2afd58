"""Statistics of a sweep report: mean, standard deviation (ddof=1) and the Student-t 95%
confidence interval of a setting over its seeds; paired tests against the baseline setting
(paired by seed): the paired t-test (``scipy.stats.ttest_rel``) and the exact sign-flip
permutation test of the seed-wise differences; Holm's correction over the settings of a metric;
which way a metric is better, and the best setting."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
EXACT_MAX_PAIRS = 16  # 2^16 sign assignments; beyond it a seeded Monte Carlo sample
MONTE_CARLO_SAMPLES = 100_000

LOWER_IS_BETTER = {"loss", "perplexity", "ppl", "error", "err", "time", "s", "seconds", "wer"}
HIGHER_IS_BETTER = {
    "acc", "accuracy", "f1", "mcc", "pearson", "spearman", "match", "em", "auc", "precision",
    "recall", "bleu", "rouge", "score", "correlation", "corr",
}  # fmt: skip
HIGHER_NAMES = {"tokens_per_s", "pearson_spearman", "exact_match", "entity_f1"}


def direction(name: str) -> str | None:
    """``min`` (lower is better: losses, perplexity, time) or ``max`` (accuracy, F1, MCC,
    correlations, exact match, throughput) from a metric's name; None when it does not say."""
    last = name.rsplit("/", 1)[-1].lower()
    if last in HIGHER_NAMES:
        return "max"
    words = [w for w in re.split(r"[^a-z0-9]+", last) if w]
    if "loss" in words or (words and words[-1] in LOWER_IS_BETTER):
        return "min"
    if any(w in HIGHER_IS_BETTER for w in words):
        return "max"
    return None


def better_text(way: str | None) -> str:
    return {"min": "lower is better", "max": "higher is better"}.get(way, "direction unknown")


@dataclass
class Summary:
    """A setting's values of one metric over its seeds."""

    values: dict[str, float]  # seed -> value
    n: int
    mean: float | None
    std: float | None  # ddof=1; None with one seed
    sem: float | None
    ci_low: float | None  # Student t, 95%
    ci_high: float | None


def summarize(values: dict[str, float]) -> Summary:
    data = np.array(list(values.values()), dtype=float)
    n = len(data)
    if n == 0:
        return Summary(values, 0, None, None, None, None, None)
    mean = float(data.mean())
    if n == 1:
        return Summary(values, 1, mean, None, None, None, None)
    std = float(data.std(ddof=1))
    sem = std / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sem
    return Summary(values, n, mean, std, sem, mean - half, mean + half)


@dataclass
class Paired:
    """A setting against its baseline on the seeds both have (difference = setting - baseline)."""

    seeds: list[str]
    mean_diff: float | None
    t: float | None
    p_t: float | None  # paired t-test, two-sided
    p_exact: float | None  # sign-flip permutation test, two-sided
    exact: bool  # all 2^n sign assignments (else a Monte Carlo sample)
    note: str | None = None


def sign_flip_p(diffs: np.ndarray) -> tuple[float, bool]:
    """Two-sided p of the paired permutation test: the share of sign assignments of the
    differences whose mean is at least as far from 0 as the observed one. Exact (all 2^n) up to
    EXACT_MAX_PAIRS pairs, else a seeded Monte Carlo estimate ((hits + 1) / (samples + 1))."""
    observed = abs(diffs.sum())
    tolerance = 1e-12 * max(1.0, np.abs(diffs).sum())
    n = len(diffs)
    if n <= EXACT_MAX_PAIRS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        hits = int((np.abs(signs @ diffs) >= observed - tolerance).sum())
        return hits / len(signs), True
    rng = np.random.default_rng(0)
    signs = rng.choice((1.0, -1.0), size=(MONTE_CARLO_SAMPLES, n))
    hits = int((np.abs(signs @ diffs) >= observed - tolerance).sum())
    return (hits + 1) / (MONTE_CARLO_SAMPLES + 1), False


def paired_test(values: dict[str, float], baseline: dict[str, float]) -> Paired:
    seeds = [s for s in values if s in baseline]
    if len(seeds) < 2:
        note = f"{len(seeds)} seed(s) in common with the baseline: no test"
        diff = values[seeds[0]] - baseline[seeds[0]] if seeds else None
        return Paired(seeds, diff, None, None, None, True, note)
    x = np.array([values[s] for s in seeds])
    y = np.array([baseline[s] for s in seeds])
    diffs = x - y
    p_exact, exact = sign_flip_p(diffs)
    if np.allclose(diffs, diffs[0], rtol=0.0, atol=1e-12 * max(1.0, float(np.abs(y).max()))):
        note = "the differences are all equal (no variance): no t-test"
        return Paired(seeds, float(diffs.mean()), None, None, p_exact, exact, note)
    result = stats.ttest_rel(x, y)
    return Paired(
        seeds, float(diffs.mean()), float(result.statistic), float(result.pvalue), p_exact, exact
    )


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None)."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted: list[float | None] = [None] * len(pvalues)
    running, m = 0.0, len(present)
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def best(means: dict[str, float | None], way: str | None) -> str | None:
    """The setting with the best mean (the first of equals); None without a direction."""
    present = {k: v for k, v in means.items() if v is not None}
    if way is None or not present:
        return None
    pick = min if way == "min" else max
    return pick(present, key=present.get)
