"""Per-step metrics: ``<run_dir>/metrics.jsonl``, TensorBoard scalars, and a console progress line with ETA.

    log = MetricsLogger(cfg, enabled=ctx.rank == 0, start_step=0)
    log.write({"step": 1, "loss": 6.2, "lr": 3e-3, ...})      # one JSON object per line, keys in RECORD_KEYS
    log.close()

What each key means and how a resume keeps one history: docs/training.md (Outputs).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional

import torch

from ..atomic import atomic_path
from ..config import Config
from ..planner import model_flops_per_token

RECORD_KEYS = ("step", "loss", "lr", "grad_norm", "tokens", "loss_tokens", "tokens_per_s", "mfu", "mem_gb",
               "step_time_s")

# Dense BF16 tensor-core peak per GPU (FLOP/s), from the vendors' datasheets (SXM parts, no sparsity).
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "B200": 2250e12}


def train_flops_per_token(cfg: Config) -> float:
    """Model FLOPs per trained token (forward + backward = 3× forward), Megatron's accounting without recompute.

    Forward per token: 2 FLOPs per matmul weight (QKV, output projection, SwiGLU's three matrices, the output
    layer) plus causal attention scores and values: 2 · 2 · (s/2) · heads · head_dim per layer.
    """
    return model_flops_per_token(cfg.model, cfg.data.seq_length)  # one home: the planner's (docs/planner.md)


def peak_flops_per_gpu() -> Optional[float]:
    """BF16 peak of this GPU model, or None (CPU, or a GPU not in the table)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def memory_gb() -> float:
    """Peak allocated GPU memory since the last call (GB), or this process' resident memory on CPU."""
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 1e9
        torch.cuda.reset_peak_memory_stats()
        return peak
    import psutil

    return psutil.Process().memory_info().rss / 1e9


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _fmt_count(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


def truncate_jsonl(path: str, last_step: int) -> int:
    """Keep only records with step <= last_step (atomic rewrite); returns how many were dropped."""
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                dropped += 1  # a line torn by a kill mid-write
                continue
            if step <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.writelines(kept)
    return dropped


class MetricsLogger:
    """Writes one record per step (on the logging rank only; other ranks hold a disabled logger)."""

    def __init__(self, cfg: Config, enabled: bool, start_step: int = 0, stream=None):
        self.enabled = enabled
        self.max_steps = cfg.train.max_steps
        self.log_interval = cfg.train.log_interval
        self.start_step = start_step
        self.stream = stream or sys.stdout
        self.path = os.path.join(cfg.train.run_dir, "metrics.jsonl")
        self._t0 = time.perf_counter()
        self._file = None
        self._tb = None
        if not enabled:
            return
        truncate_jsonl(self.path, start_step)
        self._file = open(self.path, "a", buffering=1)  # line-buffered: a killed run keeps every finished step
        if cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events of steps after the checkpoint that a previous (killed) run had written
            self._tb = SummaryWriter(os.path.join(cfg.train.run_dir, "tensorboard"),
                                     purge_step=start_step + 1 if start_step else None)

    def write(self, record: Dict[str, Any]) -> None:
        """Append the record to metrics.jsonl and TensorBoard; print the progress line every log_interval."""
        if not self.enabled:
            return
        self._file.write(json.dumps({k: record.get(k) for k in RECORD_KEYS}) + "\n")
        step = record["step"]
        if self._tb is not None:
            for k in RECORD_KEYS[1:]:
                v = record.get(k)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}", v, step)
        if step % self.log_interval == 0 or step == self.max_steps:
            self.stream.write(self.progress_line(record) + "\n")
            self.stream.flush()

    def progress_line(self, record: Dict[str, Any]) -> str:
        """'step 12/30 | loss 4.1234 | lr 2.9e-03 | gnorm 0.870 | 5.1k tok/s | mem 0.41 GB | ETA 0:00:10'."""
        step = record["step"]
        done = step - self.start_step
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / max(done, 1) * (self.max_steps - step)
        gnorm = record.get("grad_norm")
        parts = [f"step {step}/{self.max_steps}", f"loss {record['loss']:.4f}", f"lr {record['lr']:.2e}",
                 f"gnorm {gnorm:.3f}" if gnorm is not None else "gnorm -",
                 f"{_fmt_count(record['tokens_per_s'])} tok/s"]
        if record.get("mfu") is not None:
            parts.append(f"mfu {100 * record['mfu']:.1f}%")
        parts += [f"mem {record['mem_gb']:.2f} GB", f"ETA {_fmt_duration(eta)}"]
        return " | ".join(parts)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
