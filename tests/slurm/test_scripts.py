"""The command lines slurm/*.sh and launch/torchrun.sh build, and their one-line errors. No cluster needed:
ULTRALONG_DRY_RUN=1 prints the command instead of running it (pyxis, needed to run the container mode, is not
installable here, so its exact srun argv is what we can check)."""
import os
import shlex
import shutil
import socket
import subprocess

import pytest

from .helpers import PYTHON, REPO, clean_env, error_lines

IMAGE = "nvcr.io#nvidia/pytorch:25.11-py3"
NODELIST = "gpu[007-038]" if shutil.which("scontrol") else "gpu007"  # expanding a range needs scontrol
JOB_32_NODES = dict(SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="32", SLURM_JOB_NODELIST=NODELIST,
                    SLURM_CPUS_ON_NODE="224")


def run(cmd, cwd, **env):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=clean_env(**env), timeout=60)


def dry_run(script, *args, cwd, **env):
    """(MASTER_ADDR/PORT line, srun argv) printed by ULTRALONG_DRY_RUN=1 bash slurm/<script> args."""
    r = run(["bash", str(REPO / "slurm" / script), *args], cwd, ULTRALONG_DRY_RUN="1", **env)
    assert r.returncode == 0, r.stderr
    master, command = r.stdout.strip().splitlines()
    return master, shlex.split(command)


def launch_argv(*overrides):
    return ["bash", f"{REPO}/launch/torchrun.sh", *overrides]


def test_container_mode_srun_command(tmp_path):
    master, argv = dry_run("cpt_4m.sh", "train.max_steps=3", cwd=tmp_path, ULTRALONG_CONTAINER_IMAGE=IMAGE,
                           ULTRALONG_CONTAINER_MOUNTS="/data:/data:ro,/models:/models", **JOB_32_NODES)
    assert master == "MASTER_ADDR=gpu007 MASTER_PORT=33742"  # 29500 + job id 4242 % 10000
    assert argv == ["srun", "--nodes=32", "--ntasks=32", "--ntasks-per-node=1", "--cpus-per-task=224",
                    f"--container-image={IMAGE}",
                    f"--container-mounts={REPO}:{REPO},{tmp_path}:{tmp_path},/data:/data:ro,/models:/models",
                    f"--container-workdir={tmp_path}",
                    *launch_argv("--config", "cpt_4m", "train.max_steps=3")]


@pytest.mark.parametrize("image", [None, IMAGE])
def test_dry_run_outside_a_job_shows_the_one_node_command(tmp_path, image):
    env = {"ULTRALONG_CONTAINER_IMAGE": image} if image else {}
    master, argv = dry_run("cpt_4m.sh", "train.max_steps=3", cwd=tmp_path, **env)  # no SLURM_* variables at all
    host = socket.gethostname().split(".")[0]
    assert master == f"MASTER_ADDR={host} MASTER_PORT=29500"
    container = [f"--container-image={IMAGE}", f"--container-mounts={REPO}:{REPO},{tmp_path}:{tmp_path}",
                 f"--container-workdir={tmp_path}"] if image else []
    cpus = len(os.sched_getaffinity(0))  # what `nproc` says
    assert argv == ["srun", "--nodes=1", "--ntasks=1", "--ntasks-per-node=1", f"--cpus-per-task={cpus}",
                    *container, *launch_argv("--config", "cpt_4m", "train.max_steps=3")]


def test_container_mode_from_the_checkout_mounts_it_once(tmp_path):
    _, argv = dry_run("cpt_1m.sh", cwd=REPO, ULTRALONG_CONTAINER_IMAGE="/images/ultralong.sqsh", **JOB_32_NODES)
    assert f"--container-mounts={REPO}:{REPO}" in argv
    assert f"--container-workdir={REPO}" in argv


def test_bare_mode_srun_command_with_extra_srun_args(tmp_path):
    master, argv = dry_run("cpt_1m.sh", "data.paths=[/data/cpt_mix.json]", cwd=tmp_path,
                           ULTRALONG_SRUN_ARGS="--mpi=pmix --label", ULTRALONG_MASTER_PORT="40000",
                           MASTER_ADDR="stale-host", MASTER_PORT="1234", **JOB_32_NODES)  # from the user's shell
    assert master == "MASTER_ADDR=gpu007 MASTER_PORT=40000"
    assert argv == ["srun", "--nodes=32", "--ntasks=32", "--ntasks-per-node=1", "--cpus-per-task=224",
                    "--mpi=pmix", "--label",
                    *launch_argv("--config", "cpt_1m", "data.paths=[/data/cpt_mix.json]")]


