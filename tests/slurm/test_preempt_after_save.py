"""A preemption after an interval save, on the real SLURM with the real trainer: srun signals every process of
the step, Megatron's checkpoint-writer helpers included (issue 16, failure 0); the requeued job must finish with
the losses of an uninterrupted run, bit for bit, at 1 rank, at TP=2 and at CP=2 (2 gloo ranks)."""
import json
import re
import subprocess

import pytest

from .helpers import metrics_steps, submit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.usefixtures("slurm_cluster")]
STEPS = 12


def losses(run_dir):
    with open(run_dir / "metrics.jsonl") as f:
        return [json.loads(line)["loss"] for line in f if line.strip()]


@pytest.mark.parametrize("ranks, overrides", [(1, []), (2, ["parallel.tp=2"]), (2, ["parallel.cp=2"])],
                         ids=["1rank", "tp2", "cp2"])
def test_preemption_after_an_interval_save_requeues_and_matches_an_uninterrupted_run(tmp_path, ranks, overrides):
    args = [f"train.max_steps={STEPS}", "checkpoint.interval=3", "train.tensorboard=false",
            "train.micro_batch_size=1", *overrides]
    env = {"ULTRALONG_NPROC_PER_NODE": str(ranks)}
    job = submit("cpt_1m.sh", tmp_path / "preempted", args, **env)
    reference = submit("cpt_1m.sh", tmp_path / "reference", args, **env)  # runs after it (--exclusive)
    job.wait_for_log("iter_0000003 in")  # the first interval save: Megatron's writer has started its Manager
    # what --signal=B:USR1 does: USR1 to the batch shell, whose trap passes it to srun, which signals every
    # process of the step (launcher, torchrun, workers and their helper processes)
    subprocess.run(["scancel", "--signal=USR1", "--batch", str(job.id)], check=True, timeout=30)
    assert job.wait() == 0, job.log()
    assert reference.wait() == 0, reference.log()

    log = job.log()
    saved = int(re.search(r"SIGUSR1: checkpoint of step (\d+) saved, exiting with 75", log).group(1))
    assert 3 <= saved < STEPS, log
    assert "BrokenPipeError" not in log and "checkpoint saved; requeueing job" in log and "restart 1," in log
    assert re.search(rf"resumed from \S+iter_{saved:07d} \(step {saved}", log), log
    run = tmp_path / "preempted/runs/cpt_1m"
    assert metrics_steps(run) == list(range(1, STEPS + 1))  # no step lost or repeated
    assert losses(run) == losses(tmp_path / "reference/runs/cpt_1m")  # bit-identical to the uninterrupted run
