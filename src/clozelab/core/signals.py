"""The signals that stop a pre-training run gracefully, and DataLoader workers kept out of them.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group, and a scheduler sends
SIGTERM (SLURM at a time limit or preemption) or SIGUSR1 to every process of a job: the
DataLoader workers get them too. A worker that gets SIGINT raises KeyboardInterrupt, one that gets
SIGTERM is ended by PyTorch's worker handler (PyTorch expects the main process to stop at once),
but a graceful stop trains on to the end of the batch, and one batch more when validation is
due after it: its next fetch found the worker gone ("DataLoader worker exited unexpectedly"),
and the run died without its checkpoint. Workers therefore ignore all three
(``ignore_stop_signals``, the loaders' ``worker_init_fn``); the main process ends them as usual
when it stops (the done event and the index queues). PyTorch's last resort for a worker stuck
past a 5 s join, ``terminate()`` (SIGTERM), then no longer ends it: such a worker exits when
its parent is gone (PyTorch's worker watchdog).
"""

from __future__ import annotations

import signal

#: The signals ``CheckpointOnSignal`` turns into "stop after this batch and checkpoint".
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name)
)


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of the pre-training loaders: the worker ignores ``STOP_SIGNALS``."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


__all__ = ["STOP_SIGNALS", "ignore_stop_signals"]
