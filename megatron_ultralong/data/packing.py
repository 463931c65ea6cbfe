"""Packing token sequences into fixed training windows, with the document boundaries kept for masking.

    packed = pack_documents(docs, seq_length=1 << 20, sep_id=sep.ids, seed=1234)      # CPT: documents are cut
    packed.tokens        # [n, seq_length + 1] int64; inputs = [:, :-1], labels = [:, 1:]
    packed.doc_ids       # [n, seq_length + 1] int32, segment index within the window (0, 1, ...)
    packed.cu_seqlens[i] # segment boundaries of window i over its seq_length + 1 tokens (THD packed format)
    packed, dropped = pack_whole_samples(samples, seq_length, pad_id, seed=0)           # SFT: samples stay whole
    sample = window_to_sample(...)                                                     # the trainer's tensors

The CPT and SFT layouts, the shared token between windows and what masking changes: docs/data.md (Packing).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import DataError

SepIds = Union[int, Sequence[int]]
"""A separator: one token id or a token sequence (data.separator's encoding)."""


def separator_array(sep: SepIds) -> np.ndarray:
    """The separator as a non-empty int64 array (DataError if empty)."""
    arr = np.atleast_1d(np.asarray(sep, dtype=np.int64))
    if arr.ndim != 1 or len(arr) == 0:
        raise DataError(f"separator {sep!r}: need one token id or a non-empty sequence of ids")
    return arr


class DocumentStream:
    """The lazy concatenation ``d0 SEP d1 SEP ...`` of documents known by their lengths (nothing is read); SEP is
    ``sep_length`` tokens."""

    def __init__(self, lengths: Sequence[int], sep_length: int = 1):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.sep_length = int(sep_length)
        self.ends = np.cumsum(self.lengths + self.sep_length)  # exclusive end of each document's block (+ SEP)
        self.total = int(self.ends[-1]) if len(self.ends) else 0
        """Stream length in tokens, separators included."""

    def segments(self, start: int, stop: int) -> List[Tuple[int, int, int]]:
        """Pieces of documents covering stream positions [start, stop): (document, first, last) with first/last
        offsets inside the document's block (offsets >= length are its separator), last exclusive."""
        out = []
        d = int(np.searchsorted(self.ends, start, side="right"))
        while start < stop and d < len(self.ends):
            block_start = int(self.ends[d] - self.lengths[d] - self.sep_length)
            end = min(stop, int(self.ends[d]))
            out.append((d, start - block_start, end - block_start))
            start, d = end, d + 1
        return out


def fill_from_stream(stream: DocumentStream, start: int, count: int, read: Callable[[int, int, int], np.ndarray],
                     sep_id: SepIds, tokens: np.ndarray, seg: np.ndarray, at: int = 0, first_seg: int = 0
                     ) -> Tuple[int, int]:
    """Copy stream positions [start, start + count) into ``tokens[at:]`` with segment ids in ``seg[at:]``.
    ``read(doc, offset, n)`` returns n tokens of a document; ``sep_id`` is the separator (``stream.sep_length``
    ids). A new segment starts at each document start (and at ``at`` itself). Returns (tokens written, the next
    free segment id)."""
    sep = separator_array(sep_id)
    if len(sep) != stream.sep_length:
        raise DataError(f"separator of {len(sep)} tokens on a stream built for {stream.sep_length}")
    pos, next_seg = at, first_seg
    for d, first, last in stream.segments(start, start + count):
        length = int(stream.lengths[d])
        n_doc = max(0, min(last, length) - first)
        if n_doc:
            tokens[pos: pos + n_doc] = read(d, first, n_doc)
        if last > length:  # (part of) the block's separator is inside the range
            a = max(first, length) - length
            tokens[pos + n_doc: pos + last - first] = sep[a: last - length]
        n = last - first
        seg[pos: pos + n] = next_seg
        pos, next_seg = pos + n, next_seg + 1
    return pos - at, next_seg


@dataclass
class PackedWindows:
    """Windows of exactly ``seq_length + 1`` tokens with their document structure."""

    tokens: np.ndarray
    """[n, seq_length + 1] int64 token ids (inputs = [:, :-1], labels = [:, 1:])."""
    doc_ids: np.ndarray
    """[n, seq_length + 1] int32 segment index of each token within its window (padding: its own last segment)."""
    target: np.ndarray
    """[n, seq_length + 1] int8: 1 where the token is a training target (real tokens; SFT: assistant tokens)."""
    window_docs: List[np.ndarray] = field(default_factory=list)
    """Per window, the input index of the document (sample) behind each segment; -1 for padding."""
    order: Optional[np.ndarray] = None
    """The order in which the inputs were laid out (a permutation when a seed was given)."""
    num_pad: int = 0
    """Padding tokens (the tail of the last CPT window; the unfilled rest of SFT windows)."""

    @property
    def cu_seqlens(self) -> List[np.ndarray]:
        """Per window, the int32 segment boundaries [0, ..., seq_length + 1] (THD ``cu_seqlens``)."""
        return [cu_seqlens_from_doc_ids(row) for row in self.doc_ids]


def cu_seqlens_from_doc_ids(doc_ids: np.ndarray) -> np.ndarray:
    """Boundaries of runs of equal ids: [0, start of run 1, ..., len] (int32)."""
    doc_ids = np.asarray(doc_ids)
    starts = np.flatnonzero(np.diff(doc_ids)) + 1
    return np.concatenate([[0], starts, [len(doc_ids)]]).astype(np.int32)


def pack_documents(docs: Sequence[Sequence[int]], seq_length: int, sep_id: SepIds, *, seed: Optional[int] = None,
                   pad_id: Optional[int] = None) -> PackedWindows:
    """Pack documents (token lists) into windows of exactly ``seq_length + 1`` tokens, each document closed by the
    separator ``sep_id`` (one id or a sequence of ids); documents are cut at window edges, none is lost or
    repeated. ``seed`` shuffles the document order (deterministically); None keeps the given order. ``pad_id``
    (default: the separator's first id) fills the tail of the last window, marked as non-target."""
    if seq_length < 1:
        raise DataError(f"seq_length={seq_length}: must be >= 1")
    sep = separator_array(sep_id)
    order = np.arange(len(docs)) if seed is None else np.random.default_rng(seed).permutation(len(docs))
    arrays = [np.asarray(docs[i], dtype=np.int64) for i in order]
    stream = DocumentStream([len(a) for a in arrays], len(sep))
    n_windows = -(-stream.total // seq_length)  # ceil: every stream token is an input of some window
    width = seq_length + 1
    tokens = np.full((n_windows, width), sep[0] if pad_id is None else pad_id, np.int64)
    doc_ids = np.zeros((n_windows, width), np.int32)
    target = np.zeros((n_windows, width), np.int8)
    window_docs, num_pad = [], 0
    for w in range(n_windows):
        start = w * seq_length
        n = min(width, stream.total - start)
        written, next_seg = fill_from_stream(stream, start, n, lambda d, o, k: arrays[d][o: o + k], sep,
                                             tokens[w], doc_ids[w])
        target[w, :written] = 1
        docs_here = [order[d] for d, _, _ in stream.segments(start, start + n)]
        if written < width:
            doc_ids[w, written:] = next_seg
            docs_here.append(-1)
            num_pad += width - written
        window_docs.append(np.asarray(docs_here, dtype=np.int64))
    return PackedWindows(tokens, doc_ids, target, window_docs, order, num_pad)


def plan_whole_samples(lengths: Sequence[int], width: int, *, seed: Optional[int] = None, open_windows: int = 16
                       ) -> Tuple[List[List[int]], List[int]]:
    """Assign samples (by length) whole to windows of ``width`` tokens: visited in seeded order, placed first-fit
    into up to ``open_windows`` partly filled windows (the oldest is closed when one more is needed) —
    deterministic, and denser than one window at a time. Returns (sample indices per window, indices of samples
    longer than a window, which cannot be placed)."""
    order = np.arange(len(lengths)) if seed is None else np.random.default_rng(seed).permutation(len(lengths))
    bins: List[List[int]] = []
    fill: List[int] = []
    open_ids: List[int] = []
    dropped = []
    for i in order:
        n = int(lengths[i])
        if n > width:
            dropped.append(int(i))
            continue
        slot = next((b for b in open_ids if fill[b] + n <= width), None)
        if slot is None:
            if len(open_ids) >= open_windows:
                open_ids.pop(0)
            bins.append([])
            fill.append(0)
            slot = len(bins) - 1
            open_ids.append(slot)
        bins[slot].append(int(i))
        fill[slot] += n
        if fill[slot] == width:
            open_ids.remove(slot)
    return bins, sorted(dropped)


def fill_whole_samples(members: Sequence[int], get: Callable[[int], Tuple[np.ndarray, np.ndarray]], width: int,
                       pad_id: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One window from its samples: (tokens, segment ids, target flags), each [width]; padding after the last
    sample is a segment of its own and never a target."""
    tokens, seg, target = np.full(width, pad_id, np.int64), np.zeros(width, np.int32), np.zeros(width, np.int8)
    pos = 0
    for k, i in enumerate(members):
        toks, flags = get(i)
        tokens[pos: pos + len(toks)] = toks
        target[pos: pos + len(toks)] = flags
        seg[pos: pos + len(toks)] = k
        pos += len(toks)
    seg[pos:] = len(members)
    return tokens, seg, target


def pack_whole_samples(samples: Sequence[Tuple[np.ndarray, np.ndarray]], seq_length: int, pad_id: int, *,
                       seed: Optional[int] = None, open_windows: int = 16) -> Tuple[PackedWindows, List[int]]:
    """Pack (tokens, target flags) samples whole into windows of ``seq_length + 1`` tokens (SFT), see
    ``plan_whole_samples``. Returns (windows, indices of samples too long for a window)."""
    width = seq_length + 1
    bins, dropped = plan_whole_samples([len(t) for t, _ in samples], width, seed=seed, open_windows=open_windows)
    rows = [fill_whole_samples(members, samples.__getitem__, width, pad_id) for members in bins]
    filled = [sum(len(samples[i][0]) for i in members) for members in bins]
    window_docs = [np.asarray(m + ([-1] if f < width else []), dtype=np.int64) for m, f in zip(bins, filled)]

    def stack(k: int, dt) -> np.ndarray:
        return np.stack([r[k] for r in rows]) if rows else np.zeros((0, width), dt)

    order = None if seed is None else np.random.default_rng(seed).permutation(len(samples))
    return PackedWindows(stack(0, np.int64), stack(1, np.int32), stack(2, np.int8), window_docs, order,
                         int(sum(width - f for f in filled))), dropped


def window_to_sample(tokens: np.ndarray, doc_ids: np.ndarray, target: np.ndarray, masking: bool
                     ) -> Dict[str, np.ndarray]:
    """One window of ``S + 1`` tokens → the trainer's per-sample arrays of length S: tokens, labels (next token),
    loss_mask (1 = the label counts), position_ids, doc_ids (see the module docstring for the masking rules)."""
    inputs, labels = tokens[:-1], tokens[1:]
    seg_in, seg_lab = doc_ids[:-1], doc_ids[1:]
    loss_mask = target[1:].astype(np.float32)
    s = len(inputs)
    if masking:
        loss_mask *= seg_in == seg_lab  # the label is in another segment: attention cannot see it
        starts = np.concatenate([[True], seg_in[1:] != seg_in[:-1]])
        idx = np.arange(s)
        position_ids = idx - np.maximum.accumulate(np.where(starts, idx, 0))
    else:
        position_ids = np.arange(s)
    return {"tokens": inputs.astype(np.int64), "labels": labels.astype(np.int64), "loss_mask": loss_mask,
            "position_ids": position_ids.astype(np.int64), "doc_ids": seg_in.astype(np.int32)}
