"""The core attention of an inference model: training's module for prefill (recording this rank's KV shard), and
flash-decoding across CP ranks for one new token (a partial per rank, merged exactly by log-sum-exp).

    layer.self_attention.core_attention = CachedCoreAttention(original, layer_index, state)   # engine.py does it
    out, lse = partial_attention(q, k, v, valid, scale)   # (b, np, hn), (b, ng, n, hn), (b, n) -> (b, np, hn), (b, np)
    out = merge_partials(outs, lses)                      # (cp, b, np, hn), (cp, b, np) -> (b, np, hn)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from .kv_cache import KVCache

MODES = ("off", "prefill", "decode")


@dataclass
class AttentionState:
    """What every layer's CachedCoreAttention reads: the mode of the current forward pass and the cache."""

    mode: str = "off"
    """'off': training's attention, nothing kept (scoring); 'prefill': the same, keys/values recorded; 'decode':
    one new token attends to the cache."""
    cache: Optional[KVCache] = None
    """This rank's KV shard (prefill and decode)."""
    owner: bool = False
    """Decode: this rank appends the new token's key/value to its shard."""
    cp_group: Optional[object] = None
    """The context-parallel group (None with cp = 1)."""
    softmax_scale: float = 1.0
    """Training's softmax scale (the YaRN temperature t² / sqrt(head_dim), or 1 / sqrt(head_dim))."""


def partial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, scale: float):
    """One query per sample against one shard: q (b, np, hn), k / v (b, ng, n, hn), valid (b, n) ->
    (output (b, np, hn) fp32, log-sum-exp of the scaled scores (b, np) fp32; −inf where no slot is valid).
    Query head h uses KV group h // (np / ng), as Megatron's GQA does."""
    b, heads, hn = q.shape
    groups = k.shape[1]
    qg = q.reshape(b, groups, heads // groups, hn).to(k.dtype)  # (b, ng, rep, hn)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * scale  # (b, ng, rep, n)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (b, ng, rep)
    finite = torch.isfinite(lse)
    probs = torch.exp(scores - torch.where(finite, lse, torch.zeros_like(lse))[..., None])  # 0 at invalid slots
    out = torch.matmul(probs.to(v.dtype), v).float()  # (b, ng, rep, hn)
    return out.reshape(b, heads, hn), lse.reshape(b, heads)


def merge_partials(outs: torch.Tensor, lses: torch.Tensor) -> torch.Tensor:
    """The exact softmax-attention output over the union of the shards: outs (cp, b, np, hn) normalised per
    shard, lses (cp, b, np) their log-sum-exps -> (b, np, hn). A shard with no valid slot (lse −inf) weighs 0."""
    top = lses.max(dim=0).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = torch.exp(lses - top)  # (cp, b, np)
    return (weights[..., None] * outs).sum(dim=0) / weights.sum(dim=0)[..., None]


def gather_partials(out: torch.Tensor, lse: torch.Tensor, group) -> torch.Tensor:
    """merge_partials of every CP rank's (out, lse), on every rank: one all-gather of (b, np, hn + 1) floats."""
    packed = torch.cat([out, lse[..., None]], dim=-1).contiguous()
    parts = [torch.empty_like(packed) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, packed, group=group)
    stacked = torch.stack(parts)  # (cp, b, np, hn + 1)
    return merge_partials(stacked[..., :-1], stacked[..., -1])


class CachedCoreAttention(torch.nn.Module):
    """Wraps a layer's core attention (TE's, our SDPA one, Megatron's local one) with the engine's modes."""

    def __init__(self, inner: torch.nn.Module, layer: int, state: AttentionState):
        super().__init__()
        self.inner = inner
        self.layer = layer
        self.state = state

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        """query [sq, b, np, hn], key / value [sk, b, ng, hn] (after RoPE) -> context [sq, b, np·hn]."""
        st = self.state
        if st.mode != "decode":
            out = self.inner(query, key, value, attention_mask, attn_mask_type=attn_mask_type,
                             attention_bias=attention_bias, packed_seq_params=packed_seq_params)
            if st.mode == "prefill":
                st.cache.store(self.layer, key, value)
            return out
        if st.owner:
            st.cache.append(self.layer, key, value)
        k, v, valid = st.cache.view(self.layer)
        _, b, heads, hn = query.shape
        out, lse = partial_attention(query[0], k, v, valid, st.softmax_scale)
        if st.cp_group is not None:
            out = gather_partials(out, lse, st.cp_group)
        return out.to(query.dtype).reshape(1, b, heads * hn)
