"""`python -m megatron_ultralong.train` as a process: kills, preemption signals, exit codes, one-line errors.

Run A trains 20 steps uninterrupted; every interrupted run must reproduce its losses bit for bit.
"""
import json
import os
import shutil
import signal

import pytest

from megatron_ultralong.train import EXIT_BAD_INPUT, EXIT_OK, EXIT_PREEMPTED
from tests.checkpoint_pause import pause_env
from tests.train.helpers import latest_name, launch, losses, read_metrics, run, sigkill, wait_until

pytestmark = pytest.mark.slow
STEPS = ["train.max_steps=20"]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run_a")
    code, out, err = run(run_dir, *STEPS, "checkpoint.interval=10")
    assert code == EXIT_OK, err
    a = losses(run_dir)
    assert list(a) == list(range(1, 21))
    return run_dir, a


def _assert_same_history(run_dir, a):
    """metrics.jsonl holds steps 1..20 exactly once, with run A's losses bit for bit."""
    recs = read_metrics(run_dir)
    assert [r["step"] for r in recs] == list(range(1, 21))
    assert {r["step"]: r["loss"] for r in recs} == a


def test_sigkill_right_after_a_checkpoint_then_relaunch_reproduces_run_a_bit_for_bit(run_a, tmp_path):
    a_dir, a = run_a
    p = launch(tmp_path, *STEPS, "checkpoint.interval=10")
    wait_until(lambda: latest_name(tmp_path / "checkpoints") == "iter_0000010", p)
    assert sigkill(p) == -signal.SIGKILL
    killed_at = len(read_metrics(tmp_path))
    assert 10 <= killed_at < 20  # killed mid-run, maybe a few steps past the checkpoint

    code, out, err = run(tmp_path, *STEPS, "checkpoint.interval=10")
    assert code == EXIT_OK, err
    assert "resumed from" in out and "(step 10" in out
    _assert_same_history(tmp_path, a)


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_usable(run_a, tmp_path):
    a_dir, a = run_a
    ckpt = tmp_path / "checkpoints"
    p = launch(tmp_path, *STEPS, "checkpoint.interval=5", env=pause_env(10, 60))
    # the step-10 checkpoint is completely written (meta.json is the last file) but not yet published
    wait_until(lambda: (ckpt / ".iter_0000010.tmp" / "meta.json").exists(), p)
    sigkill(p)
    assert latest_name(ckpt) == "iter_0000005" and not (ckpt / "iter_0000010").exists()

    code, out, err = run(tmp_path, *STEPS, "checkpoint.interval=5")
    assert code == EXIT_OK, err
    assert "(step 5" in out
    _assert_same_history(tmp_path, a)
    assert sorted(x.name for x in ckpt.iterdir()) == ["iter_0000015", "iter_0000020", "latest"]


def test_sigusr1_saves_exits_75_and_the_relaunch_continues(run_a, tmp_path):
    a_dir, a = run_a
    p = launch(tmp_path, *STEPS)  # checkpoint.interval=0: only the signal and the end save
    wait_until(lambda: len(read_metrics(tmp_path)) >= 5, p)
    p.send_signal(signal.SIGUSR1)
    out, err = p.communicate(timeout=120)
    assert p.returncode == EXIT_PREEMPTED, err
    stopped = int(latest_name(tmp_path / "checkpoints").split("_")[1])
    assert 5 <= stopped < 20 and len(read_metrics(tmp_path)) == stopped
    assert json.loads((tmp_path / "exit_status.json").read_text()) == \
        {"code": EXIT_PREEMPTED, "reason": "preempted (SIGUSR1)", "step": stopped}

    code, out, err = run(tmp_path, *STEPS)
    assert code == EXIT_OK, err
    assert f"(step {stopped}" in out
    _assert_same_history(tmp_path, a)


def _corrupt_copy(src, dst):
    shutil.copytree(src, dst)
    for f in (dst / "checkpoints" / "iter_0000020").glob("*.distcp"):
        f.write_bytes(f.read_bytes()[:100])
    return dst


@pytest.mark.parametrize("case", ["recipe_typo", "missing_init_from", "unwritable_run_dir", "other_architecture",
                                  "corrupt_checkpoint", "bad_layout"])
def test_bad_input_exits_2_with_one_line_on_stderr(run_a, tmp_path, case):
    a_dir, _ = run_a
    run_dir, extra, expected = tmp_path / "run", [], ""
    if case == "recipe_typo":
        extra, expected = ["train.max_step=10"], "did you mean 'train.max_steps'"
    elif case == "missing_init_from":
        extra, expected = [f"checkpoint.init_from={tmp_path}/nowhere"], "checkpoint.init_from"
    elif case == "unwritable_run_dir":
        (tmp_path / "a_file").write_text("")
        run_dir, expected = tmp_path / "a_file" / "run", "train.run_dir"
    elif case == "other_architecture":
        extra, expected = [f"checkpoint.init_from={a_dir}/checkpoints", "model.num_layers=4"], "num_layers 2 vs 4"
    elif case == "corrupt_checkpoint":
        run_dir, extra, expected = _corrupt_copy(a_dir, tmp_path / "run"), ["train.max_steps=30"], "corrupt"
    elif case == "bad_layout":
        extra, expected = ["parallel.tp=3"], "parallel.tp=3"
    code, out, err = run(run_dir, *extra)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_BAD_INPUT, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err


def test_torchrun_workers_preempted_by_sigusr1_record_75_in_exit_status(tmp_path):
    """Under torchrun the workers' 75 becomes torchrun's 1; exit_status.json keeps the distinction."""
    import subprocess
    import sys

    import psutil

    from tests.train.helpers import REPO, SEQ

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "megatron_ultralong.train", "--config", "toy_cpt", f"data.seq_length={SEQ}",
           f"train.run_dir={tmp_path}", "train.tensorboard=false", "parallel.tp=2", "train.max_steps=12"]
    p = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(read_metrics(tmp_path)) >= 3, p)
    for worker in psutil.Process(p.pid).children():  # SLURM's srun --signal reaches the workers themselves
        worker.send_signal(signal.SIGUSR1)
    out, err = p.communicate(timeout=120)
    status = json.loads((tmp_path / "exit_status.json").read_text())
    assert p.returncode == 1 and status["code"] == EXIT_PREEMPTED, (out, err)
    assert 3 <= status["step"] < 12 and latest_name(tmp_path / "checkpoints") == f"iter_{status['step']:07d}"
