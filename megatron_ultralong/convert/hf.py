"""The conversion engine: HF safetensors ⇄ Megatron distributed checkpoints, driven by the tables.

    convert_hf_to_megatron("hf/Llama-3.1-8B-Instruct", "ckpt/llama31-8b", tp=8, dtype="bf16")
    convert_megatron_to_hf("runs/cpt_1m/checkpoints", "hf/llama31-8b-1m", verify=True)

Both run in one process (world size 1, gloo, on CPU) whatever the training layout: a distributed checkpoint stores
global tensors and reshards on load, so a checkpoint written here loads into any TP/PP layout, and one written by
any layout is read here. ``--tp/--pp`` of the import are validated against the heads/layers and recorded in the
checkpoint's config (``parallel.tp/pp``) as the intended layout.

HF → Megatron: tensors are read one layer at a time (safetensors, lazily, sharded index or single file), fused by
the table's transforms into the state dict of a Megatron model built on the meta device (no init, no memory), and
saved with ``checkpoint.save_checkpoint`` as step 0. Peak memory is the model's bytes in the target dtype:
``dist_checkpointing`` stages every tensor of a save before writing the first one, so a save cannot stream.
The source's config.json and tokenizer files go to ``<ckpt_dir>/hf_assets/`` for the way back.

Megatron → HF: one layer at a time is read from the checkpoint (a slice of each stacked layer tensor), split by the
table's transforms and streamed into safetensors shards whose headers are planned up front, so memory is bounded by
one layer (a few copies of the largest unit), not the model. config.json comes from ``hf_config`` (YaRN →
``rope_scaling``), starting from the source model's config found in ``hf_assets/`` next to the checkpoint or,
following ``checkpoint.init_from`` from stage to stage, next to the converted base model; tokenizer files come from
there too (or from ``data.tokenizer``).

Both directions write into a hidden temp directory next to ``out`` and rename it into place at the end; a failure
leaves nothing behind under ``out``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import struct
import sys
import time
import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ..atomic import atomic_dir
from ..checkpoint import CheckpointError, read_meta
from ..config import (DTYPES, Config, DataConfig, ParallelConfig, YarnConfig, config_from_dict, max_sequence_length,
                      validate)
from . import ConvertError, VerificationError
from .hf_config import hf_config_from_model, hf_dtype, model_config_from_hf
from .mapping import ArchTable, Dims, checkpoint_key, layer_name, table_for_arch, table_for_hf_model_type

ASSETS_DIR = "hf_assets"
"""Folder next to the iter_* folders of a converted checkpoint holding the source config.json and tokenizer files."""
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"
_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
_ST_TO_OURS = {"F32": "fp32", "BF16": "bf16", "F16": "fp16"}
# files of an HF model folder that are weights (never copied as assets); pickles are never read
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".index.json")


def _log(msg: str, enabled: bool = True) -> None:
    if enabled:
        print(f"[convert] {msg}", file=sys.stderr, flush=True)


def _progress(items: Sequence, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="part", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


# ------------------------------------------------------------------------------------ process group
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


# -------------------------------------------------------------------------------- output directories
@contextlib.contextmanager
def _staged(out: str):
    """Yield (final path, hidden temp dir next to it); tmp is published as final when the block succeeds, deleted
    when it fails. ``out`` must not exist or be an empty directory."""
    final = os.path.abspath(os.fspath(out))
    if os.path.exists(final) and (not os.path.isdir(final) or os.listdir(final)):
        raise ConvertError(f"output {out} already exists and is not empty; remove it or choose another directory")
    with atomic_dir(final) as tmp:
        yield final, tmp


# ---------------------------------------------------------------------------------------- HF assets
def asset_files(folder: str) -> List[str]:
    """Top-level files of an HF model folder that are not weights: config, tokenizer, generation config, license."""
    return sorted(n for n in os.listdir(folder)
                  if not n.startswith(".") and os.path.isfile(os.path.join(folder, n))
                  and not n.endswith(_WEIGHT_SUFFIXES))


def _copy_assets(src: str, dst: str, skip: Iterable[str] = ()) -> List[str]:
    os.makedirs(dst, exist_ok=True)
    copied = [n for n in asset_files(src) if n not in set(skip)]
    for n in copied:
        shutil.copy2(os.path.join(src, n), os.path.join(dst, n))
    return copied


def find_hf_assets(ckpt: str) -> Optional[str]:
    """The hf_assets folder of a checkpoint: next to its iter_* folders, else next to the checkpoint its config's
    ``checkpoint.init_from`` names, and so on back to the converted base model. None when the chain has none."""
    seen = set()
    path = ckpt
    while path and path not in seen:
        seen.add(path)
        try:
            meta = read_meta(path)
        except CheckpointError:
            return None
        ckpt_dir = os.path.dirname(os.path.abspath(meta["path"]))
        candidate = os.path.join(ckpt_dir, ASSETS_DIR)
        if os.path.isdir(candidate):
            return candidate
        path = (meta.get("config") or {}).get("checkpoint", {}).get("init_from")
    return None


# ------------------------------------------------------------------------------------ safetensors in
class SafetensorsReader:
    """Lazy access to the tensors of an HF model folder: ``model.safetensors.index.json`` with its shards, or a
    single ``*.safetensors`` file. Files are memory-mapped by safetensors; a tensor is read when asked for. Opening
    checks that every shard exists, is readable and holds the tensors the index assigns to it."""

    def __init__(self, folder: str):
        from safetensors import safe_open

        self.folder = folder
        self._stack = contextlib.ExitStack()
        self._handles: Dict[str, Any] = {}
        index = os.path.join(folder, INDEX_FILE)
        has_index = os.path.isfile(index)
        if has_index:
            with open(index) as f:
                self.weight_map: Dict[str, str] = json.load(f)["weight_map"]
            files = sorted(set(self.weight_map.values()))
        else:
            files = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
            if len(files) != 1:
                pickles = [n for n in os.listdir(folder) if n.endswith((".bin", ".pt", ".pth"))]
                hint = (" (found pickle weights; they are not read: re-save with transformers "
                        "save_pretrained(..., safe_serialization=True))") if pickles else ""
                raise ConvertError(f"{folder}: expected {INDEX_FILE} or exactly one *.safetensors file, found "
                                   f"{len(files)}{hint}")
            self.weight_map = {}
        absent = [fn for fn in files if not os.path.isfile(os.path.join(folder, fn))]
        if absent:
            raise ConvertError(f"{index} names shard files that are missing: {', '.join(absent[:3])}"
                               f"{' ...' if len(absent) > 3 else ''}; the download is incomplete")
        for fn in files:
            try:
                handle = self._stack.enter_context(safe_open(os.path.join(folder, fn), framework="pt"))
            except Exception as e:  # truncated or not a safetensors file
                self._stack.close()
                raise ConvertError(f"{os.path.join(folder, fn)}: unreadable safetensors file ({e}); re-download "
                                   f"it") from None
            self._handles[fn] = handle
            keys = set(handle.keys())
            if not has_index:
                self.weight_map = {k: fn for k in keys}
            lacking = sorted(n for n, f in self.weight_map.items() if f == fn and n not in keys)
            if lacking:
                self._stack.close()
                raise ConvertError(f"{INDEX_FILE} puts {', '.join(lacking[:3])} in {fn}, which does not hold "
                                   f"{'it' if len(lacking) == 1 else 'them'}; the download is incomplete")

    def names(self) -> List[str]:
        return list(self.weight_map)

    def _slice(self, name: str):
        return self._handles[self.weight_map[name]].get_slice(name)

    def shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def dtype(self, name: str) -> Optional[str]:
        """Our dtype name ('bf16', 'fp32', 'fp16') of a tensor, None for other dtypes."""
        return _ST_TO_OURS.get(self._slice(name).get_dtype())

    def get(self, name: str) -> torch.Tensor:
        return self._handles[self.weight_map[name]].get_tensor(name)

    def close(self) -> None:
        self._stack.close()


# ----------------------------------------------------------------------------------- safetensors out
def parse_size(size: int | str) -> int:
    """'5GB' / '500MB' / '2GiB' / 1000 -> bytes."""
    if isinstance(size, int):
        return size
    text = str(size).strip().upper()
    units = {"KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "B": 1}
    for unit, scale in units.items():
        if text.endswith(unit):
            try:
                return int(float(text[:-len(unit)]) * scale)
            except ValueError:
                break
    try:
        return int(text)
    except ValueError:
        raise ConvertError(f"max shard size {size!r}: expected bytes or a size like 5GB / 500MB") from None


@dataclasses.dataclass
class _Entry:
    name: str
    shape: Tuple[int, ...]
    nbytes: int


class ShardedSafetensorsWriter:
    """Writes tensors, in an order known up front, into ``model-0000k-of-0000n.safetensors`` shards plus
    ``model.safetensors.index.json``. Each shard's header (names, shapes, offsets) is written before its data, so a
    tensor goes to disk as soon as it is produced and nothing but the tensor in hand is held in memory."""

    def __init__(self, folder: str, plan: List[Tuple[str, Tuple[int, ...]]], dtype: torch.dtype, max_bytes: int):
        itemsize = torch.empty((), dtype=dtype).element_size()
        entries = [_Entry(n, tuple(s), math.prod(s) * itemsize) for n, s in plan]
        self.shards: List[List[_Entry]] = []
        size = 0
        for e in entries:
            if not self.shards or (size + e.nbytes > max_bytes and self.shards[-1]):
                self.shards.append([])
                size = 0
            self.shards[-1].append(e)
            size += e.nbytes
        n = len(self.shards)
        self.files = [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
        self.folder, self.dtype = folder, dtype
        self.total_bytes = sum(e.nbytes for e in entries)
        self._order = [(k, e) for k, shard in enumerate(self.shards) for e in shard]
        self._next = 0
        self._file = None
        self._open_shard = -1

    def _open(self, k: int) -> None:
        self._close_file()
        header: Dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for e in self.shards[k]:
            header[e.name] = {"dtype": _ST_DTYPES[self.dtype], "shape": list(e.shape),
                              "data_offsets": [offset, offset + e.nbytes]}
            offset += e.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as the safetensors writer does
        self._file = open(os.path.join(self.folder, self.files[k]), "wb")
        self._file.write(struct.pack("<Q", len(blob)))
        self._file.write(blob)
        self._open_shard = k

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._order):
            raise RuntimeError(f"unplanned tensor {name}")
        k, e = self._order[self._next]
        if name != e.name or tuple(tensor.shape) != e.shape or tensor.dtype != self.dtype:
            raise RuntimeError(f"expected {e.name} {e.shape} {self.dtype}, got {name} {tuple(tensor.shape)} "
                               f"{tensor.dtype}")
        if k != self._open_shard:
            self._open(k)
        # raw little-endian bytes of the contiguous tensor, without a copy when it is contiguous already
        self._file.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
        self._next += 1

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())  # on disk before the folder is renamed into place
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Finish the last shard and write the index; every planned tensor must have been written."""
        self._close_file()
        if self._next != len(self._order):
            raise RuntimeError(f"{len(self._order) - self._next} planned tensors were not written")
        index = {"metadata": {"total_size": self.total_bytes},
                 "weight_map": {e.name: self.files[k] for k, e in self._order}}
        with open(os.path.join(self.folder, INDEX_FILE), "w") as f:
            json.dump(index, f, indent=2)
            f.flush()
            os.fsync(f.fileno())


