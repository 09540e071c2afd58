"""Settings: the jobs of a sweep that share every axis value but the seed, and what they trained
(the objectives whose summed loss ``val/loss`` is, so sums are compared only between settings that
train the same objectives)."""

from __future__ import annotations

from dataclasses import dataclass, field

from clozelab.report.jobs import Job, job_seed

SUMMED = ("loss", "dialogue_loss")  # weighted sums over the objectives (val/loss, train/loss)


@dataclass
class Setting:
    """The jobs that share every axis value but the seed."""

    key: tuple[str, ...]
    label: str
    jobs: list[Job] = field(default_factory=list)

    def values(self, metric: str, seed: str) -> dict[str, float]:
        """seed -> value of the completed jobs that have the metric."""
        out = {}
        for job in self.jobs:
            value = job.value(metric) if job.completed else None
            if value is not None:
                out[job_seed(job, seed)] = value
        return out

    def seeds(self, seed: str) -> list[str]:
        return sort_values({job_seed(job, seed) for job in self.jobs if job.completed})

    def objectives(self) -> str:
        """The objectives its completed jobs trained with, and their weights ("mlm+nsp";
        "mlm+sbo×2"); "?" when the jobs' config does not say."""
        for job in self.jobs:
            node = job.config.get("objective") if job.completed else None
            if isinstance(node, dict) and node:
                return "+".join(
                    name + ("" if _weight(part) == 1 else f"×{_weight(part):g}")
                    for name, part in sorted(node.items())
                )
        return "?"


def _weight(node) -> float:
    weight = node.get("weight", 1.0) if isinstance(node, dict) else 1.0
    return float(weight) if isinstance(weight, (int, float)) else 1.0


def is_summed(metric: str) -> bool:
    """A weighted sum of the objectives' losses (``val/loss``): it grows with every objective
    added, so it only compares settings that train the same objectives."""
    return metric.rpartition("/")[2] in SUMMED


def sort_values(values) -> list[str]:
    def key(text: str):
        try:
            return (0, float(text), "")
        except ValueError:
            return (1, 0.0, text)

    return sorted(values, key=key)


def objective_sets(settings: list[Setting]) -> dict[str, list[str]]:
    """Objective set -> the labels of the settings that train it."""
    out: dict[str, list[str]] = {}
    for setting in settings:
        out.setdefault(setting.objectives(), []).append(setting.label)
    return out
