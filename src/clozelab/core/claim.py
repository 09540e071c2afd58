"""Who holds a run directory and what it holds (core.rundir owns its layout and files): one live
run per directory, and what a re-launch may do there.

- **Lock.** A run holds ``<run dir>/.clozelab.lock`` (a POSIX record lock, which the kernel
  drops when the process dies: a crashed or killed run never leaves it stuck) and writes who
  holds it (pid, host, start time, command) into the file. A second launch on the same directory
  is refused with a message naming the holder. The file is removed when the run ends.
- **Record.** ``job.json`` is the record a run writes of itself: a hash of its resolved config
  (``paths`` left out), its command-line overrides and config-group choices, how many times it
  was launched and whether it finished. A re-launch compares its own config with it:
  the same config after a completed run is a no-op that says so; another config is refused
  (a sweep job: whenever the directory holds another config's run; a single run: when that run
  completed). Nothing in the directory is touched by a refused or no-op launch.
- **Hydra's launch record** (``.hydra/``) is written here, after the checks pass, instead of by
  Hydra before the command starts (``hydra.output_subdir: null``), so a refused launch cannot
  overwrite the record of the run the directory holds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from clozelab.core.errors import ClozelabError
from clozelab.core.rundir import read_json, write_json

LOCK_FILE = ".clozelab.lock"
RECORD_FILE = "job.json"
HYDRA_SUBDIR = ".hydra"
_HELD: set[str] = set()  # lock paths this process holds (POSIX locks do not exclude oneself)


class RunDirectoryRefused(ClozelabError):
    """The run directory is in use or holds another run: nothing in it was changed."""


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config without ``paths`` (where a run lives is not what it is)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("paths", None)
    text = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------- the lock
class RunLock:
    """The lock of one run directory (see the module docstring)."""

    def __init__(self, run_dir: str | Path, key: str = "hydra.run.dir"):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.key = key
        self._fd: int | None = None

    def _refuse(self) -> RunDirectoryRefused:
        holder = read_json(self.path)
        who = (
            f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command')}"
            if holder
            else "a process that is starting"
        )
        return RunDirectoryRefused(
            f"{self.key}={self.run_dir}: another run is using this directory ({who}); nothing "
            "in it was changed. Fix: wait for that run to end (or stop it: a re-launch then "
            f"resumes it), or give this run its own {self.key}."
        )

    def _open(self) -> int:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ClozelabError(
                f"{self.key}={self.run_dir}: cannot be written ({exc.strerror or exc}). Fix: "
                f"point {self.key} at a directory you can write to."
            ) from None

    def acquire(self) -> None:
        key = str(self.path.resolve())
        if key in _HELD:
            raise self._refuse()
        while True:
            fd = self._open()
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._refuse() from None
            try:  # the file may have been removed by the holder that just released it
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)
        self._fd = fd
        _HELD.add(key)

    def release(self) -> None:
        if self._fd is None:
            return
        _HELD.discard(str(self.path.resolve()))
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing drops the record lock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# ----------------------------------------------------------------------------- the record
def _as_dict(overrides: list) -> dict[str, str]:
    pairs = (str(o).split("=", 1) for o in overrides if "=" in str(o))
    return {key.lstrip("+~"): value for key, value in pairs}  # the last of a key wins


def _differences(recorded: list, launched: list) -> str:
    old, new = _as_dict(recorded), _as_dict(launched)
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    if not keys:
        return "the same overrides, but the resolved configs differ (a changed default or file)"
    shown = [f"{k}={old.get(k, '(default)')} there, {new.get(k, '(default)')} now" for k in keys]
    return "; ".join(shown[:4]) + (" ..." if len(shown) > 4 else "")


def check_relaunch(run_dir: Path, digest: str, overrides: list[str], key: str, strict: bool):
    """What a launch of the config ``digest`` may do in ``run_dir``: returns the metrics of a run
    that completed there with this config (the launch is a no-op), None to go on (a new run, or a
    resume); raises RunDirectoryRefused when the directory holds another config's run (``strict``:
    any such run, as sweep jobs are; else a completed one). Reads only."""
    record, metrics = read_json(run_dir / RECORD_FILE), read_json(run_dir / "metrics.json")
    completed = metrics.get("status") == "completed"
    if record and record.get("config_hash") != digest and (strict or completed):
        state = "a completed run" if completed else "a run"
        raise RunDirectoryRefused(
            f"{key}: {run_dir} holds {state} of another config "
            f"({_differences(list(record.get('overrides') or []), overrides)}); it is left as it "
            f"is. Fix: re-launch with the config that wrote it (its config.yaml and "
            f"{RECORD_FILE}), or give this launch a new {key}."
        )
    if completed and not record:
        raise RunDirectoryRefused(
            f"{key}: {run_dir} holds a completed run with no {RECORD_FILE} (written by an older "
            "clozelab), so this launch cannot tell whether its config is the same; it is left as "
            f"it is. Fix: give this launch a new {key}."
        )
    if completed and record.get("finished"):
        return metrics
    return None


def claim(run_dir: Path, digest: str, overrides: list[str], choices: dict | None = None) -> None:
    """Record that ``run_dir`` runs the config ``digest`` (after ``check_relaunch`` allowed it)."""
    record = read_json(run_dir / RECORD_FILE)
    launches = int(record.get("launches", 0)) + 1 if record.get("config_hash") == digest else 1
    write_json(
        run_dir / RECORD_FILE,
        {
            "config_hash": digest,
            "overrides": list(overrides),
            "choices": dict(choices or {}),
            "launches": launches,
            "finished": False,
        },
    )


def mark_finished(run_dir: Path, metrics: dict) -> None:
    record = read_json(run_dir / RECORD_FILE)
    if record:
        record["finished"] = metrics.get("status") == "completed"
        write_json(run_dir / RECORD_FILE, record)


def write_hydra_record(run_dir: Path, cfg: DictConfig) -> None:
    """``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``, as Hydra writes them."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    folder = Path(run_dir) / HYDRA_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg), "utf-8")
    (folder / "hydra.yaml").write_text(OmegaConf.to_yaml({"hydra": hydra}), "utf-8")
    overrides = OmegaConf.to_yaml(OmegaConf.create(list(hydra.overrides.task)))
    (folder / "overrides.yaml").write_text(overrides, "utf-8")


