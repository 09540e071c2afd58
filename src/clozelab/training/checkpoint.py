"""Checkpoint files that survive kills, full disks and the wrong run directory.

- ``AtomicCheckpointIO`` (a Lightning ``CheckpointIO`` plugin) writes each checkpoint to a temporary
  file in the same directory, fsyncs it, then ``os.replace``s it over the target and fsyncs the
  directory: a kill at any moment leaves either the previous file or the new one, never a torn one.
  A failed write (disk full, quota, I/O error) removes the temporary file, leaves the previous
  checkpoint as it was, and raises a ``ClozelabError`` that says so.
- ``check_compatible`` compares a checkpoint's parameter names and shapes with a module before
  resuming, so a run directory holding a checkpoint of another vocabulary or architecture is refused
  with a message instead of a wall of size-mismatch errors.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from clozelab.core.errors import ClozelabError
from clozelab.core.rundir import first_line, state_differences, user_mode

TMP_PREFIX = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(payload: Any, path: str | Path) -> None:
    """``torch.save(payload)`` to ``path`` atomically (temp file + fsync + rename), with the
    user's usual file mode (see ``user_mode``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        user_mode(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        previous = f"the previous {path.name} is intact" if path.exists() else "no file was left"
        reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else str(exc)
        raise ClozelabError(
            f"checkpoint {path}: could not be written ({reason}; {exc.strerror or exc}); "
            f"{previous}. Fix: free space under {path.parent} (or point hydra.run.dir at a disk "
            "with room) and re-launch the same command to resume."
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(directory: str | Path) -> int:
    """Delete temporary files left by a writer that was killed mid-write; returns how many."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    stale = list(directory.glob(TMP_PREFIX + "*"))
    for file in stale:
        file.unlink(missing_ok=True)
    return len(stale)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO whose writes are atomic (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        write_bytes_atomic(checkpoint, path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a clozelab/Lightning checkpoint on the CPU, or raise a ClozelabError naming it."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torn, truncated, not a checkpoint at all
        raise ClozelabError(
            f"checkpoint {path}: unreadable, damaged or not a PyTorch checkpoint "
            f"({first_line(exc)}). Fix: point to another checkpoint (e.g. an earlier "
            "checkpoints/step-N.ckpt of the run); to resume the run, delete the file (it restarts "
            "from scratch) or choose another hydra.run.dir."
        ) from None


def check_compatible(path: str | Path, module: torch.nn.Module, what: str = "resume") -> dict:
    """Refuse a checkpoint whose parameters do not match ``module`` (names and shapes).

    Returns the loaded checkpoint, so the caller does not read it twice.
    """
    checkpoint = load_checkpoint(path)
    stored = checkpoint.get("state_dict")
    if not isinstance(stored, dict):
        raise ClozelabError(
            f"checkpoint {path}: has no state_dict (not a clozelab pretrain checkpoint). Fix: "
            "delete it or choose another hydra.run.dir."
        )
    problems = state_differences(stored, module.state_dict())
    if not problems:
        return checkpoint
    raise ClozelabError(
        f"checkpoint {path}: cannot {what} from it: it was written by a model with "
        f"{'; '.join(problems)}. Fix: re-launch with the config that wrote it (see config.yaml "
        "beside it), or use a new hydra.run.dir to start a fresh run."
    )
