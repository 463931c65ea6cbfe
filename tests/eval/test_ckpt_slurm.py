"""slurm/eval_{niah,ruler,perplexity}.sh with --ckpt: one torchrun per node of the job, one worker per GPU,
rendezvous on the first node (ULTRALONG_DRY_RUN=1 prints the srun command); with --hf one task, as before."""
import shlex
import subprocess

import pytest

from tests.slurm.helpers import REPO, clean_env

JOB = dict(SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="gpu007", SLURM_CPUS_ON_NODE="224",
           SLURM_GPUS_ON_NODE="8", ULTRALONG_PYTHON="/env/python", ULTRALONG_MASTER_ADDR="gpu007")


def _dry_run(script, *args, cwd):
    r = subprocess.run(["bash", str(REPO / "slurm" / script), *args], cwd=cwd, capture_output=True, text=True,
                       env=clean_env(ULTRALONG_DRY_RUN="1", **JOB), timeout=60)
    assert r.returncode == 0, r.stderr
    return shlex.split(r.stdout.strip().splitlines()[1])


@pytest.mark.parametrize("tool", ["eval_niah", "eval_ruler", "eval_perplexity"])
def test_ckpt_runs_one_torchrun_per_node_with_a_worker_per_gpu(tmp_path, tool):
    argv = _dry_run(f"{tool}.sh", "--ckpt", "ck", "--tp", "8", "--cp", "2", "--out", "o", cwd=tmp_path)
    assert argv == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=224", "/env/python",
                    "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d",
                    "--rdzv-endpoint=gpu007:33742", f"{REPO}/tools/{tool}.py", "--ckpt", "ck", "--tp", "8", "--cp",
                    "2", "--out", "o"]
    assert _dry_run(f"{tool}.sh", "--hf", "m", "--out", "o", cwd=tmp_path)[:3] == ["srun", "--nodes=1", "--ntasks=1"]
