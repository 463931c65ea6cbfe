"""Distributed checkpoints: Megatron ``dist_checkpointing`` underneath, atomic publish, resume, resharding.

    path = save_checkpoint(ckpt_dir, step, model_chunks, cfg, optimizer, scheduler, extra={...})  # all ranks
    meta = load_checkpoint(ckpt_dir, model_chunks, optimizer, scheduler)   # follows <ckpt_dir>/latest
    meta = read_meta(ckpt_dir)                                             # no process group needed
    saves = AsyncSaves(); save_checkpoint(..., async_saves=saves); saves.poll(); saves.wait()  # background writes

On disk: ``<ckpt_dir>/latest`` names the newest complete ``iter_*`` folder; a save in progress lives in a hidden
``.iter_*.tmp`` folder until it is published. Layout, what is stored and why a kill is safe: docs/training.md.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from .atomic import publish_dir, write_text_atomic
from .config import Config, data_parallel_size, to_dict
from .signals import helpers_shielded

if TYPE_CHECKING:  # annotations only: torch is imported lazily at run time
    import torch

# torch / megatron are imported inside the functions that need them: read_meta() and friends stay cheap
# (the CLI checks checkpoint.init_from before paying for those imports).

FORMAT = "megatron-ultralong/1"
META_FILE = "meta.json"
LATEST_FILE = "latest"
ITER_PREFIX = "iter_"
LEGACY_OPTIM_SHARDING = "fully_reshardable"
"""What DistributedOptimizer checkpoints without an 'optimizer_sharding' entry in meta.json hold (all saved before
checkpoint.optim_sharding existed)."""
ARCH_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "kv_channels", "vocab_size", "qkv_bias", "tie_word_embeddings")
"""Model fields that decide parameter shapes / names: checkpoint and model must agree (kv_channels as head dim)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, corrupt, other architecture). One-line message."""


def iter_dir_name(step: int) -> str:
    """'iter_0000020' for step 20."""
    return f"{ITER_PREFIX}{step:07d}"


def _is_iter_name(name: str) -> bool:
    return name.startswith(ITER_PREFIX) and name[len(ITER_PREFIX):].isdigit()


def _temp_dir(ckpt_dir: str, step: int) -> str:
    """Where the checkpoint of ``step`` is written before it is published: '<ckpt_dir>/.iter_0000020.tmp'."""
    return os.path.join(ckpt_dir, f".{iter_dir_name(step)}.tmp")


# --------------------------------------------------------------------------------------------- reading
def resolve_checkpoint_path(path: str) -> str:
    """The iter directory ``path`` denotes: itself if it holds meta.json, else the one its ``latest`` names."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if os.path.isfile(os.path.join(path, META_FILE)):
        return path
    latest = os.path.join(path, LATEST_FILE)
    if not os.path.isfile(latest):
        raise CheckpointError(f"{path}: not a checkpoint (no '{LATEST_FILE}' file and no {META_FILE}); point at "
                              f"a checkpoint directory or one of its {ITER_PREFIX}* folders")
    with open(latest) as f:
        name = f.read().strip()
    target = os.path.join(path, name)
    if not _is_iter_name(name) or not os.path.isfile(os.path.join(target, META_FILE)):
        raise CheckpointError(f"{latest} names {name!r}, which is not a complete checkpoint; rewrite it with the "
                              f"name of an existing {ITER_PREFIX}* folder")
    return target


def find_latest(ckpt_dir: str) -> Optional[str]:
    """The published checkpoint ``<ckpt_dir>/latest`` points to, or None when there is none yet."""
    if not os.path.isfile(os.path.join(ckpt_dir, LATEST_FILE)):
        return None
    return resolve_checkpoint_path(ckpt_dir)


