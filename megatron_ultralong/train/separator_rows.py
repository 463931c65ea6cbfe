"""Untrained separator tokens get the mean trained embedding and output rows when a stage starts from init_from.

    init_separator_rows(model_chunks, cfg, log)      # in Trainer.restore()'s init_from branch, on every rank
    reset_untrained_rows(model_chunks, ids, reserved_ids=(), real_vocab=None)   # the tensor work, per matrix

Works on the vocab-parallel embedding and output layer (TP shards, first/last PP stage). How "untrained" is
decided and why: docs/data.md ("Untrained separator rows").
"""
from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

RESERVED_TOKEN = re.compile(r"^<\|reserved_special_token_\d+\|>$")
"""Names of tokens a tokenizer reserves and the model never saw (Llama-3: 128002-128255 minus the named ones)."""
UNTRAINED_NORM_RATIO = 0.25
"""A row whose L2 norm is below this fraction of the median row norm (of the real, unreserved rows) counts as
untrained."""


def _matrices(model_chunks) -> List[tuple]:
    """(name, weight) of every vocabulary matrix this rank holds: the input embedding (first stage) and the
    output layer (last stage; absent on one stage when it is tied to the embedding)."""
    from megatron.core.utils import unwrap_model

    out = []
    for chunk in model_chunks:
        m = unwrap_model(chunk)
        emb = getattr(getattr(m, "embedding", None), "word_embeddings", None)
        if emb is not None:
            out.append(("input embedding", emb.weight))
        head = getattr(m, "output_layer", None)
        if getattr(m, "post_process", False) and head is not None and getattr(head, "weight", None) is not None:
            out.append(("output", head.weight))
    return out


def _reset_matrix(weight: torch.Tensor, ids: Sequence[int], reserved: torch.Tensor, real_vocab: int,
                  tp_group, tp_size: int, tp_rank: int) -> List[int]:
    """Set the rows of ``ids`` that are reserved or untrained to the mean of the trained rows over the whole
    vocabulary (TP shards all-gathered / all-reduced). Returns the ids that were reset."""
    rows = weight.shape[0]
    start = tp_rank * rows  # Megatron splits the (padded) vocabulary into equal contiguous shards
    norms = weight.detach().float().norm(dim=1)
    if tp_size > 1:
        parts = [torch.empty_like(norms) for _ in range(tp_size)]
        dist.all_gather(parts, norms, group=tp_group)
        norms = torch.cat(parts)
    real = (torch.arange(len(norms), device=norms.device) < real_vocab) & ~reserved.to(norms.device)[: len(norms)]
    median = norms[real].median() if real.any() else norms.median()
    trained = real & (norms >= UNTRAINED_NORM_RATIO * median)
    mine = trained[start: start + rows]
    total = torch.cat([weight.detach().float()[mine].sum(dim=0), mine.sum().float().reshape(1)])
    if tp_size > 1:
        dist.all_reduce(total, group=tp_group)
    mean = (total[:-1] / total[-1].clamp(min=1)).to(weight.dtype)
    reset = [t for t in ids if 0 <= t < len(norms) and not bool(trained[t])]
    with torch.no_grad():
        for t in reset:
            if start <= t < start + rows:
                weight.data[t - start].copy_(mean)
    return reset


def reset_untrained_rows(model_chunks, ids: Sequence[int], reserved_ids: Sequence[int] = (),
                         real_vocab: Optional[int] = None) -> Dict[int, List[str]]:
    """For each token of ``ids`` that is untrained in a vocabulary matrix (in ``reserved_ids``, or a row norm below
    UNTRAINED_NORM_RATIO × the median), set its row to the mean of that matrix's trained rows. ``real_vocab``:
    ids at or above it are vocabulary padding (never trained rows). Call on every rank (collectives over TP and
    the world). Returns {token id: names of the matrices reset} as seen from all ranks."""
    from megatron.core import parallel_state as ps

    ids = sorted({int(t) for t in ids})
    tp_size, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    tp_group = ps.get_tensor_model_parallel_group() if tp_size > 1 else None
    names = ("input embedding", "output")
    flags = torch.zeros(len(ids), len(names))
    for name, weight in _matrices(model_chunks):
        vocab = weight.shape[0] * tp_size
        reserved = torch.zeros(vocab, dtype=torch.bool)
        reserved[torch.tensor([t for t in reserved_ids if 0 <= t < vocab], dtype=torch.long)] = True
        for t in _reset_matrix(weight, ids, reserved, real_vocab or vocab, tp_group, tp_size, tp_rank):
            flags[ids.index(t), names.index(name)] = 1
    if dist.is_initialized() and dist.get_world_size() > 1:  # rank 0 (first stage) learns the last stage's resets
        flags = flags.to("cuda" if torch.cuda.is_available() else "cpu")
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        flags = flags.cpu()
    return {t: [n for j, n in enumerate(names) if flags[i, j]] for i, t in enumerate(ids) if flags[i].any()}


def init_separator_rows(model_chunks, cfg, log: Callable[[str], None]) -> None:
    """The separator tokens of this run (CPT) that are reserved or untrained get trained-mean rows; one log line
    per reset token. No-op in SFT (samples are not joined by a separator)."""
    from ..data.loader import _tokenizer, run_separator
    from ..data.synthetic import copy_task_ids

    d = cfg.data
    if cfg.train.mode != "cpt":
        return
    tok = None if d.synthetic is not None else _tokenizer(cfg)
    if d.synthetic is not None:
        ids = [copy_task_ids(cfg.model.vocab_size, d.separator_id)[0]]
    else:
        ids = list(run_separator(cfg, tok).ids)
    reserved, real_vocab = [], None
    if tok is not None:
        real_vocab = tok.vocab_size
        reserved = [t for t in range(tok.vocab_size) if tok._is_special(t) and RESERVED_TOKEN.match(tok.piece(t))]
    for t, where in reset_untrained_rows(model_chunks, ids, reserved, real_vocab).items():
        piece = f" {tok.piece(t)!r}" if tok is not None else ""
        why = "a reserved token" if t in reserved else "its row norm is that of an untrained row"
        log(f"separator token {t}{piece} is untrained ({why}): its {' and '.join(where)} rows set to the mean of "
            f"the trained rows")
