"""Process groups: launcher environment -> torch.distributed -> Megatron parallel_state (TP × PP × CP × DP).

    ctx = init_distributed(cfg)      # validates cfg against the world size first, then builds the groups
    ...
    destroy_distributed()

torchrun, bare srun and single-process launches; backends and rank order: docs/parallel.md.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import List, Optional

import torch
import torch.distributed as dist

from . import cpu_shims
from .config import Config, ConfigError, data_parallel_size, heads_per_tp_rank, validate


@dataclass
class LaunchEnv:
    """Where this process sits, as the launcher told it."""

    rank: int
    """Global rank."""
    world_size: int
    """Number of processes."""
    local_rank: int
    """Rank on this node (selects the GPU)."""
    master_addr: str
    """Rendezvous host."""
    master_port: int
    """Rendezvous TCP port."""


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer; fix the launcher") from None


def read_launch_env() -> LaunchEnv:
    """torchrun variables first, then SLURM's (srun without torchrun), else a single process."""
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        rank, world, local = _int_env("RANK", 0), _int_env("WORLD_SIZE", 1), _int_env("LOCAL_RANK", 0)
    elif "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ:  # inside an srun step
        rank, world, local = _int_env("SLURM_PROCID", 0), _int_env("SLURM_NTASKS", 1), _int_env("SLURM_LOCALID", 0)
    else:
        rank, world, local = 0, 1, 0
    if not 0 <= rank < world:
        raise ConfigError(f"launcher gave rank {rank} outside world size {world}; check RANK / WORLD_SIZE")
    # a lone process needs no agreed port: a free one, so two single-process runs on one machine never clash
    port = _int_env("MASTER_PORT", _free_port() if world == 1 else 29500)
    return LaunchEnv(rank, world, local, os.environ.get("MASTER_ADDR", "127.0.0.1"), port)


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ParallelContext:
    """This rank's coordinates in the TP × PP × CP × DP grid."""

    rank: int
    """Global rank."""
    world_size: int
    """Number of processes."""
    tp_rank: int
    """Rank in the tensor-parallel group."""
    pp_rank: int
    """Pipeline stage."""
    cp_rank: int
    """Rank in the context-parallel group."""
    dp_rank: int
    """Data-parallel rank (which share of each global batch this rank reads)."""
    dp_size: int
    """Data-parallel size."""
    device: torch.device
    """Device this rank computes on."""

    @property
    def is_logging_rank(self) -> bool:
        """Rank that prints and writes metrics: the last pipeline stage of the first DP/TP/CP replica."""
        from megatron.core import parallel_state as ps

        return ps.is_pipeline_last_stage() and self.tp_rank == 0 and self.cp_rank == 0 and self.dp_rank == 0


def resolve_backend(cfg: Config) -> str:
    """'nccl' with CUDA, 'gloo' without, unless parallel.backend says otherwise."""
    backend = cfg.parallel.backend
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("parallel.backend='nccl' but CUDA is not available; use parallel.backend=gloo on CPU")
    return backend


def init_distributed(cfg: Config, env: Optional[LaunchEnv] = None, timeout_minutes: int = 30) -> ParallelContext:
    """Validate cfg for this world size, start torch.distributed and Megatron's parallel groups, seed RNGs."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    from .model.specs import validate_context_parallel

    env = env or read_launch_env()
    validate(cfg, world_size=env.world_size)  # before any process group exists
    validate_context_parallel(cfg)  # the CP checks that need this machine's attention backend
    hierarchical_cp = hierarchical_cp_sizes(cfg, _ranks_per_node(env.world_size))  # a2a+p2p only
    backend = resolve_backend(cfg)
    cpu_shims.install()
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                                timeout=timedelta(minutes=timeout_minutes))
    p = cfg.parallel
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=p.tp, pipeline_model_parallel_size=p.pp,
                                 context_parallel_size=p.cp, distributed_timeout_minutes=timeout_minutes,
                                 hierarchical_context_parallel_sizes=hierarchical_cp)
    tensor_parallel.model_parallel_cuda_manual_seed(cfg.train.seed)
    return ParallelContext(
        rank=env.rank, world_size=env.world_size,
        tp_rank=ps.get_tensor_model_parallel_rank(), pp_rank=ps.get_pipeline_model_parallel_rank(),
        cp_rank=ps.get_context_parallel_rank(), dp_rank=ps.get_data_parallel_rank(),
        dp_size=data_parallel_size(p, env.world_size), device=device)


def destroy_distributed() -> None:
    """Tear down Megatron's groups and the default process group (idempotent)."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------- hierarchical CP groups
def hierarchical_cp_sizes(cfg: Config, ranks_per_node: int) -> Optional[List[int]]:
    """[a2a size, p2p size] of the two-level CP group for cp_comm_type='a2a+p2p' (None for other types).

    The all-to-all level exchanges heads (it must divide each TP rank's query and KV head counts) and stays inside
    a node; it takes the largest size that does, the p2p ring covers the rest (docs/parallel.md).
    """
    p = cfg.parallel
    if p.cp == 1 or p.cp_comm_type != "a2a+p2p":
        return None
    heads, groups = heads_per_tp_rank(cfg.model, p)
    cp_per_node = max(1, ranks_per_node // p.tp)
    a2a = max(d for d in range(1, p.cp + 1)
              if p.cp % d == 0 and heads % d == 0 and groups % d == 0 and d <= cp_per_node)
    if a2a == 1:
        raise ConfigError(f"parallel.cp_comm_type='a2a+p2p': no all-to-all level fits (cp={p.cp}, {groups} KV heads "
                          f"per TP rank, {cp_per_node} CP ranks per node); use parallel.cp_comm_type=p2p")
    return [a2a, p.cp // a2a]


def _ranks_per_node(world_size: int) -> int:
    """Processes per node, from torchrun or SLURM, else the local GPU count, else the whole world."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        raw = os.environ.get(name, "")
        if raw.isdigit():
            return int(raw)
    return torch.cuda.device_count() if torch.cuda.is_available() else world_size
