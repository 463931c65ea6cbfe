"""Checkpoint API: exact round trip, atomic publish + 'latest', keep-last-N, resharding, one-line errors,
fully-parallel and background (async) saves at DP=2."""
import contextlib
import importlib.util
import json
import os
import shutil
import signal

import pytest
import torch

from megatron_ultralong.checkpoint import (
    FORMAT,
    CheckpointError,
    find_latest,
    list_checkpoints,
    read_meta,
    resolve_checkpoint_path,
)
from megatron_ultralong.config import to_dict
from tests.dist import run_ranks
from tests.train.helpers import build_parts, params_of, toy_cfg, train_one_step


def _optimizer_moments(optimizer):
    inner = optimizer.chained_optimizers[0].optimizer if hasattr(optimizer, "chained_optimizers") else \
        optimizer.optimizer
    return [inner.state[p]["exp_avg"].clone() for g in inner.param_groups for p in g["params"]]


def _save_then_load_into_fresh_model(rank, world, tmp):
    from megatron_ultralong.checkpoint import load_checkpoint, save_checkpoint
    from megatron_ultralong.parallel import destroy_distributed

    cfg = toy_cfg(tmp)
    model, opt = build_parts(cfg)
    train_one_step(model, opt, cfg, seed=1)
    path = save_checkpoint(f"{tmp}/ckpt", 1, model, cfg, opt, extra={"consumed_samples": 2})
    saved_params, saved_moments = params_of(model), _optimizer_moments(opt)
    next_loss = train_one_step(model, opt, cfg, seed=2)
    destroy_distributed()

    other = toy_cfg(tmp, "train.seed=999")  # different init: loading must overwrite everything
    model2, opt2 = build_parts(other)
    fresh_differs = any(not torch.equal(a, saved_params[n]) for n, a in params_of(model2).items())
    meta = load_checkpoint(f"{tmp}/ckpt", model2, opt2)
    loaded, moments = params_of(model2), _optimizer_moments(opt2)
    return {"path": path, "fresh_differs": fresh_differs, "meta": meta,
            "params_equal": loaded.keys() == saved_params.keys() and len(loaded) > 0
            and all(torch.equal(loaded[n], p) for n, p in saved_params.items()),
            "moments_equal": len(moments) == len(saved_moments) > 0
            and all(torch.equal(a, b) for a, b in zip(moments, saved_moments)),
            "next_loss": next_loss, "next_loss_after_load": train_one_step(model2, opt2, other, seed=2)}


def test_save_then_load_restores_weights_optimizer_and_continuation_exactly(tmp_path):
    r = run_ranks(_save_then_load_into_fresh_model, 1, args=(str(tmp_path),))[0]
    assert r["path"] == str(tmp_path / "ckpt" / "iter_0000001")
    assert r["fresh_differs"] and r["params_equal"] and r["moments_equal"]
    assert r["meta"]["step"] == 1 and r["meta"]["extra"] == {"consumed_samples": 2} and r["meta"]["rng_restored"]
    assert r["next_loss_after_load"] == r["next_loss"]  # bit-identical continuation


def _save_steps(rank, world, tmp, steps, overrides):
    from megatron_ultralong.checkpoint import save_checkpoint

    cfg = toy_cfg(tmp, *overrides)
    model, opt = build_parts(cfg)
    for s in steps:
        save_checkpoint(f"{tmp}/ckpt", s, model, cfg, opt)
    return to_dict(cfg)


