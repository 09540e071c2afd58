"""The run directory and the files clozelab reads and writes: the one owner of that layout.

A pre-training run writes one directory::

    RUN_DIR/config.yaml            the resolved config
    RUN_DIR/metrics.json           the final summary
    RUN_DIR/checkpoints/*.ckpt     Lightning checkpoints (last.ckpt, step-N.ckpt)
    RUN_DIR/tokenizer/             the tokenizer files
    RUN_DIR/hf/                    the HF transformers export (config.json + model.safetensors)
    RUN_DIR/eval/<task>.json       downstream results

``locate`` tells a run directory (or a checkpoint inside one) from an HF BERT directory;
``run_checkpoint`` finds a run's checkpoint; ``read_checkpoint_state`` / ``read_hf_weights`` read
weights as tensors only (``weights_only=True``: no pickled code runs); ``atomic_write`` /
``write_json`` write a file under a temporary name in the same directory and rename it, so a
crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clozelab.core.errors import config_error

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


# ---------------------------------------------------------------------------- atomic writes
def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, "utf-8"))


def write_json(path: str | Path, payload: Any, *, indent: int | None = 2, sort_keys=True) -> Path:
    """Atomically write ``payload`` as JSON (indented, sorted keys unless told otherwise)."""
    return write_text(path, json.dumps(payload, indent=indent, sort_keys=sort_keys))


def read_json(path: str | Path) -> dict:
    """The JSON object in ``path``; ``{}`` when the file is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------- finding runs
def is_hf_dir(path: Path) -> bool:
    """An HF transformers directory: ``config.json`` and a weights file."""
    return (path / "config.json").is_file() and any((path / f).is_file() for f in HF_WEIGHT_FILES)


def is_run_dir(path: Path) -> bool:
    """A clozelab run directory: it has its ``config.yaml``."""
    return (path / CONFIG_FILE).is_file()


def run_checkpoint(path: str | Path, key: str = "path") -> tuple[Path, Path]:
    """(run directory, checkpoint file) for a run directory or a checkpoint inside one: the run's
    ``checkpoints/last.ckpt``, else its newest ``checkpoints/*.ckpt``."""
    path = Path(path)
    if path.is_file():
        for run_dir in (path.parent.parent, path.parent):
            if is_run_dir(run_dir):
                return run_dir, path
        raise config_error(
            key,
            str(path),
            "a checkpoint outside a clozelab run directory (no config.yaml two levels up)",
            "pass the run directory, or keep the checkpoint in RUN_DIR/checkpoints/",
        )
    last = path / CHECKPOINT_DIR / LAST_CHECKPOINT
    if last.is_file():
        return path, last
    steps = sorted((path / CHECKPOINT_DIR).glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if steps:
        return path, steps[-1]
    raise config_error(
        key,
        str(path),
        "the run directory has no checkpoints/*.ckpt",
        "pass a run that has trained at least until its first checkpoint",
    )


def locate(path: str | Path, key: str = "path") -> tuple[str, Path]:
    """``("run", path)`` for a run directory or a checkpoint file, ``("hf", directory)`` for an HF
    BERT directory (or a weights file in one, or a run's ``hf/`` export when it has no config)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise config_error(
            key, str(path), "no such file or directory", "give a run dir, a .ckpt or an HF dir"
        )
    if path.is_file() and path.name in HF_WEIGHT_FILES:
        return "hf", path.parent
    if path.is_dir() and is_hf_dir(path):
        return "hf", path
    if path.is_file() or is_run_dir(path):
        return "run", path
    if path.is_dir() and is_hf_dir(path / "hf"):
        return "hf", path / "hf"
    raise config_error(
        key,
        str(path),
        "neither a clozelab run directory (config.yaml + checkpoints/), a checkpoint file, nor an "
        "HF BERT directory (config.json + model.safetensors or pytorch_model.bin)",
        "point to one of those",
    )


# ---------------------------------------------------------------------------- reading weights
def read_hf_weights(directory: Path) -> dict[str, Tensor]:
    """The state dict of an HF directory (safetensors preferred), tensors only."""
    if (directory / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(directory / "model.safetensors"))
    return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)


def read_checkpoint_state(checkpoint: Path, key: str = "checkpoint") -> dict[str, Tensor]:
    """The module state dict of a Lightning checkpoint (tensors only, no pickled objects)."""
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise config_error(
            key,
            str(checkpoint),
            f"cannot be read as a PyTorch checkpoint ({exc})",
            "pass a checkpoint written by clozelab pretrain (checkpoints/last.ckpt)",
        ) from exc
    return ckpt.get("state_dict", ckpt)
