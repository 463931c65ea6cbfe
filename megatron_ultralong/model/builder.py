"""Build a Megatron-Core GPTModel (Llama-3.x / Qwen2) for this rank from a recipe.

    model = build_model(cfg)                       # after parallel.init_distributed(cfg)

``transformer_config()`` is the one adapter from our dataclasses to Megatron's ``TransformerConfig`` (``_SAME``:
one-to-one fields, ``_DERIVED``: computed ones); the rotary module is ours (``model/rotary.py``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..config import Config, ConfigError, head_dim, max_sequence_length, needs_document_masking
from .rotary import UltralongRotaryEmbedding, rope_softmax_scale
from .specs import core_attention_kind, layer_spec, megatron_attention_backend, resolve_attention_backend

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""config.DTYPE_NAMES -> the torch dtype."""

# our field (section.name) -> TransformerConfig field, copied as is
_SAME: Dict[str, str] = {
    "model.num_layers": "num_layers",
    "model.hidden_size": "hidden_size",
    "model.ffn_hidden_size": "ffn_hidden_size",
    "model.num_attention_heads": "num_attention_heads",
    "model.num_query_groups": "num_query_groups",
    "model.norm_eps": "layernorm_epsilon",
    "model.qkv_bias": "add_qkv_bias",
    "model.init_method_std": "init_method_std",
    "parallel.tp": "tensor_model_parallel_size",
    "parallel.pp": "pipeline_model_parallel_size",
    "parallel.cp": "context_parallel_size",
    "parallel.sequence_parallel": "sequence_parallel",
    "parallel.cp_comm_type": "cp_comm_type",
}

_on_gpu = torch.cuda.is_available


def gradient_accumulation_fusion(backend: str) -> Tuple[bool, str]:
    """(fuse the weight-gradient GEMM with its accumulation?, why not, when the TE path cannot). TE's linears fuse it
    themselves, but GPTModel's output layer is Megatron's ColumnParallelLinear, which needs apex's
    fused_weight_gradient_mlp_cuda kernel: on only where Megatron reports that kernel importable."""
    if backend != "te":
        return False, ""
    from megatron.core.tensor_parallel import layers

    if not layers._grad_accum_fusion_available:
        return False, ("gradient_accumulation_fusion off: apex's fused_weight_gradient_mlp_cuda kernel is not "
                       "importable in this environment (same results, a slower weight-gradient step)")
    return True, ""


# TransformerConfig field -> function of our Config
_DERIVED: Dict[str, Callable[[Config], Any]] = {
    "kv_channels": lambda c: head_dim(c.model),
    "normalization": lambda c: "RMSNorm",
    "gated_linear_unit": lambda c: True,  # SwiGLU
    "activation_func": lambda c: F.silu,
    "add_bias_linear": lambda c: False,
    "hidden_dropout": lambda c: 0.0,
    "attention_dropout": lambda c: 0.0,
    "params_dtype": lambda c: TORCH_DTYPES[c.model.params_dtype],
    "pipeline_dtype": lambda c: TORCH_DTYPES[c.model.params_dtype],
    "bf16": lambda c: c.model.params_dtype == "bf16",
    "fp16": lambda c: c.model.params_dtype == "fp16",
    "fp8": lambda c: c.model.fp8,
    "softmax_scale": lambda c: rope_softmax_scale(c.model, c.yarn),  # YaRN temperature (mscale²) lives here
    "attention_softmax_in_fp32": lambda c: True,
    "use_cpu_initialization": lambda c: not _on_gpu(),
    # fused kernels exist only on GPU; the TE path uses its fused RoPE
    "bias_activation_fusion": lambda c: _on_gpu(),
    "masked_softmax_fusion": lambda c: _on_gpu(),
    "bias_dropout_fusion": lambda c: _on_gpu(),
    "attention_backend": lambda c: megatron_attention_backend(resolve_attention_backend(c.model)),
    "apply_rope_fusion": lambda c: resolve_attention_backend(c.model) == "te",
    "gradient_accumulation_fusion": lambda c: gradient_accumulation_fusion(resolve_attention_backend(c.model))[0],
    "persist_layer_norm": lambda c: False,
    "recompute_granularity": lambda c: None if c.train.recompute == "none" else c.train.recompute,
    "recompute_method": lambda c: "uniform" if c.train.recompute == "full" else None,
    "recompute_num_layers": lambda c: c.train.recompute_num_layers if c.train.recompute == "full" else None,
    "calculate_per_token_loss": lambda c: True,  # loss = sum / token count over the global batch
    "batch_p2p_comm": lambda c: _on_gpu(),  # batched isend/irecv calls cuda.synchronize; plain p2p on gloo
}


def _get(cfg: Config, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def transformer_config(cfg: Config):
    """Megatron-Core TransformerConfig for this recipe (the one place our config meets Megatron's)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    kwargs = {dst: _get(cfg, src) for src, dst in _SAME.items()}
    kwargs.update({dst: fn(cfg) for dst, fn in _DERIVED.items()})
    if cfg.parallel.cp == 1:
        kwargs["cp_comm_type"] = None
    return TransformerConfig(**kwargs)


def check_te_keeps_softmax_scale(cfg: Config, softmax_scale: Optional[float]) -> None:
    """Transformer Engine < 1.10 has no softmax_scale argument: Megatron then drops ours silently, and with it
    the YaRN temperature. Refuse that combination (ConfigError) instead of training a different model."""
    if softmax_scale is None or core_attention_kind(resolve_attention_backend(cfg.model),
                                                    needs_document_masking(cfg)) != "te":
        return
    from megatron.core.utils import get_te_version, is_te_min_version

    if not is_te_min_version("1.10.0"):
        raise ConfigError(f"Transformer Engine {get_te_version()} ignores softmax_scale (added in 1.10), so the YaRN "
                          f"attention temperature would be lost; use a newer NVIDIA PyTorch container (TE >= 1.10) "
                          f"or model.attention_backend=sdpa")


def build_model(cfg: Config, pre_process: bool | None = None, post_process: bool | None = None):
    """The GPTModel chunk this rank holds (its pipeline stage, its TP shard), on this rank's device.

    Call after ``parallel.init_distributed``. Weights are initialised from ``torch``'s RNG as seeded by
    Megatron (``use_cpu_initialization`` on CPU builds the full matrix and keeps this rank's slice, so TP=1 and
    TP=2 models built with the same seed hold the same weights).
    """
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel

    tcfg = transformer_config(cfg)
    m = cfg.model
    why_not = gradient_accumulation_fusion(resolve_attention_backend(m))[1]
    if why_not and (not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0):
        print(f"[model] {why_not}", flush=True)
    check_te_keeps_softmax_scale(cfg, tcfg.softmax_scale)
    model = GPTModel(
        config=tcfg,
        transformer_layer_spec=layer_spec(m, document_masking=needs_document_masking(cfg)),
        vocab_size=m.vocab_size,
        max_sequence_length=max_sequence_length(cfg),
        pre_process=ps.is_pipeline_first_stage() if pre_process is None else pre_process,
        post_process=ps.is_pipeline_last_stage() if post_process is None else post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=m.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=int(m.rope_theta),
    )
    # Megatron's own yarn path drops mscale and ignores CP; GPTModel calls whatever sits here.
    model.rotary_pos_emb = UltralongRotaryEmbedding(m, cfg.yarn, cp_group=ps.get_context_parallel_group())
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model
