"""A stand-in trainer for testing the launch/SLURM signal plumbing in isolation (not a model, no torch).

    ULTRALONG_TRAIN_MODULE=tests.slurm.stub_trainer bash launch/torchrun.sh --config toy_cpt train.run_dir=/tmp/r

Obeys the contract of ``python -m megatron_ultralong.train``: reads the recipe and dotted overrides, resumes from
``<checkpoint dir>/latest``, takes ``train.max_steps`` steps, appends one line per step to
``<run_dir>/metrics.jsonl``, checkpoints every ``checkpoint.interval`` steps and at the end (the real layout:
``iter_NNNNNNN/meta.json`` and ``latest``, so the launcher's checks read it), and on SIGUSR1 or SIGTERM finishes
the step, checkpoints and exits 75. Rank 0 writes ``<run_dir>/exit_status.json`` like the real trainer.

Test knobs (environment): STUB_STEP_SECONDS (default 0.5) per step; STUB_SETUP_SECONDS (default 0) before the
signal handlers are installed, as a real trainer's imports take; STUB_WAIT_AT_STEP=k makes a run that starts before
step k stop after step k's checkpoint and wait (up to 120 s) for a signal, so a test can signal a running job with
no race; STUB_CRASH_AT_STEP=k makes every rank exit 1 at step k, with no exit status.
"""
import json
import os
import signal
import sys
import time

from megatron_ultralong.checkpoint import FORMAT, LATEST_FILE, META_FILE, iter_dir_name, read_meta
from megatron_ultralong.config import checkpoint_dir, load_recipe
from megatron_ultralong.train import EXIT_OK, EXIT_PREEMPTED


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def main(argv) -> int:
    if "--dry-run" in argv:  # slurm/common.sh's check on the batch node: the stub has nothing to check
        print("stub: dry run", flush=True)
        return EXIT_OK
    config = argv[argv.index("--config") + 1]
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    cfg = load_recipe(config, overrides)
    rank = int(os.environ.get("RANK", "0"))
    time.sleep(env_float("STUB_SETUP_SECONDS", 0))
    received = []
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: received.append(signal.Signals(signum).name))

    ckpt = checkpoint_dir(cfg)
    os.makedirs(cfg.train.run_dir, exist_ok=True)
    os.makedirs(ckpt, exist_ok=True)
    step = read_meta(ckpt)["step"] if os.path.exists(os.path.join(ckpt, LATEST_FILE)) else 0
    print(f"stub rank {rank}: {f'resumed from step {step}' if step else 'starting'}", flush=True)
    wait_at = int(os.environ.get("STUB_WAIT_AT_STEP", "0"))
    wait_here = step < wait_at

    def save():
        if rank == 0:
            iter_dir = os.path.join(ckpt, iter_dir_name(step))
            os.makedirs(iter_dir, exist_ok=True)
            with open(os.path.join(iter_dir, META_FILE), "w") as f:
                json.dump({"format": FORMAT, "step": step}, f)
            with open(os.path.join(ckpt, LATEST_FILE + ".tmp"), "w") as f:
                f.write(iter_dir_name(step))
            os.replace(os.path.join(ckpt, LATEST_FILE + ".tmp"), os.path.join(ckpt, LATEST_FILE))

    code = EXIT_OK
    while step < cfg.train.max_steps:
        time.sleep(env_float("STUB_STEP_SECONDS", 0.5))
        step += 1
        if rank == 0:
            with open(os.path.join(cfg.train.run_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\n")
        print(f"stub rank {rank}: step {step}", flush=True)
        if step == int(os.environ.get("STUB_CRASH_AT_STEP", "0")):
            print(f"stub rank {rank}: crashing at step {step}", file=sys.stderr, flush=True)
            return 1
        if wait_here and step == wait_at:
            save()
            print(f"stub rank {rank}: waiting for a signal at step {step}", flush=True)
            deadline = time.time() + 120
            while not received and time.time() < deadline:
                time.sleep(0.05)
        if received:
            save()
            print(f"stub rank {rank}: {received[0]}: checkpoint of step {step} saved, exiting with 75", flush=True)
            code = EXIT_PREEMPTED
            break
        if cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0:
            save()
    else:
        save()
    if rank == 0:
        reason = f"preempted ({received[0]})" if received else "finished"  # as megatron_ultralong.train writes it
        with open(os.path.join(cfg.train.run_dir, "exit_status.json"), "w") as f:
            json.dump({"code": code, "reason": reason, "step": step}, f)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
