"""The job's preemption signals, and helper processes that must outlive them (see docs/training.md).

    with helpers_shielded():          # around code that may start helper processes (a checkpoint save)
        dist_checkpointing.save(...)
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator, Tuple

PREEMPTION_SIGNALS: Tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)


@contextlib.contextmanager
def helpers_shielded(signals: Tuple[signal.Signals, ...] = PREEMPTION_SIGNALS) -> Iterator[None]:
    """Block ``signals`` in this thread while the body runs: processes it starts (forked or spawned) inherit the
    blocked mask and never see them; this process receives any that arrived when the block ends."""
    from multiprocessing import resource_tracker

    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        # the resource tracker unblocks SIGINT/SIGTERM in this thread after starting itself: start it (or
        # restart a dead one) now, shielded too, and block again
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
