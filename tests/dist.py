"""Run a function on N local ranks (gloo) and collect what each returns. Used by the multi-process tests.

    results = run_ranks(fn, world_size=2, args=(cfg_overrides,))   # fn(rank, world_size, *args) -> picklable

Ranks are forked from the test process (megatron/torch already imported: no 5 s re-import per rank) with one
intra-op thread each (2 cores here). A rank that raises makes run_ranks raise with that rank's traceback.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import socket
import traceback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank, world_size, port, args, queue):
    import torch

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        # plain pickle copies tensors by value: the queue's own pickler would hand over a shared-memory fd
        # that dies with this process, so a rank exiting before the parent reads raced into ECONNRESET
        queue.put((rank, True, pickle.dumps(fn(rank, world_size, *args))))
    except BaseException:  # report, then let the parent raise
        queue.put((rank, False, traceback.format_exc()))
    finally:
        from megatron_ultralong.parallel import destroy_distributed

        try:
            destroy_distributed()
        except Exception:
            pass


def run_ranks(fn, world_size: int, args: tuple = (), timeout: float = 300.0):
    """fn(rank, world_size, *args) on world_size forked processes; returns [result of rank 0, 1, ...]."""
    import torch

    # fork is instant on CPU (torch and megatron already imported); CUDA cannot survive a fork
    ctx = mp.get_context("spawn" if torch.cuda.is_available() else "fork")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world_size, port, args, queue), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    results, errors = {}, {}
    try:
        for _ in range(world_size):
            rank, ok, value = queue.get(timeout=timeout)
            if ok:
                results[rank] = pickle.loads(value)
            else:
                errors[rank] = value
            if errors:
                break
    finally:
        for p in procs:
            p.join(timeout=5 if not errors else 0.5)
            if p.is_alive():
                p.kill()
    if errors:
        rank = min(errors)
        raise RuntimeError(f"rank {rank} failed:\n{errors[rank]}")
    return [results[r] for r in range(world_size)]


def fixed_batch(cfg, seq_length: int, batch_size: int = 2, seed: int = 7) -> dict:
    """A seeded random batch [batch_size, seq_length]: tokens, next-token labels, a ~80 % loss mask and positions
    0..s-1; the same on every rank, so layouts can be compared on it."""
    import torch

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.model.vocab_size, (batch_size, seq_length + 1), generator=g)
    return {"tokens": tokens[:, :-1], "labels": tokens[:, 1:],
            "loss_mask": (torch.rand(batch_size, seq_length, generator=g) > 0.2).float(),
            "position_ids": torch.arange(seq_length).expand(batch_size, seq_length)}


def full_tensor(shard, param, group=None):
    """Reassemble a TP-sharded parameter (or its grad) into the TP=1 layout, honouring partition_stride
    (gated MLP fc1 keeps [gate_r; up_r] per rank)."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    if not getattr(param, "tensor_model_parallel", False):
        return shard.detach().clone()
    group = group or ps.get_tensor_model_parallel_group()
    world = dist.get_world_size(group)
    parts = [torch.empty_like(shard) for _ in range(world)]
    dist.all_gather(parts, shard.detach().contiguous(), group=group)
    dim, stride = param.partition_dim, getattr(param, "partition_stride", 1)
    pieces = [p.chunk(stride, dim=dim) for p in parts]
    return torch.cat([pieces[r][j] for j in range(stride) for r in range(world)], dim=dim)


def global_param_name(model, name: str) -> str:
    """Parameter name with the global layer index (a PP stage numbers its own layers from 0)."""
    if ".layers." not in name:
        return name
    local = int(name.split(".layers.")[1].split(".")[0])
    return name.replace(f".layers.{local}.", f".layers.{model.decoder.layers[local].layer_number - 1}.", 1)


def reinit_by_name(model, std: float = 0.05):
    """Give every parameter values that depend only on its global name and TP=1 shape, then keep this rank's
    TP slice: models of any TP/PP layout then hold the same weights (init RNG order differs across PP)."""
    import zlib

    import torch
    from megatron.core import parallel_state as ps

    tp, r = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    with torch.no_grad():
        for name, p in model.named_parameters():
            key = global_param_name(model, name)
            g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            sharded = getattr(p, "tensor_model_parallel", False) and tp > 1
            shape = list(p.shape)
            if sharded:
                shape[p.partition_dim] *= tp
            full = torch.randn(shape, generator=g) * std
            if name.endswith("norm.weight") or "layer_norm_weight" in name:
                full = 1.0 + full
            if sharded:
                stride = getattr(p, "partition_stride", 1)
                chunks = full.chunk(tp * stride, dim=p.partition_dim)
                full = torch.cat([chunks[j * tp + r] for j in range(stride)], dim=p.partition_dim)
            p.copy_(full.to(p.dtype))
