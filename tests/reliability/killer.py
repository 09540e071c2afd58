"""Run ``clozelab pretrain OVERRIDES`` and interrupt it at an exact point (fault injection).

usage: python killer.py STEP SIGNAL OVERRIDES...

- SIGNAL in SIGTERM, SIGINT, SIGUSR1, SIGKILL: this process sends itself the signal at the start
  of training step STEP (1-based), so it arrives while that step is computed, the way a
  scheduler or a user would; a graceful stop then completes step STEP and checkpoints it.
- SIGNAL@RANK (e.g. SIGTERM@1): in a DDP run, only that rank signals itself, as ``kill`` of one
  process does. Lightning's launcher starts rank 1 (LOCAL_RANK=1) by re-running ``sys.argv``,
  which is pointed back at this script with the same STEP and SIGNAL.
- SIGNAL@GROUP (e.g. SIGINT@GROUP): rank 0 sends the signal to its whole process group, as a
  terminal's Ctrl-C does (DataLoader workers and the other ranks get it too); start this script
  in a session of its own (``start_new_session=True``) so the group is the run's processes.
- SIGNAL = MIDWRITE: the STEP-th checkpoint file write is cut in the middle (half the bytes
  written to the temporary file) by a SIGKILL, the worst case for a non-atomic writer.

Everything else is ``python -m clozelab pretrain OVERRIDES``.
"""

from __future__ import annotations

import io
import os
import signal
import sys

import torch

from clozelab.cli import main
from clozelab.training.module import PretrainModule


def kill_at_step(step: int, signum: int, group: bool = False) -> None:
    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step == step - 1:  # the signal arrives while step STEP is computed
            if group:
                os.killpg(os.getpgid(0), signum)
            else:
                os.kill(os.getpid(), signum)

    PretrainModule.on_train_batch_start = on_train_batch_start


def kill_mid_write(nth: int) -> None:
    original = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth and hasattr(f, "write"):
            buffer = io.BytesIO()
            original(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(obj, f, *args, **kwargs)

    torch.save = save


def relaunch_through_this_script(at: str, how: str) -> None:
    import clozelab.cli

    def point_rank_launcher(command: str, overrides: list[str]) -> None:
        sys.argv = [os.path.abspath(__file__), at, how, *overrides]

    clozelab.cli.point_rank_launcher = point_rank_launcher


if __name__ == "__main__":
    at, how = int(sys.argv[1]), sys.argv[2]
    relaunch_through_this_script(sys.argv[1], how)
    how, _, rank = how.partition("@")
    group = rank == "GROUP"
    if group:
        rank = "0"
    if rank and os.environ.get("LOCAL_RANK", "0") != rank:
        pass  # another rank's signal: this one trains on
    elif how == "MIDWRITE":
        kill_mid_write(at)
    else:
        kill_at_step(at, getattr(signal, how), group)
    main(["pretrain", *sys.argv[3:]])
