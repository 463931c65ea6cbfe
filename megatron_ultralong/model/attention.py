"""Core attention on torch SDPA: causal, optional document masks, grouped-query heads, context parallel.

    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention   # via model/specs.py
    context = attn(query, key, value, doc_ids_or_None)   # [sq, b, np, hn], [sk, b, ng, hn] -> [sq, b, np·hn]

How the CP gather, the lower-right causal masks and the per-document SDPA calls work: docs/parallel.md,
"The CP core attention".
"""
from __future__ import annotations

import math
import weakref
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from torch.nn.attention.bias import causal_lower_right

from ..context_parallel import zigzag_chunk_ids, zigzag_gather, zigzag_merge


class AllGatherSequence(torch.autograd.Function):
    """Concatenate every group member's tensor along dim 0 (rank order); backward hands each rank the sum over
    the group of the gradient of its own slice (every rank's loss used every rank's keys/values)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group, ctx.rank, ctx.rows = group, dist.get_rank(group), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        if dist.get_backend(ctx.group) == "nccl":  # half the traffic of all-reduce; gloo has no reduce-scatter
            out = grad.new_empty((ctx.rows, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad, group=ctx.group)
            return out, None
        grad = grad.clone()  # all_reduce is in place; the incoming grad may be shared with other consumers
        dist.all_reduce(grad, group=ctx.group)
        return grad.narrow(0, ctx.rank * ctx.rows, ctx.rows), None


Runs = List[List[Tuple[int, int]]]
_last_runs: Tuple[Optional[weakref.ref], Runs] = (None, [])  # (the doc-id tensor, its runs): layers share one


def document_runs(doc_ids: torch.Tensor) -> Runs:
    """Per sample of ``doc_ids`` [b, s], the [start, end) runs of one document id in order. ValueError when an id
    comes back after another (documents must be contiguous, as the packer writes them)."""
    out = []
    for row in doc_ids.detach().to("cpu", torch.int64):
        cuts = (torch.nonzero(row[1:] != row[:-1]).flatten() + 1).tolist()
        bounds = [0, *cuts, row.numel()]
        runs = list(zip(bounds[:-1], bounds[1:]))
        if len(set(row[bounds[:-1]].tolist())) != len(runs):
            raise ValueError(f"document ids {row.unique_consecutive().tolist()[:8]}... revisit an id: document "
                             f"masking takes contiguous documents (segment index 0, 1, ... as data/packing.py writes)")
        out.append(runs)
    return out


def _cached_runs(key: torch.Tensor, doc_all: torch.Tensor) -> Runs:
    """``document_runs(doc_all)``, computed once while every layer is handed the same ``key`` tensor."""
    global _last_runs
    ref, runs = _last_runs
    if ref is None or ref() is not key:
        runs = document_runs(doc_all)
        _last_runs = (weakref.ref(key), runs)
    return runs


class SDPACoreAttention(MegatronModule):
    """Megatron-compatible core attention backed by torch.nn.functional.scaled_dot_product_attention."""

    def __init__(self, config, layer_number: int, attn_mask_type, attention_type: str,
                 attention_dropout: Optional[float] = None, softmax_scale: Optional[float] = None,
                 cp_comm_type: Optional[str] = None, pg_collection=None):
        super().__init__(config=config)
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.cp_size = config.context_parallel_size
        self.cp_group = None
        if self.cp_size > 1:
            if pg_collection is not None and hasattr(pg_collection, "cp"):
                self.cp_group = pg_collection.cp
            else:
                from megatron.core import parallel_state as ps

                self.cp_group = ps.get_context_parallel_group()

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("SDPACoreAttention takes document ids, not packed_seq_params / bias")
        sq, b, nh, hd = query.shape
        q = query.permute(1, 2, 0, 3)  # (b, np, sq, hn)
        dropout = self.dropout_p if self.training else 0.0
        if self.cp_size > 1:
            out = self._context_parallel(q, key, value, attention_mask, dropout)
        else:
            k = key.permute(1, 2, 0, 3)  # (b, ng, sk, hn)
            v = value.permute(1, 2, 0, 3)
            if attention_mask is None:  # flash / memory-efficient kernels, no mask tensor
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout,
                                                     scale=self.softmax_scale, enable_gqa=nh != k.shape[1])
            else:  # attention_mask: (b, s) document ids
                out = self._within_documents(q, k, v, _cached_runs(attention_mask, attention_mask), 0, dropout)
        return out.permute(2, 0, 1, 3).reshape(sq, b, nh * hd)  # (sq, b, np·hn)

    def _context_parallel(self, q, key, value, doc_ids, dropout):
        """q (b, np, 2L, hn) for this rank's zigzag chunks; key / value [2L, b, ng, hn] -> (b, np, 2L, hn)."""
        cp, rank = self.cp_size, dist.get_rank(self.cp_group)
        nh, L = q.shape[1], q.shape[2] // 2
        kv = torch.stack([key, value], dim=1)  # [2L, 2, b, ng, hn]: one collective for both
        kv = AllGatherSequence.apply(kv, self.cp_group)  # [cp·2L, 2, b, ng, hn], rank-major zigzag shards
        kv = zigzag_merge(kv.chunk(cp, dim=0), seq_dim=0)  # [S, 2, b, ng, hn], natural order
        k = kv[:, 0].permute(1, 2, 0, 3)  # (b, ng, S, hn)
        v = kv[:, 1].permute(1, 2, 0, 3)
        if k.shape[1] != nh:  # GQA: the lower-right causal kernels take equal head counts
            k = k.repeat_interleave(nh // k.shape[1], dim=1)  # (b, np, S, hn); query head h uses group h // rep
            v = v.repeat_interleave(nh // v.shape[1], dim=1)
        runs = None
        if doc_ids is not None:  # gathered on every call: ranks must not skip a collective on a cache hit
            runs = _cached_runs(doc_ids, zigzag_gather(doc_ids, self.cp_group, seq_dim=1))  # runs of (b, S)
        outs = []
        for j, c in enumerate(zigzag_chunk_ids(cp, rank)):
            qc = q[:, :, j * L:(j + 1) * L]  # (b, np, L, hn), global positions c·L ... c·L+L−1
            kc, vc = k[:, :, :(c + 1) * L], v[:, :, :(c + 1) * L]  # keys at global positions 0 ... c·L+L−1
            if runs is None:
                outs.append(F.scaled_dot_product_attention(qc, kc, vc, attn_mask=causal_lower_right(L, (c + 1) * L),
                                                           dropout_p=dropout, scale=self.softmax_scale))
            else:
                outs.append(self._within_documents(qc, kc, vc, runs, c * L, dropout))
        return torch.cat(outs, dim=2)

    def _within_documents(self, q, k, v, runs: Runs, q0: int, dropout: float) -> torch.Tensor:
        """q (b, np, Lq, hn) at global positions [q0, q0 + Lq); k / v (b, ng, >= q0 + Lq, hn) from position 0;
        ``runs`` per sample over the global sequence -> (b, np, Lq, hn), each query attending to the keys of its
        own document up to itself. One SDPA call per (sample, document piece in the block), no mask tensor."""
        q1 = q0 + q.shape[2]
        gqa = q.shape[1] != k.shape[1]
        rows = []
        for i, sample_runs in enumerate(runs):
            pieces = []
            for start, end in sample_runs:
                a, e = max(start, q0), min(end, q1)  # this document's queries inside the block
                if a >= e:
                    continue
                qi, ki, vi = q[i:i + 1, :, a - q0:e - q0], k[i:i + 1, :, start:e], v[i:i + 1, :, start:e]
                if a == start:  # square block: plain causal (GQA-aware kernels)
                    pieces.append(F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, dropout_p=dropout,
                                                                 scale=self.softmax_scale, enable_gqa=gqa))
                else:  # the document began before this block: lower-right causal over its earlier keys
                    if gqa:
                        rep = q.shape[1] // k.shape[1]
                        ki, vi = ki.repeat_interleave(rep, dim=1), vi.repeat_interleave(rep, dim=1)
                    mask = causal_lower_right(e - a, e - start)
                    pieces.append(F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, dropout_p=dropout,
                                                                 scale=self.softmax_scale))
            rows.append(torch.cat(pieces, dim=2))
        return torch.cat(rows, dim=0)
