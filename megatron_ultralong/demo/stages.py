"""The demo's stages as the commands users type: the trainer (under torchrun for CP=2), the HF converters.

    run = train_stage("cpt", ["--config", "demo_cpt", ...], run_dir, nproc=2, preempt_after=5)
    run.seconds, run.tokens_per_s, run.steps
    export(ckpt_dir, hf_dir, verify_seq_len=2048); reimport(hf_dir, ckpt_dir)
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..train import EXIT_OK, EXIT_PREEMPTED

TOOLS = Path(__file__).resolve().parents[2] / "tools"
"""tools/*.py of the checkout the demo runs from (`make demo`)."""


class StageError(RuntimeError):
    """A stage exited with an unexpected code; the message names the stage, the code and its log."""


@dataclass
class StageRun:
    """What one training stage did."""

    name: str
    """Stage name (base, base_sft, cpt, sft, ...)."""
    run_dir: str
    """Its train.run_dir (checkpoints under checkpoints/)."""
    seconds: float
    """Wall time of all its launches."""
    steps: int
    """Optimizer steps in metrics.jsonl."""
    tokens: int
    """Tokens trained on (padding excluded)."""
    loss_first: float
    """Loss of step 1."""
    loss_last: float
    """Loss of the last step."""
    exit_codes: List[int] = field(default_factory=list)
    """Exit code of each launch (75 = preempted, then relaunched)."""
    preempted_at: Optional[int] = None
    """Step of the checkpoint the preemption saved, if one was simulated."""

    @property
    def tokens_per_s(self) -> float:
        """Tokens trained per wall second (launch and checkpoint time included)."""
        return self.tokens / max(self.seconds, 1e-9)

    @property
    def checkpoints(self) -> str:
        """The stage's checkpoint directory."""
        return os.path.join(self.run_dir, "checkpoints")


def metrics(run_dir: str) -> List[dict]:
    """metrics.jsonl of a run ([] before its first step)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def threads_per_process(nproc: int) -> str:
    """OMP_NUM_THREADS for each of ``nproc`` training processes: the user's setting, else the machine's cores
    shared out (one process on 2 cores trains 1.6× faster with 2 threads than with torch's 1 under torchrun)."""
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))


def training_env(nproc: int) -> Dict[str, str]:
    """The environment of ``nproc`` training processes: threads shared out, and MKL_DYNAMIC=FALSE unless set (MKL
    otherwise runs fewer threads while the machine is busy, which changes the sums: docs/cpu.md)."""
    return {"MKL_DYNAMIC": "FALSE", **os.environ, "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": threads_per_process(nproc)}


def _launch(cmd: Sequence[str], log_path: Path, echo: Callable[[str], None], run_dir: str,
            preempt_after: Optional[int], nproc: int) -> int:
    """Run one command of ``nproc`` processes with its output to ``log_path`` (progress lines every 10th step
    echoed); with ``preempt_after`` send SIGUSR1 to the training processes (_preempt) once that many steps are in
    metrics.jsonl (a SLURM warning)."""
    env = training_env(nproc)
    with open(log_path, "a") as log:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        sent = False
        for line in proc.stdout:
            log.write(line)
            text = line.rstrip()
            if text.startswith(("error", "[trainer] resumed", "[trainer] preempt")) or (
                    text.startswith("step ") and text.split()[1].split("/")[0].endswith("0")):
                echo(f"      {text}")
            # every line, not only progress lines: with train.log_interval > 1 those come too late to preempt
            if preempt_after and not sent and len(metrics(run_dir)) >= preempt_after:
                _preempt(proc.pid, echo)
                sent = True
        code = proc.wait()
    status = Path(run_dir) / "exit_status.json"  # torchrun reports any worker's failure as 1; the trainer's own
    return json.loads(status.read_text())["code"] if code == 1 and status.exists() else code


def _preempt(pid: int, echo: Callable[[str], None]) -> None:
    """SIGUSR1 to the training processes, as `sbatch --signal` delivers it: to the trainer, or under torchrun
    to its workers (torchrun itself is not a trainer)."""
    import psutil

    proc = psutil.Process(pid)
    workers = proc.children() if "torch.distributed.run" in " ".join(proc.cmdline()) else [proc]
    echo(f"      -- demo: SIGUSR1 to {len(workers)} training process(es) (a SLURM preemption warning)")
    for w in workers:
        w.send_signal(signal.SIGUSR1)


def trainer_command(args: Sequence[str], nproc: int = 1) -> List[str]:
    """``python -m megatron_ultralong.train ARGS``, under ``torchrun --standalone --nproc-per-node N`` if N > 1."""
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                "-m", "megatron_ultralong.train", *args]
    return [sys.executable, "-m", "megatron_ultralong.train", *args]


def train_stage(name: str, args: Sequence[str], run_dir: str, log_dir: Path, echo: Callable[[str], None],
                nproc: int = 1, preempt_after: Optional[int] = None) -> StageRun:
    """One training stage; with ``preempt_after`` it is preempted once and relaunched with the same command (it
    resumes from its latest checkpoint). StageError on any other exit."""
    from ..checkpoint import read_meta

    log_path = log_dir / f"{name.replace('/', '-')}.log"
    cmd = trainer_command([*args, f"train.run_dir={run_dir}"], nproc)
    t0 = time.perf_counter()
    codes = [_launch(cmd, log_path, echo, run_dir, preempt_after, nproc)]
    preempted_at = None
    if preempt_after:
        if codes[0] != EXIT_PREEMPTED:
            raise StageError(f"{name}: expected exit {EXIT_PREEMPTED} after SIGUSR1, got {codes[0]} (log: {log_path})")
        preempted_at = read_meta(os.path.join(run_dir, "checkpoints"))["step"]
        echo(f"      preempted: checkpoint of step {preempted_at} saved, exit {codes[0]}; relaunching, it resumes")
        codes.append(_launch(cmd, log_path, echo, run_dir, None, nproc))
    if codes[-1] != EXIT_OK:
        raise StageError(f"{name}: the trainer exited {codes[-1]} (log: {log_path})")
    recs = metrics(run_dir)
    return StageRun(name, run_dir, time.perf_counter() - t0, len(recs), int(sum(r["tokens"] for r in recs)),
                    recs[0]["loss"], recs[-1]["loss"], codes, preempted_at)


def _tool(script: str, args: Sequence[str], log_path: Path) -> str:
    """Run tools/<script> ARGS; its output goes to ``log_path`` and is returned. StageError unless it exits 0."""
    p = subprocess.run([sys.executable, str(TOOLS / script), *args], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    with open(log_path, "a") as log:
        log.write(f"$ python tools/{script} {' '.join(args)}\n{p.stdout}")
    if p.returncode != 0:
        raise StageError(f"tools/{script} exited {p.returncode} (log: {log_path})")
    return p.stdout


def export(ckpt: str, hf_dir: str, verify_seq_len: int, log_dir: Path) -> dict:
    """tools/convert_to_hf.py --verify; returns the export's config.json rope and the verification's max diff."""
    text = _tool("convert_to_hf.py", ["--ckpt", ckpt, "--out", hf_dir, "--dtype", "fp32", "--verify",
                                      "--verify-seq-len", str(verify_seq_len), "--quiet"], log_dir / "export.log")
    diff = re.search(r"max abs logit diff ([0-9.e+-]+)", text)
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    return {"rope_scaling": config.get("rope_scaling"), "max_abs_diff": float(diff.group(1)) if diff else None,
            "verify_seq_len": verify_seq_len}


def reimport(hf_dir: str, ckpt: str, log_dir: Path) -> None:
    """tools/convert_from_hf.py: the exported folder back to a Megatron checkpoint, as a user imports Llama."""
    _tool("convert_from_hf.py", ["--hf", hf_dir, "--out", ckpt, "--dtype", "fp32", "--quiet"], log_dir / "import.log")
