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
# Megatron's table (LanguageModule._set_attention_backend): attention_backend -> the values it asserts and sets
_NVTE_ROWS = {"local": "000", "auto": "111", "flash": "100", "fused": "010", "unfused": "001"}
_nvte_set_by_megatron: Dict[str, str] = {}  # what the last check let Megatron write into os.environ


def megatron_attention_backend(backend: str):
    """TransformerConfig.attention_backend for a resolved backend, after checking the exported NVTE_*_ATTN
    variables against it (GPTModel asserts they agree with it, then sets them). te -> auto (Transformer Engine
    picks its flash or fused kernel: each unset or 1). sdpa / local run no TE attention, so the variables do not
    matter there: local, or the first row of Megatron's table the exported values agree with."""
    from megatron.core.transformer.enums import AttnBackend

    exported = {}
    for name in _NVTE_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value == _nvte_set_by_megatron.get(name):
            del os.environ[name]  # written by an earlier build in this process, not by the user
            value = None
        exported[name] = value
    rows = ["auto"] if backend == "te" else list(_NVTE_ROWS)
    for row in rows:
        values = dict(zip(_NVTE_VARIABLES, _NVTE_ROWS[row]))
        if all(exported[n] in (None, values[n]) for n in _NVTE_VARIABLES):
            _nvte_set_by_megatron.clear()
            _nvte_set_by_megatron.update(values)
            return AttnBackend[row]
    if backend == "te":
        name = next(n for n in _NVTE_VARIABLES if exported[n] not in (None, "1"))
        raise ConfigError(f"{name}={exported[name]} is exported, but model.attention_backend=te needs it unset or 1 "
                          f"(Megatron's attention_backend=auto asserts so at build time); unset {name} and choose "
                          f"the attention with model.attention_backend")
    stated = ", ".join(f"{n}={v}" for n, v in exported.items() if v is not None)
    raise ConfigError(f"{stated}: Megatron accepts no attention_backend with these values (it asserts at build "
                      f"time); unset {', '.join(n for n, v in exported.items() if v is not None)}")


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
