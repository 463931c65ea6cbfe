"""The inference input checks that need no weights and no process group (one-line InferenceError each).

    check_world_size(tp=2, cp=4, world_size=8)
    check_prompt_length(len(ids), window=1048576, cp=4)        # 2·cp <= length <= the rope window
    padded_length(1000, cp=4)                                   # 1000 -> 1000 (a multiple of 2·cp), 1001 -> 1008
"""
from __future__ import annotations

from . import InferenceError


def check_world_size(tp: int, cp: int, world_size: int) -> None:
    """The launcher started exactly tp·cp processes (inference has no data or pipeline parallelism)."""
    if tp < 1 or cp < 1:
        raise InferenceError(f"--tp {tp} --cp {cp}: both must be >= 1")
    if world_size != tp * cp:
        raise InferenceError(f"world size {world_size} does not match --tp {tp} × --cp {cp} = {tp * cp}; launch "
                             f"torchrun --nproc-per-node {tp * cp} (× nodes) or change --tp / --cp")


def check_prompt_length(length: int, window: int, cp: int, what: str = "prompt") -> None:
    """A prompt the sharded prefill takes: at least one token, at most the checkpoint's rope window, and at least
    2·cp tokens so each of the 2·cp zigzag chunks holds a prompt token (the tail is padded, docs/eval.md)."""
    if length < 1:
        raise InferenceError(f"{what} is empty; give at least one token")
    if length > window:
        raise InferenceError(f"{what} of {length} tokens is longer than the checkpoint's rope window of {window} "
                             f"tokens (yarn.target_length / model.max_position_embeddings); shorten it or use a "
                             f"checkpoint extended to that length")
    if cp > 1 and length < 2 * cp:
        raise InferenceError(f"{what} of {length} tokens is shorter than 2·cp = {2 * cp} (the zigzag split gives "
                             f"every CP rank two chunks); use --cp {max(1, length // 2)} or a longer prompt")


def padded_length(length: int, cp: int) -> int:
    """The prefill length of a ``length``-token prompt: the next multiple of 2·cp (pads are masked out)."""
    unit = 2 * cp if cp > 1 else 1
    return -(-length // unit) * unit