def test_publish_keeps_last_n_points_latest_at_newest_and_leaves_no_temp_dirs(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    stale = ckpt / ".iter_0000009.tmp"  # a save that was killed half-way in an earlier run
    stale.mkdir()
    (stale / "junk").write_text("x")
    cfg_dict = run_ranks(_save_steps, 1, args=(str(tmp_path), [1, 2, 3], ["checkpoint.keep_last=2"]))[0]
    assert list_checkpoints(str(ckpt)) == [2, 3]
    assert (ckpt / "latest").read_text().strip() == "iter_0000003"
    assert sorted(p.name for p in ckpt.iterdir()) == ["iter_0000002", "iter_0000003", "latest"]
    meta = read_meta(str(ckpt))  # plain process: no process group needed
    assert meta["format"] == FORMAT and meta["step"] == 3 and meta["config"] == cfg_dict
    assert meta["layout"] == {"tp": 1, "pp": 1, "cp": 1, "dp": 1, "world_size": 1}
    assert read_meta(str(ckpt / "iter_0000002"))["step"] == 2


def test_incomplete_temp_dir_is_never_taken_for_a_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / ".iter_0000004.tmp").mkdir(parents=True)
    (ckpt / ".iter_0000004.tmp" / "meta.json").write_text(json.dumps({"format": FORMAT, "step": 4}))
    assert find_latest(str(ckpt)) is None and list_checkpoints(str(ckpt)) == []


def _save_weights(rank, world, tmp, overrides):
    """A weights-only checkpoint at step 0 (what a converter writes); returns the weights in the TP=1 layout."""
    from megatron.core.utils import unwrap_model

    from megatron_ultralong.checkpoint import save_checkpoint
    from tests.dist import full_tensor

    cfg = toy_cfg(tmp, *overrides)
    model, _ = build_parts(cfg)
    save_checkpoint(f"{tmp}/ckpt", 0, model, cfg)
    return {n: full_tensor(p, p) for n, p in unwrap_model(model[0]).named_parameters()}


def _load(rank, world, ckpt, overrides, with_optimizer):
    """Load ckpt into a differently seeded toy model; returns meta + weights (TP=1 layout), or the error."""
    from megatron.core.utils import unwrap_model

    from megatron_ultralong.checkpoint import load_checkpoint
    from tests.dist import full_tensor

    cfg = toy_cfg(os.path.dirname(ckpt), *overrides, "train.seed=77")
    model, opt = build_parts(cfg)
    try:
        meta = load_checkpoint(ckpt, model, opt if with_optimizer else None)
    except CheckpointError as e:
        return {"error": str(e)}
    return {"meta": meta, "params": {n: full_tensor(p, p) for n, p in unwrap_model(model[0]).named_parameters()}}


@pytest.fixture(scope="module")
def weights_ckpt(tmp_path_factory):
    """(ckpt dir, saved weights) of a toy model saved at TP=2; tests copy it before damaging it."""
    tmp = tmp_path_factory.mktemp("weights")
    saved = run_ranks(_save_weights, 2, args=(str(tmp), ["parallel.tp=2"]))[0]
    return tmp / "ckpt", saved


