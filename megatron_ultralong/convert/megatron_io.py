"""The Megatron side of a conversion: the checkpoint's config, the model's checkpoint keys, one layer's tensors.

    meta, cfg = read_checkpoint_config("runs/cpt_1m/checkpoints")
    for meta in checkpoint_lineage(ckpt): ...        # the checkpoint, then its init_from, ... back to the import
    hf_vocab = recorded_hf_vocab_size(ckpt)          # vocabulary rows of the HF model it was imported from
    names = checkpoint_names(conversion_model(cfg))   # table name -> the model's state-dict key
    tensors = load_unit(meta["path"], [table names of one layer], dist_checkpointing.load_tensors_metadata(...))
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch

from ..checkpoint import CheckpointError, read_meta
from ..config import Config, ParallelConfig, YarnConfig, config_from_dict
from .errors import ConvertError
from .mapping import checkpoint_key, layer_name


def read_checkpoint_config(ckpt: str) -> Tuple[Dict[str, Any], Config]:
    """(meta.json, its Config) of a checkpoint; ConvertError (one line) when it is not a readable one."""
    try:
        meta = read_meta(ckpt)
    except CheckpointError as e:
        raise ConvertError(str(e)) from None
    return meta, config_from_dict(meta["config"])


def checkpoint_lineage(ckpt: str) -> Iterator[Dict[str, Any]]:
    """meta.json of ``ckpt``, then of the checkpoint its config's ``checkpoint.init_from`` names, and so on back
    to the converted base model; stops where the chain ends or a link is not a readable checkpoint."""
    seen = set()
    path: Optional[str] = ckpt
    while path and path not in seen:
        seen.add(path)
        try:
            meta = read_meta(path)
        except CheckpointError:
            return
        yield meta
        path = (meta.get("config") or {}).get("checkpoint", {}).get("init_from")


def recorded_hf_vocab_size(ckpt: str) -> Optional[int]:
    """The vocabulary size of the HF model the checkpoint (or the first of its lineage) was imported from, as
    convert_hf_to_megatron recorded it before padding the rows to a multiple of TP; None when none is recorded."""
    for meta in checkpoint_lineage(ckpt):
        recorded = ((meta.get("extra") or {}).get("converted_from") or {}).get("hf_vocab_size")
        if recorded:
            return int(recorded)
    return None


def conversion_model(cfg: Config):
    """The whole GPTModel (TP=PP=1) on the meta device: its parameter names and checkpoint keys, no memory.
    Built with the local spec and plain RoPE (neither changes a weight name or shape)."""
    from ..model.builder import build_model

    model_cfg = dataclasses.replace(cfg.model, attention_backend="local", rope_type="default", fp8=None)
    conv = dataclasses.replace(cfg, model=model_cfg, yarn=YarnConfig(), parallel=ParallelConfig())
    with torch.device("meta"):
        return build_model(conv, pre_process=True, post_process=True)


def checkpoint_names(model) -> Dict[str, str]:
    """Table name (checkpoint key with the layer index, e.g. 'decoder.layers.3.mlp.linear_fc1.weight') -> the
    model's state-dict key, read from the model's own sharded_state_dict (which knows the local→TE renames)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    names = {}
    for sd_key, sharded in model.sharded_state_dict().items():
        if isinstance(sharded, (ShardedTensor, ShardedTensorFactory)):  # not the _extra_state objects
            layer = checkpoint_key(sd_key)[1]  # TP=PP=1: the local layer number is the global one
            names[layer_name(sharded.key, layer)] = sd_key
    return names


def load_unit(iter_dir: str, names: Sequence[str], md: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """Read the named tensors (table names, one layer's or the non-layer ones) from a checkpoint, whole."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from .. import cpu_shims

    request = {}
    for name in names:
        key, layer = checkpoint_key(name)
        info = md[key]
        if layer is None:
            data = torch.empty(tuple(info.global_shape), dtype=info.dtype)
            request[name] = ShardedTensor.from_rank_offsets(key, data, replica_id=0)
        else:
            # one row of the stacked layer axis, described as a plain shard of the N-D tensor: Megatron's
            # prepend-axis form assumes other ranks hold the other rows, which a world of one cannot satisfy
            data = torch.empty((1,) + tuple(info.global_shape[1:]), dtype=info.dtype)
            request[name] = ShardedTensor.from_rank_offsets(key, data, (0, layer, info.global_shape[0]), replica_id=0)
    with warnings.catch_warnings(), cpu_shims.cuda_to_cpu():
        warnings.simplefilter("ignore", FutureWarning)  # torch's DCP deprecation notes, once per call
        loaded = dist_checkpointing.load(request, iter_dir, sharded_strategy=("torch_dist", 1),
                                         validate_access_integrity=False)  # a partial read is the point
    return {n: (loaded[n][0] if checkpoint_key(n)[1] is not None else loaded[n]) for n in names}
