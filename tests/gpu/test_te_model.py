"""GPU path: Transformer Engine spec, BF16 (and FP8 on Hopper). Skipped without CUDA + TE."""
import importlib.util

import pytest
import torch

from megatron_ultralong.config import load_recipe
from tests.dist import run_ranks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_te = pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is None,
                              reason="needs Transformer Engine (NVIDIA PyTorch container)")


def _logits(rank, world, overrides):
    from megatron_ultralong.model.builder import build_model
    from megatron_ultralong.parallel import init_distributed

    cfg = load_recipe("toy_cpt", ["data.seq_length=256", *overrides])
    init_distributed(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 256), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        out = model(input_ids=tokens, position_ids=None, attention_mask=None)
    return out.float().cpu()


@needs_te
def test_te_bf16_logits_match_sdpa_fp32():
    ref = run_ranks(_logits, 1, args=(["model.attention_backend=sdpa", "model.params_dtype=fp32"],))[0]
    te = run_ranks(_logits, 1, args=(["model.attention_backend=te", "model.params_dtype=bf16"],))[0]
    assert torch.isfinite(te).all()
    assert (te - ref).abs().max().item() < 0.1 * ref.abs().max().item()


def test_sdpa_bf16_forward_on_gpu_without_te():
    out = run_ranks(_logits, 1, args=(["model.attention_backend=sdpa", "model.params_dtype=bf16"],))[0]
    assert out.shape == (2, 256, 512) and torch.isfinite(out).all()
