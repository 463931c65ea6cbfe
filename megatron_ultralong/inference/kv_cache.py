"""This rank's shard of the KV cache: post-RoPE keys and values per layer, preallocated, plus a slot validity mask.

    cache = KVCache(layers, batch, groups, head_dim, capacity, dtype, device)
    cache.set_valid(valid)                      # prefill: [b, n] which of this rank's n tokens are prompt, not pad
    cache.store(layer, key, value)              # prefill: [n, b, ng, hn] this rank's zigzag positions -> slots 0..n-1
    cache.open_slot()                           # decode, on the owning rank, once per step: one more valid slot
    cache.append(layer, key, value)             # ... then per layer: [1, b, ng, hn] -> that slot
    k, v, valid = cache.view(layer)             # (b, ng, filled, hn), (b, ng, filled, hn), (b, filled)
"""
from __future__ import annotations

from typing import List

import torch


class KVCache:
    """Keys and values of every layer in slots [0, capacity); a slot holds one token of this rank's share.

    Slots carry no positions: keys are stored after RoPE, and every cached token precedes the token being
    decoded, so a decode step attends to every valid slot. ``valid`` [b, capacity] is shared by the layers (pad
    positions of a right-padded batch are False)."""

    def __init__(self, layers: int, batch: int, groups: int, head_dim: int, capacity: int, dtype: torch.dtype,
                 device: torch.device):
        shape = (batch, groups, capacity, head_dim)  # (b, ng, slots, hn): SDPA's layout, no permute per step
        self.keys: List[torch.Tensor] = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values: List[torch.Tensor] = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.capacity = capacity
        self.filled = 0
        """Slots in use: the prefill's, then one more per decode step this rank keeps."""

    def nbytes(self) -> int:
        """Bytes this rank's cache holds (keys and values of every layer, the whole capacity)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def used_bytes(self) -> int:
        """Bytes of the slots written so far (keys and values of every layer)."""
        per_slot = sum(t[:, :, :1].numel() * t.element_size() for t in (*self.keys, *self.values))
        return per_slot * self.filled

    def set_valid(self, valid: torch.Tensor) -> None:
        """Prefill: slots 0 … n−1 hold this rank's tokens; ``valid`` [b, n] (bool) says which are prompt tokens."""
        n = valid.shape[1]
        if n > self.capacity:
            raise RuntimeError(f"KV cache shard too small: {n} slots needed, {self.capacity} allocated")
        self.valid[:, :n] = valid
        self.filled = n

    def open_slot(self) -> int:
        """Decode, on the rank that keeps the new token: the next slot becomes valid (every sample); its index."""
        if self.filled >= self.capacity:
            raise RuntimeError(f"KV cache shard full: {self.capacity} slots allocated")
        self.valid[:, self.filled] = True
        self.filled += 1
        return self.filled - 1

    def store(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Prefill: key / value [n, b, ng, hn] (this rank's tokens, local order) into slots 0 … n−1."""
        n = key.shape[0]
        self.keys[layer][:, :, :n].copy_(key.permute(1, 2, 0, 3))
        self.values[layer][:, :, :n].copy_(value.permute(1, 2, 0, 3))

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Decode: one token's key / value [1, b, ng, hn] into the slot ``open_slot`` opened last."""
        self.keys[layer][:, :, self.filled - 1].copy_(key[0])
        self.values[layer][:, :, self.filled - 1].copy_(value[0])

    def view(self, layer: int):
        """(keys, values) (b, ng, n, hn) of the filled slots, and their validity (b, n)."""
        n = self.filled
        return self.keys[layer][:, :, :n], self.values[layer][:, :, :n], self.valid[:, :n]
