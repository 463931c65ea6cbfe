"""GPU path of the trainer: BF16, Transformer Engine, DistributedOptimizer (fp32 main params), MFU. Skipped on CPU."""
import importlib.util
import shutil

import pytest
import torch

from tests.dist import run_ranks
from tests.train.helpers import allow_child_processes, losses, read_metrics, toy_cfg

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is None,
                       reason="needs Transformer Engine (NVIDIA PyTorch container)"),
]
GPU = ["model.params_dtype=bf16", "model.attention_backend=te"]


def _train(rank, world, run_dir, overrides):
    from megatron_ultralong.train.trainer import Trainer

    allow_child_processes()
    trainer = Trainer(toy_cfg(run_dir, *GPU, *overrides))
    try:
        kind = type(trainer.optimizer).__name__, getattr(trainer.optimizer.config, "use_distributed_optimizer")
        return {"code": trainer.train(), "optimizer": kind}
    finally:
        trainer.close()


def test_bf16_distributed_optimizer_run_learns_and_reports_mfu(tmp_path):
    r = run_ranks(_train, 1, args=(str(tmp_path), ["train.max_steps=20"]))[0]
    assert r["code"] == 0 and r["optimizer"][1] is True  # DistributedOptimizer on GPU
    recs = read_metrics(tmp_path)
    assert recs[-1]["loss"] < recs[0]["loss"] - 0.5
    assert all(x["mfu"] is None or 0 < x["mfu"] < 1 for x in recs) and recs[-1]["mem_gb"] > 0


def test_bf16_distributed_optimizer_resume_is_bit_identical(tmp_path):
    run_ranks(_train, 1, args=(str(tmp_path / "a"), ["train.max_steps=6", "checkpoint.interval=3"]))
    shutil.copytree(tmp_path / "a" / "checkpoints" / "iter_0000003", tmp_path / "b" / "checkpoints" / "iter_0000003")
    (tmp_path / "b" / "checkpoints" / "latest").write_text("iter_0000003\n")
    run_ranks(_train, 1, args=(str(tmp_path / "b"), ["train.max_steps=6", "checkpoint.interval=3"]))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert list(b) == [4, 5, 6] and all(a[s] == b[s] for s in b), (a, b)
