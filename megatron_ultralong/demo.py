"""The toy end-to-end job behind `make demo` (CPU is fine, < 2 min):  python -m megatron_ultralong.demo

1. CPT of a tiny Llama with YaRN (64 -> 256 tokens) on the synthetic copy task, checkpointing every 10 steps.
2. A simulated preemption: SIGUSR1 mid-run -> the trainer finishes its step, saves, exits 75 (as SLURM would see).
3. The same command again -> automatic resume from 'latest', on to the last step (exit 0).
4. A summary of what happened and where the outputs are.

Everything goes to ``demo_out/`` (``--out`` to change it); a previous demo's output there is replaced.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .checkpoint import list_checkpoints, read_meta
from .train import EXIT_OK, EXIT_PREEMPTED

RECIPE = "toy_cpt"
STEPS = 40
PREEMPT_AFTER = 17  # steps logged before the demo sends SIGUSR1 (between two interval checkpoints)


def _train_cmd(run_dir: Path):
    return [sys.executable, "-m", "megatron_ultralong.train", "--config", RECIPE, f"train.run_dir={run_dir}",
            f"train.max_steps={STEPS}", "checkpoint.interval=10"]


def _metrics(run_dir: Path):
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _step_of(progress_line: str) -> int:
    return int(progress_line.split()[1].split("/")[0])  # 'step 12/40 | ...' -> 12


def _run(run_dir: Path, preempt_after=None) -> int:
    """Run the trainer, echoing its output indented; optionally SIGUSR1 it after N logged steps."""
    cmd = _train_cmd(run_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    sent = False
    for line in proc.stdout:  # the trainer prints one progress line per step: the demo echoes every 5th
        if line.startswith(("[trainer]", "error")) or (line.startswith("step ") and _step_of(line) % 5 == 0):
            print(f"    {line.rstrip()}", flush=True)
        if preempt_after and not sent and len(_metrics(run_dir)) >= preempt_after:
            print(f"    -- demo: sending SIGUSR1 (a SLURM preemption warning) to pid {proc.pid}", flush=True)
            proc.send_signal(signal.SIGUSR1)
            sent = True
    return proc.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_ultralong.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="output folder (replaced)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    run_dir = out / RECIPE
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()

    print(f"[demo 1/3] toy CPT with YaRN, {STEPS} steps, checkpoint every 10 -> {run_dir}")
    code1 = _run(run_dir, preempt_after=PREEMPT_AFTER)
    if code1 != EXIT_PREEMPTED:
        print(f"[demo] expected exit {EXIT_PREEMPTED} after SIGUSR1, got {code1}", file=sys.stderr)
        return 1
    stopped = read_meta(str(run_dir / "checkpoints"))["step"]
    print(f"[demo 2/3] preempted: checkpoint of step {stopped} saved, exit code {code1} (requeue me)")

    print("[demo 3/3] relaunching the same command: it resumes from 'latest'")
    code2 = _run(run_dir)
    if code2 != EXIT_OK:
        print(f"[demo] expected exit {EXIT_OK}, got {code2}", file=sys.stderr)
        return 1

    recs = _metrics(run_dir)
    meta = read_meta(str(run_dir / "checkpoints"))
    cfg = meta["config"]
    factor = cfg["yarn"]["target_length"] / cfg["yarn"]["original_max_position_embeddings"]
    first, last = recs[0]["loss"], recs[-1]["loss"]
    print("\n== demo summary ==")
    print(f"  model       tiny Llama ({cfg['model']['num_layers']} layers, d={cfg['model']['hidden_size']}), "
          f"YaRN x{factor:g} ({cfg['yarn']['original_max_position_embeddings']} -> {cfg['yarn']['target_length']} "
          f"tokens, alpha={cfg['yarn']['beta_slow']:g}, beta={cfg['yarn']['beta_fast']:g})")
    print(f"  training    {len(recs)} steps of {cfg['train']['global_batch_size']}x{cfg['data']['seq_length']} "
          f"tokens, loss {first:.3f} -> {last:.3f} (copy task)")
    print(f"  preemption  SIGUSR1 at step {stopped}: saved, exit {EXIT_PREEMPTED}; relaunch resumed at step "
          f"{stopped + 1}, finished with exit {EXIT_OK}")
    print(f"  checkpoints {run_dir / 'checkpoints'}: "
          f"{', '.join(f'iter_{s:07d}' for s in list_checkpoints(str(run_dir / 'checkpoints')))} "
          f"(latest = step {meta['step']})")
    print(f"  metrics     {run_dir / 'metrics.jsonl'}  (tensorboard --logdir {run_dir / 'tensorboard'})")
    print(f"  config      {run_dir / 'config.yaml'}")
    print(f"  took        {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
