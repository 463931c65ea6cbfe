"""Reading the indexed datasets tools/preprocess_data.py writes: the output's summary, per-source prefixes, checked
``.bin/.idx`` pairs and document lengths.

    summary = read_summary("data/idx")                       # summary.json of a finished output
    prefixes = source_prefixes("data/idx")                   # {source: absolute dataset prefix}
    ds = open_indexed_dataset(prefixes["web"])               # Megatron IndexedDataset, pair checked first
    lengths = read_document_lengths(prefixes["web"])         # int64 tokens per document
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict

import numpy as np

from . import DataError

FORMAT = "megatron-ultralong-indexed"
"""The ``format`` of a text dataset's summary.json (and part of its preprocessing fingerprint)."""


def read_summary(output_dir: str | os.PathLike) -> dict:
    """The summary.json of a finished ``preprocess_text`` output (DataError if missing or unfinished)."""
    path = Path(output_dir) / "summary.json"
    if not path.is_file():
        raise DataError(f"{output_dir}: no summary.json (not a finished preprocess_data.py output); "
                        f"run or finish preprocessing first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: corrupt summary ({e.msg} at line {e.lineno}); re-run preprocessing") from None


def source_prefixes(output_dir: str | os.PathLike) -> Dict[str, str]:
    """{source: absolute dataset prefix} of a finished preprocessing output."""
    summary = read_summary(output_dir)
    return {src: str(Path(output_dir).resolve() / v["prefix"]) for src, v in summary["sources"].items()}


def open_indexed_dataset(prefix: str | os.PathLike):
    """Open ``<prefix>.bin/.idx`` with Megatron's ``IndexedDataset`` after checking that the pair is whole and
    consistent (Megatron itself only asserts on the header): DataError naming the file otherwise."""
    import struct

    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset

    prefix = str(prefix)
    idx, bin_ = prefix + ".idx", prefix + ".bin"
    for f in (idx, bin_):
        if not os.path.isfile(f):
            raise DataError(f"{f} not found; data paths are dataset prefixes without .bin/.idx, written by "
                            f"tools/preprocess_data.py")
    fix = "re-run tools/preprocess_data.py for this source"
    size = os.path.getsize(idx)
    with open(idx, "rb") as f:
        head = f.read(34)
    if len(head) < 34 or head[:9] != b"MMIDIDX\x00\x00" or struct.unpack("<Q", head[9:17])[0] != 1:
        raise DataError(f"{idx}: corrupt index (not a Megatron MMIDIDX v1 header); {fix}")
    code, n_seq, n_doc = head[17], *struct.unpack("<QQ", head[18:34])
    try:
        dtype = np.dtype(DType.dtype_from_code(code))
    except (ValueError, KeyError):
        raise DataError(f"{idx}: corrupt index (unknown dtype code {code}); {fix}") from None
    expected = 34 + n_seq * (4 + 8) + n_doc * 8
    if size not in (expected, expected + n_seq):  # + one mode byte per sequence for multimodal data
        raise DataError(f"{idx}: corrupt or truncated index ({size} bytes, header implies {expected}); {fix}")
    lengths = np.memmap(idx, dtype=np.int32, mode="r", offset=34, shape=(n_seq,)) if n_seq else np.zeros(0)
    docs = np.memmap(idx, dtype=np.int64, mode="r", offset=34 + n_seq * 12, shape=(n_doc,)) if n_doc else []
    if n_doc == 0 or docs[0] != 0 or docs[-1] != n_seq or (n_seq and lengths.min() < 0):
        raise DataError(f"{idx}: corrupt index (document boundaries do not match {n_seq} sequences); {fix}")
    if os.path.getsize(bin_) != int(lengths.sum(dtype=np.int64)) * dtype.itemsize:
        raise DataError(f"{bin_}: size {os.path.getsize(bin_)} bytes does not match its index "
                        f"({int(lengths.sum(dtype=np.int64))} tokens × {dtype.itemsize} bytes); {fix}")
    del lengths, docs
    return IndexedDataset(prefix, mmap=True)


def read_document_lengths(prefix: str | os.PathLike) -> np.ndarray:
    """Tokens per sequence (= per document for our text datasets) of an indexed dataset, as an int64 copy: the
    dataset's own arrays are views of an mmap that closes when the dataset object is collected."""
    ds = open_indexed_dataset(prefix)
    lengths = np.array(ds.sequence_lengths, dtype=np.int64)
    del ds
    return lengths
