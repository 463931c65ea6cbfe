"""launch/torchrun.sh's signal and exit-code plumbing without SLURM: real torchrun, mostly with the stub trainer
(tests/slurm/stub_trainer.py, the contract of megatron_ultralong.train without a model), once with the real one."""
import json
import os
import re
import signal
import subprocess

import pytest

from .helpers import PYTHON, REPO, STARTED, clean_env, free_port, latest_step, metrics_steps, read_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def start(run_dir, *overrides, workers=2, module="tests.slurm.stub_trainer", new_session=False, **env):
    STARTED.append(subprocess.Popen(
        ["bash", str(REPO / "launch" / "torchrun.sh"), "--config", "toy_cpt", f"train.run_dir={run_dir}",
         "train.micro_batch_size=1", *overrides], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=new_session,
        env=clean_env(**{"ULTRALONG_PYTHON": PYTHON, "ULTRALONG_TRAIN_MODULE": module,
                         "ULTRALONG_NPROC_PER_NODE": str(workers), "MASTER_PORT": str(free_port()), **env})))
    return STARTED[-1]


def finish(p, head=""):
    out, _ = p.communicate(timeout=120)
    return head + out


def status(run_dir):
    return json.loads((run_dir / "exit_status.json").read_text())


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_to_launcher_saves_and_exits_75(tmp_path, sig):
    p = start(tmp_path, "train.max_steps=10", STUB_WAIT_AT_STEP="2")
    head = read_until(p, "stub rank 1: waiting for a signal at step 2")
    p.send_signal(sig)
    out = finish(p, head)
    assert p.returncode == 75, out
    assert status(tmp_path) == {"code": 75, "reason": f"preempted ({sig.name})", "step": 2}
    assert latest_step(tmp_path / "checkpoints") == 2
    for rank in (0, 1):  # both workers got it once, and torchrun let them finish
        assert out.count(f"stub rank {rank}: {sig.name}: checkpoint of step 2 saved") == 1, out
    assert "trainer: 75, checkpoint saved, requeue" in out


def test_term_to_every_process_of_the_step_is_not_torchruns_death_signal(tmp_path):
    """srun and scancel signal every process of a step, torchrun included: it must leave the workers alone."""
    p = start(tmp_path, "train.max_steps=10", new_session=True, STUB_WAIT_AT_STEP="2")
    head = read_until(p, "stub rank 1: waiting for a signal at step 2")
    os.killpg(p.pid, signal.SIGTERM)  # the launcher and torchrun (the workers have sessions of their own)
    out = finish(p, head)
    assert p.returncode == 75, out
    assert "death signal" not in out, out  # torchrun's "Received SIGTERM death signal, shutting down workers"
    assert status(tmp_path)["step"] == 2


def test_signal_while_workers_still_start_reaches_them_once_they_listen(tmp_path):
    p = start(tmp_path, "train.max_steps=40", STUB_SETUP_SECONDS="3")  # signals before their handlers: ignored
    head = read_until(p, "torchrun started")
    p.send_signal(signal.SIGUSR1)
    out = finish(p, head)
    assert p.returncode == 75, out
    assert status(tmp_path)["step"] < 40  # stopped, not run to the end
    assert out.count("SIGUSR1: checkpoint of step") == 2, out  # each worker got it exactly once


def test_worker_crash_is_exit_1_even_with_an_old_preemption_status(tmp_path):
    (tmp_path / "exit_status.json").write_text('{"code": 75, "reason": "preempted (SIGUSR1)", "step": 3}')  # old
    p = start(tmp_path, "train.max_steps=10", STUB_CRASH_AT_STEP="2")
    out = finish(p)
    assert p.returncode == 1, out
    assert not (tmp_path / "exit_status.json").exists()


def test_finished_run_exits_0_and_resumes_to_nothing(tmp_path):
    for _ in range(2):
        p = start(tmp_path, "train.max_steps=3", workers=1, STUB_STEP_SECONDS="0")
        out = finish(p)
        assert p.returncode == 0, out
    assert "stub rank 0: resumed from step 3" in out
    assert status(tmp_path) == {"code": 0, "reason": "finished", "step": 3}


def test_every_node_exits_with_the_trainers_75(tmp_path):
    """Two 'nodes' on this machine (one srun task each): torchrun says 1 on both; rank 0's exit status says 75."""
    port = str(free_port())
    nodes = [start(tmp_path, "train.max_steps=10", workers=1, STUB_WAIT_AT_STEP="2", SLURM_STEP_ID="0",
                   SLURM_STEP_NUM_NODES="2", SLURM_STEP_NUM_TASKS="2", SLURM_NODEID=str(node), SLURM_JOB_ID="7",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port) for node in (0, 1)]
    heads = [read_until(p, f"stub rank {rank}: waiting for a signal") for p, rank in zip(nodes, (0, 1))]
    for p in nodes:  # srun delivers the signal to the task on every node
        p.send_signal(signal.SIGUSR1)
    outs = [finish(p, head) for p, head in zip(nodes, heads)]
    assert [p.returncode for p in nodes] == [75, 75], outs
    assert "stub rank 1: SIGUSR1: checkpoint of step 2 saved" in outs[1]
    assert "torchrun exited 1" in outs[1] and "trainer: 75" in outs[1]  # node 1 read rank 0's exit status


def test_real_trainer_saves_on_usr1_then_resumes(tmp_path):
    """python -m megatron_ultralong.train (toy_cpt, one gloo worker on CPU): USR1 during start-up -> 75 with a
    checkpoint; the next launch resumes from it."""
    common = ["train.tensorboard=false", "checkpoint.interval=0"]
    p = start(tmp_path, "train.max_steps=20", *common, workers=1, module="megatron_ultralong.train")
    head = read_until(p, "torchrun started")
    p.send_signal(signal.SIGUSR1)  # the worker is still importing: it gets the signal once its handler is in
    out = finish(p, head)
    assert p.returncode == 75, out
    saved = status(tmp_path)["step"]
    assert status(tmp_path) == {"code": 75, "reason": "preempted (SIGUSR1)", "step": saved} and 1 <= saved < 20
    assert latest_step(tmp_path / "checkpoints") == saved

    p = start(tmp_path, f"train.max_steps={saved + 2}", *common, workers=1, module="megatron_ultralong.train")
    out = finish(p)
    assert p.returncode == 0, out
    assert re.search(rf"resumed from \S+iter_{saved:07d} \(step {saved}", out), out
    assert metrics_steps(tmp_path) == list(range(1, saved + 3))
    assert status(tmp_path) == {"code": 0, "reason": "finished", "step": saved + 2}