STAGE_DEFAULTS = [
    ("cpt_1m.sh", "cpt_1m", "runs/cpt_1m", None),  # a replacement recipe keeps its own init_from
    ("cpt_2m.sh", "cpt_2m", "runs/cpt_2m", None),  # every CPT stage starts from ckpt/llama31-8b (cpt_base)
    ("cpt_4m.sh", "cpt_4m", "runs/cpt_4m", None),
    ("sft.sh", "sft", "runs/sft_4m", "runs/cpt_4m/checkpoints"),
]


@pytest.mark.parametrize("script, recipe, run_dir, init_from", STAGE_DEFAULTS)
def test_a_stage_script_passes_its_recipe_and_the_user_overrides_only(tmp_path, script, recipe, run_dir, init_from):
    _, argv = dry_run(script, "checkpoint.init_from=ckpt/mine", cwd=tmp_path, **JOB_32_NODES)
    trainer_args = argv[argv.index(f"{REPO}/launch/torchrun.sh") + 1:]
    assert trainer_args == ["--config", recipe, "checkpoint.init_from=ckpt/mine"]  # the recipe holds the rest


@pytest.mark.parametrize("script, recipe, run_dir, init_from", STAGE_DEFAULTS)
def test_a_replacement_recipe_runs_as_the_stage_with_user_overrides_last(tmp_path, script, recipe, run_dir,
                                                                         init_from):
    _, argv = dry_run(script, "checkpoint.init_from=ckpt/mine", cwd=tmp_path, ULTRALONG_RECIPE="toy_cpt",
                      **JOB_32_NODES)
    trainer_args = argv[argv.index(f"{REPO}/launch/torchrun.sh") + 1:]
    defaults = [f"train.run_dir={run_dir}"] + ([f"checkpoint.init_from={init_from}"] if init_from else [])
    assert trainer_args == ["--config", "toy_cpt", *defaults, "checkpoint.init_from=ckpt/mine"]  # the last one wins


@pytest.mark.parametrize("script, recipe, run_dir, init_from", STAGE_DEFAULTS)
def test_the_stage_values_a_script_gives_a_replacement_are_its_recipes(script, recipe, run_dir, init_from):
    from megatron_ultralong.config import load_recipe

    cfg = load_recipe(recipe)
    line = (REPO / "slurm" / script).read_text().strip().splitlines()[-1]
    assert shlex.split(line) == ["ultralong_train", recipe, run_dir, init_from or "", "$@"]
    assert cfg.train.run_dir == run_dir and (init_from is None or cfg.checkpoint.init_from == init_from)


def test_recipe_can_be_replaced(tmp_path):
    _, argv = dry_run("cpt_4m.sh", cwd=tmp_path, ULTRALONG_RECIPE="my/cpt_4m_64k.yaml", **JOB_32_NODES)
    assert argv[argv.index("--config") + 1] == "my/cpt_4m_64k.yaml"


@pytest.mark.parametrize("script", ["eval_niah", "eval_perplexity", "eval_ruler", "eval_infinitebench", "eval_lm"])
def test_eval_scripts_run_their_tool_in_one_task(tmp_path, script):
    _, argv = dry_run(f"{script}.sh", "--hf", "hf/m", "--out", "eval/x", cwd=tmp_path, ULTRALONG_PYTHON="/env/python",
                      **JOB_32_NODES)
    assert argv == ["srun", "--nodes=1", "--ntasks=1", "--ntasks-per-node=1", "--cpus-per-task=224",
                    "/env/python", f"{REPO}/tools/{script}.py", "--hf", "hf/m", "--out", "eval/x"]


def test_eval_niah_without_the_tool_is_a_one_line_error(tmp_path):
    home = tmp_path / "checkout"
    shutil.copytree(REPO / "slurm", home / "slurm")  # a checkout without tools/eval_niah.py
    r = run(["bash", str(home / "slurm" / "eval_niah.sh"), "--hf", "x"], tmp_path, **JOB_32_NODES)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: tools/eval_niah.py does not exist in {home}: this checkout has no such "
                                f"evaluation tool yet; update the checkout")


def test_argument_that_is_not_an_override_is_a_one_line_error(tmp_path):
    r = run(["bash", str(REPO / "slurm" / "cpt_4m.sh"), "--nodes=4"], tmp_path, **JOB_32_NODES)
    assert r.returncode == 2
    assert error_lines(r.stderr) == r.stderr.strip().splitlines() and len(error_lines(r.stderr)) == 1
    assert "argument '--nodes=4'" in r.stderr


