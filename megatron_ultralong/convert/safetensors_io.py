"""Safetensors reading (an HF model folder, lazily) and writing (sharded, streamed, with an index).

    reader = SafetensorsReader("hf/Llama-3.1-8B-Instruct"); w = reader.get("model.embed_tokens.weight")
    writer = ShardedSafetensorsWriter(out, [(name, shape), ...], torch.bfloat16, parse_size("5GB"))
    writer.write(name, tensor); ...; writer.close()   # tensors in plan order, then the index
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import struct
from typing import Any, Dict, List, Optional, Tuple

import torch

from .errors import ConvertError

INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"
_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
_ST_TO_OURS = {"F32": "fp32", "BF16": "bf16", "F16": "fp16"}


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
