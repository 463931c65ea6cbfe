"""The rotary module our GPTModel uses: YaRN / llama3 / linear / plain RoPE from ``rope.py``, CP-aware, cached.

    rotary = UltralongRotaryEmbedding(cfg.model, cfg.yarn, cp_group=ps.get_context_parallel_group())
    emb = rotary(rotary_seq_len)          # [s / cp, 1, 1, head_dim] angles of this CP rank's positions

Where the attention temperature goes (``rope_softmax_scale``), zigzag positions and the angle cache: docs/yarn.md.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Tuple

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

from ..config import ModelConfig, YarnConfig, check_rope_head_dim, head_dim
from ..context_parallel import zigzag_split
from ..rope import inv_freq_and_attention_factor, rope_angles


def zigzag_positions(seq_len: int, cp_size: int, cp_rank: int) -> torch.Tensor:
    """Global positions held by CP rank ``cp_rank`` (int64): chunks r and 2·cp−1−r of 2·cp, in local order."""
    return zigzag_split(torch.arange(seq_len, dtype=torch.int64, device="cpu"), cp_size, cp_rank, seq_dim=0)


def rope_softmax_scale(model: ModelConfig, yarn: YarnConfig) -> Optional[float]:
    """Softmax scale carrying the attention temperature: t² / sqrt(head_dim), or None (Megatron's default
    1 / sqrt(head_dim)) when there is no temperature (t == 1)."""
    _, t = inv_freq_and_attention_factor(model, yarn)
    if t == 1.0:
        return None
    return t * t / math.sqrt(head_dim(model))


@contextlib.contextmanager
def positions_from(model, start: int):
    """Within the block, the GPTModel ``model`` numbers its input positions from ``start`` (not 0)."""
    rotary = model.rotary_pos_emb
    if not isinstance(rotary, UltralongRotaryEmbedding):
        raise TypeError(f"positions_from needs our rotary module, the model has {type(rotary).__name__}")
    before, rotary.position_offset = rotary.position_offset, start
    try:
        yield model
    finally:
        rotary.position_offset = before


class UltralongRotaryEmbedding(RotaryEmbedding):
    """Megatron ``RotaryEmbedding`` with our frequencies, zigzag CP slicing and an angle cache.

    Never touches CUDA at construction (safe on CPU and under ``torch.device('meta')``); the angles are computed
    on the device of the first forward call's current device.
    """

    def __init__(self, model_cfg: ModelConfig, yarn_cfg: YarnConfig, cp_group=None) -> None:
        d = head_dim(model_cfg)
        check_rope_head_dim(d)  # before Megatron's constructor, which would fail less clearly
        super().__init__(kv_channels=d, rotary_percent=1.0, rotary_base=int(model_cfg.rope_theta),
                         use_cpu_initialization=True, cp_group=cp_group)
        inv_freq, self.attention_factor = inv_freq_and_attention_factor(model_cfg, yarn_cfg)
        self.inv_freq = inv_freq  # plain attribute as in Megatron (not a buffer: never checkpointed)
        self.max_sequence_length = yarn_cfg.target_length if yarn_cfg.enabled else model_cfg.max_position_embeddings
        self.position_offset = 0
        """Position of the first token of the sequences the model is given: 0 in training; ``positions_from``
        sets it for a window far into the context (GPTModel passes the rotary module no position ids)."""
        self._cache_key: Optional[Tuple] = None
        self._cache: Optional[torch.Tensor] = None

    @staticmethod
    def _device() -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """[len(positions), 1, 1, head_dim] angles for arbitrary global positions (non-interleaved halves)."""
        freqs = rope_angles(positions, self.inv_freq)
        if self.rotary_interleaved:
            emb = torch.stack((freqs, freqs), dim=-1).flatten(-2)
        else:
            emb = torch.cat((freqs, freqs), dim=-1)
        return emb[:, None, None, :]

    def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        """Angles of positions offset … offset+max_seq_len−1 (the whole sequence, before any CP split)."""
        pos = torch.arange(offset, offset + max_seq_len, dtype=torch.int64, device=self._device())
        return self.angles(pos)

    def get_cos_sin(self, max_seq_len: int, offset: int = 0):
        freqs = rope_angles(torch.arange(offset, offset + max_seq_len, device=self._device()), self.inv_freq)
        return torch.cos(freqs), torch.sin(freqs)

    def forward(self, max_seq_len: int, offset: int = 0, packed_seq: bool = False, cp_group=None) -> torch.Tensor:
        """Angles for this rank: [max_seq_len / cp, 1, 1, head_dim] (full length for THD packed sequences,
        where TE splits by cu_seqlens itself)."""
        offset += self.position_offset
        if self.max_sequence_length and max_seq_len + offset > self.max_sequence_length:
            raise ValueError(f"sequence of {max_seq_len + offset} tokens exceeds the rotary module's maximum "
                             f"{self.max_sequence_length} (yarn.target_length / model.max_position_embeddings); "
                             f"raise it or shorten the data")
        group = cp_group if cp_group is not None else self.cp_group
        cp_size = group.size() if group is not None and not packed_seq else 1
        cp_rank = group.rank() if cp_size > 1 else 0
        device = self._device()
        key = (max_seq_len, offset, cp_size, cp_rank, device)
        if key != self._cache_key:
            self._cache = None  # free the old table before building the new one
            if cp_size > 1:
                pos = zigzag_positions(max_seq_len, cp_size, cp_rank).to(device) + offset
            else:
                pos = torch.arange(offset, offset + max_seq_len, dtype=torch.int64, device=device)
            self._cache, self._cache_key = self.angles(pos), key
        return self._cache