# -------------------------------------------------------------------------------------- validation
def _check_dtype(dtype: Optional[str]) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise ConvertError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")


def _validate_model_and_layout(cfg: Config) -> None:
    """config.validate's checks of the model, YaRN and the TP/PP layout (heads, KV heads, layers, vocabulary).
    A converted checkpoint has no data section, so a minimal synthetic one stands in for it."""
    validate(dataclasses.replace(cfg, data=DataConfig(synthetic="copy", seq_length=1)))


def _check_hf_tensors(reader: SafetensorsReader, table: ArchTable, model, dims: Dims) -> List[str]:
    """Every tensor the table needs is there with the shape config.json implies, and nothing unknown is left over.
    Returns notes about tensors deliberately skipped."""
    notes = []
    mappings = table.mappings(model)
    needed = [n for m in mappings for n in m.hf_names]
    present = set(reader.names())
    missing = [n for n in needed if n not in present]
    if missing:
        raise ConvertError(f"{reader.folder}: missing tensors {', '.join(missing[:3])}"
                           f"{f' (+{len(missing) - 3} more)' if len(missing) > 3 else ''} that the {table.arch!r} "
                           f"table needs for this config.json")
    extra = sorted(present - set(needed))
    if model.tie_word_embeddings and "lm_head.weight" in extra:
        extra.remove("lm_head.weight")  # some tied checkpoints store the shared matrix twice
        notes.append("lm_head.weight skipped (tie_word_embeddings=true: the embedding is the output layer)")
    extra = [n for n in extra if not n.endswith(table.hf_ignored)]
    if extra:
        raise ConvertError(f"{reader.folder}: tensors {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''} are "
                           f"not in the {table.arch!r} table; is config.json the one of these weights?")
    for m in mappings:
        for name, expected in zip(m.hf_names, m.hf_shapes(dims)):
            got = reader.shape(name)
            if got != expected:
                raise ConvertError(f"{name}: shape {list(got)} but config.json implies {list(expected)} "
                                   f"(hidden {dims.hidden}, ffn {dims.ffn}, heads {dims.heads}, kv heads "
                                   f"{dims.groups}, head_dim {dims.head_dim}, vocab {dims.hf_vocab})")
    return notes


