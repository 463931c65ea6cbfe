"""Data pipeline: raw text → Megatron indexed datasets → CPT mixture → packed windows → trainer batches.

    tokenizer.py   load_tokenizer(path): sentencepiece .model / HF tokenizer.json; resolve_separator ('<s>' or an id)
    preprocess.py  jsonl / parquet → per-source .bin/.idx (Megatron-Core indexed dataset), multi-process, resumable
    indexed.py     reading them: summary.json, source prefixes, checked .bin/.idx pairs, document lengths
    mixture.py     per-source length-based sampling (down-sample short, up-sample long docs), budget, report
    packing.py     pack_documents(): documents + (multi-token) separators → windows of exactly seq_length + 1 tokens
    sft.py         chat template, assistant-only loss mask, SFT packing, the SFT dataset
    decontam.py    n-gram decontamination of chat samples against eval sets
    loader.py      build_train_iterator(): deterministic (seed, sample index) batches per data-parallel rank
    checks.py      check_data(cfg): paths, tokenizer, separator, SFT schema, dataset vs tokenizer, before the model
    synthetic.py   offline multi-source corpus, chat samples and the learnable copy task

Errors are ``DataError`` (one line: what, where, how to fix). No torch import here: CLIs check input first.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from ..atomic import atomic_path  # noqa: F401 (re-exported: the data modules write through it)
from ..config import ConfigError


class DataError(ConfigError):
    """Bad data input (file, record, tokenizer, dataset): one line with what, where (file:line) and the fix.

    A ConfigError (hence a ValueError), so the trainer's CLI reports it as bad input (exit 2, no traceback)."""


def remove_quietly(path: str | os.PathLike) -> None:
    """Delete a file or a folder tree if it exists (cleanup after a failure)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def make_output_dir(path: str | os.PathLike, what: str) -> Path:
    """Create the output folder ``path`` (and its parents): DataError naming ``what`` (the option) when it
    cannot be, e.g. a path component is a file."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((str(q) for q in [out, *out.parents] if q.exists() and not q.is_dir()), None)
        why = f"{blocker} is a file, not a directory" if blocker else (e.strerror or type(e).__name__)
        raise DataError(f"{what} {path}: cannot create this directory ({why}); choose another path") from None
    return out
