"""The two conversions, driven by the mapping tables: HF safetensors → Megatron checkpoint and back.

    convert_hf_to_megatron("hf/Llama-3.1-8B-Instruct", "ckpt/llama31-8b", tp=8, dtype="bf16")
    convert_megatron_to_hf("runs/cpt_1m/checkpoints", "hf/llama31-8b-1m", verify=True)

Both run in one process and publish ``out`` atomically (nothing is left under it on failure). How they work,
memory bounds and where config/tokenizer files come from: docs/convert.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..atomic import atomic_dir
from ..config import DTYPE_NAMES, Config, DataConfig, ParallelConfig, validate
from .assets import ASSETS_DIR, copy_assets, find_hf_assets, tokenizer_fallback
from .errors import ConvertError, VerificationError, log
from .hf_config import hf_config_from_model, hf_dtype, model_config_from_hf
from .mapping import ArchTable, Dims, checkpoint_key, table_for_arch, table_for_hf_model_type
from .megatron_io import checkpoint_names, conversion_model, load_unit, read_checkpoint_config, recorded_hf_vocab_size
from .process_group import single_process
from .safetensors_io import DEFAULT_MAX_SHARD_SIZE, SafetensorsReader, ShardedSafetensorsWriter, parse_size
from .verify import check_verify_seq_len, default_verify_seq_len, verify_hf_against_megatron


def _progress(items: Sequence, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="part", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


# -------------------------------------------------------------------------------- output directories
def stale_temp_dirs(final: str) -> List[str]:
    """Hidden '.<name>.XXXXXXXX.tmp' folders next to ``final``: what atomic_dir leaves when a conversion to it is
    killed (SIGKILL, out of memory). Only one conversion to an output runs at a time, so none of them is live."""
    parent, name = os.path.split(final)
    pattern = re.compile(rf"\.{re.escape(name)}\.[A-Za-z0-9_]{{8}}\.tmp")
    return sorted(os.path.join(parent, n) for n in os.listdir(parent) if pattern.fullmatch(n)
                  and os.path.isdir(os.path.join(parent, n))) if os.path.isdir(parent) else []


@contextlib.contextmanager
def _staged(out: str):
    """Yield (final path, hidden temp dir next to it); tmp is published as final when the block succeeds, deleted
    when it fails. ``out`` must not exist or be an empty directory."""
    final = os.path.abspath(os.fspath(out))
    if os.path.exists(final) and (not os.path.isdir(final) or os.listdir(final)):
        raise ConvertError(f"output {out} already exists and is not empty; remove it or choose another directory")
    for stale in stale_temp_dirs(final):
        log(f"removing {stale}: the temporary folder of an earlier conversion to {out} that did not finish")
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(final) as tmp:
        yield final, tmp


# -------------------------------------------------------------------------------------- validation
def _check_dtype(dtype: Optional[str]) -> None:
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise ConvertError(f"dtype {dtype!r}: choose one of {', '.join(DTYPE_NAMES)}")


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
            log(n)  # normalisations the user should know of, even when quiet
        with _staged(out) as (final, tmp), single_process():
            from ..model.builder import TORCH_DTYPES

            torch_dtype = TORCH_DTYPES[dtype]
            model = conversion_model(cfg)
            names = checkpoint_names(model)
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
            log(f"writing the Megatron checkpoint ({sum(t.numel() for t in state.values()) / 1e6:.1f}M params, "
                 f"{dtype})", progress)
            extra = {"converted_from": {"hf_dir": os.path.abspath(hf_dir), "model_type": table.hf_model_type,
                                        "hf_vocab_size": hf_vocab, "dtype": dtype, "notes": notes}}
            iter_dir = save_checkpoint(tmp, 0, [model], cfg, extra=extra)
            del model, state
            copied = copy_assets(hf_dir, os.path.join(tmp, ASSETS_DIR))
    finally:
        reader.close()
    return {"path": final, "iter_dir": os.path.join(final, os.path.basename(iter_dir)), "arch": table.arch,
            "dtype": dtype, "tp": tp, "pp": pp, "assets": copied, "notes": notes,
            "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------ Megatron → HF
def _hf_vocab_size(ckpt: str, rows: int, template: Optional[Dict[str, Any]], assets: Optional[str]):
    """(vocabulary size to export, where it comes from): the hf_vocab_size recorded at import (along the
    init_from chain), else the source config.json's, else the checkpoint's ``rows``."""
    recorded = recorded_hf_vocab_size(ckpt)
    source = int(template["vocab_size"]) if template and template.get("vocab_size") else None
    if recorded and source and recorded != source:
        raise ConvertError(f"the source config.json in {assets} has vocab_size={source} but the checkpoint was "
                           f"imported from a model with {recorded}; pass the matching source with --hf-assets")
    vocab, where = ((recorded, "the hf_vocab_size recorded at import") if recorded else
                    (source, "the source config.json's vocab_size") if source else (rows, "the checkpoint's rows"))
    if vocab > rows:
        raise ConvertError(f"{where} is {vocab} but the checkpoint has only {rows} embedding rows; pass the "
                           f"matching source with --hf-assets")
    return vocab, where


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
    meta, cfg = read_checkpoint_config(ckpt)
    iter_dir = meta["path"]
    model_cfg = cfg.model
    if verify:
        check_verify_seq_len(cfg, verify_seq_len)
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
    hf_vocab, vocab_source = _hf_vocab_size(ckpt, model_cfg.vocab_size, template, assets)
    if hf_vocab < model_cfg.vocab_size:
        log(f"vocabulary trimmed {model_cfg.vocab_size} -> {hf_vocab} rows ({vocab_source}; the rest is TP padding)")
    dims = Dims.of(model_cfg, hf_vocab)
    max_bytes = parse_size(max_shard_size)
    with _staged(out) as (final, tmp), single_process():
        from megatron.core import dist_checkpointing

        md = dist_checkpointing.load_tensors_metadata(iter_dir)
        _check_checkpoint_tensors(md, table, model_cfg, dims, iter_dir)
        from ..model.builder import TORCH_DTYPES

        stored = md["embedding.word_embeddings.weight"].dtype
        dtype = dtype or next((k for k, v in TORCH_DTYPES.items() if v == stored), "fp32")
        torch_dtype = TORCH_DTYPES[dtype]
        hf_cfg = hf_config_from_model(model_cfg, cfg.yarn, dtype, template, hf_vocab)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_cfg, f, indent=2)
        if assets:
            copied = copy_assets(assets, tmp, skip=("config.json",))
            log(f"config and tokenizer files from {assets}", progress)
        else:
            copied = tokenizer_fallback(cfg, tmp)
            log("no hf_assets next to the checkpoint or along its init_from chain: config.json built from the "
                 "table defaults" + (f"; tokenizer from data.tokenizer={cfg.data.tokenizer}" if copied else
                                     "; NO tokenizer files copied (pass --hf-assets <source HF folder>)"))  # even quiet
        units = list(table.units(model_cfg))
        plan = [(n, s) for _, unit in units for m in unit for n, s in zip(m.hf_names, m.hf_shapes(dims))]
        writer = ShardedSafetensorsWriter(tmp, plan, torch_dtype, max_bytes)
        for _, unit in _progress(units, "megatron -> hf", progress):
            loaded = load_unit(iter_dir, [m.megatron for m in unit], md)
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
            log(f"verify: max |logits_hf - logits_megatron| = {diff:.3e} over {seq} tokens "
                 f"(tolerance {verify_tol:g})", progress)
            if not diff <= verify_tol:
                raise VerificationError(f"verification failed: max abs logit difference {diff:.3e} > tolerance "
                                        f"{verify_tol:g} at {seq} tokens; nothing was written to {out}")
    return {"path": final, "arch": table.arch, "dtype": dtype, "shards": len(writer.files),
            "bytes": writer.total_bytes, "assets": copied, "assets_from": assets, "max_abs_diff": diff,
            "config": hf_cfg, "seconds": time.perf_counter() - t0}
