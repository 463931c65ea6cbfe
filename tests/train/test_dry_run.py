"""`python -m megatron_ultralong.train --dry-run` (train/dry_run.py): each bad setup is one error line and exit 2
in seconds, with no process group; a good one prints the layout and the memory estimate and exits 0."""
import pickle
import shutil
import subprocess
import sys
import time

import pytest

from megatron_ultralong.config import load_recipe
from megatron_ultralong.train.dry_run import expected_tensors, job_world_size, memory_line, saved_tensors

from .helpers import REPO
from .helpers import run as train

# the CLI as a child process, failing with 99 if a process group was started on the way
CHILD = ("import sys; from megatron_ultralong.train.__main__ import main; code = main(sys.argv[1:]); "
         "td = sys.modules.get('torch.distributed'); "
         "sys.exit(99 if td is not None and td.is_available() and td.is_initialized() else code)")


def dry_run(*args, **env):
    """(exit code, stdout, stderr, seconds) of `python -m megatron_ultralong.train --dry-run ...`."""
    from tests.slurm.helpers import clean_env

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, "--dry-run", *args], cwd=REPO, capture_output=True, text=True,
                       env=clean_env(OMP_NUM_THREADS="1", **env), timeout=60)
    return r.returncode, r.stdout, r.stderr, time.perf_counter() - t0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(tokenizer, indexed dataset folder): a tiny sentencepiece model and a corpus preprocessed with it."""
    from megatron_ultralong.data.preprocess import preprocess_text
    from megatron_ultralong.data.synthetic import synthetic_documents, train_sentencepiece, write_synthetic_corpus

    tmp = tmp_path_factory.mktemp("dry_data")
    spm = train_sentencepiece([t for s in ("web", "code") for t in synthetic_documents(s, 30, seed=11)],
                              tmp / "tiny", vocab_size=512)
    corpus = write_synthetic_corpus(tmp / "corpus", {"web": 20, "code": 20}, seed=3)[0]
    preprocess_text([corpus], spm, str(tmp / "idx"), progress=False)
    return spm, str(tmp / "idx")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A toy_cpt checkpoint (2 steps of the real trainer: the model's own sharded keys, _extra_state included)."""
    run_dir = tmp_path_factory.mktemp("dry_ckpt") / "cpt"
    code, _, err = train(run_dir, "train.max_steps=2", "optim.lr_warmup_steps=0")
    assert code == 0, err
    return run_dir / "checkpoints"


def edited_copy(ckpt, dest, edit):
    """A copy of ``ckpt`` whose torch_dist tensor index (.metadata) went through ``edit(state_dict_metadata)``."""
    shutil.copytree(ckpt, dest)
    md_path = next(dest.glob("iter_*/.metadata"))
    md = pickle.loads(md_path.read_bytes())
    edit(md.state_dict_metadata)
    md_path.write_bytes(pickle.dumps(md))
    return dest


def _shrink_output(md):
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    info = md["output_layer.weight"]
    md["output_layer.weight"] = TensorStorageMetadata(info.properties, type(info.size)([256, 64]), info.chunks)


TOY = ["--config", "toy_cpt", "data.seq_length=64"]


def bad_setups(tmp, spm, idx, ckpt):
    run = f"train.run_dir={tmp}/run"
    real = ["data.synthetic=null", f"data.paths=[{idx}]", f"data.tokenizer={spm}", run]
    no_key = edited_copy(ckpt, tmp / "no_key", lambda md: md.pop("decoder.final_layernorm.weight"))
    shape = edited_copy(ckpt, tmp / "shape", _shrink_output)
    return {
        "bad recipe key": ([*TOY, run, "train.no_such_key=1"], {}, "train.no_such_key"),
        "unknown recipe": (["--config", "no_such_recipe", run], {}, "recipe 'no_such_recipe' not found"),
        "world size vs SLURM env": ([*TOY, run, "parallel.tp=2"],
                                    {"SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_ON_NODE": "3"},
                                    r"world size 3 = 1 node\(s\) × 3 per node \(SLURM_JOB_NUM_NODES, "
                                    r"SLURM_GPUS_ON_NODE\): world size 3 is not divisible by tp·pp·cp"),
        "world size vs --nodes/--gpus-per-node": (["--nodes", "2", "--gpus-per-node", "1", *TOY, run,
                                                   "parallel.cp=4"], {}, "parallel.cp=4 exceeds the world size 2"),
        "missing data path": ([*TOY, "data.synthetic=null", f"data.paths=[{tmp}/nothing]", f"data.tokenizer={spm}",
                               run], {}, "neither a preprocessing output directory nor a dataset prefix"),
        "bad tokenizer": ([*TOY, "data.synthetic=null", f"data.paths=[{idx}]", f"data.tokenizer={tmp}/no.model", run],
                          {}, "does not exist"),
        "separator outside the vocabulary": ([*TOY, *real, "data.separator_id=9999"], {},
                                             "data.separator_id=9999 is outside the vocabulary"),
        "init_from missing": ([*TOY, run, f"checkpoint.init_from={tmp}/no_ckpt"], {},
                              f"checkpoint.init_from={tmp}/no_ckpt: no such directory"),
        "init_from lacks a weight": ([*TOY, run, f"checkpoint.init_from={no_key}"], {},
                                     r"its weights do not fit the model this recipe builds \(missing "
                                     r"decoder\.final_layernorm\.weight\)"),
        "init_from tensor of another shape": ([*TOY, run, f"checkpoint.init_from={shape}"], {},
                                              r"shapes \(checkpoint vs model\) output_layer\.weight \[256, 64\] vs "
                                              r"\[512, 64\]"),
        "init_from of another architecture": ([*TOY, run, f"checkpoint.init_from={ckpt}", "model.hidden_size=128"],
                                              {}, "checkpoint of another architecture"),
        "SFT changes the stage's rope": (["--config", "toy_sft", run, f"checkpoint.init_from={ckpt}",
                                          "yarn.target_length=512"], {},
                                         r"yarn\.target_length=512 \(checkpoint: 256\).*train\.mode=sft keeps the "
                                         r"rope"),
    }


