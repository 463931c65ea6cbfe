"""The Trainer in-process (gloo ranks): learning, DP equivalence, resharded resume, SFT masking, init_from."""
import shutil

import pytest
import torch

from tests.dist import run_ranks
from tests.train.helpers import allow_child_processes, losses, read_metrics, toy_cfg

pytestmark = pytest.mark.slow


def _train(rank, world, run_dir, overrides):
    from megatron_ultralong.train.trainer import Trainer

    allow_child_processes()
    trainer = Trainer(toy_cfg(run_dir, *overrides))
    try:
        code = trainer.train()
        return {"code": code, "step": trainer.step, "consumed": trainer.consumed_samples}
    finally:
        trainer.close()


def test_loss_decreases_over_30_steps_on_the_copy_task(tmp_path):
    r = run_ranks(_train, 1, args=(str(tmp_path), ["train.max_steps=30"]))[0]
    assert r["code"] == 0 and r["step"] == 30 and r["consumed"] == 30 * 2
    recs = read_metrics(tmp_path)
    assert [x["step"] for x in recs] == list(range(1, 31))
    first, last = [x["loss"] for x in recs[:5]], [x["loss"] for x in recs[-5:]]
    assert sum(last) / 5 < sum(first) / 5 - 0.5, (first, last)
    # every record is complete; mfu is GPU-only
    assert all(x["lr"] > 0 and x["grad_norm"] > 0 and x["tokens"] == 2 * 64 and x["tokens_per_s"] > 0
               and x["mem_gb"] > 0 and x["mfu"] is None for x in recs)
    assert (tmp_path / "checkpoints" / "iter_0000030").is_dir() and (tmp_path / "config.yaml").is_file()


def _flushes_subnormals(rank, world, run_dir):
    from megatron_ultralong.train.trainer import Trainer

    tiny = torch.tensor([1e-40])  # a subnormal float32
    torch.set_flush_denormal(False)
    kept = (tiny * 1.0).item() != 0.0
    trainer = Trainer(toy_cfg(run_dir, "train.max_steps=2"))
    trainer.close()
    return kept, (tiny * 1.0).item() == 0.0


def test_the_trainer_flushes_subnormal_floats_on_cpu(tmp_path):
    kept_before, flushed_after = run_ranks(_flushes_subnormals, 1, args=(str(tmp_path),))[0]
    assert kept_before and flushed_after is (not torch.cuda.is_available())


def test_dp2_trains_exactly_like_dp1_with_the_same_global_batch(tmp_path):
    common = ["train.max_steps=3", "train.global_batch_size=4", "train.micro_batch_size=1"]
    run_ranks(_train, 1, args=(str(tmp_path / "dp1"), common))
    run_ranks(_train, 2, args=(str(tmp_path / "dp2"), common))
    dp1, dp2 = read_metrics(tmp_path / "dp1"), read_metrics(tmp_path / "dp2")
    assert len(dp1) == len(dp2) == 3
    for a, b in zip(dp1, dp2):
        assert a["loss_tokens"] == b["loss_tokens"] == 4 * 64
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-5, (a, b)


def _resume_copy(src, dst, step):
    """A run dir whose checkpoint dir holds src's step-`step` checkpoint as 'latest'."""
    name = f"iter_{step:07d}"
    shutil.copytree(src / "checkpoints" / name, dst / "checkpoints" / name)
    (dst / "checkpoints" / "latest").write_text(name + "\n")
    return dst


@pytest.mark.parametrize("layout", ["parallel.tp=2", "parallel.pp=2"])
def test_two_rank_checkpoint_resumes_bit_identically_and_reshards_to_one_rank(tmp_path, layout):
    src = tmp_path / "two_ranks"
    args = ["train.max_steps=4", "checkpoint.interval=3"]
    run_ranks(_train, 2, args=(str(src), [layout, *args]))
    two = losses(src)
    same = _resume_copy(src, tmp_path / "same_layout", 3)
    run_ranks(_train, 2, args=(str(same), [layout, *args]))
    assert losses(same) == {4: two[4]}  # same layout: RNG and optimizer restored, bit for bit
    one = _resume_copy(src, tmp_path / "one_rank", 3)
    r = run_ranks(_train, 1, args=(str(one), args))[0]
    assert r["step"] == 4 and r["consumed"] == 4 * 2
    resharded = losses(one)
    assert list(resharded) == [4]  # resumed at step 3: exactly one step trained here
    assert abs(resharded[4] - two[4]) < 1e-5, (resharded[4], two[4])


