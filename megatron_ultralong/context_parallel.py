"""The zigzag context-parallel layout: which tokens each CP rank holds, and splitting / merging / gathering by it.

    local = zigzag_split(batch, cp_size, cp_rank)        # dict of [b, s] -> [b, s/cp]: chunks r and 2·cp−1−r
    full = zigzag_merge(shards)                          # the inverse, shards in CP rank order
    logits = zigzag_gather(local_logits)                 # all-gather over the CP group, natural order

Depends on torch and config only (no process-group setup, no model code); the layout and who relies on it:
docs/parallel.md.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

from .config import check_cp_seq_length

# Megatron's CP layout ("zigzag", load-balanced causal attention): the sequence is cut into 2·cp equal chunks and
# rank r holds chunks r and 2·cp−1−r, so every rank gets one early (cheap) and one late (expensive) chunk of the
# causal triangle. TE's context-parallel attention and Megatron's RoPE slicing (get_pos_emb_on_this_cp_rank) both
# assume it; our batch split (train/step.py), CPU attention (model/attention.py), rotary positions
# (model/rotary.py) and eval gather follow the same rule.


def zigzag_chunk_ids(cp_size: int, cp_rank: int) -> Tuple[int, int]:
    """The two global chunk indices (of 2·cp) that CP rank ``cp_rank`` holds, in its local order."""
    if not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank={cp_rank} outside [0, cp_size={cp_size})")
    return cp_rank, 2 * cp_size - 1 - cp_rank


def _split_one(t: torch.Tensor, cp_size: int, cp_rank: int, seq_dim: int) -> torch.Tensor:
    chunks = t.chunk(2 * cp_size, dim=seq_dim)  # 2·cp views of s / (2·cp) tokens each
    first, second = zigzag_chunk_ids(cp_size, cp_rank)
    return torch.cat([chunks[first], chunks[second]], dim=seq_dim)


def zigzag_split(batch: Union[torch.Tensor, Mapping[str, torch.Tensor]], cp_size: int, cp_rank: int,
                 seq_dim: int = 1) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
    """This CP rank's share of a batch: chunks r and 2·cp−1−r of 2·cp, concatenated along ``seq_dim``.

    ``batch`` is one tensor or a dict of per-token tensors [b, s, ...] (tokens, labels, loss_mask, position_ids,
    doc_ids — document ids are global to the sequence, so equality across the split still marks documents).
    Every tensor must have the same length s on ``seq_dim``; s must be divisible by 2·cp (ConfigError otherwise).
    Returns the same structure with length 2·s/(2·cp) = s/cp. cp_size == 1 returns the input unchanged.
    """
    if cp_size == 1:
        return batch
    tensors = {"": batch} if isinstance(batch, torch.Tensor) else dict(batch)
    lengths = {k: v.shape[seq_dim] for k, v in tensors.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zigzag_split: tensors disagree on the sequence length (dim {seq_dim}): {lengths}")
    check_cp_seq_length(next(iter(lengths.values())), cp_size)
    out = {k: _split_one(v, cp_size, cp_rank, seq_dim) for k, v in tensors.items()}
    return out[""] if isinstance(batch, torch.Tensor) else out


def zigzag_merge(shards: Sequence[torch.Tensor], seq_dim: int = 1) -> torch.Tensor:
    """Inverse of :func:`zigzag_split`: the per-rank shards (CP rank order) -> the sequence in natural order.

    Differentiable (chunk + cat), so the sdpa CP attention also uses it to order gathered keys/values.
    """
    cp_size = len(shards)
    pieces: List[Optional[torch.Tensor]] = [None] * (2 * cp_size)
    for rank, shard in enumerate(shards):
        first, second = shard.chunk(2, dim=seq_dim)
        a, b = zigzag_chunk_ids(cp_size, rank)
        pieces[a], pieces[b] = first, second
    return torch.cat(pieces, dim=seq_dim)


def zigzag_gather(local: torch.Tensor, cp_group=None, seq_dim: int = 1) -> torch.Tensor:
    """All-gather a per-rank tensor (e.g. eval logits [b, s/cp, v]) over the CP group (default: Megatron's) and
    return it in natural sequence order on every rank. Not differentiable (for eval outputs)."""
    if cp_group is None:
        from megatron.core import parallel_state as ps

        cp_group = ps.get_context_parallel_group()
    cp_size = dist.get_world_size(cp_group)
    if cp_size == 1:
        return local
    shards = [torch.empty_like(local) for _ in range(cp_size)]
    dist.all_gather(shards, local.contiguous(), group=cp_group)
    return zigzag_merge(shards, seq_dim=seq_dim)