def test_each_bad_setup_is_one_error_line_and_exit_2_in_seconds_without_a_process_group(data, ckpt, tmp_path):
    import re

    spm, idx = data
    cases = bad_setups(tmp_path, spm, idx, ckpt)
    assert len(cases) >= 8
    for name, (args, env, pattern) in cases.items():
        code, out, err, seconds = dry_run(*args, **env)
        lines = err.strip().splitlines()
        assert code == 2, (name, code, err)  # 99: a process group was started
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert re.search(pattern, lines[0]), (name, lines[0])
        assert seconds < 10, (name, seconds)
        assert not (tmp_path / "run").exists(), name  # a dry run writes nothing


def test_a_good_setup_prints_layout_memory_and_checkpoint_and_exits_0(data, ckpt, tmp_path):
    spm, idx = data
    args = [*TOY, "data.synthetic=null", f"data.paths=[{idx}]", f"data.tokenizer={spm}",
            f"train.run_dir={tmp_path}/run", f"checkpoint.init_from={ckpt}"]
    for flags, env, where in [(["--nodes", "1", "--gpus-per-node", "1"], {}, "(--nodes, --gpus-per-node)"),
                              ([], {"SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_PER_NODE": "h100:1"},
                               "(SLURM_JOB_NUM_NODES, SLURM_GPUS_PER_NODE)")]:
        code, out, err, seconds = dry_run(*flags, *args, **env)
        assert code == 0, err
        assert err.strip() == "", err
        assert f"layout: world size 1 = 1 node(s) × 1 per node {where}: tp 1 · pp 1 · cp 1 · dp 1" in out, out
        assert "memory per GPU (megatron_ultralong/planner.py, GB): 139,584 parameters; 0.00 weights + " in out, out
        assert "its 9 weights match the model; 4 _extra_state entries are skipped on load" in out, out
        assert out.strip().endswith("dry run: every check passed")
        assert seconds < 10, seconds
    assert not (tmp_path / "run").exists()


def test_without_a_job_or_flags_the_world_size_is_not_checked(tmp_path):
    code, out, err, _ = dry_run(*TOY, f"train.run_dir={tmp_path}/run", "parallel.tp=2")
    assert code == 0, err
    assert "dp unknown: world size not checked (no SLURM job; pass --nodes and --gpus-per-node)" in out


def test_nodes_without_dry_run_is_refused_in_one_line(tmp_path):
    from megatron_ultralong.train.__main__ import main

    with pytest.raises(SystemExit) as e:
        main([*TOY, "--nodes", "2"])
    assert e.value.code == 2


def test_the_expected_keys_are_the_ones_the_trainer_saves(ckpt):
    saved, extra = saved_tensors(str(next(ckpt.glob("iter_*"))))
    cfg = load_recipe("toy_cpt")
    assert saved == expected_tensors(cfg)
    assert extra and all(k.endswith("._extra_state") for k in extra)


def test_the_memory_line_is_the_planners_and_world_size_sources():
    from megatron_ultralong.planner import Layout, memory, workload_from_config

    cfg = load_recipe("cpt_1m")  # tp 8 · cp 16 · dp 2 on 256 GPUs
    total = memory(cfg.model, workload_from_config(cfg), Layout(8, 1, 16, 2))["total"]
    assert memory_line(cfg, 256).endswith(f"+ allowance = {total:.2f} total")
    assert job_world_size(None, None, {"SLURM_NNODES": "32", "SLURM_GPUS_ON_NODE": "8"})[0] == 256
    assert job_world_size(4, None, {"SLURM_JOB_NUM_NODES": "32", "SLURM_GPUS_ON_NODE": "8"})[0] == 32
    assert job_world_size(None, None, {"SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "0"})[0] == 2  # CPU nodes
    assert job_world_size(None, None, {})[0] is None
