"""A preemption signal between the micro-batches of a step: abandon it (no optimizer step), keep the previous step's
checkpoint, exit 75; the resumed run's losses equal an uninterrupted run's bit for bit. DP=2, 4 micro-batches."""
import os
import signal

import pytest

from megatron_ultralong.signals import rest_of_step_s, signal_deadline
from tests.dist import run_ranks
from tests.train.helpers import allow_child_processes, losses, toy_cfg

LAYOUT = ["train.global_batch_size=8", "train.micro_batch_size=1"]  # dp 2 -> 4 micro-batches per rank and step


def test_deadline_comes_from_the_setting_else_the_slurm_end_time_else_is_unknown():
    assert signal_deadline(1000.0, 270.0, env={"SLURM_JOB_END_TIME": "5000"}) == 1270.0
    assert signal_deadline(1000.0, None, env={"SLURM_JOB_END_TIME": "5000"}) == 5000.0
    assert signal_deadline(1000.0, None, env={"SLURM_JOB_END_TIME": "Unknown"}) is None
    assert signal_deadline(1000.0, None, env={}) is None


def test_rest_of_step_extrapolates_this_steps_micro_batches_and_adds_the_optimizer_step():
    assert rest_of_step_s(elapsed_s=120.0, done=1, total=4, optimizer_s=5.0) == 3 * 120.0 + 5.0
    assert rest_of_step_s(elapsed_s=120.0, done=4, total=4, optimizer_s=5.0) == 5.0


def _train(rank, world, run_dir, overrides, interrupt):
    """One Trainer run of 5 steps; with ``interrupt`` rank 0 alone gets SIGUSR1 between micro-batches 2 and 3 of
    step 3. Returns the exit code, the step reached, the samples consumed and the steps saved."""
    from megatron_ultralong.train import trainer as trainer_module
    from megatron_ultralong.train.trainer import Trainer

    allow_child_processes()
    t = Trainer(toy_cfg(run_dir, *LAYOUT, "train.max_steps=5", *overrides))
    original, save, saves = trainer_module.forward_backward, t.save, []
    t.save = lambda: saves.append(t.step) or save()

    def signal_mid_step(model, batches, cfg, before_microbatch=None, **kw):
        def check(k):
            if t.step + 1 == 3 and k == 2 and rank == 0:
                os.kill(os.getpid(), signal.SIGUSR1)
            return before_microbatch(k)
        return original(model, batches, cfg, before_microbatch=check, **kw)

    if interrupt:
        trainer_module.forward_backward = signal_mid_step
    try:
        return {"code": t.train(), "step": t.step, "consumed": t.consumed_samples, "saves": saves}
    finally:
        trainer_module.forward_backward = original
        t.close()


def _run(run_dir, *overrides, interrupt=False):
    r = run_ranks(_train, 2, args=(str(run_dir), list(overrides), interrupt))
    assert r[0] == r[1]  # both ranks took the same decisions
    return r[0]


@pytest.mark.slow
def test_signal_between_micro_batches_abandons_the_step_and_the_resume_is_bit_identical(tmp_path):
    ref = _run(tmp_path / "ref")
    assert ref["code"] == 0 and list(losses(tmp_path / "ref")) == [1, 2, 3, 4, 5]
    # deadline 0: step 3 dropped before its 3rd micro-batch; step 2 saved now (no interval checkpoint existed)
    a = _run(tmp_path / "a", "checkpoint.signal_deadline_s=0", interrupt=True)
    assert (a["code"], a["step"], a["consumed"], a["saves"]) == (75, 2, 2 * 8, [2])
    resumed = _run(tmp_path / "a", "checkpoint.signal_deadline_s=0")
    assert resumed["code"] == 0 and resumed["saves"] == [5]
    assert losses(tmp_path / "a") == losses(tmp_path / "ref")  # steps 1-2, then 3-5 after the resume: bit for bit
    # the interval checkpoint of step 2 already exists: abandoning step 3 saves nothing more
    had = _run(tmp_path / "b", "checkpoint.signal_deadline_s=0", "checkpoint.interval=2", interrupt=True)
    assert (had["code"], had["step"], had["saves"]) == (75, 2, [2])
    # the rest of the step and a save fit before the deadline: step 3 finishes and is saved (as between steps)
    in_time = _run(tmp_path / "c", "checkpoint.signal_deadline_s=100000", interrupt=True)
    assert (in_time["code"], in_time["step"], in_time["saves"]) == (75, 3, [3])
    assert losses(tmp_path / "c") == {s: v for s, v in losses(tmp_path / "ref").items() if s <= 3}
