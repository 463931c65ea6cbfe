"""slurm/*.sh on a real SLURM (tests/slurm/cluster.sh), submitted as users submit them, with the GPU directives
overridden for this CPU node and the toy_cpt recipe: the preemption cycle with the stub trainer and with the real
one (python -m megatron_ultralong.train), a 1M -> 2M chain (the documented override) with --dependency=afterok,
and bad input."""
import json
import re
import subprocess

import pytest

from .helpers import error_lines, latest_step, metrics_steps, submit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.usefixtures("slurm_cluster")]
STUB = {"ULTRALONG_TRAIN_MODULE": "tests.slurm.stub_trainer"}


def preempt(job):
    """What SLURM does at --signal=B:USR1@120: USR1 to the batch shell only."""
    subprocess.run(["scancel", "--signal=USR1", "--batch", str(job.id)], check=True, timeout=30)


def test_stub_job_preempted_by_usr1_saves_requeues_and_finishes_then_afterok_starts(tmp_path):
    stub = dict(STUB, ULTRALONG_NPROC_PER_NODE="2", STUB_STEP_SECONDS="0.2")
    job = submit("cpt_1m.sh", tmp_path, ["train.max_steps=6", "train.micro_batch_size=1"], **stub,
                 STUB_WAIT_AT_STEP="2")
    # the next stage waits through the requeue (chained: it would fail at once without runs/cpt_1m/checkpoints)
    after = submit("cpt_2m.sh", tmp_path, ["checkpoint.init_from=runs/cpt_1m/checkpoints", "train.max_steps=2",
                                           "train.micro_batch_size=1"], **stub,
                   sbatch_args=[f"--dependency=afterok:{job.id}"])
    job.wait_for_log("stub rank 1: waiting for a signal at step 2")
    preempt(job)
    assert job.wait() == 0, job.log()
    assert after.wait() == 0, after.log()
    assert "stub rank 0: starting" in after.log() and "restart 0," in after.log()
    assert after.fields()["StartTime"] >= job.fields()["EndTime"]  # ISO times: after the last run, not the first

    log = job.log()
    run_dir = tmp_path / "runs/cpt_1m"
    assert "restart 0," in log and "restart 1," in log, log  # SLURM_RESTART_COUNT of the two runs
    assert "SIGUSR1: asking the job step to save a checkpoint and stop" in log
    assert log.count("SIGUSR1: checkpoint of step 2 saved, exiting with 75") == 2  # both workers, once
    assert "checkpoint saved; requeueing job" in log
    assert "stub rank 0: resumed from step 2" in log
    assert metrics_steps(run_dir) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "exit_status.json").read_text()) == {"code": 0, "reason": "finished", "step": 6}
    assert job.fields()["Restarts"] == "1"


def test_preempted_job_submitted_with_no_requeue_ends_with_75_and_says_to_resubmit(tmp_path):
    job = submit("cpt_1m.sh", tmp_path, ["train.max_steps=6", "train.micro_batch_size=1"], **STUB,
                 STUB_WAIT_AT_STEP="2", STUB_STEP_SECONDS="0.2", sbatch_args=["--no-requeue"])
    job.wait_for_log("stub rank 0: waiting for a signal at step 2")
    preempt(job)
    assert job.wait() == 75, job.log()
    assert "requeue refused (submitted with --no-requeue?): resubmit the same command to resume" in job.log()
    assert job.fields()["Restarts"] == "0"
    assert latest_step(tmp_path / "runs/cpt_1m/checkpoints") == 2


def test_real_trainer_job_preempted_requeues_and_resumes_to_max_steps(tmp_path):
    job = submit("cpt_1m.sh", tmp_path, ["train.max_steps=20", "train.tensorboard=false"])
    job.wait_for_log("torchrun started")  # the worker is importing: it gets USR1 as soon as it listens
    preempt(job)
    assert job.wait() == 0, job.log()

    log = job.log()
    saved = int(re.search(r"SIGUSR1: checkpoint of step (\d+) saved, exiting with 75", log).group(1))
    assert 1 <= saved < 20
    assert "checkpoint saved; requeueing job" in log and "restart 1," in log
    assert re.search(rf"resumed from \S+iter_{saved:07d} \(step {saved}", log), log
    run_dir = tmp_path / "runs/cpt_1m"
    assert metrics_steps(run_dir) == list(range(1, 21))  # no step lost or repeated
    assert latest_step(run_dir / "checkpoints") == 20
    assert job.fields()["Restarts"] == "1"


def test_stage_chain_with_afterok_dependency(tmp_path):
    """docs/slurm.md's chaining override: cpt_2m.sh waits for cpt_1m.sh and starts from its checkpoints."""
    first = submit("cpt_1m.sh", tmp_path, ["train.max_steps=3", "train.tensorboard=false"])
    second = submit("cpt_2m.sh", tmp_path, ["checkpoint.init_from=runs/cpt_1m/checkpoints", "train.max_steps=2",
                                            "train.tensorboard=false"],
                    sbatch_args=[f"--dependency=afterok:{first.id}"])
    assert first.wait() == 0, first.log()
    assert second.wait() == 0, second.log()
    assert metrics_steps(tmp_path / "runs/cpt_1m") == [1, 2, 3]
    assert "training finished" in first.log()
    assert re.search(r"initialised weights from \S*runs/cpt_1m/checkpoints/iter_0000003", second.log()), second.log()
    assert metrics_steps(tmp_path / "runs/cpt_2m") == [1, 2]


@pytest.mark.parametrize("script, env, extra, message", [
    ("cpt_1m.sh", {"ULTRALONG_RECIPE": "no_such_recipe"}, [], "error: recipe 'no_such_recipe' not found"),
    ("cpt_2m.sh", {}, ["checkpoint.init_from=runs/cpt_1m/checkpoints"],  # chained, but there is no 1M stage
     r"error: checkpoint\.init_from=\S*/runs/cpt_1m/checkpoints: no such directory"),  # the trainer's absolute path
])
def test_bad_input_fails_the_job_with_one_error_line_and_no_requeue(tmp_path, script, env, extra, message):
    job = submit(script, tmp_path, [*extra, "train.max_steps=2"], **env)
    assert job.wait() == 2, job.log()
    errors = error_lines(job.log())
    assert len(errors) == 1 and re.match(message, errors[0]), job.log()
    assert "Traceback" not in job.log() and "requeue" not in job.log()
    assert job.fields()["Restarts"] == "0"
