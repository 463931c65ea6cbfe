"""Test-only hook: rank 0 sleeps after a checkpoint is written and before it is published, so a test can SIGKILL
the process in the middle of a save. Production code knows nothing of it: it wraps ``checkpoint._publish``.

    p = launch(run_dir, ..., env=pause_env(step=10, seconds=60))   # a child process (via its sitecustomize)
    install(step=10, seconds=60)                                    # this process
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ENV = "MEGATRON_ULTRALONG_TEST_PAUSE_BEFORE_PUBLISH"
"""'<step>:<seconds>', read by the sitecustomize.py that pause_env puts on the child's PYTHONPATH."""
_REPO = Path(__file__).resolve().parents[1]
_SITE = Path(__file__).resolve().parent / "checkpoint_pause_site"


def install(step: int, seconds: float, sleep=time.sleep) -> None:
    """Make this process pause ``seconds`` before publishing the checkpoint of ``step`` (other steps: no pause)."""
    from megatron_ultralong import checkpoint

    publish = checkpoint._publish

    def paused(ckpt_dir: str, at: int, keep_last: int) -> None:
        if at == step:
            print(f"[checkpoint] test hook: pausing {seconds}s before publishing step {at}", file=sys.stderr,
                  flush=True)
            sleep(seconds)
        publish(ckpt_dir, at, keep_last)

    checkpoint._publish = paused


def install_from_env() -> None:
    """install() with the step and seconds of $MEGATRON_ULTRALONG_TEST_PAUSE_BEFORE_PUBLISH, if it is set."""
    raw = os.environ.get(ENV)
    if raw:
        at, _, seconds = raw.partition(":")
        install(int(at), float(seconds))


def pause_env(step: int, seconds: float) -> dict:
    """Environment variables that make a child Python process install() the hook at start-up."""
    path = [str(_SITE), str(_REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    return {ENV: f"{step}:{seconds}", "PYTHONPATH": os.pathsep.join(path)}
