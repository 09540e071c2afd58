"""The jobs of one or more sweep directories, as ``clozelab report`` reads them.

A job directory is one that holds ``config.yaml`` or ``.hydra/`` (Hydra writes
``<hydra.sweep.dir>/<job num>/``). Each job gives its overrides (the record it wrote, ``job.json``;
``.hydra/overrides.yaml`` for older jobs), its
status and error (``metrics.json``), its metric values (``metrics.json``, ``eval/<task>.json``,
``csv/metrics.csv``) and its protocol. The grid Hydra's basic sweeper expands from
``multirun.yaml`` names the jobs that should exist, so a job that never ran is listed as missing.

The *axes* are the override keys whose value varies across the jobs; the seed axis (``seed``, or
``sweep_meta.seed_key``) is the one the statistics run over, the others make a *setting*.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from clozelab.core.claim import RECORD_FILE
from clozelab.core.errors import ClozelabError

log = logging.getLogger(__name__)

JOB_MARKERS = ("config.yaml", ".hydra")
ABSENT = "(default)"  # an axis a job neither overrides nor records


@dataclass
class Job:
    """One job of a sweep (``status`` "missing" for a grid point without results)."""

    path: Path
    sweep_dir: Path
    order: tuple  # (index of its sweep dir, job number or name): grid order
    overrides: dict[str, str]  # key -> value as written on the command line
    status: str  # completed | failed | interrupted | missing | damaged
    error: str | None = None
    config: dict = field(default_factory=dict)
    choices: dict[str, str] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # metrics.json
    evals: dict[str, dict] = field(default_factory=dict)  # task -> eval/<task>.json

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def axis_value(self, key: str) -> str:
        """The job's value of ``key``: its override, else the group option it ran with, else the
        value in its resolved config."""
        if key in self.overrides:
            return self.overrides[key]
        if key in self.choices:
            return self.choices[key]
        value = _select(self.config, key)
        return ABSENT if value is None else _as_text(value)

    def value(self, name: str) -> float | None:
        """A metric's value: metrics.json, else ``eval/<task>/<metric>`` from eval/<task>.json,
        else the last value of that column in csv/metrics.csv."""
        found = self.metrics.get(name)
        if found is None and name.startswith("eval/") and name.count("/") == 2:
            _, task, metric = name.split("/")
            found = ((self.evals.get(task) or {}).get("metrics") or {}).get(metric, {}).get("mean")
        if found is None:
            found = last_csv_value(self.path / "csv" / "metrics.csv", name)
        try:
            number = float(found)
        except (TypeError, ValueError):
            return None
        return number if math.isfinite(number) else None


def _as_text(value) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _select(container: dict, key: str):
    node = container
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text("utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8 text
        return None


class Damage:
    """The damaged records of one job directory (a file there that cannot be read as what it
    should be), named in the report instead of being taken for a job that has not run."""

    def __init__(self, path: Path):
        self.path = path
        self.files: list[str] = []

    def json(self, name: str) -> dict:
        """A JSON object file of the job ({} when absent; noted when present but unreadable)."""
        file = self.path / name
        if not file.exists():
            return {}
        try:
            value = json.loads(file.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            self.files.append(f"{name} ({type(exc).__name__}: {str(exc)[:80]})")
            return {}
        if not isinstance(value, dict):
            self.files.append(f"{name} (a JSON {type(value).__name__}, not an object)")
            return {}
        return value

    def yaml(self, name: str, kind: type):
        """A YAML file of the job holding a ``kind`` (None when absent or damaged, noted)."""
        file = self.path / name
        if not file.exists():
            return None
        value = _read_yaml(file)
        if not isinstance(value, kind):
            self.files.append(f"{name} (not a YAML {kind.__name__})")
            return None
        return value

    def message(self) -> str:
        return (
            f"damaged record: {'; '.join(self.files)} in {self.path}. Fix: restore the file(s) "
            "from a backup, or re-run the job (re-launch the sweep: a finished job is skipped, "
            "this one resumes from its checkpoint)"
        )


def split_override(text: str) -> tuple[str, str] | None:
    """``"corruption.rate=0.3"`` -> ("corruption.rate", "0.3"); ``+key=v`` and ``++key=v`` as
    ``key``; a deletion (``~key``) is not a value (None)."""
    if text.startswith("~") or "=" not in text:
        return None
    key, value = text.split("=", 1)
    return key.lstrip("+"), value


def parse_overrides(items) -> dict[str, str]:
    pairs = (split_override(str(item)) for item in items or [])
    return dict(pair for pair in pairs if pair is not None)


def as_float(value) -> float | None:
    """A finite number from a record's text, else None (absent, empty, damaged)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def last_csv_value(path: Path, column: str) -> float | None:
    for row in reversed(read_csv_rows(path)):
        value = as_float(row.get(column))
        if value is not None:
            return value
    return None