def read_meta(path: str) -> Dict[str, Any]:
    """meta.json of a checkpoint (a ckpt_dir following 'latest', or an iter dir). No process group needed."""
    iter_dir = resolve_checkpoint_path(path)
    meta_path = os.path.join(iter_dir, META_FILE)
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: unreadable ({e.__class__.__name__}: {e}); the checkpoint is "
                              f"corrupt, use an earlier {ITER_PREFIX}* folder") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: format {meta.get('format') if isinstance(meta, dict) else None!r} "
                              f"is not {FORMAT!r}; convert the checkpoint with tools/convert_from_hf.py")
    meta["path"] = iter_dir
    return meta


# ------------------------------------------------------------------------------------------ model views
def _unwrap(chunk):
    from megatron.core.utils import unwrap_model

    return unwrap_model(chunk)


def _model_sharded_state_dict(model_chunks: List["torch.nn.Module"]) -> Dict[str, Any]:
    if len(model_chunks) != 1:
        raise NotImplementedError("virtual pipeline stages (several model chunks per rank) are not supported")
    return {"model": _unwrap(model_chunks[0]).sharded_state_dict()}


def _arch_of_model(model_chunks) -> Dict[str, Any]:
    """The shape-deciding fields, read from the live model (so load_checkpoint needs no Config)."""
    m = _unwrap(model_chunks[0])
    c = m.config
    return {"num_layers": c.num_layers, "hidden_size": c.hidden_size, "ffn_hidden_size": c.ffn_hidden_size,
            "num_attention_heads": c.num_attention_heads, "num_query_groups": c.num_query_groups,
            "kv_channels": c.kv_channels, "vocab_size": m.vocab_size, "qkv_bias": bool(c.add_qkv_bias),
            "tie_word_embeddings": bool(m.share_embeddings_and_output_weights)}


def _arch_of_config(model) -> Dict[str, Any]:
    from .config import head_dim

    return {f: (head_dim(model) if f == "kv_channels" else getattr(model, f)) for f in ARCH_FIELDS}


def _arch_of_meta(meta: Dict[str, Any]) -> Dict[str, Any]:
    from .config import config_from_dict

    return _arch_of_config(config_from_dict({"model": meta["config"]["model"]}).model)


def _check_arch(meta: Dict[str, Any], now: Dict[str, Any], fix: str) -> None:
    saved = _arch_of_meta(meta)
    diff = [f"{k} {saved[k]} vs {now[k]}" for k in ARCH_FIELDS if saved[k] != now[k]]
    if diff:
        raise CheckpointError(f"{meta['path']}: checkpoint of another architecture (checkpoint vs model: "
                              f"{', '.join(diff)}); {fix}")


def check_same_architecture(meta: Dict[str, Any], model_chunks) -> None:
    """Raise CheckpointError naming every shape field where the checkpoint and the model differ."""
    _check_arch(meta, _arch_of_model(model_chunks), "use a checkpoint of this model or fix the model.* settings")


def check_config_architecture(meta: Dict[str, Any], model) -> None:
    """The same check for a ModelConfig, before any model is built (needs meta.json only)."""
    _check_arch(meta, _arch_of_config(model), "use a checkpoint of this model, fix the model.* settings, or set "
                                              "model.from_checkpoint=true to take them from the checkpoint")


def _layout() -> Dict[str, int]:
    import torch
    from megatron.core import parallel_state as ps

    return {"tp": ps.get_tensor_model_parallel_world_size(), "pp": ps.get_pipeline_model_parallel_world_size(),
            "cp": ps.get_context_parallel_world_size(), "dp": ps.get_data_parallel_world_size(),
            "world_size": torch.distributed.get_world_size()}


def _optimizer_kind(optimizer) -> str:
    return "distributed" if getattr(optimizer.config, "use_distributed_optimizer", False) else "local"


