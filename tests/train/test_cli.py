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


def test_start_and_end_summaries_and_a_token_budget_that_sets_the_steps(tmp_path):
    """Rank 0 prints what it trains on before step 1 and what to do next after the last; train.token_budget
    (5 steps × 2 windows × 64 tokens) becomes train.max_steps, the same again when the run resumes."""
    import yaml

    budget = ["train.token_budget=640", "train.max_steps=50", "checkpoint.interval=2"]
    code, out, err = run(tmp_path, *budget)
    assert code == EXIT_OK, err
    assert "[trainer] train.max_steps=5 from train.token_budget=640: 1 window(s) hold 64 data tokens" in out, out
    assert "(the recipe's train.max_steps=50 is replaced)" in out
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["max_steps"] == 5
    start = [line for line in out.splitlines() if line.startswith("[trainer] start: ")]
    assert len(start) == 1 and "5 steps × 2 × 64 tokens" in start[0] and "world 1 (tp1·pp1·cp1·dp1)" in start[0]
    assert "[trainer] data: synthetic copy task" in out
    assert "[trainer] separator ids: none" in out  # the copy task joins nothing
    assert "[trainer] attention: sdpa (model.attention_backend=auto)" in out  # CPU: SDPA, not the local spec
    end = [line for line in out.splitlines() if line.startswith("[trainer] end: ")]
    assert len(end) == 1 and "step 5/5 in 0h" in end[0] and "final loss " in end[0], out
    assert f"checkpoint {tmp_path}/checkpoints/iter_0000005" in end[0]
    assert (f"python tools/convert_to_hf.py --ckpt {tmp_path}/checkpoints --out hf/{tmp_path.name} --verify"
            in out)
    assert out.index("start: ") < out.index("step 1/5") < out.index("end: ")

    code, out, err = run(tmp_path, *budget)  # resumed: the same budget derives the same 5 steps
    assert code == EXIT_OK, err
    assert "train.max_steps=5 from train.token_budget=640" in out and "already at step 5" in out


def test_sft_start_summary_names_the_chat_template(tmp_path):
    code, out, err = run(tmp_path, "train.mode=sft", "yarn.enabled=false", "train.max_steps=2")
    assert code == EXIT_OK, err
    assert "[trainer] chat template: none (data.synthetic=copy)" in out, out
    assert "next: python tools/convert_to_hf.py" in out


@pytest.mark.parametrize("bad, expected", [
    ("parallel.tp=3", "error: parallel.tp=3"),  # found before the trainer starts (config validation)
    ("model.attention_backend=te", "error: model.attention_backend='te'"),  # found by the workers (model build)
])
def test_torchrun_bad_input_prints_one_line_from_rank_0_and_records_2(tmp_path, bad, expected):
    """2 gloo ranks under plain torchrun: one error line (rank 0), exit_status.json says 2 although torchrun
    itself says 1 for any worker failure; launch/torchrun.sh turns that back into 2."""
    import subprocess
    import sys

    from megatron_ultralong.train import EXIT_FAILED
    from tests.train.helpers import REPO, SEQ

    train = ["-m", "megatron_ultralong.train", "--config", "toy_cpt", f"data.seq_length={SEQ}",
             "train.tensorboard=false", "parallel.tp=2", "train.max_steps=2", bad]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        *train, f"train.run_dir={tmp_path}/plain"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=240)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(expected), p.stderr
    status = json.loads((tmp_path / "plain" / "exit_status.json").read_text())
    assert status["code"] == EXIT_BAD_INPUT and status["reason"].startswith(f"bad input: {expected[7:]}"), status
    assert p.returncode == EXIT_FAILED  # torchrun's own code for any failed worker

    p = subprocess.run(["bash", "launch/torchrun.sh", *train[2:], f"train.run_dir={tmp_path}/launch"], cwd=REPO,
                       env={**env, "ULTRALONG_NPROC_PER_NODE": "2", "ULTRALONG_PYTHON": sys.executable},
                       capture_output=True, text=True, timeout=240)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert p.returncode == EXIT_BAD_INPUT and len(errors) == 1 and errors[0].startswith(expected), p.stderr


def test_launch_preflight_checks_the_data_before_any_worker_starts(tmp_path, capsys):
    from megatron_ultralong.train.preflight import main

    code = main(["--world-size", "2", "--config", "toy_cpt", "parallel.tp=2", "data.synthetic=null",
                 "data.separator_id=1", f"data.paths=[{tmp_path}/nowhere]", f"train.run_dir={tmp_path}/run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_BAD_INPUT and len(err) == 1 and err[0].startswith("error: ") and "nowhere" in err[0], err