_WARNED: set[Path] = set()  # damaged CSV logs already named


def read_csv_rows(path: Path) -> list[dict]:
    """The rows of a Lightning CSVLogger file (empty when there is none or it is damaged)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, ValueError, csv.Error) as exc:  # ValueError: not UTF-8 text
        if path.exists() and path not in _WARNED:
            _WARNED.add(path)
            log.warning("%s: unreadable (%s); its curves are left out", path, exc)
        return []


def _job_key(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def find_job_dirs(root: Path) -> list[Path]:
    """Every job directory under ``root`` (``root`` itself when it is one), in job order; the
    inside of a job directory is not searched."""
    if any((root / marker).exists() for marker in JOB_MARKERS):
        return [root]
    found = []
    for child in sorted((p for p in root.iterdir() if p.is_dir()), key=_job_key):
        if child.name.startswith(".") or child.name == "report":
            continue
        found.extend(find_job_dirs(child))
    return found


def _launch_record(path: Path, damage: Damage) -> tuple[list, dict]:
    """A job's overrides and config-group choices: from the record the job wrote (job.json),
    else from Hydra's ``.hydra/`` (jobs of older versions)."""
    record = damage.json(RECORD_FILE)
    if isinstance(record.get("overrides"), list) and isinstance(record.get("choices"), dict):
        return record["overrides"], record["choices"]
    hydra = damage.yaml(".hydra/hydra.yaml", dict) or {}
    runtime = hydra.get("hydra") if isinstance(hydra.get("hydra"), dict) else {}
    choices = (runtime.get("runtime") or {}).get("choices") if isinstance(runtime, dict) else {}
    overrides = damage.yaml(".hydra/overrides.yaml", list) or []
    if not all(isinstance(o, str) for o in overrides):
        damage.files.append(".hydra/overrides.yaml (entries that are not overrides)")
        overrides = []
    return overrides, choices if isinstance(choices, dict) else {}


def read_job(path: Path, sweep_dir: Path, index: int) -> Job:
    damage = Damage(path)
    metrics = damage.json("metrics.json")
    overrides, choices = _launch_record(path, damage)
    config = damage.yaml("config.yaml", dict) or {}
    evals = {p.stem: damage.json(f"eval/{p.name}") for p in sorted((path / "eval").glob("*.json"))}
    evals.pop("summary", None)
    if damage.files:
        status, error = "damaged", damage.message()
    elif metrics:
        status, error = str(metrics.get("status", "completed")), metrics.get("error")
    else:
        status = "missing"
        error = "no metrics.json: the job has not run, is still running, or was killed"
    return Job(
        path=path,
        sweep_dir=sweep_dir,
        order=(index, *_job_key(path)),
        overrides=parse_overrides(overrides),
        status=status,
        error=error,
        config=config,
        choices={str(k): str(v) for k, v in choices.items() if v is not None},
        metrics=metrics,
        evals=evals,
    )


