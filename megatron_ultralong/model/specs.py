"""Layer specs: which implementation each transformer sub-module uses. The only place GPU and CPU differ in model code.

    spec = layer_spec(cfg.model, document_masking=needs_document_masking(cfg))
    mask = make_attention_mask(core_attention_kind(resolve_attention_backend(cfg.model), masking), s, doc_ids)

Backends (te | sdpa | local) and document masking on each: docs/parallel.md, "Which core attention runs".
"""
from __future__ import annotations

import importlib.util
import os
from typing import Dict, Optional

import torch
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.spec_utils import ModuleSpec

from ..config import Config, ConfigError, ModelConfig


def te_available() -> bool:
    """Transformer Engine importable and a GPU present."""
    return torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None


def resolve_attention_backend(model: ModelConfig) -> str:
    """The concrete backend ('te' | 'sdpa' | 'local') for model.attention_backend on this machine."""
    backend = model.attention_backend
    if backend == "auto":
        return "te" if te_available() else "sdpa"
    if backend == "te" and not te_available():
        raise ConfigError("model.attention_backend='te' but Transformer Engine is not importable on a GPU here; "
                          "use the NVIDIA PyTorch container, or model.attention_backend=sdpa")
    if model.fp8 and backend != "te":
        raise ConfigError(f"model.fp8={model.fp8!r} needs model.attention_backend='te' (got {backend!r})")
    return backend


_NVTE_VARIABLES = ("NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN")
_nvte_set_by_megatron: Dict[str, str] = {}  # what the last check let Megatron write into os.environ


def megatron_attention_backend(backend: str):
    """TransformerConfig.attention_backend for a resolved backend, after checking the exported NVTE_*_ATTN
    variables against it (GPTModel asserts they agree, then sets them): te -> auto (Transformer Engine picks its
    flash or fused kernel, NVTE_* unset or 1); sdpa / local run no TE attention -> local (unset or 0)."""
    from megatron.core.transformer.enums import AttnBackend

    kind, expected = (AttnBackend.auto, "1") if backend == "te" else (AttnBackend.local, "0")
    for name in _NVTE_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value == _nvte_set_by_megatron.get(name):
            del os.environ[name]  # written by an earlier build in this process, not by the user
        elif value is not None and value != expected:
            raise ConfigError(f"{name}={value} is exported, but model.attention_backend={backend} needs it unset or "
                              f"{expected} (Megatron's attention_backend={kind.name} asserts so at build time); unset "
                              f"{name} and choose the attention with model.attention_backend")
    _nvte_set_by_megatron.update({name: expected for name in _NVTE_VARIABLES})
    return kind


def validate_context_parallel(cfg: Config) -> None:
    """The CP check that needs this machine's attention backend (config.validate checks the rest): Megatron's
    local attention has no context parallelism."""
    p, m = cfg.parallel, cfg.model
    if p.cp == 1:
        return
    if resolve_attention_backend(m) == "local":
        raise ConfigError(f"parallel.cp={p.cp} with model.attention_backend='local': Megatron's local attention has "
                          f"no context parallelism; use model.attention_backend=sdpa (or te on GPU)")


def core_attention_kind(backend: str, document_masking: bool) -> str:
    """Which core attention a layer of ``backend`` runs ('te' | 'sdpa' | 'local'): te's becomes sdpa when
    documents are masked (docs/parallel.md); the attention mask is built for this kind."""
    return "sdpa" if backend == "te" and document_masking else backend


def layer_spec(model: ModelConfig, document_masking: bool = False) -> ModuleSpec:
    """ModuleSpec of one transformer layer for the resolved backend."""
    from .attention import SDPACoreAttention

    backend = resolve_attention_backend(model)
    if backend == "te":
        spec = get_gpt_layer_with_transformer_engine_spec()
    else:
        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    if core_attention_kind(backend, document_masking) == "sdpa":
        spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec


def make_attention_mask(backend: str, seq_length: int, doc_ids: Optional[torch.Tensor] = None,
                        device=None) -> Optional[torch.Tensor]:
    """The `attention_mask` argument GPTModel.forward expects for this backend.

    ``backend`` is the core attention kind (``core_attention_kind``).
    - te / sdpa: None means plain causal; sdpa also takes ``doc_ids`` [b, s] (int) to mask across documents.
      Under context parallelism s and doc_ids are this rank's zigzag share; the sdpa module gathers the rest.
    - local: an explicit boolean [b|1, 1, s, s] mask, True = masked out (causal, and across documents).
    """
    if backend == "sdpa":
        return doc_ids
    if backend == "te":
        if doc_ids is not None:  # a te layer built for masking runs the sdpa core attention
            raise ValueError("document ids given to TE core attention: build the layers with "
                             "layer_spec(..., document_masking=True) and mask for core_attention_kind(...)")
        return None
    causal = torch.triu(torch.ones(seq_length, seq_length, dtype=torch.bool, device=device), 1)
    mask = causal.view(1, 1, seq_length, seq_length)
    if doc_ids is not None:
        other_doc = doc_ids[:, None, :, None] != doc_ids[:, None, None, :]  # [b, 1, s, s]
        mask = mask | other_doc
    return mask
