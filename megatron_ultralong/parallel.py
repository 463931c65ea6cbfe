"""Process groups: launcher environment -> torch.distributed -> Megatron parallel_state (TP × PP × CP × DP).

    ctx = init_distributed(cfg)      # validates cfg against the world size first, then builds the groups
    ...
    destroy_distributed()

Works under torchrun (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT), under a bare ``srun`` (SLURM_*
variables; the launch/ scripts set MASTER_ADDR from the node list) and as a single plain process (world size 1).
Backend: NCCL with CUDA, gloo without (``parallel.backend`` overrides). Rank order is Megatron's default
'tp-cp-ep-dp-pp': TP ranks are adjacent, so a TP group stays inside a node.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

from . import cpu_shims
from .config import Config, ConfigError, data_parallel_size, validate


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
    return LaunchEnv(rank, world, local, os.environ.get("MASTER_ADDR", "127.0.0.1"),
                     _int_env("MASTER_PORT", 29500))


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

    env = env or read_launch_env()
    validate(cfg, world_size=env.world_size)  # before any process group exists
    validate_context_parallel(cfg)
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


# ------------------------------------------------------------------------------------ context parallel
# Megatron's CP layout ("zigzag", load-balanced causal attention): the sequence is cut into 2·cp equal chunks and
# rank r holds chunks r and 2·cp−1−r, so every rank gets one early (cheap) and one late (expensive) chunk of the
# causal triangle. TE's context-parallel attention and Megatron's RoPE slicing (get_pos_emb_on_this_cp_rank) both
# assume it; our batch split, CPU attention and eval gather follow the same rule.


def check_cp_seq_length(seq_length: int, cp_size: int, tp_size: int = 1, sequence_parallel: bool = False) -> None:
    """Raise ConfigError unless a sequence of ``seq_length`` tokens can be laid out for this CP (× SP) layout."""
    if cp_size > 1 and seq_length % (2 * cp_size) != 0:
        raise ConfigError(f"parallel.cp={cp_size}: sequence length {seq_length} is not divisible by 2*cp="
                          f"{2 * cp_size} (zigzag split); pad or cut sequences to a multiple of {2 * cp_size}")
    if sequence_parallel:
        unit = tp_size * (2 * cp_size if cp_size > 1 else 1)
        if seq_length % unit != 0:
            raise ConfigError(f"parallel.sequence_parallel with tp={tp_size}, cp={cp_size}: sequence length "
                              f"{seq_length} is not divisible by {unit}; use a multiple of {unit}")


def zigzag_chunk_ids(cp_size: int, cp_rank: int) -> Tuple[int, int]:
    """The two global chunk indices (of 2·cp) that CP rank ``cp_rank`` holds, in its local order."""
    if not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank={cp_rank} outside [0, cp_size={cp_size})")
    return cp_rank, 2 * cp_size - 1 - cp_rank


def _split_one(t: torch.Tensor, cp_size: int, cp_rank: int, seq_dim: int) -> torch.Tensor:
    chunks = t.chunk(2 * cp_size, dim=seq_dim)  # 2·cp views of s / (2·cp) tokens each
    first, second = zigzag_chunk_ids(cp_size, cp_rank)
    return torch.cat([chunks[first], chunks[second]], dim=seq_dim)


def zigzag_split(batch: Union[torch.Tensor, Mapping[str, torch.Tensor]], cp_size: int, cp_rank: int,
                 seq_dim: int = 1) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
    """This CP rank's share of a batch: chunks r and 2·cp−1−r of 2·cp, concatenated along ``seq_dim``.

    ``batch`` is one tensor or a dict of per-token tensors [b, s, ...] (tokens, labels, loss_mask, position_ids,
    doc_ids — document ids are global to the sequence, so equality across the split still marks documents).
    Every tensor must have the same length s on ``seq_dim``; s must be divisible by 2·cp (ConfigError otherwise).
    Returns the same structure with length 2·s/(2·cp) = s/cp. cp_size == 1 returns the input unchanged.
    """
    if cp_size == 1:
        return batch
    tensors = {"": batch} if isinstance(batch, torch.Tensor) else dict(batch)
    lengths = {k: v.shape[seq_dim] for k, v in tensors.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zigzag_split: tensors disagree on the sequence length (dim {seq_dim}): {lengths}")
    check_cp_seq_length(next(iter(lengths.values())), cp_size)
    out = {k: _split_one(v, cp_size, cp_rank, seq_dim) for k, v in tensors.items()}
    return out[""] if isinstance(batch, torch.Tensor) else out


def zigzag_merge(shards: Sequence[torch.Tensor], seq_dim: int = 1) -> torch.Tensor:
    """Inverse of :func:`zigzag_split`: the per-rank shards (CP rank order) -> the sequence in natural order.

    Differentiable (chunk + cat), so the sdpa CP attention also uses it to order gathered keys/values.
    """
    cp_size = len(shards)
    pieces: List[Optional[torch.Tensor]] = [None] * (2 * cp_size)
    for rank, shard in enumerate(shards):
        first, second = shard.chunk(2, dim=seq_dim)
        a, b = zigzag_chunk_ids(cp_size, rank)
        pieces[a], pieces[b] = first, second
    return torch.cat(pieces, dim=seq_dim)


def zigzag_gather(local: torch.Tensor, cp_group=None, seq_dim: int = 1) -> torch.Tensor:
    """All-gather a per-rank tensor (e.g. eval logits [b, s/cp, v]) over the CP group and return it in natural
    sequence order on every rank. Not differentiable (for eval outputs)."""
    from megatron.core import parallel_state as ps

    group = cp_group if cp_group is not None else ps.get_context_parallel_group()
    cp_size = dist.get_world_size(group)
    if cp_size == 1:
        return local
    shards = [torch.empty_like(local) for _ in range(cp_size)]
    dist.all_gather(shards, local.contiguous(), group=group)
    return zigzag_merge(shards, seq_dim=seq_dim)


def validate_context_parallel(cfg: Config) -> None:
    """CP checks that need the resolved attention backend or the TP split (validate() checks the rest)."""
    from .model.specs import resolve_attention_backend

    p, m = cfg.parallel, cfg.model
    if p.cp == 1:
        return
    if resolve_attention_backend(m) == "local":
        raise ConfigError(f"parallel.cp={p.cp} with model.attention_backend='local': Megatron's local attention has "
                          f"no context parallelism; use model.attention_backend=sdpa (or te on GPU)")
    if p.cp_comm_type == "a2a":
        heads, groups = m.num_attention_heads // p.tp, m.num_query_groups // p.tp
        if heads % p.cp or groups % p.cp:
            raise ConfigError(f"parallel.cp_comm_type='a2a' splits each TP rank's {heads} query / {groups} KV heads "
                              f"over cp={p.cp} ranks: cp must divide both; use cp_comm_type=p2p or a2a+p2p")


def hierarchical_cp_sizes(cfg: Config, ranks_per_node: int) -> Optional[List[int]]:
    """[a2a size, p2p size] of the two-level CP group for cp_comm_type='a2a+p2p' (None for other types).

    The all-to-all level exchanges heads, so it must divide each TP rank's query and KV head counts, and it stays
    inside a node (CP neighbours are tp ranks apart in Megatron's tp-cp-dp-pp order); it takes the largest size
    that does. The p2p ring covers the rest.
    """
    p, m = cfg.parallel, cfg.model
    if p.cp == 1 or p.cp_comm_type != "a2a+p2p":
        return None
    heads, groups = m.num_attention_heads // p.tp, m.num_query_groups // p.tp
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
