"""Verification of an export: the HF folder's logits (transformers) against the Megatron checkpoint's, same batch.

    diff = verify_hf_against_megatron("hf/llama31-8b-1m", "runs/cpt_1m/checkpoints", seq_len=256)  # max |Δlogit|

Two windows: positions 0 … seq_len−1 and a short one ending at the model's last position; logits are compared in
row chunks of at most LOGIT_CHUNK_BYTES (docs/convert.md, "Verification").
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Dict, List, Optional, Tuple

import torch

from ..config import Config, ParallelConfig, max_sequence_length
from .errors import ConvertError, log
from .megatron_io import read_checkpoint_config
from .process_group import single_process

LOGIT_CHUNK_BYTES = 64 << 20
"""fp32 logits per side held at once while comparing (rows × vocabulary × 4 bytes), whatever the length."""
FAR_WINDOW = 128
"""Tokens of the second window, whose positions end at the model's last one (yarn.target_length − 1)."""


def default_verify_seq_len(cfg: Config) -> int:
    """Twice the original window for a YaRN model (so positions beyond it are exercised), else 128 tokens."""
    if cfg.yarn.enabled:
        return min(cfg.yarn.target_length, 2 * cfg.yarn.original_max_position_embeddings)
    return min(cfg.model.max_position_embeddings, 128)


def check_verify_seq_len(cfg: Config, seq_len: Optional[int]) -> None:
    longest = max_sequence_length(cfg)
    if seq_len is not None and not 1 <= seq_len <= longest:
        raise ConvertError(f"--verify-seq-len {seq_len}: must be in [1, {longest}] (the model's context length)")


def verify_windows(cfg: Config, seq_len: int, far_len: int = FAR_WINDOW) -> List[Tuple[int, int]]:
    """(first position, tokens) of each compared window: from 0, and ``far_len`` tokens ending at the model's last
    position (skipped when the first window already reaches it)."""
    longest = max_sequence_length(cfg)
    windows = [(0, seq_len)]
    if far_len > 0 and longest > seq_len:
        far_len = min(far_len, longest)
        windows.append((longest - far_len, far_len))
    return windows


def _max_abs_logit_diff(hidden_a: torch.Tensor, head_a, hidden_b: torch.Tensor, head_b, vocab: int) -> float:
    """max |head_a(hidden_a) − head_b(hidden_b)| over rows [n, h], computed LOGIT_CHUNK_BYTES at a time."""
    rows = max(1, LOGIT_CHUNK_BYTES // (4 * vocab))
    diff = 0.0
    for i in range(0, hidden_a.shape[0], rows):
        a = head_a(hidden_a[i:i + rows])[..., :vocab].float()
        b = head_b(hidden_b[i:i + rows])[..., :vocab].float()
        diff = max(diff, a.sub_(b).abs_().max().item())
        del a, b
    return diff


class _Captured(Exception):
    """Raised by the output-layer hook: the final hidden states are all the Megatron forward has to give."""


def _megatron_final_hidden(model, tokens: torch.Tensor, start: int, backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(final hidden states [b·s, h], output weight [V, h]) of the Megatron model for ``tokens`` [b, s] at positions
    start … start+s−1; the [s, b, V] logits are never built (the output layer's input is taken, its call skipped)."""
    from ..model.rotary import positions_from
    from ..model.specs import make_attention_mask

    captured: Dict[str, torch.Tensor] = {}

    def take_input(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["input_"]
        captured["weight"] = kwargs.get("weight")
        raise _Captured

    b, s = tokens.shape
    device = next(model.parameters()).device
    handle = model.output_layer.register_forward_pre_hook(take_input, with_kwargs=True)
    try:
        with positions_from(model, start):
            model(input_ids=tokens.to(device), position_ids=(torch.arange(s) + start).expand(b, s).to(device),
                  attention_mask=make_attention_mask(backend, s, device=device))
        raise ConvertError("internal: the Megatron model returned without calling its output layer")
    except _Captured:
        pass
    finally:
        handle.remove()
    weight = captured["weight"] if captured["weight"] is not None else model.output_layer.weight
    hidden = captured["hidden"].transpose(0, 1).reshape(b * s, -1)  # [s, b, h] -> [b·s, h], the HF row order
    return hidden.float().cpu(), weight.detach().float().cpu()


def verify_hf_against_megatron(hf_dir: str, ckpt: str, seq_len: Optional[int] = None, batch_size: int = 1,
                               seed: int = 0, attention_backend: str = "sdpa", progress: bool = True,
                               weights_dtype: Optional[str] = None, far_len: int = FAR_WINDOW) -> float:
    """Max |logits| difference between ``transformers`` on ``hf_dir`` and the Megatron model of ``ckpt`` (built
    from the checkpoint's config, fp32, one process) on random batches [batch_size, tokens] in each window of
    ``verify_windows`` (from position 0 for ``seq_len`` tokens; ``far_len`` tokens ending at the last position,
    HF given those position ids). Both models run in fp32; the Megatron one is freed before the HF one is loaded.
    ``weights_dtype``: the dtype the export was written in — the Megatron weights are rounded through it first,
    so what is checked is the conversion, not the precision the user chose to drop (an fp32 checkpoint exported
    as bf16)."""
    import transformers

    from ..checkpoint import load_checkpoint
    from ..model.builder import build_model
    from ..model.specs import resolve_attention_backend

    _, cfg = read_checkpoint_config(ckpt)
    seq_len = seq_len or default_verify_seq_len(cfg)
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf_vocab = int(json.load(f)["vocab_size"])
    windows = verify_windows(cfg, seq_len, far_len)
    g = torch.Generator().manual_seed(seed)
    tokens = [torch.randint(0, hf_vocab, (batch_size, n), generator=g) for _, n in windows]
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
        megatron = [_megatron_final_hidden(model, t, start, backend) for t, (start, _) in zip(tokens, windows)]
        megatron_head = megatron[0][1]
        del model
    log(f"verify: Megatron forward done ({', '.join(f'{batch_size}×{n} tokens from position {p}' for p, n in windows)})"
        f"; now transformers on the HF folder", progress)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    hf_model.eval()
    hf_head = hf_model.get_output_embeddings()
    diff = 0.0
    with torch.no_grad():
        for t, (start, n), (hidden, _) in zip(tokens, windows, megatron):
            positions = (torch.arange(n) + start).expand(batch_size, n)
            hf_hidden = hf_model.base_model(input_ids=t, position_ids=positions).last_hidden_state
            window_diff = _max_abs_logit_diff(hf_hidden.reshape(batch_size * n, -1), hf_head, hidden,
                                              lambda h: torch.nn.functional.linear(h, megatron_head), hf_vocab)
            log(f"verify: positions {start}..{start + n - 1}: max |Δlogit| {window_diff:.3e}", progress)
            diff = max(diff, window_diff)
    return diff