def _dist_optim_metadata(sharding: str) -> Dict[str, Any]:
    """Megatron's sharded_state_dict metadata for a DistributedOptimizer sharding type (megatron-core 0.16.1,
    DistributedOptimizer.sharded_state_dict). 'dp_reshardable': every DP×CP rank saves its own flat shard of the
    optimizer buckets, no communication; it reshards over DP only (Megatron-LM refuses it at another TP/PP). A
    CP change keeps the buckets (CP does not split parameters), so it loads like a DP change.
    'fully_reshardable': gathered into model space on DP rank 0 (over gloo: ``mem_efficient``), any layout."""
    if sharding == "dp_reshardable":
        return {"distrib_optim_sharding_type": "dp_reshardable"}
    return {"distrib_optim_sharding_type": "fully_reshardable", "distrib_optim_fully_reshardable_mem_efficient": True}


def _optimizer_sharded_state_dict(optimizer, model_sd, is_loading: bool, sharding: Optional[str]):
    """``sharding``: the DistributedOptimizer's sharding type; None for Megatron's non-sharded optimizer, whose
    state follows the model's sharded tensors and reshards to any layout."""
    metadata = _dist_optim_metadata(sharding) if sharding is not None else {}
    return optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=metadata)


def optimizer_sharding_of(meta: Dict[str, Any]) -> Optional[str]:
    """The DistributedOptimizer sharding type a checkpoint holds (meta.json), None for another optimizer."""
    if meta.get("optimizer") != "distributed":
        return None
    return meta.get("optimizer_sharding") or LEGACY_OPTIM_SHARDING


def check_optimizer_resharding(meta: Dict[str, Any], tp: int, pp: int) -> None:
    """A resume at tensor/pipeline size ``tp``/``pp``: raise CheckpointError when the checkpoint's optimizer
    state cannot be resharded to them (dp_reshardable: DP and CP may change, TP and PP may not). meta.json only."""
    was = meta["layout"]
    if optimizer_sharding_of(meta) != "dp_reshardable" or (was["tp"], was["pp"]) == (tp, pp):
        return
    raise CheckpointError(
        f"{meta['path']}: its distributed optimizer state is dp_reshardable, saved at tp{was['tp']}·pp{was['pp']}: it "
        f"resumes at that tp and pp only (dp and cp may change), not at tp{tp}·pp{pp}; resume at "
        f"parallel.tp={was['tp']} parallel.pp={was['pp']} with checkpoint.optim_sharding=fully_reshardable for one "
        f"more save (e.g. train.max_steps={meta['step'] + 1}), then change the layout")


# ------------------------------------------------------------------------------------------- strategies
def save_strategy(fully_parallel: bool):
    """torch_dist writer; with ``fully_parallel`` wrapped in Megatron's FullyParallelSaveStrategyWrapper over the
    DP×CP group: the tensors that DP (and CP) replicas hold alike are split among them, so every replica writes a
    share instead of DP rank 0 writing all (Megatron-LM's --ckpt-fully-parallel-save, training/checkpointing.py)."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    strategy = get_default_save_sharded_strategy("torch_dist", 1)
    group = ps.get_data_parallel_group(with_context_parallel=True)
    if fully_parallel and group.size() > 1:
        strategy = FullyParallelSaveStrategyWrapper(strategy, group)
    return strategy


def load_strategy(iter_dir: str, fully_parallel: bool):
    """The checkpoint's reader; with ``fully_parallel`` each DP×CP replica reads a share of the tensors it holds
    alike with the others and they exchange them (FullyParallelLoadStrategyWrapper), instead of every rank reading
    its whole shard. The exchange is Megatron's default broadcast on GPU; without CUDA all_gather_object, since
    the broadcast moves tensors with ``Tensor.cuda()`` (dist_checkpointing/exchange_utils.py)."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelLoadStrategyWrapper

    from . import cpu_shims

    strategy = get_default_load_sharded_strategy(iter_dir)
    group = ps.get_data_parallel_group(with_context_parallel=True)
    if fully_parallel and group.size() > 1:
        algo = "gather_object" if cpu_shims.cuda_absent() else "broadcast"
        strategy = FullyParallelLoadStrategyWrapper(strategy, group, exchange_algo=algo)
    return strategy