def _check_checkpoint_tensors(md: Dict[str, Any], table: ArchTable, model, dims: Dims, where: str) -> None:
    """The checkpoint holds every tensor the table maps, with the global shape its config implies."""
    missing, wrong = [], []
    for m in table.mappings(model):
        key, layer = checkpoint_key(m.megatron)
        expected = ((model.num_layers,) if layer is not None else ()) + m.megatron_shape(dims)
        if key not in md:
            missing.append(key)
        elif tuple(md[key].global_shape) != expected:
            wrong.append(f"{key} {list(md[key].global_shape)} (config implies {list(expected)})")
    missing = sorted(set(missing))
    if missing:
        raise ConvertError(f"{where}: checkpoint lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                           f"that model.arch={model.arch!r} with this config needs (qkv_bias={model.qkv_bias}, "
                           f"tie_word_embeddings={model.tie_word_embeddings})")
    if wrong:
        raise ConvertError(f"{where}: shape mismatch: {'; '.join(sorted(set(wrong))[:3])}")


# ------------------------------------------------------------------------------------ Megatron side
def _conversion_model(cfg: Config):
    """The whole GPTModel (TP=PP=1) on the meta device: its parameter names and checkpoint keys, no memory.
    Built with the local spec and plain RoPE (neither changes a weight name or shape)."""
    from ..model.builder import build_model

    model_cfg = dataclasses.replace(cfg.model, attention_backend="local", rope_type="default", fp8=None)
    conv = dataclasses.replace(cfg, model=model_cfg, yarn=YarnConfig(), parallel=ParallelConfig())
    with torch.device("meta"):
        return build_model(conv, pre_process=True, post_process=True)


def _checkpoint_names(model) -> Dict[str, str]:
    """Table name (checkpoint key with the layer index, e.g. 'decoder.layers.3.mlp.linear_fc1.weight') -> the
    model's state-dict key, read from the model's own sharded_state_dict (which knows the local→TE renames)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    names = {}
    for sd_key, sharded in model.sharded_state_dict().items():
        if isinstance(sharded, (ShardedTensor, ShardedTensorFactory)):  # not the _extra_state objects
            layer = checkpoint_key(sd_key)[1]  # TP=PP=1: the local layer number is the global one
            names[layer_name(sharded.key, layer)] = sd_key
    return names


def _load_unit(iter_dir: str, names: Sequence[str], md: Dict[str, Any]) -> Dict[str, torch.Tensor]:
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


# ------------------------------------------------------------------------------------------ HF → Megatron
def convert_hf_to_megatron(hf_dir: str, out: str, tp: int = 1, pp: int = 1, dtype: Optional[str] = None,
                           progress: bool = True) -> Dict[str, Any]:
    """Convert an HF model folder (config.json + safetensors) into a Megatron distributed checkpoint directory.

    ``out`` becomes ``<out>/iter_0000000`` + ``<out>/latest`` (use ``out`` as ``checkpoint.init_from``) and
    ``<out>/hf_assets`` (source config.json + tokenizer files).
    ``dtype``: 'bf16' | 'fp32' | 'fp16' of the stored weights; None keeps config.json's dtype. ``tp``/``pp``: the
    layout the checkpoint is meant for (validated, recorded; any layout can load it). Returns a summary dict.
    """
    from ..checkpoint import save_checkpoint

    t0 = time.perf_counter()
    _check_dtype(dtype)
    if tp < 1 or pp < 1:
        raise ConvertError(f"--tp {tp} --pp {pp}: both must be >= 1")
    hf_dir = os.fspath(hf_dir)
    cfg_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise ConvertError(f"{hf_dir}: no config.json; point --hf at a Hugging Face model folder")
    with open(cfg_path) as f:
        hf_cfg = json.load(f)
    table = table_for_hf_model_type(hf_cfg.get("model_type"))
    model_cfg, yarn, notes = model_config_from_hf(hf_cfg)
    reader = SafetensorsReader(hf_dir)
    try:
        dtype = dtype or hf_dtype(hf_cfg) or reader.dtype("model.embed_tokens.weight") or "fp32"
        model_cfg.params_dtype = dtype
        hf_vocab = model_cfg.vocab_size
        if hf_vocab % tp:  # Megatron splits the vocabulary rows evenly over TP ranks
            model_cfg.vocab_size = -(-hf_vocab // tp) * tp
            notes.append(f"vocabulary padded {hf_vocab} -> {model_cfg.vocab_size} rows (divisible by tp={tp}); "
                         f"the export trims it back")
        cfg = Config(model=model_cfg, yarn=yarn, parallel=ParallelConfig(tp=tp, pp=pp))
        _validate_model_and_layout(cfg)
        dims = Dims.of(model_cfg, hf_vocab)
        notes += _check_hf_tensors(reader, table, model_cfg, dims)
        for n in notes:
            _log(n)  # normalisations the user should know of, even when quiet
        with _staged(out) as (final, tmp), single_process():
            from ..model.builder import DTYPES as TORCH_DTYPES

            torch_dtype = TORCH_DTYPES[dtype]
            model = _conversion_model(cfg)
            names = _checkpoint_names(model)
            wanted = {m.megatron for m in table.mappings(model_cfg)}
            if set(names) != wanted:
                raise ConvertError(f"the {table.arch!r} table and Megatron's checkpoint keys disagree: only in the "
                                   f"model {sorted(set(names) - wanted)[:3]}, only in the table "
                                   f"{sorted(wanted - set(names))[:3]}; fix megatron_ultralong/convert/mapping.py")
            state: Dict[str, torch.Tensor] = {}
            units = list(table.units(model_cfg))
            for _, unit in _progress(units, "hf -> megatron", progress):
                for m in unit:
                    fused = m.to_megatron([reader.get(n) for n in m.hf_names], dims)
                    state[names[m.megatron]] = fused.to(torch_dtype).contiguous()
            missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
            missing = [k for k in missing if not k.endswith("_extra_state")]
            if missing or unexpected or any(p.is_meta for p in model.parameters()):
                raise ConvertError(f"internal: weights not placed (missing {missing[:3]}, unexpected "
                                   f"{unexpected[:3]}); fix megatron_ultralong/convert/mapping.py")
            _log(f"writing the Megatron checkpoint ({sum(t.numel() for t in state.values()) / 1e6:.1f}M params, "
                 f"{dtype})", progress)
            extra = {"converted_from": {"hf_dir": os.path.abspath(hf_dir), "model_type": table.hf_model_type,
                                        "hf_vocab_size": hf_vocab, "dtype": dtype, "notes": notes}}
            iter_dir = save_checkpoint(tmp, 0, [model], cfg, extra=extra)
            del model, state
            copied = _copy_assets(hf_dir, os.path.join(tmp, ASSETS_DIR))
    finally:
        reader.close()
    return {"path": final, "iter_dir": os.path.join(final, os.path.basename(iter_dir)), "arch": table.arch,
            "dtype": dtype, "tp": tp, "pp": pp, "assets": copied, "notes": notes,
            "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------ Megatron → HF
def default_verify_seq_len(cfg: Config) -> int:
    """Twice the original window for a YaRN model (so positions beyond it are exercised), else 128 tokens."""
    if cfg.yarn.enabled:
        return min(cfg.yarn.target_length, 2 * cfg.yarn.original_max_position_embeddings)
    return min(cfg.model.max_position_embeddings, 128)


def _check_verify_seq_len(cfg: Config, seq_len: Optional[int]) -> None:
    longest = max_sequence_length(cfg)
    if seq_len is not None and not 1 <= seq_len <= longest:
        raise ConvertError(f"--verify-seq-len {seq_len}: must be in [1, {longest}] (the model's context length)")


def _read_checkpoint_meta(ckpt: str) -> Tuple[Dict[str, Any], Config]:
    try:
        meta = read_meta(ckpt)
    except CheckpointError as e:
        raise ConvertError(str(e)) from None
    return meta, config_from_dict(meta["config"])


def _tokenizer_fallback(cfg: Config, dst: str) -> List[str]:
    """Tokenizer files named by the recipe's data.tokenizer (a folder, a tokenizer .json or a sentencepiece .model),
    under the names transformers looks for (``tokenizer.json`` / ``tokenizer.model``)."""
    tok = cfg.data.tokenizer
    if not tok or not os.path.exists(tok):
        return []
    if os.path.isdir(tok):
        return _copy_assets(tok, dst, skip=("config.json",))
    name = {".json": "tokenizer.json", ".model": "tokenizer.model"}.get(os.path.splitext(tok)[1], os.path.basename(tok))
    shutil.copy2(tok, os.path.join(dst, name))
    return [name]


def convert_megatron_to_hf(ckpt: str, out: str, dtype: Optional[str] = None, hf_assets: Optional[str] = None,
                           max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, verify: bool = False,
                           verify_seq_len: Optional[int] = None, verify_tol: float = 1e-3,
                           verify_backend: str = "sdpa", progress: bool = True) -> Dict[str, Any]:
    """Convert a Megatron checkpoint (a ckpt dir following 'latest', or an iter dir; any TP/PP layout) into an HF
    model folder: sharded safetensors + index, config.json, tokenizer files.

    ``dtype``: of the written weights; None keeps the checkpoint's. ``hf_assets``: folder with the source
    config.json / tokenizer files (default: found next to the checkpoint or along its init_from chain).
    ``verify``: load the result with transformers and compare its logits with the Megatron model's on a random
    batch of ``verify_seq_len`` tokens; raise VerificationError above ``verify_tol`` (nothing is published then).
    Returns a summary dict (``max_abs_diff`` when verified).
    """
    t0 = time.perf_counter()
    _check_dtype(dtype)
    meta, cfg = _read_checkpoint_meta(ckpt)
    iter_dir = meta["path"]
    model_cfg = cfg.model
    if verify:
        _check_verify_seq_len(cfg, verify_seq_len)
    table = table_for_arch(model_cfg.arch)
    if model_cfg.qkv_bias != table.qkv_bias:
        raise ConvertError(f"{iter_dir}: model.arch={model_cfg.arch!r} with model.qkv_bias={model_cfg.qkv_bias} has "
                           f"no HF equivalent ({table.hf_architecture} {'has' if table.qkv_bias else 'has no'} Q/K/V "
                           f"biases)")
    assets = hf_assets or find_hf_assets(ckpt)
    if assets is not None and not os.path.isdir(assets):
        raise ConvertError(f"--hf-assets {assets}: not a directory")
    template = None
    if assets and os.path.isfile(os.path.join(assets, "config.json")):
        with open(os.path.join(assets, "config.json")) as f:
            template = json.load(f)
        table_for_hf_model_type(template.get("model_type"))  # an unknown source config is an error, not a guess
    hf_vocab = int(template.get("vocab_size") or model_cfg.vocab_size) if template else model_cfg.vocab_size
    if hf_vocab > model_cfg.vocab_size:
        raise ConvertError(f"the source config.json in {assets} has vocab_size={hf_vocab} but the checkpoint has only "
                           f"{model_cfg.vocab_size} rows; pass the matching source with --hf-assets")
    if hf_vocab < model_cfg.vocab_size:
        _log(f"vocabulary trimmed {model_cfg.vocab_size} -> {hf_vocab} rows (the source config.json's vocab_size; "
             f"the rest is TP padding)")
    dims = Dims.of(model_cfg, hf_vocab)
    max_bytes = parse_size(max_shard_size)
    with _staged(out) as (final, tmp), single_process():
        from megatron.core import dist_checkpointing

        md = dist_checkpointing.load_tensors_metadata(iter_dir)
        _check_checkpoint_tensors(md, table, model_cfg, dims, iter_dir)
        from ..model.builder import DTYPES as TORCH_DTYPES

        stored = md["embedding.word_embeddings.weight"].dtype
        dtype = dtype or next((k for k, v in TORCH_DTYPES.items() if v == stored), "fp32")
        torch_dtype = TORCH_DTYPES[dtype]
        hf_cfg = hf_config_from_model(model_cfg, cfg.yarn, dtype, template, hf_vocab)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_cfg, f, indent=2)
        if assets:
            copied = _copy_assets(assets, tmp, skip=("config.json",))
            _log(f"config and tokenizer files from {assets}", progress)
        else:
            copied = _tokenizer_fallback(cfg, tmp)
            _log("no hf_assets next to the checkpoint or along its init_from chain: config.json built from the "
                 "table defaults" + (f"; tokenizer from data.tokenizer={cfg.data.tokenizer}" if copied else
                                     "; NO tokenizer files copied (pass --hf-assets <source HF folder>)"))  # even quiet
        units = list(table.units(model_cfg))
        plan = [(n, s) for _, unit in units for m in unit for n, s in zip(m.hf_names, m.hf_shapes(dims))]
        writer = ShardedSafetensorsWriter(tmp, plan, torch_dtype, max_bytes)
        for _, unit in _progress(units, "megatron -> hf", progress):
            loaded = _load_unit(iter_dir, [m.megatron for m in unit], md)
            for m in unit:
                for name, t in zip(m.hf_names, m.to_hf(loaded[m.megatron], dims)):
                    writer.write(name, t.to(torch_dtype))
            del loaded
        writer.close()
        diff = None
        if verify:
            seq = verify_seq_len or default_verify_seq_len(cfg)
            diff = verify_hf_against_megatron(tmp, iter_dir, seq_len=seq, attention_backend=verify_backend,
                                              progress=progress, weights_dtype=dtype)
            _log(f"verify: max |logits_hf - logits_megatron| = {diff:.3e} over {seq} tokens "
                 f"(tolerance {verify_tol:g})", progress)
            if not diff <= verify_tol:
                raise VerificationError(f"verification failed: max abs logit difference {diff:.3e} > tolerance "
                                        f"{verify_tol:g} at {seq} tokens; nothing was written to {out}")
    return {"path": final, "arch": table.arch, "dtype": dtype, "shards": len(writer.files),
            "bytes": writer.total_bytes, "assets": copied, "assets_from": assets, "max_abs_diff": diff,
            "config": hf_cfg, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------- verify
def verify_hf_against_megatron(hf_dir: str, ckpt: str, seq_len: Optional[int] = None, batch_size: int = 1,
                               seed: int = 0, attention_backend: str = "sdpa", progress: bool = True,
                               weights_dtype: Optional[str] = None) -> float:
    """Max |logits| difference between ``transformers`` on ``hf_dir`` and the Megatron model of ``ckpt`` (built
    from the checkpoint's config, fp32, one process) on a random batch [batch_size, seq_len]. Both models run in
    fp32; the Megatron one is freed before the HF one is loaded. ``weights_dtype``: the dtype the export was
    written in — the Megatron weights are rounded through it first, so what is checked is the conversion, not the
    precision the user chose to drop (an fp32 checkpoint exported as bf16)."""
    import transformers

    from ..checkpoint import load_checkpoint
    from ..model.builder import build_model
    from ..model.specs import make_attention_mask, resolve_attention_backend

    _, cfg = _read_checkpoint_meta(ckpt)
    seq_len = seq_len or default_verify_seq_len(cfg)
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf_vocab = int(json.load(f)["vocab_size"])
    tokens = torch.randint(0, hf_vocab, (batch_size, seq_len), generator=torch.Generator().manual_seed(seed))
    verify_cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, params_dtype="fp32", fp8=None, attention_backend=attention_backend),
        parallel=ParallelConfig(), train=dataclasses.replace(cfg.train, recompute="none"))
    with single_process(), torch.no_grad():
        model = build_model(verify_cfg, pre_process=True, post_process=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's DCP deprecation notes
            load_checkpoint(ckpt, [model])
        if weights_dtype is not None:
            from ..model.builder import DTYPES as TORCH_DTYPES

            for param in model.parameters():
                param.copy_(param.to(TORCH_DTYPES[weights_dtype]).float())
        model.eval()
        backend = resolve_attention_backend(verify_cfg.model)
        positions = torch.arange(seq_len).expand(batch_size, seq_len)
        device = next(model.parameters()).device
        logits_megatron = model(input_ids=tokens.to(device), position_ids=positions.to(device),
                                attention_mask=make_attention_mask(backend, seq_len, device=device))
        logits_megatron = logits_megatron[..., :hf_vocab].float().cpu()
        del model
    _log(f"verify: Megatron forward done ({batch_size}×{seq_len} tokens); now transformers on the HF folder",
         progress)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    hf_model.eval()
    with torch.no_grad():
        logits_hf = hf_model(input_ids=tokens).logits.float()
    return (logits_hf - logits_megatron).abs().max().item()