def _sft_run_and_expected_loss_tokens(rank, world, run_dir):
    from megatron_ultralong.data.loader import build_train_iterator

    result = _train(rank, world, run_dir, ["train.mode=sft", "train.max_steps=3"])
    cfg = toy_cfg(run_dir, "train.mode=sft")
    it = build_train_iterator(cfg, 0, 1, consumed_samples=0)
    per_step = cfg.train.global_batch_size // cfg.train.micro_batch_size
    return result, [int(sum(next(it)["loss_mask"].sum().item() for _ in range(per_step))) for _ in range(3)]


def test_sft_mode_trains_on_the_loss_mask_only(tmp_path):
    result, expected = run_ranks(_sft_run_and_expected_loss_tokens, 1, args=(str(tmp_path),))[0]
    assert result["code"] == 0
    assert [x["loss_tokens"] for x in read_metrics(tmp_path)] == expected
    assert all(0 < n < 2 * 64 for n in expected)  # the mask really masks something


def _init_from(rank, world, tmp):
    from megatron.core.utils import unwrap_model

    from megatron_ultralong.checkpoint import read_meta, save_checkpoint
    from megatron_ultralong.parallel import destroy_distributed
    from megatron_ultralong.train.trainer import Trainer
    from tests.train.helpers import build_parts, params_of

    # a "converted" base model: no YaRN, weights only, step 0
    base_cfg = toy_cfg(f"{tmp}/base", "yarn.enabled=false", "train.seed=5")
    model, _ = build_parts(base_cfg)
    save_checkpoint(f"{tmp}/base_ckpt", 0, model, base_cfg)
    base = params_of(model)
    destroy_distributed()

    trainer = Trainer(toy_cfg(f"{tmp}/run", f"checkpoint.init_from={tmp}/base_ckpt", "train.max_steps=2"))
    try:
        loaded = {n: p.detach().clone() for n, p in unwrap_model(trainer.model[0]).named_parameters()}
        yarn_scale = unwrap_model(trainer.model[0]).config.softmax_scale
        start = trainer.step
        code = trainer.train()
    finally:
        trainer.close()
    return {"equal": all(torch.equal(loaded[n], p) for n, p in base.items()), "start": start, "code": code,
            "yarn_scale": yarn_scale, "final_step": read_meta(f"{tmp}/run/checkpoints")["step"]}


def test_init_from_loads_converted_weights_and_trains_with_yarn_from_step_zero(tmp_path):
    r = run_ranks(_init_from, 1, args=(str(tmp_path),))[0]
    assert r["equal"] and r["start"] == 0 and r["code"] == 0 and r["final_step"] == 2
    assert r["yarn_scale"] is not None  # YaRN's attention temperature is in this run's model, not the base's


def _recompute_and_chunked_loss(rank, world, tmp):
    """Plain run, then the memory-saving run with counters on the code paths the recipe should switch on."""
    from megatron.core import tensor_parallel

    from megatron_ultralong.train import step

    plain = _train(rank, world, f"{tmp}/plain", ["train.max_steps=3"])
    calls = {"chunked_loss": 0, "recompute": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    step.gpt_chunked_loss = counting("chunked_loss", step.gpt_chunked_loss)
    tensor_parallel.checkpoint = counting("recompute", tensor_parallel.checkpoint)
    saving = _train(rank, world, f"{tmp}/saving", ["train.max_steps=3", "train.recompute=full",
                                                   "train.loss_chunk_size=16"])
    return plain, saving, calls


def test_full_recompute_and_chunked_loss_from_the_recipe_train_like_the_plain_path(tmp_path):
    plain, saving, calls = run_ranks(_recompute_and_chunked_loss, 1, args=(str(tmp_path),))[0]
    assert plain["code"] == saving["code"] == 0
    assert calls["chunked_loss"] == 3 and calls["recompute"] >= 3 * 2  # per step: 1 loss, 1 per layer (2 layers)
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "saving")
    assert list(a) == list(b) == [1, 2, 3]
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_preemption_signals_are_recorded_not_fatal_and_handlers_are_restored(sig):
    import os
    import signal

    from megatron_ultralong.train.trainer import PreemptionSignal

    before = signal.getsignal(getattr(signal, sig))
    watcher = PreemptionSignal()
    os.kill(os.getpid(), getattr(signal, sig))  # would end the process with the default handler
    assert watcher.received == sig
    watcher.restore()
    assert signal.getsignal(getattr(signal, sig)) == before
