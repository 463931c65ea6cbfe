"""``python -m megatron_ultralong.train --config <recipe> --dry-run [--nodes N --gpus-per-node G] [overrides]``:
every input check of a training job, without GPUs or a process group, in seconds; prints the layout and a per-GPU
memory estimate (slurm/common.sh runs it on the batch node before srun).

    print(dry_run("cpt_1m", ["data.paths=[...]", "data.tokenizer=..."], nodes=32, gpus_per_node=8))
    # ConfigError / CheckpointError / DataError (one line) on the first problem

What it checks and where each check lives: docs/slurm.md ("First launch").
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Tuple

from ..checkpoint import CheckpointError
from ..config import Config, ConfigError, data_parallel_size, head_dim, validate
from .stage import load_training_config, source_checkpoint


def dry_run(recipe: str, overrides: Optional[List[str]] = None, nodes: Optional[int] = None,
            gpus_per_node: Optional[int] = None, environ: Mapping[str, str] = os.environ) -> str:
    """The report of a training command line that passes every check (layout, memory, init_from); raises the
    first problem as a one-line ConfigError / CheckpointError / DataError."""
    from ..data.checks import check_data

    cfg = validate(load_training_config(recipe, overrides))  # recipe, overrides, the stage's checkpoint (meta.json)
    world_size, where = job_world_size(nodes, gpus_per_node, environ)
    if world_size is not None:
        try:
            validate(cfg, world_size=world_size)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    check_data(cfg)
    source = source_checkpoint(cfg)
    lines = [layout_line(cfg, world_size, where), memory_line(cfg, world_size)]
    if source is not None:
        lines.append(check_checkpoint_tensors(source[1]["path"], cfg))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ world size
def _int(value: str, name: str) -> int:
    digits = value.rsplit(":", 1)[-1].split("(")[0]  # SLURM_GPUS_PER_NODE may read 'h100:8'
    if not digits.isdigit():
        raise ConfigError(f"{name}={value!r}: not a count; pass --nodes and --gpus-per-node to the dry run")
    return int(digits)


def job_world_size(nodes: Optional[int], gpus_per_node: Optional[int], environ: Mapping[str, str]
                   ) -> Tuple[Optional[int], str]:
    """(processes the job starts, how that was found): --nodes/--gpus-per-node, else the SLURM job's variables;
    a node without GPUs runs one (CPU) worker, like launch/torchrun.sh. (None, why) when neither is known."""
    n_from = "--nodes"
    if nodes is None:
        var = next((v for v in ("SLURM_JOB_NUM_NODES", "SLURM_NNODES") if environ.get(v)), None)
        nodes, n_from = (_int(environ[var], var), var) if var else (None, "")
    g_from = "--gpus-per-node"
    if gpus_per_node is None:
        var = next((v for v in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE") if environ.get(v)), None)
        gpus_per_node, g_from = (_int(environ[var], var), var) if var else (None, "")
    if nodes is None and gpus_per_node is None:
        return None, "world size not checked (no SLURM job; pass --nodes and --gpus-per-node)"
    if nodes is None:
        nodes, n_from = 1, "one node"
    if nodes < 1 or (gpus_per_node is not None and gpus_per_node < 0):
        raise ConfigError(f"{nodes} node(s) × {gpus_per_node} GPU(s) per node: counts must be positive")
    if not gpus_per_node:
        gpus_per_node, g_from = 1, "no GPUs: one CPU worker per node"
    world = nodes * gpus_per_node
    return world, f"world size {world} = {nodes} node(s) × {gpus_per_node} per node ({n_from}, {g_from})"


# ------------------------------------------------------------------------------------------------ the report
def layout_line(cfg: Config, world_size: Optional[int], where: str) -> str:
    p, t = cfg.parallel, cfg.train
    if world_size is None:
        return f"layout: tp {p.tp} · pp {p.pp} · cp {p.cp} (dp unknown: {where}); micro batch {t.micro_batch_size}, " \
               f"global batch {t.global_batch_size}, {cfg.data.seq_length} tokens per sequence"
    dp = data_parallel_size(p, world_size)
    accum = t.global_batch_size // (t.micro_batch_size * dp)
    return (f"layout: {where}: tp {p.tp} · pp {p.pp} · cp {p.cp} · dp {dp}; micro batch {t.micro_batch_size}, "
            f"global batch {t.global_batch_size} ({accum} micro-batch(es) per step), {cfg.data.seq_length} tokens "
            f"per sequence")


def memory_line(cfg: Config, world_size: Optional[int]) -> str:
    """The planner's per-GPU memory (GB = 1e9 bytes) of this layout (dp 1 when the world size is unknown)."""
    from ..planner import Layout, memory, params_per_gpu, workload_from_config

    p = cfg.parallel
    dp = data_parallel_size(p, world_size) if world_size is not None else 1
    gb = memory(cfg.model, workload_from_config(cfg), Layout(p.tp, p.pp, p.cp, dp))
    parts = " + ".join(f"{gb[k]:.2f} {k}" for k in ("weights", "grads", "optimizer", "activations", "logits"))
    return (f"memory per GPU (megatron_ultralong/planner.py, GB): {params_per_gpu(cfg.model, p.tp, p.pp):,} "
            f"parameters; {parts} + allowance = {gb['total']:.2f} total")