def test_running_a_stage_script_outside_a_job_says_how_to_submit(tmp_path):
    r = run(["bash", str(REPO / "slurm" / "cpt_1m.sh")], tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("error: not inside a SLURM job: submit with sbatch") and r.stderr.count("\n") == 1


def test_a_python_that_is_not_there_is_a_one_line_error_before_srun(tmp_path):
    r = run(["bash", str(REPO / "slurm" / "cpt_1m.sh")], tmp_path, ULTRALONG_PYTHON="/no/env/bin/python",
            **JOB_32_NODES)  # a job's environment, no dry run: it gets as far as checking the python
    assert r.returncode == 2
    assert r.stderr.startswith("error: ULTRALONG_PYTHON=/no/env/bin/python: not found on ")
    assert r.stderr.count("\n") == 1


def test_a_wrong_ultralong_home_is_a_one_line_error(tmp_path):
    r = run(["bash", str(REPO / "slurm" / "sft.sh")], tmp_path, ULTRALONG_HOME=str(tmp_path), **JOB_32_NODES)
    assert r.returncode == 2
    assert r.stderr == f"error: no slurm/common.sh under '{tmp_path}'; export ULTRALONG_HOME=<checkout>\n"


STAGES = ["cpt_1m.sh", "cpt_2m.sh", "cpt_4m.sh", "sft.sh"]


@pytest.mark.parametrize("script", STAGES + ["eval_niah.sh", "eval_perplexity.sh", "eval_ruler.sh", "eval_lm.sh"])
def test_scripts_start_with_the_command_that_runs_them(script):
    assert (REPO / "slurm" / script).read_text().splitlines()[1].startswith(f"# sbatch slurm/{script}")


@pytest.mark.parametrize("script", STAGES)
def test_training_scripts_ask_for_the_preemption_signal_and_requeue(script):
    directives = [line.split()[1] for line in (REPO / "slurm" / script).read_text().splitlines()
                  if line.startswith("#SBATCH")]
    assert {"--requeue", "--open-mode=append", "--ntasks-per-node=1"} <= set(directives)
    # the lead time is the planner's (tests/test_planner.py pins its value)
    assert [d for d in directives if d.startswith("--signal=")][0].startswith("--signal=B:USR1@")


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shell_scripts_pass_shellcheck():
    scripts = [*sorted((REPO / "slurm").glob("*.sh")), REPO / "launch" / "torchrun.sh", REPO / "tests/slurm/cluster.sh"]
    r = subprocess.run(["shellcheck", "-x", *map(str, scripts)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout


# ------------------------------------------------------------------------------------------------- launch/
STEP_ON_NODE_2_OF_4 = dict(SLURM_STEP_ID="0", SLURM_STEP_NUM_NODES="4", SLURM_STEP_NUM_TASKS="4", SLURM_NODEID="2",
                           SLURM_JOB_ID="1234", SLURM_GPUS_ON_NODE="8", MASTER_ADDR="gpu001")


def test_launch_derives_torchrun_layout_from_the_srun_step(tmp_path):
    r = run(launch_argv("--config", "cpt_4m", "train.max_steps=3"), tmp_path, ULTRALONG_DRY_RUN="1",
            ULTRALONG_PYTHON="/env/python", CUDA_DEVICE_MAX_CONNECTIONS="8", **STEP_ON_NODE_2_OF_4)
    assert r.returncode == 0, r.stderr
    env_line, command = r.stdout.strip().splitlines()
    assert shlex.split(command) == [
        "/env/python", "-m", "torch.distributed.run", "--nnodes=4", "--node-rank=2", "--nproc-per-node=8",
        "--master-addr=gpu001", "--master-port=30734", "-m", "megatron_ultralong.train",
        "--config", "cpt_4m", "train.max_steps=3"]
    assert "CUDA_DEVICE_MAX_CONNECTIONS=8 " in env_line  # a value the user exported wins over the default
    assert "TORCH_NCCL_AVOID_RECORD_STREAMS=1 " in env_line
    assert "PET_SIGNALS_TO_HANDLE=SIGINT,SIGHUP,SIGQUIT " in env_line  # torchrun leaves TERM to the workers


def test_launch_outside_slurm_is_one_local_node(tmp_path):
    r = run(launch_argv("--config", "toy_cpt"), tmp_path, ULTRALONG_DRY_RUN="1", ULTRALONG_NPROC_PER_NODE="2")
    argv = shlex.split(r.stdout.strip().splitlines()[-1])
    assert argv[3:9] == ["--nnodes=1", "--node-rank=0", "--nproc-per-node=2", "--master-addr=127.0.0.1",
                         "--master-port=29500", "-m"]


def test_launch_refuses_more_than_one_task_per_node(tmp_path):
    r = run(launch_argv("--config", "cpt_4m"), tmp_path, **{**STEP_ON_NODE_2_OF_4, "SLURM_STEP_NUM_TASKS": "32"})
    assert r.returncode == 2
    assert r.stderr.startswith("error: srun started 32 tasks on 4 nodes; torchrun needs one task per node")
    assert r.stderr.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["--config", "no_such_recipe"], "error: recipe 'no_such_recipe' not found"),
    (["--config", "toy_cpt", "parallel.tp=2"], "error: world size 1 is not divisible by tp·pp·cp"),
    (["--config", "toy_cpt", "checkpoint.init_from=runs/cpt_1m/checkpoints"],
     "error: checkpoint.init_from=runs/cpt_1m/checkpoints: no such directory"),
])
def test_launch_rejects_bad_input_in_one_line_before_torchrun(tmp_path, args, message):
    r = run(launch_argv(*args), tmp_path, ULTRALONG_PYTHON=PYTHON, ULTRALONG_NPROC_PER_NODE="1")
    assert r.returncode == 2
    assert r.stderr.startswith(message) and r.stderr.count("\n") == 1, r.stderr
    assert "torch.distributed.run" not in r.stdout + r.stderr


