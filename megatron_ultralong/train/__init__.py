"""Training: ``python -m megatron_ultralong.train --config <recipe.yaml> [section.key=value ...]`` (ultralong-train).

Exit codes of that command (the SLURM scripts rely on them): EXIT_OK, EXIT_PREEMPTED, EXIT_BAD_INPUT, EXIT_FAILED.
Free of torch, so the CLI rejects bad input before the framework imports (docs/training.md).
"""
import os

from ..cli import EXIT_BAD_INPUT

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_BAD_INPUT", "EXIT_PREEMPTED", "prepare_run_dir"]

EXIT_OK = 0
"""Reached train.max_steps (final checkpoint saved)."""
EXIT_FAILED = 1
"""Anything unexpected (traceback on stderr)."""
# EXIT_BAD_INPUT (2, from megatron_ultralong.cli): bad recipe / override / checkpoint / run directory: one line on
# stderr, no traceback.
EXIT_PREEMPTED = 75
"""Stopped by SIGUSR1 or SIGTERM after saving a checkpoint: requeue the job, it resumes from 'latest'
(75 is EX_TEMPFAIL of sysexits.h: "try again later")."""


def prepare_run_dir(path: str, key: str) -> None:
    """Create ``path`` and prove it is writable (ConfigError naming ``key`` otherwise)."""
    from ..config import ConfigError

    probe = os.path.join(path, f".write-probe-{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{key}={path}: not writable ({e.strerror or e}); choose a directory you can write to") \
            from None
