"""One forward(+backward) pass over the microbatches of a global batch, through Megatron's pipeline schedule.

    out = forward_backward(model_chunks, batches, cfg)          # batches: list of full-length micro-batch dicts
    out["loss_sum"], out["tokens"]                               # this rank's share: sum them over DP×CP
    forward_backward(..., before_microbatch=lambda k: stop_now)   # True -> StepAbandoned before micro-batch k

Each CP rank keeps its zigzag share of every batch (``context_parallel.zigzag_split``); why per-token loss sums make
CP=N and DP=N train like CP=1: docs/parallel.md, "Loss normalisation".
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch

from .. import cpu_shims
from ..config import Config, check_cp_seq_length, needs_document_masking
from ..context_parallel import zigzag_split
from ..data.loader import BATCH_KEYS
from ..model.loss import final_hidden_states, gpt_chunked_loss, unwrap_gpt
from ..model.specs import core_attention_kind, make_attention_mask, resolve_attention_backend


class StepAbandoned(Exception):
    """Raised out of the schedule before micro-batch ``index`` (of ``total``): the step's gradients are partial and
    the optimizer has not stepped, so the model and optimizer still hold the previous step's state."""

    def __init__(self, index: int, total: int):
        super().__init__(f"step abandoned before micro-batch {index + 1} of {total}")
        self.index, self.total = index, total


def make_forward_step(cfg: Config, before_microbatch: Optional[Callable[[int], bool]] = None, total: int = 0):
    """forward_step_func(data_iterator, model) for Megatron's schedules. ``before_microbatch(k)`` runs before
    micro-batch k >= 1 (every rank, same k: it may hold a collective, see forward_backward)."""
    from megatron.core import parallel_state as ps

    calls = [0]

    masking = needs_document_masking(cfg)
    core = core_attention_kind(resolve_attention_backend(cfg.model), masking)
    chunk = cfg.train.loss_chunk_size

    def loss_func(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
        mask = loss_mask.float()
        loss_sum = (per_token_loss.float() * mask).sum()
        tokens = mask.sum().to(torch.int)
        return loss_sum, tokens, {"loss_sum": loss_sum.detach().clone(), "tokens": tokens.clone()}

    def forward_step(data_iterator, model):
        k, calls[0] = calls[0], calls[0] + 1
        if before_microbatch is not None and k > 0 and before_microbatch(k):
            raise StepAbandoned(k, total)
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
                     forward_only: bool = False, before_microbatch: Optional[Callable[[int], bool]] = None
                     ) -> Dict[str, torch.Tensor]:
    """Run all microbatches of one global batch for this DP replica; returns the loss_sum and token count of the
    tokens this rank computed (its CP share; zeros on ranks that are not the last pipeline stage).

    ``before_microbatch(k)``, pp == 1 only: called before micro-batch k = 1..n-1 on every rank in the same order
    (without pipelining all ranks run micro-batch k together, so it may all-reduce); True raises StepAbandoned.
    With pp > 1 the 1F1B stages reach micro-batch k at different times and a collective there would deadlock."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if before_microbatch is not None and ps.get_pipeline_model_parallel_world_size() > 1:
        raise ValueError("before_microbatch needs pipeline parallel size 1 (a collective inside the 1F1B "
                         "schedule deadlocks); pass None with pp > 1")

    fwd_bwd = get_forward_backward_func()
    seq = batches[0]["tokens"].shape[1]  # full length: the schedule divides by cp (and tp with SP) itself
    with cpu_shims.cuda_to_cpu():
        stats = fwd_bwd(forward_step_func=make_forward_step(cfg, before_microbatch, len(batches)),
                        data_iterator=iter(batches), model=model_chunks, num_microbatches=len(batches), seq_length=seq,
                        micro_batch_size=batches[0]["tokens"].shape[0], forward_only=forward_only)
    loss_sum = sum((s["loss_sum"].float().cpu() for s in stats), torch.zeros(()))
    tokens = sum((s["tokens"].cpu() for s in stats), torch.zeros((), dtype=torch.int))
    return {"loss_sum": loss_sum, "tokens": tokens}