# ---------------------------------------------------------------------------------- the checkpoint's tensors
def expected_tensors(cfg: Config) -> Dict[str, Tuple[int, ...]]:
    """Checkpoint key -> global shape of every weight the model builds (model/builder.py's GPT spec, the same keys
    with the local and the TE spec; layers stacked on a leading axis), computed without building it."""
    m = cfg.model
    h, d, qkv = m.hidden_size, head_dim(m), (m.num_attention_heads + 2 * m.num_query_groups) * head_dim(m)
    layer = {"self_attention.linear_qkv.layer_norm_weight": (h,), "self_attention.linear_qkv.weight": (qkv, h),
             "self_attention.linear_proj.weight": (h, m.num_attention_heads * d),
             "mlp.linear_fc1.layer_norm_weight": (h,), "mlp.linear_fc1.weight": (2 * m.ffn_hidden_size, h),
             "mlp.linear_fc2.weight": (h, m.ffn_hidden_size)}
    if m.qkv_bias:
        layer["self_attention.linear_qkv.bias"] = (qkv,)
    out = {"embedding.word_embeddings.weight": (m.vocab_size, h)}
    out.update({f"decoder.layers.{k}": (m.num_layers, *s) for k, s in layer.items()})
    out["decoder.final_layernorm.weight"] = (h,)
    if not m.tie_word_embeddings:
        out["output_layer.weight"] = (m.vocab_size, h)
    return out


def saved_tensors(iter_dir: str) -> Tuple[Dict[str, Tuple[int, ...]], List[str]]:
    """(key -> global shape of each model tensor, the `_extra_state` keys) in a checkpoint's torch_dist metadata
    (the ``.metadata`` file: no tensor is read, no process group needed)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        md = FileSystemReader(iter_dir).read_metadata()
    except Exception as e:  # a missing or damaged .metadata surfaces as many types
        raise CheckpointError(f"{iter_dir}: its tensor index (.metadata) is unreadable ({e.__class__.__name__}); "
                              f"the checkpoint is incomplete, use an earlier iter_* folder") from None
    tensors, extra = {}, []
    for key, info in md.state_dict_metadata.items():
        name = key.split("/", 1)[0]  # objects are stored as '<key>/shard_<offset>_<shape>'
        if name.startswith(("optimizer.", "rng_state")):
            continue
        if name.rpartition(".")[2] == "_extra_state":
            extra.append(name)
        elif isinstance(info, TensorStorageMetadata):
            tensors[name] = tuple(info.size)
    return tensors, sorted(set(extra))


def check_checkpoint_tensors(iter_dir: str, cfg: Config) -> str:
    """CheckpointError (one line) when a weight the model builds is missing from the checkpoint or has another
    shape; returns the report line. `_extra_state` entries (TE's) are reported, never refused, as the weight-only
    load does (checkpoint.load_checkpoint)."""
    want = expected_tensors(cfg)
    have, extra = saved_tensors(iter_dir)
    missing = [k for k in want if k not in have]
    shapes = [f"{k} {list(have[k])} vs {list(s)}" for k, s in want.items() if k in have and have[k] != s]
    if missing or shapes:
        what = ([f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"] if missing else []) + \
            ([f"shapes (checkpoint vs model) {', '.join(shapes[:3])}{' ...' if len(shapes) > 3 else ''}"]
             if shapes else [])
        raise CheckpointError(f"{iter_dir}: its weights do not fit the model this recipe builds ({'; '.join(what)});"
                              f" use a checkpoint of this model (tools/convert_from_hf.py) or fix the model.* "
                              f"settings")
    ignored = sorted(set(have) - set(want))
    return (f"checkpoint: {iter_dir}: its {len(want)} weights match the model"
            + (f"; {len(extra)} _extra_state entries are skipped on load" if extra else "")
            + (f"; {len(ignored)} other tensors are not loaded ({', '.join(ignored[:3])})" if ignored else ""))


__all__ = ["dry_run", "job_world_size", "layout_line", "memory_line", "expected_tensors", "saved_tensors",
           "check_checkpoint_tensors"]
