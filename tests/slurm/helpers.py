"""Helpers for the SLURM tests: submit a stage script to the test cluster, read its log and metrics.

Jobs run the stage scripts as a user would, with the H100 directives overridden on the sbatch command line
(`--nodes=1 --gpus-per-node=0 --ntasks-per-node=1`), the toy_cpt recipe on CPU and a fresh working directory per
test (job ids restart at 1 with a new cluster, so `%j` names alone could collide).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
CLUSTER = Path(__file__).with_name("cluster.sh")
PYTHON = os.environ.get("ULTRALONG_TEST_PYTHON", sys.executable)  # the env the jobs run in
CPU_JOB = ["--nodes=1", "--gpus-per-node=0", "--ntasks-per-node=1"]
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> Dict[str, str]:
    """This process's environment without what would change the scripts' behaviour (ULTRALONG_*, SLURM_* of a job
    the tests may run in, torchrun's PET_*, MASTER_ADDR/PORT), plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ULTRALONG_", "SLURM_", "PET_", "STUB_")) and k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(extra)
    return env


@dataclass
class Job:
    id: int
    workdir: Path

    def log(self) -> str:
        """Everything the job printed, all runs (the scripts use --open-mode=append)."""
        logs = sorted(self.workdir.glob(f"*-{self.id}.out"))
        return "\n".join(p.read_text() for p in logs)

    def fields(self) -> Dict[str, str]:
        """``scontrol show job`` as a dict (JobState, ExitCode, Restarts, ...)."""
        out = subprocess.run(["scontrol", "show", "job", str(self.id)], capture_output=True, text=True,
                             timeout=30).stdout
        return dict(w.split("=", 1) for w in out.split() if "=" in w)

    def state(self) -> str:
        return self.fields().get("JobState", "UNKNOWN")

    def wait(self, timeout: float = 240) -> int:
        """Exit code of the job's last run, after any requeues; cancels the job and fails after ``timeout`` s."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            fields = self.fields()
            if fields.get("JobState") in FINAL_STATES:
                return int(fields["ExitCode"].split(":")[0])
            time.sleep(0.5)
        self.cancel()
        raise AssertionError(f"job {self.id} still {self.state()} after {timeout} s; log:\n{self.log()}")

    def wait_for_log(self, marker: str, timeout: float = 120) -> None:
        """Until the job's log contains ``marker``; fails (and cancels the job) if it ends or times out first."""
        deadline = time.time() + timeout
        while marker not in self.log():
            state = self.state()
            if state in FINAL_STATES or time.time() > deadline:
                self.cancel()
                raise AssertionError(f"job {self.id} ({state}) did not print {marker!r}; log:\n{self.log()}")
            time.sleep(0.2)

    def cancel(self) -> None:
        subprocess.run(["scancel", str(self.id)], capture_output=True, timeout=30)


SUBMITTED: List[Job] = []  # cancelled after each test (conftest), so a failed or timed-out test leaves no job


def submit(script: str, workdir: Path, overrides: List[str], sbatch_args: Optional[List[str]] = None,
           **env: str) -> Job:
    """sbatch slurm/<script> [overrides] from ``workdir`` as a user would, with the CPU overrides, the toy_cpt
    recipe and the real trainer unless ``env`` says otherwise (ULTRALONG_TRAIN_MODULE=tests.slurm.stub_trainer,
    ...); returns at once."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = ["sbatch", "--parsable", *CPU_JOB, f"--output={workdir}/%x-%j.out", f"--chdir={workdir}",
           *(sbatch_args or []), str(REPO / "slurm" / script), *overrides]
    env = clean_env(**{"ULTRALONG_PYTHON": PYTHON, "ULTRALONG_RECIPE": "toy_cpt",
                       "ULTRALONG_MASTER_PORT": str(free_port()), **env})
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, f"sbatch failed: {r.stderr}"
    SUBMITTED.append(Job(int(r.stdout.strip().split(";")[0]), workdir))
    return SUBMITTED[-1]


STARTED: List[subprocess.Popen] = []  # launchers a test started; killed with their workers after it (conftest)


def read_until(proc: subprocess.Popen, marker: str) -> str:
    """Lines of ``proc``'s stdout up to and including the first one containing ``marker`` (the test's timeout
    bounds the wait); fails with the output if the process ends first."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return "".join(seen)
    proc.wait(timeout=60)
    raise AssertionError(f"exited {proc.returncode} before printing {marker!r}:\n{''.join(seen)}")


def latest_step(ckpt_dir: Path) -> int:
    """The step of the checkpoint ``<ckpt_dir>/latest`` names (``iter_0000020`` -> 20)."""
    return int((ckpt_dir / "latest").read_text().strip().removeprefix("iter_"))


def metrics_steps(run_dir: Path) -> List[int]:
    with open(run_dir / "metrics.jsonl") as f:
        return [json.loads(line)["step"] for line in f if line.strip()]


def error_lines(text: str) -> List[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]
