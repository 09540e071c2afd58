"""Partial cache builds of killed runs are removed by the next run (live builders' are kept), and
preprocessing workers die with the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from clozelab.data.staging import remove_stale, staging_dir


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_builds_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "abc123"
    mine = staging_dir(target)  # this process is alive
    host = mine.name.split(".tmp-")[1].rsplit("-", 1)[0]
    dead = _dead_pid()
    stale = [tmp_path / f"abc123.tmp-{host}-{dead}", tmp_path / f"def456.tmp{dead}"]
    other_host = tmp_path / f"abc123.tmp-elsewhere-{dead}"  # may be alive on its own node
    for path in [mine, *stale, other_host]:
        (path / "train").mkdir(parents=True)
    (tmp_path / "abc123").mkdir()  # a finished entry
    assert remove_stale(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["abc123", mine.name, other_host.name]
    )


PARENT = """
import multiprocessing as mp, sys, time
from clozelab.data.staging import die_with_parent

def child():
    die_with_parent()
    time.sleep(120)

if __name__ == "__main__":
    proc = mp.get_context("fork").Process(target=child)
    proc.start()
    print(proc.pid, flush=True)
    time.sleep(120)
"""


def test_a_worker_dies_with_its_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ))  # fmt: skip
    child = int(parent.stdout.readline())
    time.sleep(0.5)  # the child has asked for the signal
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the worker outlived its killed parent")
