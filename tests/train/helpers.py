"""Shared pieces of the training tests: in-process model/optimizer parts, CLI launches, metrics reading."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from megatron_ultralong.config import load_recipe

REPO = Path(__file__).resolve().parents[2]
SEQ = 64  # toy runs: short sequences keep each step ~10 ms on this CPU


def toy_cfg(run_dir, *overrides):
    """toy_cpt (YaRN 64 -> 256, synthetic copy task) shrunk to SEQ tokens, writing under run_dir."""
    return load_recipe("toy_cpt", [f"data.seq_length={SEQ}", f"train.run_dir={run_dir}",
                                   "train.tensorboard=false", *overrides])


def allow_child_processes():
    """run_ranks starts daemonic ranks, but dist_checkpointing's writer starts a multiprocessing Manager and
    forks writers, which daemonic processes may not do; a rank that saves declares itself non-daemonic (its
    parent still kills it on failure)."""
    import multiprocessing

    multiprocessing.current_process().daemon = False


def build_parts(cfg):
    """(model_chunks, optimizer) exactly as the Trainer builds them, after init_distributed."""
    from megatron_ultralong.model.builder import build_model
    from megatron_ultralong.parallel import init_distributed
    from megatron_ultralong.train.trainer import build_optimizer, distributed_optimizer_choice, wrap_ddp

    allow_child_processes()
    init_distributed(cfg)
    use_dist_opt, _ = distributed_optimizer_choice(cfg)
    model = [wrap_ddp(build_model(cfg), use_dist_opt)]
    return model, build_optimizer(cfg, model, use_dist_opt)


def fixed_batch(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, s = cfg.train.micro_batch_size, cfg.data.seq_length
    tokens = torch.randint(0, cfg.model.vocab_size, (b, s + 1), generator=g)
    return {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(b, s),
            "position_ids": torch.arange(s).expand(b, s).clone(), "doc_ids": torch.zeros(b, s, dtype=torch.long)}


def train_one_step(model, optimizer, cfg, seed=0) -> float:
    """One optimizer step on a fixed random batch; returns the loss."""
    from megatron_ultralong.train.step import forward_backward
    from megatron_ultralong.train.trainer import megatron_optimizer_shims

    for m in model:
        m.zero_grad_buffer()
    optimizer.zero_grad()
    out = forward_backward(model, [fixed_batch(cfg, seed)], cfg)
    with megatron_optimizer_shims():
        optimizer.step()
    return (out["loss_sum"] / out["tokens"]).item()


def params_of(model):
    from megatron.core.utils import unwrap_model

    return {n: p.detach().clone() for n, p in unwrap_model(model[0]).named_parameters()}


def read_metrics(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def losses(run_dir):
    """{step: loss} from metrics.jsonl."""
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


def launch(run_dir, *overrides, env=None, recipe="toy_cpt") -> subprocess.Popen:
    """`python -m megatron_ultralong.train` on the toy recipe as a child process (own stdout/stderr pipes)."""
    cmd = [sys.executable, "-m", "megatron_ultralong.train", "--config", recipe, f"data.seq_length={SEQ}",
           f"train.run_dir={run_dir}", "train.tensorboard=false", *overrides]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(run_dir, *overrides, env=None, timeout=180):
    """Launch and wait: (returncode, stdout, stderr)."""
    p = launch(run_dir, *overrides, env=env)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def sigkill(proc: subprocess.Popen) -> int:
    """SIGKILL the trainer like a node failure would, then its orphans: Megatron's async checkpoint writer keeps a
    spawned multiprocessing Manager that outlives a SIGKILLed parent (on SLURM the job's cgroup reaps it).
    Returns the trainer's exit status."""
    import psutil

    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    code = proc.wait()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=10)
    return code


def wait_until(predicate, proc, timeout=120.0, poll=0.005):
    """Poll predicate() until true; fail if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited ({proc.returncode}) before the condition held:\n{out}\n{err}")
        time.sleep(poll)
    proc.kill()
    raise AssertionError("timed out waiting")


def latest_name(ckpt_dir):
    try:
        return (Path(ckpt_dir) / "latest").read_text().strip()
    except FileNotFoundError:
        return None