def _copy(src, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def test_tp2_checkpoint_loads_bit_identically_into_tp1(weights_ckpt):
    ckpt, saved = weights_ckpt
    r = run_ranks(_load, 1, args=(str(ckpt), [], False))[0]
    assert r["meta"]["layout"]["tp"] == 2 and r["meta"]["optimizer"] is None and r["meta"]["step"] == 0
    assert r["params"].keys() == saved.keys()
    for name, full in saved.items():
        assert torch.equal(r["params"][name], full), name


def test_weights_only_checkpoint_cannot_be_resumed_with_an_optimizer(weights_ckpt):
    r = run_ranks(_load, 1, args=(str(weights_ckpt[0]), [], True))[0]
    assert "weights only" in r["error"] and "init_from" in r["error"]


def test_checkpoint_of_another_architecture_is_refused_in_one_line(weights_ckpt):
    r = run_ranks(_load, 1, args=(str(weights_ckpt[0]), ["model.hidden_size=32", "model.ffn_hidden_size=64"],
                                  False))[0]
    assert "another architecture" in r["error"] and "hidden_size 64 vs 32" in r["error"]
    assert "ffn_hidden_size 128 vs 64" in r["error"] and "\n" not in r["error"]


def test_corrupt_tensor_file_gives_one_line_checkpoint_error(weights_ckpt, tmp_path):
    ckpt = _copy(weights_ckpt[0], tmp_path)
    for f in (ckpt / "iter_0000000").glob("*.distcp"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    r = run_ranks(_load, 1, args=(str(ckpt), [], False))[0]
    assert "corrupt" in r["error"] and "iter_0000000" in r["error"] and "\n" not in r["error"]


@pytest.mark.parametrize("damage, expected", [
    (lambda d: (d / "iter_0000000" / "meta.json").write_text("{not json"), "unreadable"),
    (lambda d: (d / "latest").write_text("iter_0000042\n"), "not a complete checkpoint"),
    (lambda d: (d / "iter_0000000" / "meta.json").write_text(json.dumps({"format": "other/9"})), "format"),
])
def test_damaged_meta_or_latest_is_reported_without_a_process_group(weights_ckpt, tmp_path, damage, expected):
    ckpt = _copy(weights_ckpt[0], tmp_path)
    damage(ckpt)
    with pytest.raises(CheckpointError, match=expected) as e:
        read_meta(str(ckpt))
    assert "\n" not in str(e.value)


def test_missing_path_and_non_checkpoint_dir_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        resolve_checkpoint_path(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        resolve_checkpoint_path(str(tmp_path))


def test_test_pause_hook_is_inert_unless_its_step_matches(tmp_path, monkeypatch):
    from megatron_ultralong import checkpoint
    from tests.checkpoint_pause import install

    published, slept = [], []
    monkeypatch.setattr(checkpoint, "_publish", lambda ckpt_dir, step, keep_last: published.append(step))
    install(10, 2.5, sleep=slept.append)
    checkpoint._publish(str(tmp_path), 5, 1)
    checkpoint._publish(str(tmp_path), 10, 1)
    assert slept == [2.5] and published == [5, 10]


def test_test_pause_hook_reaches_a_child_process_through_its_environment():
    import subprocess
    import sys

    from tests.checkpoint_pause import pause_env

    code = "from megatron_ultralong import checkpoint; print(checkpoint._publish.__qualname__)"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    hooked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, **pause_env(10, 60)})
    assert plain.stdout.strip() == "_publish" and hooked.stdout.strip() == "install.<locals>.paused"


def _signal_helpers_between_saves(rank, world, tmp):
    import signal
    import time

    import psutil

    from megatron_ultralong.checkpoint import save_checkpoint

    cfg = toy_cfg(tmp)
    model, opt = build_parts(cfg)
    save_checkpoint(f"{tmp}/ckpt", 1, model, cfg, opt)  # Megatron's writer starts its Manager here and keeps it
    helpers = psutil.Process().children(recursive=True)
    for p in helpers:  # what srun does to every process of the step at a preemption
        p.send_signal(signal.SIGUSR1)
        p.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    alive = [p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in helpers]
    save_checkpoint(f"{tmp}/ckpt", 2, model, cfg, opt)  # the preemption save: BrokenPipeError with a dead Manager
    return {"helpers": [p.name() if a else "dead" for p, a in zip(helpers, alive)], "alive": alive}


def test_save_helper_processes_survive_the_jobs_signals_and_the_next_save_works(tmp_path):
    r = run_ranks(_signal_helpers_between_saves, 1, args=(str(tmp_path),))[0]
    assert r["alive"] and all(r["alive"]), r["helpers"]
    assert find_latest(str(tmp_path / "ckpt")).endswith("iter_0000002")


def _give_final_norm_extra_state(model):
    """Make the local spec's final norm carry `_extra_state`, the way Transformer Engine's TENorm does."""
    from megatron.core.utils import unwrap_model

    norm = unwrap_model(model[0]).decoder.final_layernorm
    norm.__class__ = type("NormWithExtraState", (norm.__class__,), {
        "get_extra_state": lambda self: torch.zeros(4, dtype=torch.uint8),
        "set_extra_state": lambda self, state: None})


def _load_with_extra_state(rank, world, tmp, ckpt, save_side, load_side):
    """Save a weights-only checkpoint (a converter's) from a model with / without `_extra_state`, load it into a
    differently seeded one with / without it; returns meta, whether the weights match, or the error."""
    from megatron.core.utils import unwrap_model

    from megatron_ultralong.checkpoint import load_checkpoint, save_checkpoint
    from megatron_ultralong.parallel import destroy_distributed

    cfg = toy_cfg(tmp)
    model, _ = build_parts(cfg)
    if save_side:
        _give_final_norm_extra_state(model)
    save_checkpoint(ckpt, 0, model, cfg)
    saved = params_of(model)
    destroy_distributed()
    other = toy_cfg(tmp, "train.seed=77")
    model2, _ = build_parts(other)
    if load_side:
        _give_final_norm_extra_state(model2)
    keys = set(unwrap_model(model2[0]).sharded_state_dict())
    try:
        meta = load_checkpoint(ckpt, model2)
    except CheckpointError as e:
        return {"error": str(e), "keys": keys}
    loaded = params_of(model2)
    return {"meta": meta, "keys": keys, "equal": loaded.keys() == saved.keys()
            and all(torch.equal(loaded[n], p) for n, p in saved.items())}


@pytest.mark.parametrize("save_side, load_side, skipped", [
    (False, True, "decoder.final_layernorm._extra_state (not in the checkpoint)"),  # local-spec conversion -> TE
    (True, False, "decoder.final_layernorm._extra_state (not in the model)"),
])
def test_weights_only_load_skips_extra_state_present_on_one_side_only_and_says_so(tmp_path, save_side, load_side,
                                                                                  skipped):
    r = run_ranks(_load_with_extra_state, 1, args=(str(tmp_path), str(tmp_path / "ckpt"), save_side, load_side))[0]
    assert ("decoder.final_layernorm._extra_state" in r["keys"]) == load_side
    assert "error" not in r, r["error"]
    assert r["equal"] and r["meta"]["skipped_extra_state"] == [skipped]


def _bytes_per_rank(iter_dir):
    """{global rank: bytes of its torch_dist shard files} (files are named __<rank>_<i>.distcp)."""
    sizes = {}
    for f in os.listdir(iter_dir):
        if f.endswith(".distcp"):
            rank = int(f[2:].split("_")[0])
            sizes[rank] = sizes.get(rank, 0) + os.path.getsize(os.path.join(iter_dir, f))
    return sizes


def _dp2_save_both_ways(rank, world, tmp):
    """DP=2: one step, then the same state saved without and with the fully-parallel strategy; returns which
    strategies were used, the save times and the loss of each rank's next step (on its own batch)."""
    import time

    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    from megatron_ultralong import checkpoint
    from megatron_ultralong.checkpoint import save_checkpoint

    used = []
    original = checkpoint.save_strategy
    checkpoint.save_strategy = lambda fully_parallel: used.append(original(fully_parallel)) or used[-1]
    cfg = toy_cfg(tmp, "train.global_batch_size=4")
    model, opt = build_parts(cfg)
    train_one_step(model, opt, cfg, seed=1)
    seconds = {}
    for name, overrides in (("plain", ["checkpoint.fully_parallel=false"]), ("parallel", [])):
        t0 = time.perf_counter()
        save_checkpoint(f"{tmp}/{name}", 1, model, toy_cfg(tmp, "train.global_batch_size=4", *overrides), opt)
        seconds[name] = time.perf_counter() - t0
    return {"wrapped": [isinstance(s, FullyParallelSaveStrategyWrapper) for s in used], "seconds": seconds,
            "next_loss": train_one_step(model, opt, cfg, seed=2 + rank)}


def _dp2_load_and_step(rank, world, ckpt, fully_parallel):
    """DP=2: a differently seeded model loads ``ckpt``'s weights alone (init_from), then the whole resume state
    (fully-parallel loads or not); whether both gave the same weights, and the next step's loss."""
    from megatron_ultralong.checkpoint import load_checkpoint

    cfg = toy_cfg(os.path.dirname(ckpt), "train.global_batch_size=4")
    model, opt = build_parts(toy_cfg(os.path.dirname(ckpt), "train.global_batch_size=4", "train.seed=999"))
    fresh = params_of(model)
    load_checkpoint(ckpt, model, fully_parallel=fully_parallel)
    weights = params_of(model)
    meta = load_checkpoint(ckpt, model, opt, fully_parallel=fully_parallel)
    same = len(weights) > 0 and all(torch.equal(p, weights[n]) for n, p in params_of(model).items())
    return {"rng_restored": meta["rng_restored"], "weights_only_equal": same,
            "fresh_differs": any(not torch.equal(p, weights[n]) for n, p in fresh.items()),
            "next_loss": train_one_step(model, opt, cfg, seed=2 + rank)}


@pytest.mark.slow
def test_dp2_fully_parallel_save_splits_the_writing_and_resumes_bit_identically(tmp_path):
    saved = run_ranks(_dp2_save_both_ways, 2, args=(str(tmp_path),))
    assert saved[0]["wrapped"] == saved[1]["wrapped"] == [False, True]
    plain, parallel = (_bytes_per_rank(tmp_path / d / "iter_0000001") for d in ("plain", "parallel"))
    assert plain.get(1, 0) < 0.01 * plain[0]  # DP rank 1 holds replicas only: without the wrapper rank 0 writes all
    assert min(parallel.values()) > 0.3 * sum(parallel.values()) / 2, parallel  # split about evenly
    assert abs(sum(parallel.values()) - sum(plain.values())) < 0.05 * sum(plain.values())  # the same content
    print("bytes per rank, plain:", plain, "fully parallel:", parallel,
          "save s (rank 0):", {k: round(v, 2) for k, v in saved[0]["seconds"].items()})
    for name, fully_parallel in (("parallel", True), ("plain", True)):
        loaded = run_ranks(_dp2_load_and_step, 2, args=(str(tmp_path / name), fully_parallel))
        for before, after in zip(saved, loaded):  # each DP rank continues on its own batch, bit for bit
            assert after["fresh_differs"] and after["weights_only_equal"], (name, fully_parallel)
            assert after["rng_restored"] and after["next_loss"] == before["next_loss"], (name, fully_parallel)
    one = run_ranks(_load, 1, args=(str(tmp_path / "parallel"), [], True))[0]  # DP=2 -> DP=1: resharded
    assert "error" not in one and one["meta"]["layout"]["dp"] == 2


def _async_save_publishes_only_when_written(rank, world, tmp):
    """DP=2: an async save at step 1, its helpers signalled the way srun does, one more training step while it is
    written; returns what the checkpoint dir showed before and after AsyncSaves.wait()."""
    import signal

    import psutil

    from megatron_ultralong.checkpoint import AsyncSaves, save_checkpoint

    cfg = toy_cfg(tmp, "train.global_batch_size=4", "checkpoint.async_save=true")
    model, opt = build_parts(cfg)
    train_one_step(model, opt, cfg, seed=1)
    saves = AsyncSaves()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    path = save_checkpoint(f"{tmp}/ckpt", 1, model, cfg, opt, extra={"consumed_samples": 4}, async_saves=saves)
    helpers = psutil.Process().children(recursive=True)  # the forked writer (and what it started)
    writers = [p for p in helpers if p.pid not in before]
    for p in helpers:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGUSR1)
            p.send_signal(signal.SIGTERM)
    listing = sorted(os.listdir(f"{tmp}/ckpt"))
    pending = saves.pending
    next_loss = train_one_step(model, opt, cfg, seed=2 + rank)  # changes the state the writer is writing
    published = saves.wait()
    return {"path": path, "writers": len(writers), "listing": listing, "pending": pending,
            "published": [p for p, _ in published], "pending_after": saves.pending, "next_loss": next_loss}