def expected_grid(sweep_dir: Path) -> list[list[str]] | None:
    """The override lists of the jobs Hydra's basic sweeper made from ``multirun.yaml`` (the
    sweep file's ``hydra.sweeper.params`` and the command line, the later one winning); None
    when there is no multirun.yaml or its sweeper is not the basic one (Optuna picks as it
    goes)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    run = _read_yaml(sweep_dir / "multirun.yaml") or {}
    hydra = run.get("hydra") or {}
    sweeper = hydra.get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments = list((hydra.get("overrides") or {}).get("task") or [])
    try:
        parsed = OverridesParser.create().parse_overrides([*params, *arguments])
        return BasicSweeper.split_arguments(parsed, None)[0]
    except Exception as exc:  # e.g. glob(), which needs the config loader
        log.warning("%s: the grid in multirun.yaml cannot be expanded (%s)", sweep_dir, exc)
        return None


def _missing_jobs(sweep_dir: Path, index: int, jobs: list[Job]) -> list[Job]:
    grid = expected_grid(sweep_dir)
    if grid is None:
        return []
    have = [job.overrides for job in jobs]
    damaged = {job.path for job in jobs if job.status == "damaged"}  # listed as damaged
    missing = []
    for num, items in enumerate(grid):
        overrides = parse_overrides(items)
        path = sweep_dir / str(num)
        if overrides in have or path in damaged:
            continue
        missing.append(
            Job(
                path=path,
                sweep_dir=sweep_dir,
                order=(index, 0, num, ""),
                overrides=overrides,
                status="missing",
                error="in the grid of multirun.yaml, but no job directory",
            )
        )
    return missing


def _sweep_of(job_dir: Path, root: Path) -> Path:
    """The sweep a job belongs to: its parent when that holds multirun.yaml (a folder of several
    sweeps given at once), else the directory given."""
    parent = job_dir.parent
    return parent if (parent / "multirun.yaml").is_file() else root


def load_jobs(sweep_dirs: list[Path]) -> list[Job]:
    """Every job of the sweep directories, missing grid points included, in grid order."""
    jobs: list[Job] = []
    for index, root in enumerate(sweep_dirs):
        if not root.is_dir():
            raise ClozelabError(
                f"SWEEP_DIR {root}: no such directory. Fix: give the hydra.sweep.dir of a sweep "
                "(e.g. multirun/DATE/TIME, which holds one directory per job)."
            )
        found = [read_job(path, _sweep_of(path, root), index) for path in find_job_dirs(root)]
        if not found:
            raise ClozelabError(
                f"SWEEP_DIR {root}: holds no job directories (expected {root}/<job num>/ with "
                "config.yaml or .hydra/, as `clozelab pretrain sweep=NAME` writes). Fix: give "
                "the sweep's hydra.sweep.dir."
            )
        jobs.extend(found)
        for sweep in dict.fromkeys([root, *(job.sweep_dir for job in found)]):
            jobs.extend(_missing_jobs(sweep, index, [j for j in found if j.sweep_dir == sweep]))
    return sorted(jobs, key=lambda job: job.order)


def seed_key(jobs: list[Job]) -> str:
    """``sweep_meta.seed_key`` of the jobs (``seed`` when none sets it)."""
    for job in jobs:
        key = _select(job.config, "sweep_meta.seed_key")
        if key:
            return str(key)
    return "seed"


def sweep_axes(jobs: list[Job], seed: str) -> list[str]:
    """The override keys whose value differs between jobs (seed left out), in override order."""
    keys: list[str] = []
    for job in jobs:
        keys.extend(k for k in job.overrides if k not in keys)
    varying = [key for key in keys if len({job.axis_value(key) for job in jobs}) > 1]
    return [key for key in varying if key != seed]


def redundant_axes(jobs: list[Job], axes: list[str]) -> dict[str, str]:
    """Axes that split the jobs exactly as an earlier axis does, one value of each always going
    with one value of the other (e.g. ``sweep`` beside ``setting`` when two sweeps holding one
    setting each are merged): ``{redundant axis: the earlier axis it repeats}``. Keeping both
    would make every setting differ from the baseline in two axes, so none would be compared.
    Values a job does not record (``(default)``) are left out of the check."""
    redundant: dict[str, str] = {}
    for i, axis in enumerate(axes):
        for earlier in (a for a in axes[:i] if a not in redundant):
            pairs = {(job.axis_value(earlier), job.axis_value(axis)) for job in jobs}
            pairs = {pair for pair in pairs if ABSENT not in pair}
            if len(pairs) > 1 and len(pairs) == len(dict(pairs)) == len({b: a for a, b in pairs}):
                redundant[axis] = earlier
                break
    return redundant


def fixed_overrides(jobs: list[Job], axes: list[str], seed: str) -> dict[str, str]:
    """The overrides every job shares (the sweep's fixed settings)."""
    fixed: dict[str, str] = {}
    for job in jobs:
        for key in job.overrides:
            if key not in axes and key != seed and key not in fixed:
                fixed[key] = job.axis_value(key)
    return fixed


def job_seed(job: Job, seed: str) -> str:
    return job.axis_value(seed)


def job_protocol(job: Job) -> dict:
    """The protocol a job recorded in metrics.json, else the one its config.yaml implies."""
    recorded = job.metrics.get("protocol")
    if isinstance(recorded, dict):
        return recorded
    if not job.config:
        return {}
    from omegaconf import OmegaConf

    from clozelab.training.protocol import protocol

    try:
        derived = protocol(OmegaConf.create(job.config))
    except Exception:  # an older or hand-made config without the keys protocol() reads
        return {}
    derived["model"]["name"] = job.choices.get("model")
    return derived


def _flatten(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def protocol_summary(jobs: list[Job], leave_out=("seed", "choices")) -> dict[str, list]:
    """Each protocol field -> its distinct values over the jobs (one value: shared by all)."""
    values: dict[str, list] = {}
    for job in jobs:
        protocol = {k: v for k, v in job_protocol(job).items() if k not in leave_out}
        for key, value in _flatten(protocol).items():
            seen = values.setdefault(key, [])
            if value not in seen:
                seen.append(value)
    return values