# --------------------------------------------------------------------------- the trainer's --dry-run before srun
def fake_srun(tmp_path, code):
    """A `srun` first on PATH that records its argv in srun.log and exits ``code``; returns the env for it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f'#!/bin/bash\necho "$*" >> {tmp_path}/srun.log\nexit {code}\n')
    (bin_dir / "srun").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_a_bad_setup_fails_the_batch_script_in_one_line_before_srun(tmp_path):
    """32 CPU nodes (one worker each) cannot split toy_cpt's global batch of 2: the batch node's dry run says so."""
    r = run(["bash", str(REPO / "slurm" / "cpt_1m.sh"), "train.max_steps=2"], tmp_path, ULTRALONG_PYTHON=PYTHON,
            ULTRALONG_RECIPE="toy_cpt", **fake_srun(tmp_path, 0), **JOB_32_NODES)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: world size 32 = 32 node(s) × 1 per node (--nodes, no GPUs: one CPU worker "
                               "per node): train.global_batch_size=2 is not divisible"), r.stderr
    assert r.stderr.count("\n") == 1
    assert not (tmp_path / "srun.log").exists()  # no job step was started


def test_a_good_setup_prints_the_layout_then_starts_the_step(tmp_path):
    r = run(["bash", str(REPO / "slurm" / "cpt_1m.sh"), "train.max_steps=2", "train.micro_batch_size=1"], tmp_path,
            ULTRALONG_PYTHON=PYTHON, ULTRALONG_RECIPE="toy_cpt", ULTRALONG_NPROC_PER_NODE="2",
            **fake_srun(tmp_path, 0), **{**JOB_32_NODES, "SLURM_JOB_NUM_NODES": "1"})
    assert r.returncode == 0, r.stderr
    assert "layout: world size 2 = 1 node(s) × 2 per node (--nodes, --gpus-per-node): tp 1 · pp 1 · cp 1 · dp 2" \
        in r.stdout, r.stdout
    assert "memory per GPU" in r.stdout and "dry run: every check passed" in r.stdout
    steps = (tmp_path / "srun.log").read_text().splitlines()
    assert len(steps) == 1 and steps[0].startswith("--nodes=1 --ntasks=1") and "launch/torchrun.sh" in steps[0]


def test_container_mode_runs_the_dry_run_in_one_task_of_the_image_first(tmp_path):
    r = run(["bash", str(REPO / "slurm" / "cpt_1m.sh")], tmp_path, ULTRALONG_CONTAINER_IMAGE=IMAGE,
            **fake_srun(tmp_path, 2), **{**JOB_32_NODES, "SLURM_GPUS_ON_NODE": "8"})
    assert r.returncode == 2
    steps = (tmp_path / "srun.log").read_text().splitlines()
    assert len(steps) == 1  # the dry run failed (exit 2): the training step never started
    assert shlex.split(steps[0]) == [
        "--nodes=1", "--ntasks=1", "--ntasks-per-node=1", "--cpus-per-task=224", f"--container-image={IMAGE}",
        f"--container-mounts={REPO}:{REPO},{tmp_path}:{tmp_path}", f"--container-workdir={tmp_path}",
        "python3", "-m", "megatron_ultralong.train", "--dry-run", "--nodes", "32", "--gpus-per-node", "8",
        "--config", "cpt_1m"]
