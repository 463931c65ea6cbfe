"""Data pipeline: raw text → Megatron indexed datasets → CPT mixture → packed windows → trainer batches.

    tokenizer.py   load_tokenizer(path): sentencepiece .model / HF tokenizer.json, with a dedicated separator id
    preprocess.py  jsonl / parquet → per-source .bin/.idx (Megatron-Core indexed dataset), multi-process, resumable
    mixture.py     per-source length-based sampling (down-sample short, up-sample long docs), budget, report
    packing.py     pack_documents(): documents + separators → windows of exactly seq_length + 1 tokens
    sft.py         chat template, assistant-only loss mask, SFT packing, n-gram decontamination
    loader.py      build_train_iterator(): deterministic (seed, sample index) batches per data-parallel rank
    synthetic.py   offline multi-source corpus, chat samples and the learnable copy task

Everything here raises ``DataError`` on bad input: one line saying what, where (file:line) and how to fix it.
This module stays free of torch so CLIs can reject bad input before the framework imports.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..config import ConfigError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # mkstemp creates 0600 files; outputs get the usual permissions


class DataError(ConfigError):
    """Bad data input (file, record, tokenizer, dataset): one line with what, where (file:line) and the fix.

    A ConfigError (hence a ValueError), so the trainer's CLI reports it as bad input (exit 2, no traceback)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` (os.replace), on error it is
    removed — readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_quietly(path: str | os.PathLike) -> None:
    """Delete a file or a folder tree if it exists (cleanup after a failure)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
