"""The builder: a tiny Llama/Qwen2-shaped GPTModel runs forward and backward on this machine's backend."""
import pytest
import torch

from megatron_ultralong.config import load_recipe
from megatron_ultralong.model.builder import transformer_config
from tests.dist import run_ranks


def _forward_backward(rank, world, overrides):
    from megatron_ultralong.model.builder import build_model
    from megatron_ultralong.parallel import init_distributed
    from megatron_ultralong.train.step import forward_backward

    cfg = load_recipe("toy_cpt", ["data.seq_length=64", *overrides])
    init_distributed(cfg)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 65), generator=g)
    batch = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(2, 64),
             "position_ids": torch.arange(64).expand(2, 64)}
    out = forward_backward([model], [batch], cfg)
    grads = {n: p.grad for n, p in model.named_parameters()}
    names = sorted(model.state_dict().keys())
    return {"loss": (out["loss_sum"] / out["tokens"]).item(), "tokens": int(out["tokens"]),
            "missing_grads": [n for n, g in grads.items() if g is None or not torch.isfinite(g).all()],
            "zero_grads": [n for n, g in grads.items() if g is not None and g.abs().sum() == 0],
            "names": names}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_model_forward_backward_gives_finite_loss_and_grads(arch):
    overrides = [f"model.arch={arch}"] + (["model.qkv_bias=true"] if arch == "qwen2" else [])
    r = run_ranks(_forward_backward, 1, args=(overrides,))[0]
    # random init over a 512-token vocab: loss near ln(512) = 6.24
    assert abs(r["loss"] - 6.24) < 0.5 and r["tokens"] == 128
    assert r["missing_grads"] == [] and r["zero_grads"] == []
    has_bias = any(n.endswith("linear_qkv.bias") for n in r["names"])
    assert has_bias == (arch == "qwen2")


def test_transformer_config_carries_llama_shape_and_yarn_temperature():
    cfg = load_recipe("cpt_1m")
    tc = transformer_config(cfg)
    assert (tc.num_layers, tc.hidden_size, tc.num_attention_heads, tc.num_query_groups, tc.ffn_hidden_size) == \
        (32, 4096, 32, 8, 14336)
    assert tc.gated_linear_unit and tc.normalization == "RMSNorm" and not tc.add_bias_linear
    assert tc.kv_channels == 128 and tc.layernorm_epsilon == 1e-5
    # YaRN factor 128: attention factor 0.1·ln(128)+1, squared into the softmax scale
    mscale = 0.1 * torch.log(torch.tensor(128.0)).item() + 1
    assert tc.softmax_scale == pytest.approx(mscale ** 2 / 128 ** 0.5, rel=1e-6)


def test_transformer_config_without_yarn_keeps_default_softmax_scale():
    tc = transformer_config(load_recipe("toy_cpt", ["yarn.enabled=false", "data.seq_length=64"]))
    assert tc.softmax_scale is None


def _masked_run(rank, world, backend):
    from megatron_ultralong.model.builder import build_model
    from megatron_ultralong.parallel import init_distributed
    from megatron_ultralong.train.step import forward_backward
    from tests.dist import reinit_by_name

    cfg = load_recipe("toy_cpt", ["data.seq_length=64", "data.mask_cross_document=true",
                                  f"model.attention_backend={backend}"])
    init_distributed(cfg)
    model = build_model(cfg)
    reinit_by_name(model)
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 65), generator=torch.Generator().manual_seed(0))
    doc_ids = torch.tensor([[0] * 20 + [1] * 3 + [2] * 41, [0] * 64])
    starts = torch.tensor([[0] * 20 + [20] * 3 + [23] * 41, [0] * 64])
    batch = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(2, 64),
             "position_ids": torch.arange(64).expand(2, 64) - starts, "doc_ids": doc_ids}
    out = forward_backward([model], [batch], cfg)
    return {"loss": (out["loss_sum"] / out["tokens"]).item(),
            "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}


def test_document_masked_sdpa_model_equals_megatron_local_attention_with_an_explicit_mask():
    sdpa = run_ranks(_masked_run, 1, args=("sdpa",))[0]
    local = run_ranks(_masked_run, 1, args=("local",))[0]
    assert abs(sdpa["loss"] - local["loss"]) < 1e-5
    assert sdpa["grads"] and sdpa["grads"].keys() == local["grads"].keys()  # non-empty: something is compared
    for name, g in sdpa["grads"].items():
        assert (g - local["grads"][name]).abs().max().item() < 1e-5, name


def test_cpu_model_builds_with_nvte_flash_and_fused_attention_exported_off(monkeypatch):
    """sdpa maps onto Megatron's attention_backend=local, which wants NVTE_*_ATTN unset or 0 (with the default
    'auto' GPTModel asserted at build time)."""
    monkeypatch.setenv("NVTE_FLASH_ATTN", "0")
    monkeypatch.setenv("NVTE_FUSED_ATTN", "0")
    r = run_ranks(_forward_backward, 1, args=(["model.attention_backend=sdpa"],))[0]
    assert r["missing_grads"] == []


@pytest.mark.parametrize("backend, kernel, fused, note", [
    ("te", True, True, ""), ("te", False, False, "fused_weight_gradient_mlp_cuda"),
    ("sdpa", True, False, ""), ("local", False, False, ""),
])
def test_gradient_accumulation_fusion_only_on_te_with_apex_kernel_and_says_why_not(monkeypatch, backend, kernel,
                                                                                   fused, note):
    from megatron.core.tensor_parallel import layers

    from megatron_ultralong.model.builder import gradient_accumulation_fusion

    monkeypatch.setattr(layers, "_grad_accum_fusion_available", kernel)  # Megatron's own report of the kernel
    on, why_not = gradient_accumulation_fusion(backend)
    assert on is fused and (note in why_not if note else why_not == "")
    if not kernel:
        assert not layers._grad_accum_fusion_available  # this CPU: the config never asks for the missing kernel
        assert transformer_config(load_recipe("toy_cpt")).gradient_accumulation_fusion is False
