"""The non-weight files of HF model folders (config.json, tokenizer, generation config, license): which files they
are, where a converted checkpoint keeps them (``<ckpt_dir>/hf_assets``), and copying them.

    copied = copy_assets("hf/Llama-3.1-8B-Instruct", "ckpt/llama31-8b/hf_assets")
    folder = find_hf_assets("runs/cpt_1m/checkpoints")   # follows checkpoint.init_from back to the base model
"""
from __future__ import annotations

import os
import shutil
from typing import Iterable, List, Optional

from ..config import Config
from .megatron_io import checkpoint_lineage

ASSETS_DIR = "hf_assets"
"""Folder next to the iter_* folders of a converted checkpoint holding the source config.json and tokenizer files."""
# files of an HF model folder that are weights (never copied as assets); pickles are never read
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".index.json")


def asset_files(folder: str) -> List[str]:
    """Top-level files of an HF model folder that are not weights: config, tokenizer, generation config, license."""
    return sorted(n for n in os.listdir(folder)
                  if not n.startswith(".") and os.path.isfile(os.path.join(folder, n))
                  and not n.endswith(_WEIGHT_SUFFIXES))


def copy_assets(src: str, dst: str, skip: Iterable[str] = ()) -> List[str]:
    os.makedirs(dst, exist_ok=True)
    copied = [n for n in asset_files(src) if n not in set(skip)]
    for n in copied:
        shutil.copy2(os.path.join(src, n), os.path.join(dst, n))
    return copied


def find_hf_assets(ckpt: str) -> Optional[str]:
    """The hf_assets folder of a checkpoint: next to its iter_* folders, else next to the checkpoint its config's
    ``checkpoint.init_from`` names, and so on back to the converted base model. None when the chain has none."""
    for meta in checkpoint_lineage(ckpt):
        candidate = os.path.join(os.path.dirname(os.path.abspath(meta["path"])), ASSETS_DIR)
        if os.path.isdir(candidate):
            return candidate
    return None


def tokenizer_fallback(cfg: Config, dst: str) -> List[str]:
    """Tokenizer files named by the recipe's data.tokenizer (a folder, a tokenizer .json or a sentencepiece .model),
    under the names transformers looks for (``tokenizer.json`` / ``tokenizer.model``)."""
    tok = cfg.data.tokenizer
    if not tok or not os.path.exists(tok):
        return []
    if os.path.isdir(tok):
        return copy_assets(tok, dst, skip=("config.json",))
    name = {".json": "tokenizer.json", ".model": "tokenizer.model"}.get(os.path.splitext(tok)[1], os.path.basename(tok))
    shutil.copy2(tok, os.path.join(dst, name))
    return [name]