# ------------------------------------------------------------------------------------ background saves
class AsyncSaves:
    """Checkpoint writes running in background processes (checkpoint.async_save) and their publication.

        saves = AsyncSaves()
        save_checkpoint(..., async_saves=saves)   # returns once every rank has handed its state to a writer
        saves.poll()                              # publishes the saves every rank has finished writing
        saves.wait()                              # blocks until all are published (before exit, a preemption)

    Megatron's AsyncCallsQueue forks one writer per save (a copy-on-write snapshot of the state at the save);
    the publish (meta.json, rename, 'latest') is the last of its finalize functions, which run on every rank
    only after every rank's writer has finished, so a kill at any moment still leaves 'latest' naming a complete
    checkpoint. poll() and wait() are collective: every rank calls them at the same points.
    """

    def __init__(self):
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        self._queue = AsyncCallsQueue(persistent=False)
        self._pending: List[str] = []  # scheduled, not yet published (oldest first)
        self._published: List[Tuple[str, float]] = []  # (path, seconds from the save's start to its publish)

    @property
    def pending(self) -> List[str]:
        """Paths of the saves still being written or awaiting publication, oldest first."""
        return list(self._pending)

    def _schedule(self, request, path: str, publish: Callable[[], None]) -> None:
        t0 = time.perf_counter()

        def finalize():
            publish()
            self._pending.remove(path)
            self._published.append((path, time.perf_counter() - t0))

        request.add_finalize_fn(finalize)
        self._queue.schedule_async_request(request)  # forks the writer: inside save_checkpoint's helpers_shielded()
        self._pending.append(path)

    def poll(self, blocking: bool = False) -> List[Tuple[str, float]]:
        """Publish the saves whose files every rank has written (``blocking``: wait for all of them); returns
        [(path, seconds from the save's start to its publish)]. A failed write raises CheckpointError on every
        rank; the checkpoint 'latest' names is untouched."""
        from . import cpu_shims

        if not self._pending:
            return []
        try:
            with cpu_shims.cuda_to_cpu():
                self._queue.maybe_finalize_async_calls(blocking=blocking)
        except Exception as e:  # Megatron raises the failed rank's error on every rank
            failed = self._pending.pop(0)
            raise CheckpointError(f"{failed}: the background checkpoint write failed ({_one_line(e)}); 'latest' "
                                  f"still names the previous checkpoint") from None
        done, self._published = self._published, []
        return done

    def wait(self) -> List[Tuple[str, float]]:
        """poll(blocking=True): every pending save is published when it returns."""
        return self.poll(blocking=True)

    def abort(self) -> None:
        """Kill the writers without publishing (an error exit, when the ranks may no longer meet): the temp
        folders they leave are removed by the next save. Not collective."""
        self._queue.close(abort=True)
        self._pending.clear()


