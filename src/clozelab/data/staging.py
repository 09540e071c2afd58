"""Temporary build directories of the cache (shards, tokenizers) and the processes that fill them.

A cache entry is built under ``<key>.tmp-<host>-<pid>`` and renamed into place when whole. A build
killed half-way (SIGKILL, out of memory, a node lost) leaves its temporary directory behind;
``remove_stale`` deletes those whose builder is gone (same host, no such process) the next time
the cache is used, and leaves the ones of live builders (a concurrent prepare) alone.
``die_with_parent`` makes a worker process exit when the process that started it dies, so a
killed ``prepare`` leaves no orphans behind (Linux; elsewhere a no-op).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# <key>.tmp-<host>-<pid>; <key>.tmp<pid> from clozelab versions before the host was recorded
_TAG = re.compile(r"\.tmp(?:-(?P<host>.+)-)?(?P<pid>\d+)$")


def _host() -> str:
    return socket.gethostname().replace("-", "_")


def staging_dir(target: Path) -> Path:
    """Where ``target`` is built before it is renamed into place."""
    return target.with_name(f"{target.name}.tmp-{_host()}-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(parent: Path) -> int:
    """Delete the temporary build directories under ``parent`` whose builder (on this host) is no
    longer running; returns how many."""
    if not parent.is_dir():
        return 0
    removed = 0
    for path in parent.iterdir():
        match = _TAG.search(path.name)
        if match is None or match["host"] not in (None, _host()) or _alive(int(match["pid"])):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    if removed:
        log.warning("Removed %d partial cache build(s) left by a killed run in %s", removed, parent)
    return removed


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signum), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request: go now
        os.kill(os.getpid(), signum)
