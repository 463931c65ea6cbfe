"""Language-model loss over sequence chunks: never materialises the full [S, V/tp] logits.

    with final_hidden_states(model):                    # GPTModel returns [s, b, h] instead of logits
        hidden = model(input_ids=..., position_ids=None, attention_mask=...)
    per_token = gpt_chunked_loss(unwrap_gpt(model), hidden, labels, chunk_size=4096)   # [b, s], like labels=

Why and how (checkpointed chunks, sequence parallel, exactness): docs/parallel.md, "Chunked loss".
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint


def unwrap_gpt(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers (they all keep it in ``.module``)."""
    from megatron.core.models.gpt import GPTModel

    while not isinstance(model, GPTModel):
        if not hasattr(model, "module"):
            raise TypeError(f"no GPTModel inside {type(model).__name__}")
        model = model.module
    return model


@contextlib.contextmanager
def final_hidden_states(model: torch.nn.Module):
    """Within the block, the (wrapped) GPTModel's forward returns the final-norm hidden states [s, b, h]
    instead of logits or losses. Only meaningful on the last pipeline stage (other stages already do so)."""
    gpt = unwrap_gpt(model)
    saved = gpt.post_process
    gpt.post_process = False
    try:
        yield
    finally:
        gpt.post_process = saved


def chunked_language_model_loss(hidden: torch.Tensor, labels: torch.Tensor, output_layer: torch.nn.Module,
                                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], chunk_size: int,
                                output_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-token cross entropy [b, s] from hidden states, ``chunk_size`` tokens of logits at a time.

    hidden: [s, b, h], or [s/tp, b, h] with sequence parallel (``output_layer.sequence_parallel``).
    labels: [b, s] token ids. output_layer: Megatron ColumnParallelLinear (vocab-parallel, no gather).
    loss_fn(labels [b, c], logits [c, b, V/tp]) -> [b, c]: GPTModel.compute_language_model_loss.
    output_weight: the embedding when input and output embeddings are tied.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size={chunk_size}: must be > 0 (use the model's own loss for unchunked)")
    rows, b = hidden.shape[0], hidden.shape[1]
    sp = bool(getattr(output_layer, "sequence_parallel", False))
    tp = dist.get_world_size(output_layer.tp_group) if sp else 1
    s = rows * tp
    if labels.shape != (b, s):
        raise ValueError(f"labels {tuple(labels.shape)} do not match hidden states {tuple(hidden.shape)} "
                         f"(sequence parallel over {tp} ranks: expected ({b}, {s}))")
    per_rank = max(1, chunk_size // tp)  # rows each TP rank contributes; the gathered chunk has tp times as many
    # position in the sequence of every row of the gathered chunks, in the order the losses come out
    order = torch.arange(s, device=labels.device).view(tp, rows)  # rank r holds rows r·s/tp ...
    weight_dtype = (output_weight if output_weight is not None else output_layer.weight).dtype

    def chunk_loss(h: torch.Tensor, chunk_labels: torch.Tensor) -> torch.Tensor:
        logits, _ = output_layer(h.to(weight_dtype), weight=output_weight)  # [c·tp, b, V/tp]
        return loss_fn(chunk_labels, logits)  # [b, c·tp]

    losses, positions = [], []
    for start, h in zip(range(0, rows, per_rank), hidden.split(per_rank, dim=0)):
        pos = order[:, start:start + h.shape[0]].reshape(-1)
        # the logits and softmax of this chunk are freed after forward and rebuilt in backward
        losses.append(checkpoint(chunk_loss, h, labels[:, pos], use_reentrant=False, preserve_rng_state=False))
        positions.append(pos)
    loss = torch.cat(losses, dim=1)  # [b, s] in chunk order
    if tp == 1:
        return loss  # chunk order is sequence order
    return loss[:, torch.argsort(torch.cat(positions))]


def gpt_chunked_loss(gpt: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                     chunk_size: int) -> torch.Tensor:
    """:func:`chunked_language_model_loss` with a GPTModel's output layer, tied weight and loss function:
    the same [b, s] per-token losses ``gpt(..., labels=labels)`` returns."""
    weight = gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights else None
    return chunked_language_model_loss(hidden, labels, gpt.output_layer, gpt.compute_language_model_loss,
                                       chunk_size, output_weight=weight)