def launch_identity() -> tuple[list[str], dict[str, str], bool]:
    """This launch's overrides, config-group choices, and whether it is a sweep job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return [], {}, False
    hydra = HydraConfig.get()
    choices = {
        str(k): str(v)
        for k, v in hydra.runtime.choices.items()
        if v is not None and not str(k).startswith("hydra")
    }
    return list(hydra.overrides.task), choices, hydra.mode == RunMode.MULTIRUN


def notice(message: str) -> None:
    """Tell the user something on stderr without writing to the run directory's log file."""
    print(f"clozelab: {message}", file=sys.stderr, flush=True)


class RunDirectory:
    """One launch's hold on its run directory: ``open`` locks it and applies the re-launch rules
    (returns the metrics of a completed run with this config: nothing to do), ``finish`` records
    the outcome, ``close`` unlocks. Only global rank 0 locks and writes; other ranks only check."""

    def __init__(self, run_dir: str | Path, cfg: DictConfig, writer: bool = True):
        self.path = Path(run_dir)
        self.cfg = cfg
        self.writer = writer
        self.overrides, self.choices, sweep = launch_identity()
        self.key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
        self.strict = sweep
        self.digest = config_hash(cfg)
        self.lock = RunLock(self.path, self.key)

    def open(self) -> dict | None:
        if self.writer:
            self.lock.acquire()
        try:
            done = check_relaunch(self.path, self.digest, self.overrides, self.key, self.strict)
            if done is not None:
                notice(
                    f"{self.path} already holds this run, completed with the same config "
                    f"({done.get('steps')} steps; see its metrics.json); nothing to do. Fix (to "
                    f"train more or differently): give the launch a new {self.key}."
                )
                self.close()
                return done
            if self.writer:
                claim(self.path, self.digest, self.overrides, self.choices)
                write_hydra_record(self.path, self.cfg)
        except BaseException:
            self.close()
            raise
        return None

    def finish(self, metrics: dict) -> None:
        if self.writer:
            mark_finished(self.path, metrics)

    def close(self) -> None:
        self.lock.release()
