"""The job's preemption signals, how long is left after one, and helper processes that must outlive them.

    with helpers_shielded():          # around code that may start helper processes (a checkpoint save)
        dist_checkpointing.save(...)
    deadline = signal_deadline(received_at, cfg.checkpoint.signal_deadline_s)   # epoch seconds, or None
Why and when the trainer stops mid-step: docs/training.md, "Preemption".
"""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator, Mapping, Optional, Tuple

PREEMPTION_SIGNALS: Tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)
SLURM_END_TIME_ENV = "SLURM_JOB_END_TIME"
"""The job's projected end (UNIX seconds) that SLURM puts in the job's environment (recent SLURM releases)."""


def signal_deadline(received_at: float, deadline_s: Optional[float],
                    env: Optional[Mapping[str, str]] = None) -> Optional[float]:
    """When the job will be killed (UNIX seconds) after a signal received at ``received_at``: ``received_at +
    deadline_s`` when that is set, else $SLURM_JOB_END_TIME when it holds a time, else None (unknown)."""
    if deadline_s is not None:
        return received_at + deadline_s
    raw = (os.environ if env is None else env).get(SLURM_END_TIME_ENV, "")
    return float(raw) if raw.strip().isdigit() and int(raw) > 0 else None


def rest_of_step_s(elapsed_s: float, done: int, total: int, optimizer_s: float) -> float:
    """Seconds the rest of a step needs: ``total - done`` more micro-batches at this step's mean micro-batch time
    so far (``elapsed_s / done``), plus the optimizer step (``optimizer_s``, the last one measured)."""
    return elapsed_s / max(done, 1) * (total - done) + optimizer_s


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
