"""Checkpoint API: exact round trip, atomic publish + 'latest', keep-last-N, resharding, one-line errors."""
import json
import os
import shutil

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
