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


def _doc_masked_logits(rank, world, perturb_first_doc):
    from megatron_ultralong.model.builder import build_model
    from megatron_ultralong.model.specs import core_attention_kind, make_attention_mask, resolve_attention_backend
    from megatron_ultralong.parallel import init_distributed

    cfg = load_recipe("toy_cpt", ["data.seq_length=256", "data.mask_cross_document=true",
                                  "model.attention_backend=te", "model.params_dtype=bf16"])
    init_distributed(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.model.vocab_size, (1, 256), generator=g)
    if perturb_first_doc:
        tokens[0, :100] = torch.randint(0, cfg.model.vocab_size, (100,), generator=g)
    doc_ids = torch.cat([torch.zeros(100, dtype=torch.int32), torch.ones(156, dtype=torch.int32)])[None]
    positions = torch.cat([torch.arange(100), torch.arange(156)])[None]
    kind = core_attention_kind(resolve_attention_backend(cfg.model), True)
    with torch.no_grad():
        out = model(input_ids=tokens.cuda(), position_ids=positions.cuda(),
                    attention_mask=make_attention_mask(kind, 256, doc_ids.cuda(), device="cuda"))
    return out.float().cpu()


@needs_te
def test_te_layers_with_document_masking_keep_the_second_document_independent_of_the_first():
    a = run_ranks(_doc_masked_logits, 1, args=(False,))[0]
    b = run_ranks(_doc_masked_logits, 1, args=(True,))[0]
    assert torch.isfinite(a).all()
    assert (a[0, :100] - b[0, :100]).abs().max() > 0.1  # the first document did change
    assert torch.equal(a[0, 100:], b[0, 100:])  # nothing of it leaks across the document boundary