@pytest.mark.slow
def test_async_save_publishes_atomically_after_every_rank_wrote_and_resumes_bit_identically(tmp_path):
    r = run_ranks(_async_save_publishes_only_when_written, 2, args=(str(tmp_path),))
    final = str(tmp_path / "ckpt" / "iter_0000001")
    for x in r:
        assert x["path"] == final and x["pending"] == [final] and x["writers"] >= 1
        assert x["published"] == [final] and x["pending_after"] == []
    assert r[0]["listing"] == [".iter_0000001.tmp"]  # returned before publishing: no 'latest', no iter_*
    assert find_latest(str(tmp_path / "ckpt")) == final  # the signalled writers finished the write
    assert read_meta(final)["extra"] == {"consumed_samples": 4} and read_meta(final)["optimizer_sharding"] is None
    loaded = run_ranks(_dp2_load_and_step, 2, args=(final, True))
    for before, after in zip(r, loaded):  # the state at the save, not the one the next step made
        assert after["next_loss"] == before["next_loss"]


def _train_dp2(rank, world, run_dir, overrides):
    from megatron_ultralong.train.trainer import Trainer
    from tests.train.helpers import allow_child_processes

    allow_child_processes()
    trainer = Trainer(toy_cfg(run_dir, "train.global_batch_size=4", "train.max_steps=6", "checkpoint.interval=3",
                              *overrides))
    try:
        return {"code": trainer.train(), "last": trainer.last_checkpoint}
    finally:
        trainer.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["checkpoint.async_save=false", "checkpoint.async_save=true"])
