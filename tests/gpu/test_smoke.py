"""docs/slurm.md's one-node smoke run, without SLURM: smoke_cpt (TE attention, CP=2, bf16, an interval save and a
USR1 preemption save to every process of the run) and smoke_sft from its checkpoint, through launch/torchrun.sh
on 2 GPUs. Skipped without 2 GPUs and Transformer Engine."""
import importlib.util
import json
import os
import signal
import subprocess
import time

import psutil
import pytest
import torch

from tests.train.helpers import REPO

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [
    pytest.mark.gpu, pytest.mark.slow, pytest.mark.timeout(600),
    pytest.mark.skipif(GPUS < 2, reason="the smoke recipe runs CP=2: needs >= 2 CUDA GPUs"),
    pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is None, reason="needs Transformer Engine"),
]


def _launch(recipe, *overrides):
    env = {**os.environ, "ULTRALONG_NPROC_PER_NODE": "2", "MASTER_PORT": "29731"}
    return subprocess.Popen(["bash", str(REPO / "launch" / "torchrun.sh"), "--config", recipe, *overrides],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _signal_tree(proc, sig):
    """What srun does at a preemption: the signal to every process of the step."""
    for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def test_smoke_cpt_survives_a_preemption_after_a_save_then_smoke_sft_starts_from_it(tmp_path):
    cpt, sft = tmp_path / "smoke_cpt", tmp_path / "smoke_sft"
    args = [f"train.run_dir={cpt}", "train.max_steps=12", "checkpoint.interval=3", "train.tensorboard=false"]
    proc = _launch("smoke_cpt", *args)
    deadline = time.time() + 300
    while not (cpt / "checkpoints" / "iter_0000003").is_dir():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.5)
    _signal_tree(proc, signal.SIGUSR1)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 75, out
    assert json.loads((cpt / "exit_status.json").read_text())["code"] == 75
    resumed = _launch("smoke_cpt", *args)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0 and "resumed from" in out, out
    done = _launch("smoke_sft", f"train.run_dir={sft}", f"checkpoint.init_from={cpt}/checkpoints",
                   "train.max_steps=4", "train.tensorboard=false")
    out = done.communicate(timeout=300)[0]
    assert done.returncode == 0 and "initialised weights from" in out, out
