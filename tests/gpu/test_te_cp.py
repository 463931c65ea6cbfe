"""GPU path of context parallelism: Transformer Engine CP (p2p / a2a / all_gather / a2a+p2p), sequence parallel,
BF16 and FP8, and the SDPA backend for GPUs without TE. Needs >= 2 GPUs (NCCL refuses two ranks on one GPU);
skipped without them.

Every run goes through the trainer's path (Megatron DDP + finalize_model_grads) on the same full batch and is
compared with CP=1 on one GPU in the same precision. BF16 attention kernels differ between layouts (TE splits the
softmax across CP steps), so the comparisons are relative-error bounds, not bit equality.
"""
import importlib.util

import pytest
import torch

from tests.dist import run_ranks
from tests.distributed.test_cp import _cp_run

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
HAVE_TE = importlib.util.find_spec("transformer_engine") is not None
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(GPUS < 2, reason="context parallel on GPU needs >= 2 CUDA GPUs"),
]
needs_te = pytest.mark.skipif(not HAVE_TE, reason="needs Transformer Engine (NVIDIA PyTorch container)")
TE_BF16 = ["model.attention_backend=te", "model.params_dtype=bf16"]


def _fp8_supported() -> bool:
    if not HAVE_TE:
        return False
    from transformer_engine.pytorch.fp8 import check_fp8_support

    return bool(check_fp8_support()[0])


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def assert_close_bf16(runs, ref, grad_rel=5e-2, loss_rel=1e-2):
    for r in runs:
        assert r["tokens"] == ref["tokens"]
        assert r["loss_sum"] == pytest.approx(ref["loss_sum"], rel=loss_rel)
        if "logits" in r:
            assert rel_err(r["logits"], ref["logits"]) < grad_rel
        assert r["grads"].keys() == ref["grads"].keys()
        for k, g in ref["grads"].items():
            assert torch.isfinite(r["grads"][k]).all(), k
            assert rel_err(r["grads"][k], g) < grad_rel, (k, rel_err(r["grads"][k], g))


@pytest.fixture(scope="module")
def te_reference():
    if not HAVE_TE:
        pytest.skip("needs Transformer Engine")
    return run_ranks(_cp_run, 1, args=(TE_BF16, True))[0]


@needs_te
@pytest.mark.parametrize("comm", ["p2p", "a2a", "all_gather"])
def test_te_cp2_bf16_loss_and_grads_match_cp1(te_reference, comm):
    runs = run_ranks(_cp_run, 2, args=(TE_BF16 + ["parallel.cp=2", f"parallel.cp_comm_type={comm}"], True))
    assert_close_bf16(runs, te_reference)


@needs_te
@pytest.mark.skipif(GPUS < 4, reason="a2a+p2p at cp=4 needs 4 GPUs")
def test_te_cp4_a2a_p2p_bf16_matches_cp1(monkeypatch):
    pytest.importorskip("einops", reason="Megatron builds hierarchical CP groups with einops")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two CP ranks per "node": a2a inside, p2p across ([2, 2])
    runs = run_ranks(_cp_run, 4, args=(TE_BF16 + ["parallel.cp=4", "parallel.cp_comm_type=a2a+p2p",
                                                  "model.num_query_groups=4"], True))
    ref = run_ranks(_cp_run, 1, args=(TE_BF16 + ["model.num_query_groups=4"], True))[0]  # MHA shape for a2a
    assert_close_bf16(runs, ref)


@needs_te
@pytest.mark.skipif(GPUS < 4, reason="TP=2 × CP=2 needs 4 GPUs")
def test_te_tp2_cp2_sequence_parallel_with_chunked_loss_matches_cp1(te_reference):
    runs = run_ranks(_cp_run, 4, args=(TE_BF16 + ["parallel.tp=2", "parallel.cp=2", "parallel.sequence_parallel=true",
                                                  "train.loss_chunk_size=32"], True))
    assert_close_bf16(runs, te_reference)


@needs_te
@pytest.mark.skipif(not _fp8_supported(), reason="FP8 needs Hopper/Ada and a TE build with FP8")
def test_te_cp2_fp8_hybrid_loss_tracks_bf16_cp1(te_reference):
    runs = run_ranks(_cp_run, 2, args=(TE_BF16 + ["model.fp8=hybrid", "parallel.cp=2"], True))
    for r in runs:  # FP8 GEMMs: same objective, coarser numbers
        assert r["tokens"] == te_reference["tokens"]
        assert r["loss_sum"] == pytest.approx(te_reference["loss_sum"], rel=5e-2)
        assert all(torch.isfinite(g).all() for g in r["grads"].values())
        assert rel_err(torch.cat([g.flatten() for g in r["grads"].values()]),
                       torch.cat([g.flatten() for g in te_reference["grads"].values()])) < 0.2


def _flash_or_efficient_only(rank, world, overrides):
    """_cp_run with the math SDPA kernel (the one that materialises S×S scores) switched off in this rank."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        return _cp_run(rank, world, overrides, True)


def test_sdpa_cp2_without_te_matches_cp1_on_flash_or_efficient_kernels():
    # the no-TE GPU fallback: our CP attention over NCCL (reduce-scatter backward) with causal_lower_right chunks;
    # a fallback to the math kernel raises "No available kernel" here
    sdpa = ["model.attention_backend=sdpa", "model.params_dtype=bf16"]
    ref = run_ranks(_flash_or_efficient_only, 1, args=(sdpa,))[0]
    runs = run_ranks(_flash_or_efficient_only, 2, args=(sdpa + ["parallel.cp=2"],))
    assert_close_bf16(runs, ref)