def test_dp2_trainer_resume_from_a_fully_parallel_checkpoint_repeats_every_step_bit_identically(tmp_path, mode):
    from tests.train.helpers import losses

    first = run_ranks(_train_dp2, 2, args=(str(tmp_path / "a"), [mode]))
    assert [x["code"] for x in first] == [0, 0] and first[0]["last"].endswith("iter_0000006")
    name = "iter_0000003"  # the interval save (in the background with async_save)
    shutil.copytree(tmp_path / "a" / "checkpoints" / name, tmp_path / "b" / "checkpoints" / name)
    (tmp_path / "b" / "checkpoints" / "latest").write_text(name + "\n")
    run_ranks(_train_dp2, 2, args=(str(tmp_path / "b"), [mode]))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert list(a) == [1, 2, 3, 4, 5, 6] and list(b) == [4, 5, 6]
    assert all(a[s] == b[s] for s in b), (a, b)


def _meta(optimizer, sharding, tp=2, pp=1, step=3):
    meta = {"path": "/ckpt/iter_0000003", "step": step, "optimizer": optimizer,
            "layout": {"tp": tp, "pp": pp, "cp": 1, "dp": 4, "world_size": 8 * tp * pp}}
    if sharding != "absent":
        meta["optimizer_sharding"] = sharding
    return meta


