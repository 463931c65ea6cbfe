"""Verification of an export: the HF folder's logits (transformers) against the Megatron checkpoint's, same batch.

    diff = verify_hf_against_megatron("hf/llama31-8b-1m", "runs/cpt_1m/checkpoints", seq_len=256)  # max |Δlogit|
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Optional

import torch

from ..config import Config, ParallelConfig, max_sequence_length
from . import ConvertError, log
from .megatron_io import read_checkpoint_config
from .process_group import single_process


def default_verify_seq_len(cfg: Config) -> int:
    """Twice the original window for a YaRN model (so positions beyond it are exercised), else 128 tokens."""
    if cfg.yarn.enabled:
        return min(cfg.yarn.target_length, 2 * cfg.yarn.original_max_position_embeddings)
    return min(cfg.model.max_position_embeddings, 128)


def check_verify_seq_len(cfg: Config, seq_len: Optional[int]) -> None:
    longest = max_sequence_length(cfg)
    if seq_len is not None and not 1 <= seq_len <= longest:
        raise ConvertError(f"--verify-seq-len {seq_len}: must be in [1, {longest}] (the model's context length)")


def verify_hf_against_megatron(hf_dir: str, ckpt: str, seq_len: Optional[int] = None, batch_size: int = 1,
                               seed: int = 0, attention_backend: str = "sdpa", progress: bool = True,
                               weights_dtype: Optional[str] = None) -> float:
    """Max |logits| difference between ``transformers`` on ``hf_dir`` and the Megatron model of ``ckpt`` (built
    from the checkpoint's config, fp32, one process) on a random batch [batch_size, seq_len]. Both models run in
    fp32; the Megatron one is freed before the HF one is loaded. ``weights_dtype``: the dtype the export was
    written in — the Megatron weights are rounded through it first, so what is checked is the conversion, not the
    precision the user chose to drop (an fp32 checkpoint exported as bf16)."""
    import transformers

    from ..checkpoint import load_checkpoint
    from ..model.builder import build_model
    from ..model.specs import make_attention_mask, resolve_attention_backend

    _, cfg = read_checkpoint_config(ckpt)
    seq_len = seq_len or default_verify_seq_len(cfg)
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf_vocab = int(json.load(f)["vocab_size"])
    tokens = torch.randint(0, hf_vocab, (batch_size, seq_len), generator=torch.Generator().manual_seed(seed))
    verify_cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, params_dtype="fp32", fp8=None, attention_backend=attention_backend),
        parallel=ParallelConfig(), train=dataclasses.replace(cfg.train, recompute="none"))
    with single_process(), torch.no_grad():
        model = build_model(verify_cfg, pre_process=True, post_process=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's DCP deprecation notes
            load_checkpoint(ckpt, [model])
        if weights_dtype is not None:
            from ..model.builder import TORCH_DTYPES

            for param in model.parameters():
                param.copy_(param.to(TORCH_DTYPES[weights_dtype]).float())
        model.eval()
        backend = resolve_attention_backend(verify_cfg.model)
        positions = torch.arange(seq_len).expand(batch_size, seq_len)
        device = next(model.parameters()).device
        logits_megatron = model(input_ids=tokens.to(device), position_ids=positions.to(device),
                                attention_mask=make_attention_mask(backend, seq_len, device=device))
        logits_megatron = logits_megatron[..., :hf_vocab].float().cpu()
        del model
    log(f"verify: Megatron forward done ({batch_size}×{seq_len} tokens); now transformers on the HF folder",
         progress)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    hf_model.eval()
    with torch.no_grad():
        logits_hf = hf_model(input_ids=tokens).logits.float()
    return (logits_hf - logits_megatron).abs().max().item()
