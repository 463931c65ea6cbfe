"""``single_process()``: torch.distributed and Megatron's parallel state for one process, as the converters need.

    with single_process():
        model = build_model(cfg)   # TP=PP=CP=1, gloo, no rendezvous
"""
from __future__ import annotations

import contextlib

from .errors import ConvertError


@contextlib.contextmanager
def single_process():
    """torch.distributed + Megatron parallel state for one process (TP=PP=CP=1), for as long as the block runs.

    Reuses a group the caller already started if it is a world of one; refuses to run under a multi-rank launcher
    (every rank would convert the same model)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    from .. import cpu_shims

    own_group = not dist.is_initialized()
    if not own_group and dist.get_world_size() != 1:
        raise ConvertError(f"the converter runs in a single process, not under a launcher with "
                           f"{dist.get_world_size()} ranks; run it with plain python (checkpoints reshard on load)")
    cpu_shims.install()
    if own_group:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # no port, no rendezvous
    own_state = not ps.model_parallel_is_initialized()
    try:
        if own_state:
            ps.initialize_model_parallel(1, 1)
            tensor_parallel.model_parallel_cuda_manual_seed(0)
        yield
    finally:
        if own_state and ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
        if own_group and dist.is_initialized():
            dist.destroy_process_group()