# ------------------------------------------------------------------------------------------------ RNG
def rng_states() -> Dict[str, Any]:
    """This rank's RNG states (torch, CUDA, Megatron's tracker): what a checkpoint stores."""
    import torch
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {"torch": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _rng_sharded_object():
    """This rank's RNG states as a ShardedObject keyed by (pp, tp, cp) rank; DP replicas hold equal states."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    state = rng_states()
    shape = (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size(),
             ps.get_context_parallel_world_size())
    offset = (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank(),
              ps.get_context_parallel_rank())
    return ShardedObject("rng_state", state, shape, offset, replica_id=ps.get_data_parallel_rank())


def restore_rng_states(state: Dict[str, Any]) -> None:
    """Put back what rng_states() returned."""
    import torch
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


# ----------------------------------------------------------------------------------------- filesystem
def _remove_dir(path: str) -> None:
    """Delete a directory so that no half-deleted copy is ever visible under its name (rename, then delete)."""
    trash = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.trash")
    if os.path.exists(trash):
        shutil.rmtree(trash)
    os.rename(path, trash)
    shutil.rmtree(trash)


def _clean_stale(ckpt_dir: str) -> None:
    """Remove leftovers of saves or deletions that were killed half-way (hidden .*.tmp / .*.trash folders)."""
    for name in os.listdir(ckpt_dir):
        if name.startswith(f".{ITER_PREFIX}") and (name.endswith(".tmp") or name.endswith(".trash")):
            shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)


def list_checkpoints(ckpt_dir: str) -> List[int]:
    """Steps of the published iter_* folders, ascending."""
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(n[len(ITER_PREFIX):]) for n in os.listdir(ckpt_dir)
                  if _is_iter_name(n) and os.path.isfile(os.path.join(ckpt_dir, n, META_FILE)))


def prune_checkpoints(ckpt_dir: str, keep_last: int) -> List[int]:
    """Delete all but the newest ``keep_last`` checkpoints (never the one 'latest' names); returns deleted steps."""
    latest = find_latest(ckpt_dir)
    keep_latest = os.path.basename(latest) if latest else None
    steps = list_checkpoints(ckpt_dir)
    deleted = []
    for step in steps[:-keep_last] if keep_last > 0 else steps:
        if iter_dir_name(step) != keep_latest:
            _remove_dir(os.path.join(ckpt_dir, iter_dir_name(step)))
            deleted.append(step)
    return deleted


# ------------------------------------------------------------------------------------------- save/load
def _publish(ckpt_dir: str, step: int, keep_last: int) -> None:
    """Rank 0, once the step's temp folder is complete: rename it to iter_*, point 'latest' at it, prune.
    (tests/checkpoint_pause.py wraps this function to kill a save between writing and publishing.)"""
    final = os.path.join(ckpt_dir, iter_dir_name(step))
    if os.path.exists(final):  # a published-but-never-'latest' copy from a run killed between the renames
        _remove_dir(final)
    publish_dir(_temp_dir(ckpt_dir, step), final)
    write_text_atomic(os.path.join(ckpt_dir, LATEST_FILE), iter_dir_name(step) + "\n")
    prune_checkpoints(ckpt_dir, keep_last)


def save_checkpoint(ckpt_dir: str, step: int, model_chunks: List["torch.nn.Module"], cfg: Config, optimizer=None,
                    scheduler=None, extra: Optional[Dict[str, Any]] = None,
                    async_saves: Optional[AsyncSaves] = None) -> str:
    """Save on all ranks and publish ``<ckpt_dir>/iter_{step:07d}`` atomically; returns its path.

    ``optimizer``: a Megatron optimizer (its sharded state is saved) or None (weights only, e.g. a converted
    model). ``scheduler``: anything with a JSON-serialisable ``state_dict()``. ``extra``: JSON-serialisable
    dict stored in meta.json (the trainer stores the data position there). Keeps ``checkpoint.keep_last``.
    ``async_saves``: write in the background instead: this returns once the state is handed to the writers, the
    path appears when ``async_saves`` publishes it (poll / wait); saves still pending are published first.
    Writers share the work over the DP×CP replicas with ``checkpoint.fully_parallel``; a DistributedOptimizer
    saves its state as ``checkpoint.optim_sharding``.
    """
    import torch
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    from . import cpu_shims

    if async_saves is not None:
        async_saves.wait()  # in order, and before this save's clean-up removes their temp folders
    rank0 = dist.get_rank() == 0
    kind = _optimizer_kind(optimizer) if optimizer is not None else None
    sharding = cfg.checkpoint.optim_sharding if kind == "distributed" else None
    # meta.json is rendered on every rank before any file is written: an unserialisable `extra` fails everywhere
    meta_json = json.dumps({
        "format": FORMAT, "step": step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "layout": _layout(),
        "optimizer": kind, "optimizer_sharding": sharding,
        "scheduler": scheduler.state_dict() if scheduler is not None else None, "extra": extra or {},
        "config": to_dict(cfg), "versions": {"torch": torch.__version__, "megatron_core": _megatron_version()},
    }, indent=1)
    ckpt_dir = os.fspath(ckpt_dir)
    final = os.path.join(ckpt_dir, iter_dir_name(step))
    tmp = _temp_dir(ckpt_dir, step)
    if rank0:
        os.makedirs(ckpt_dir, exist_ok=True)
        _clean_stale(ckpt_dir)
        os.makedirs(tmp)
    dist.barrier()

    sharded = _model_sharded_state_dict(model_chunks)
    if optimizer is not None:
        sharded["optimizer"] = _optimizer_sharded_state_dict(optimizer, sharded, is_loading=False, sharding=sharding)
    sharded["rng_state"] = _rng_sharded_object()

    def publish():
        dist.barrier()  # every rank's files are written
        if rank0:
            write_text_atomic(os.path.join(tmp, META_FILE), meta_json)  # last file in: its presence marks a full write
            _publish(ckpt_dir, step, cfg.checkpoint.keep_last)
        dist.barrier()  # nobody returns (and maybe exits) before the checkpoint is published

    # Megatron's writer spawns a multiprocessing Manager at the first save and keeps it, an async save forks a
    # writer; srun signals every process of the step, so none may die of USR1/TERM (docs/training.md, "Preemption")
    with cpu_shims.cuda_to_cpu(), helpers_shielded():
        request = dist_checkpointing.save(sharded, tmp, sharded_strategy=save_strategy(cfg.checkpoint.fully_parallel),
                                          async_sharded_save=async_saves is not None)
        if async_saves is not None:
            async_saves._schedule(request, final, publish)
    if async_saves is None:
        publish()
    return final


def load_checkpoint(path: str, model_chunks: List["torch.nn.Module"], optimizer=None, scheduler=None,
                    fully_parallel: bool = False) -> dict:
    """Load a checkpoint into this rank's model (any TP/PP/CP layout: dist_checkpointing reshards); returns meta.

    ``path``: a checkpoint directory (follows 'latest') or an iter directory. With an ``optimizer`` this is a
    resume: the optimizer state is loaded (resharded too; a dp_reshardable DistributedOptimizer state only to
    another DP/CP size, check_optimizer_resharding) and, when the TP/PP/CP layout is unchanged, every rank's RNG
    states. Without one, only the weights are loaded (initialisation from a converted model or an earlier stage).
    ``fully_parallel``: DP×CP replicas share the reading (load_strategy). Raises CheckpointError (one line) for a
    missing, corrupt or other-architecture checkpoint.
    """
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException

    from . import cpu_shims

    meta = read_meta(path)
    iter_dir = meta["path"]
    check_same_architecture(meta, model_chunks)
    layout_now = _layout()
    sharded = _model_sharded_state_dict(model_chunks)
    if optimizer is not None:
        if meta.get("optimizer") is None:
            raise CheckpointError(f"{iter_dir}: holds weights only (no optimizer state), so it cannot be resumed; "
                                  f"use it as checkpoint.init_from")
        if meta["optimizer"] != _optimizer_kind(optimizer):
            raise CheckpointError(f"{iter_dir}: optimizer state was saved by the {meta['optimizer']} optimizer, "
                                  f"this run uses the {_optimizer_kind(optimizer)} one; match "
                                  f"optim.use_distributed_optimizer or start from it via checkpoint.init_from")
        check_optimizer_resharding(meta, layout_now["tp"], layout_now["pp"])
        sharded["optimizer"] = _optimizer_sharded_state_dict(optimizer, sharded, is_loading=True,
                                                             sharding=optimizer_sharding_of(meta))
    same_layout = all(meta["layout"][k] == layout_now[k] for k in ("tp", "pp", "cp"))
    if optimizer is not None and same_layout:
        sharded["rng_state"] = _rng_sharded_object()
    # weights only: modules' `_extra_state` (TE's FP8 metadata) may be on one side only (a local-spec conversion
    # loaded into a TE model, or back); Megatron reports the mismatched keys instead of refusing the load
    weights_only = optimizer is None
    try:
        with cpu_shims.cuda_to_cpu():
            state = dist_checkpointing.load(sharded, iter_dir, sharded_strategy=load_strategy(iter_dir, fully_parallel),
                                            strict="return_all" if weights_only else "assume_ok_unexpected")
    except (Exception, CheckpointException) as e:  # damaged files surface as many types (DCP's is a BaseException)
        raise CheckpointError(f"{iter_dir}: cannot be loaded ({_one_line(e)}); the checkpoint is corrupt or "
                              f"incomplete, use an earlier {ITER_PREFIX}* folder") from None
    skipped: List[str] = []
    if weights_only:
        state, in_checkpoint_only, in_model_only = state
        skipped = _skipped_extra_state(iter_dir, in_checkpoint_only, in_model_only)
    result = _unwrap(model_chunks[0]).load_state_dict(state["model"], strict=not weights_only)
    if weights_only:
        _skipped_extra_state(iter_dir, result.unexpected_keys, result.missing_keys)
    meta["skipped_extra_state"] = skipped
    if optimizer is not None:
        with cpu_shims.cuda_to_cpu():
            optimizer.load_state_dict(state["optimizer"])
        if "rng_state" in state:
            restore_rng_states(state["rng_state"])
    if scheduler is not None and meta.get("scheduler"):
        scheduler.load_state_dict(meta["scheduler"])
    meta["rng_restored"] = "rng_state" in state
    return meta


def _is_extra_state(key: str) -> bool:
    from torch.nn.modules.module import _EXTRA_STATE_KEY_SUFFIX

    return key.rpartition(".")[2] == _EXTRA_STATE_KEY_SUFFIX


def _skipped_extra_state(iter_dir: str, in_checkpoint_only, in_model_only) -> List[str]:
    """The `_extra_state` keys on one side only ('name (not in the checkpoint)' / '(not in the model)'). Another
    key the model has and the checkpoint lacks is a CheckpointError; the checkpoint may hold more (its optimizer)."""
    others = sorted(k for k in in_model_only if not _is_extra_state(k))
    if others:
        raise CheckpointError(f"{iter_dir}: cannot be loaded (it lacks the model's {', '.join(others[:5])}"
                              f"{' ...' if len(others) > 5 else ''}); the checkpoint is corrupt or incomplete, "
                              f"use an earlier {ITER_PREFIX}* folder")
    return sorted([f"{k} (not in the checkpoint)" for k in in_model_only]
                  + [f"{k} (not in the model)" for k in in_checkpoint_only if _is_extra_state(k)])


def _one_line(e: BaseException) -> str:
    """'Type: first line of the message', unwrapping torch.distributed.checkpoint's per-rank failure map."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        e = next(iter(failures.values()))
        if isinstance(e, tuple):  # (exception, traceback frames)
            e = e[0]
    text = str(e).strip()
    return f"{e.__class__.__name__}: {text.splitlines()[0][:300] if text else ''}"


def _megatron_version() -> str:
    from megatron.core.package_info import __version__

    return __version__


def layout_summary(meta: Dict[str, Any], cfg: Config, world_size: int) -> str:
    """'tp2·pp1·cp1·dp1 -> tp1·pp1·cp1·dp1' when the layout changed, '' when it did not."""
    was = meta["layout"]
    p = cfg.parallel
    now = {"tp": p.tp, "pp": p.pp, "cp": p.cp, "dp": data_parallel_size(p, world_size)}
    if all(was[k] == now[k] for k in now):
        return ""
    fmt = lambda d: "·".join(f"{k}{d[k]}" for k in ("tp", "pp", "cp", "dp"))  # noqa: E731
    return f"{fmt(was)} -> {fmt(now)}"