@pytest.mark.parametrize("meta, tp, pp, refused", [
    (_meta("distributed", "dp_reshardable"), 2, 1, False),  # same tp/pp: dp and cp may change
    (_meta("distributed", "dp_reshardable"), 1, 1, True),
    (_meta("distributed", "dp_reshardable"), 2, 2, True),
    (_meta("distributed", "fully_reshardable"), 1, 2, False),
    (_meta("distributed", "absent"), 1, 1, False),  # saved before the setting existed: fully_reshardable
    (_meta("local", None), 1, 1, False),  # the non-sharded optimizer reshards like the model
])
def test_dp_reshardable_optimizer_state_is_refused_at_another_tp_or_pp_in_one_line(meta, tp, pp, refused):
    from megatron_ultralong.checkpoint import check_optimizer_resharding

    if not refused:
        check_optimizer_resharding(meta, tp, pp)
        return
    with pytest.raises(CheckpointError) as e:
        check_optimizer_resharding(meta, tp, pp)
    msg = str(e.value)
    assert "\n" not in msg and "dp_reshardable" in msg and f"tp{tp}·pp{pp}" in msg
    assert "parallel.tp=2 parallel.pp=1 with checkpoint.optim_sharding=fully_reshardable" in msg
    assert "train.max_steps=4" in msg


