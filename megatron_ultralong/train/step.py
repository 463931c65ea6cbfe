"""One forward(+backward) pass over the microbatches of a global batch, through Megatron's pipeline schedule.

    out = forward_backward(model_chunks, batches, cfg)          # batches: list of full-length micro-batch dicts
    out["loss_sum"], out["tokens"]                               # this rank's share: sum them over DP×CP

Each CP rank keeps its zigzag share of every batch (``context_parallel.zigzag_split``); why per-token loss sums make
CP=N and DP=N train like CP=1: docs/parallel.md, "Loss normalisation".
"""
from __future__ import annotations

from typing import Dict, List

import torch

from .. import cpu_shims
from ..config import Config, check_cp_seq_length, needs_document_masking
from ..context_parallel import zigzag_split
from ..data.loader import BATCH_KEYS
from ..model.loss import final_hidden_states, gpt_chunked_loss, unwrap_gpt
from ..model.specs import core_attention_kind, make_attention_mask, resolve_attention_backend


def make_forward_step(cfg: Config):
    """forward_step_func(data_iterator, model) for Megatron's schedules."""
    from megatron.core import parallel_state as ps

    masking = needs_document_masking(cfg)
    core = core_attention_kind(resolve_attention_backend(cfg.model), masking)
    chunk = cfg.train.loss_chunk_size

    def loss_func(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
        mask = loss_mask.float()
        loss_sum = (per_token_loss.float() * mask).sum()
        tokens = mask.sum().to(torch.int)
        return loss_sum, tokens, {"loss_sum": loss_sum.detach().clone(), "tokens": tokens.clone()}

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        device = next(model.parameters()).device
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in BATCH_KEYS}
        cp_size = ps.get_context_parallel_world_size()
        check_cp_seq_length(batch["tokens"].shape[1], cp_size, ps.get_tensor_model_parallel_world_size(),
                            cfg.parallel.sequence_parallel)
        batch = zigzag_split(batch, cp_size, ps.get_context_parallel_rank())  # identity for cp == 1
        doc_ids = batch.get("doc_ids") if masking else None
        mask = make_attention_mask(core, batch["tokens"].shape[1], doc_ids, device=device)
        inputs = dict(input_ids=batch["tokens"], position_ids=batch["position_ids"], attention_mask=mask)
        gpt = unwrap_gpt(model)
        if chunk > 0 and gpt.post_process:
            with final_hidden_states(model):
                hidden = model(**inputs)
            out = gpt_chunked_loss(gpt, hidden, batch["labels"], chunk)
        else:  # [b, s/cp] per-token losses on the last stage, hidden states for the next stage elsewhere
            out = model(**inputs, labels=batch["labels"])
        return out, lambda output: loss_func(batch["loss_mask"], output)

    return forward_step


def forward_backward(model_chunks: List[torch.nn.Module], batches: List[Dict[str, torch.Tensor]], cfg: Config,
                     forward_only: bool = False) -> Dict[str, torch.Tensor]:
    """Run all microbatches of one global batch for this DP replica; returns the loss_sum and token count of the
    tokens this rank computed (its CP share; zeros on ranks that are not the last pipeline stage)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    fwd_bwd = get_forward_backward_func()
    seq = batches[0]["tokens"].shape[1]  # full length: the schedule divides by cp (and tp with SP) itself
    with cpu_shims.cuda_to_cpu():
        stats = fwd_bwd(forward_step_func=make_forward_step(cfg), data_iterator=iter(batches),
                        model=model_chunks, num_microbatches=len(batches), seq_length=seq,
                        micro_batch_size=batches[0]["tokens"].shape[0], forward_only=forward_only)
    loss_sum = sum((s["loss_sum"].float().cpu() for s in stats), torch.zeros(()))
    tokens = sum((s["tokens"].cpu() for s in stats), torch.zeros((), dtype=torch.int))
    return {"loss_sum": loss_sum, "tokens": tokens}