def test_trainer_refuses_the_resume_before_any_process_group_starts(tmp_path):
    from megatron_ultralong.train.trainer import Trainer

    ckpt = tmp_path / "checkpoints" / "iter_0000003"
    ckpt.mkdir(parents=True)
    meta = {**_meta("distributed", "dp_reshardable"), "format": FORMAT}
    del meta["path"]
    (ckpt / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "checkpoints" / "latest").write_text("iter_0000003\n")
    handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)]
    with pytest.raises(CheckpointError, match="dp_reshardable"):
        Trainer(toy_cfg(tmp_path))
    assert not torch.distributed.is_initialized()  # and no handler of the trainer's left behind
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)] == handlers


@pytest.mark.parametrize("value", ["zero", "fully_sharded_model_space"])
def test_unknown_optim_sharding_is_a_one_line_config_error(value):
    from megatron_ultralong.config import ConfigError, validate

    with pytest.raises(ConfigError, match="checkpoint.optim_sharding=") as e:
        validate(toy_cfg("/tmp/x", f"checkpoint.optim_sharding={value}"))
    assert "'dp_reshardable', 'fully_reshardable'" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------- GPU: Megatron's DistributedOptimizer
GPUS = torch.cuda.device_count()
_TE = ["model.params_dtype=bf16", "model.attention_backend=te"]
needs_gpu_and_te = pytest.mark.skipif(not GPUS or importlib.util.find_spec("transformer_engine") is None,
                                      reason="needs a CUDA GPU and Transformer Engine (NVIDIA PyTorch container)")


@pytest.mark.parametrize("mode", ["checkpoint.async_save=false", "checkpoint.async_save=true"])
@pytest.mark.parametrize("sharding", ["dp_reshardable", "fully_reshardable"])
@pytest.mark.gpu
@needs_gpu_and_te
def test_gpu_distributed_optimizer_state_of_either_sharding_resumes_bit_identically(tmp_path, sharding, mode):
    from tests.train.helpers import losses

    overrides = [*_TE, f"checkpoint.optim_sharding={sharding}", mode, "train.global_batch_size=2"]
    run_ranks(_train_dp2, 1, args=(str(tmp_path / "a"), overrides))
    meta = read_meta(str(tmp_path / "a" / "checkpoints" / "iter_0000006"))
    assert meta["optimizer"] == "distributed" and meta["optimizer_sharding"] == sharding
    name = "iter_0000003"
    shutil.copytree(tmp_path / "a" / "checkpoints" / name, tmp_path / "b" / "checkpoints" / name)
    (tmp_path / "b" / "checkpoints" / "latest").write_text(name + "\n")
    run_ranks(_train_dp2, 1, args=(str(tmp_path / "b"), overrides))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert list(b) == [4, 5, 6] and all(a[s] == b[s] for s in b), (a, b)


@pytest.mark.gpu
@needs_gpu_and_te
@pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("sharding, layout, resumes", [
    ("dp_reshardable", "parallel.tp=1", True),  # dp 2 -> 1
    ("dp_reshardable", "parallel.tp=2", False),  # saved at tp 1: refused at tp 2
    ("fully_reshardable", "parallel.tp=2", True),
])
def test_gpu_dp2_distributed_optimizer_state_reshards_as_its_sharding_allows(tmp_path, sharding, layout, resumes):
    from tests.train.helpers import losses

    overrides = [*_TE, f"checkpoint.optim_sharding={sharding}"]
    run_ranks(_train_dp2, 2, args=(str(tmp_path / "a"), overrides))
    name = "iter_0000003"
    shutil.copytree(tmp_path / "a" / "checkpoints" / name, tmp_path / "b" / "checkpoints" / name)
    (tmp_path / "b" / "checkpoints" / "latest").write_text(name + "\n")
    if not resumes:
        with pytest.raises(RuntimeError, match="dp_reshardable"):
            run_ranks(_train_dp2, 2, args=(str(tmp_path / "b"), [*overrides, layout]))
        return
    run_ranks(_train_dp2, 2 if layout == "parallel.tp=2" else 1, args=(str(tmp_path / "b"), [*overrides, layout]))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert list(b) == [4, 5, 6] and all(abs(a[s] - b[s]) < 2e-2 for s in b), (a, b)  # bf16, another layout
