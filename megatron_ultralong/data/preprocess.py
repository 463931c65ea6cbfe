"""Raw text → Megatron-Core indexed datasets, one per source (domain); multi-process and resumable.

    python tools/preprocess_data.py text --input data/slimpajama/*.jsonl --tokenizer llama3/tokenizer.json \\
        --output-dir data/idx --source-key meta.redpajama_set_name --workers 16
    summary = preprocess_text(inputs, tokenizer, "data/idx", workers=16)   # the same from Python

Reading the result: data/indexed.py. Inputs, outputs, sharding, resume and errors: docs/data.md (Preprocessing).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import multiprocessing
import os
import queue
import re
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..atomic import publish_dir
from . import DataError, atomic_path, make_output_dir, remove_quietly
from .indexed import FORMAT
from .tokenizer import load_tokenizer, resolve_tokenizer_file

log = logging.getLogger(__name__)

SHARD_BYTES = 64 << 20
"""Default shard size: big enough to amortise worker start-up, small enough to resume cheaply and balance load."""
BATCH_TEXTS = 256
"""Texts per tokenizer call (the backends' batch APIs are faster than one call per text)."""
HISTOGRAM_EDGES = [0] + [1 << k for k in range(8, 23)]
"""Lower bounds of the document-length histogram buckets in tokens: [0, 256), [256, 512), ..., [4M, inf)."""
_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet")


# ---------------------------------------------------------------------------------------------- inputs
@dataclass
class Shard:
    """A unit of work: part of one input file."""

    index: int
    """Position in the plan (the merge order)."""
    file: str
    """Absolute input path."""
    kind: str
    """'jsonl', 'jsonl.gz' or 'parquet'."""
    start: int
    """jsonl: first byte (a line starting at or after it is ours); parquet: first row group; gz: 0."""
    stop: int
    """jsonl: end byte (lines starting before it are ours); parquet: end row group; gz: -1."""
    nbytes: int
    """Approximate input bytes (progress bar)."""
    default_source: str
    """Source of records without a source field: the file's stem."""

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}"


def _kind(path: str) -> str:
    for suffix in _SUFFIXES:
        if path.endswith(suffix):
            return {"jsonl.gz": "jsonl.gz", "json.gz": "jsonl.gz", "jsonl": "jsonl", "json": "jsonl",
                    "parquet": "parquet"}[suffix.lstrip(".")]
    raise DataError(f"{path}: unsupported input type; use .jsonl, .jsonl.gz or .parquet")


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """Input files (absolute, in the given order; a directory contributes its supported files, sorted)."""
    files: List[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f.resolve()) for f in p.iterdir() if f.is_file() and f.name.endswith(_SUFFIXES))
            if not found:
                raise DataError(f"input directory {item} holds no .jsonl/.jsonl.gz/.parquet files")
            files += found
        elif p.is_file():
            _kind(str(p))
            files.append(str(p.resolve()))
        else:
            raise DataError(f"input {item} does not exist; check the --input path")
    if not files:
        raise DataError("no input files given; pass --input FILE [FILE ...]")
    if len(set(files)) != len(files):
        raise DataError("the same input file is given twice; each document would be counted twice")
    return files


def _check_shard_bytes(shard_bytes: int) -> None:
    if shard_bytes < 1:
        raise DataError(f"shard size {shard_bytes} bytes: must be positive; pass --shard-mb 1 or more (default 64)")


def plan_shards(files: Sequence[str], shard_bytes: int = SHARD_BYTES) -> List[Shard]:
    """Cut the inputs into shards of about ``shard_bytes``. Empty files are an error (a wrong path or a failed
    download is likelier than an intentional empty input)."""
    _check_shard_bytes(shard_bytes)
    shards: List[Shard] = []
    for f in files:
        kind, size, stem = _kind(f), os.path.getsize(f), _stem(f)
        if size == 0:
            raise DataError(f"{f}: empty file, no documents; remove it from --input or fix the export")
        if kind == "jsonl":
            for start in range(0, size, shard_bytes):
                shards.append(Shard(len(shards), f, kind, start, min(size, start + shard_bytes),
                                    min(size, start + shard_bytes) - start, stem))
        elif kind == "jsonl.gz":
            shards.append(Shard(len(shards), f, kind, 0, -1, size, stem))
        else:
            pq = _pyarrow_parquet(f)
            meta = pq.ParquetFile(f).metadata
            if meta.num_rows == 0:
                raise DataError(f"{f}: empty parquet file, no rows; remove it from --input")
            start, acc = 0, 0
            for rg in range(meta.num_row_groups):
                acc += meta.row_group(rg).total_byte_size
                if acc >= shard_bytes or rg == meta.num_row_groups - 1:
                    shards.append(Shard(len(shards), f, kind, start, rg + 1, acc, stem))
                    start, acc = rg + 1, 0
    return shards


def _pyarrow_parquet(path: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow; pip install pyarrow, or convert to jsonl") from None
    return pq


def _line_number(path: str, offset: int) -> int:
    """1-based line number of the line starting at byte ``offset`` (computed only for error messages)."""
    count, done = 1, 0
    with open(path, "rb") as f:
        while done < offset:
            chunk = f.read(min(1 << 20, offset - done))
            if not chunk:
                break
            count += chunk.count(b"\n")
            done += len(chunk)
    return count


def _iter_records(shard: Shard) -> Iterator[Tuple[Callable[[], str], object, int]]:
    """(where() → 'file:line', record, bytes consumed) for each record of the shard; blank lines skipped."""
    path = shard.file
    if shard.kind == "parquet":
        pq = _pyarrow_parquet(path)
        pf = pq.ParquetFile(path)
        row0 = sum(pf.metadata.row_group(i).num_rows for i in range(shard.start))
        per_row = shard.nbytes / max(1, sum(pf.metadata.row_group(i).num_rows for i in range(shard.start, shard.stop)))
        n = 0
        for batch in pf.iter_batches(row_groups=list(range(shard.start, shard.stop))):
            for rec in batch.to_pylist():
                row = row0 + n
                yield (lambda r=row: f"{path}:row {r}"), rec, int(per_row)
                n += 1
        return
    if shard.kind == "jsonl.gz":
        with gzip.open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield (lambda n=lineno: f"{path}:{n}"), _parse(line, lambda n=lineno: f"{path}:{n}"), 0
        return
    with open(path, "rb") as f:
        if shard.start > 0:
            f.seek(shard.start - 1)
            if f.read(1) != b"\n":
                f.readline()  # that line started in the previous shard
        pos = f.tell()
        while pos < shard.stop:
            line = f.readline()
            if not line:
                break
            where = lambda p=pos: f"{path}:{_line_number(path, p)}"  # noqa: E731 - lazy, errors only
            nxt = f.tell()
            if line.strip():
                yield where, _parse(line, where), nxt - pos
            pos = nxt


def _parse(line: bytes, where: Callable[[], str]):
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{where()}: invalid JSON ({getattr(e, 'msg', e)}); fix or remove the line") from None


def _get(record, key: str):
    """record[key] with dotted paths ('meta.redpajama_set_name'); KeyError if absent."""
    node = record
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def safe_source_name(source: str) -> str:
    """File-name-safe form of a source name ('RedPajamaC4' stays, 'a/b c' → 'a_b_c')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("._") or "source"


# ---------------------------------------------------------------------------------------------- workers
_WORKER: Dict[str, object] = {}


def _init_worker(tokenizer_file: str, report, child: bool) -> None:
    """Per-process set-up: the tokenizer (a forked worker inherits the parent's, loading Llama-3's takes 0.25 s)
    and the progress sink. Child workers tokenize single-threaded: the workers are the parallelism."""
    if child:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if _WORKER.get("tok_file") != tokenizer_file:
        _WORKER["tok"], _WORKER["tok_file"] = load_tokenizer(tokenizer_file), tokenizer_file
    _WORKER["report"] = report


class _QueueReporter:
    """Progress from a worker process: ("progress", (bytes, tokens, docs)) onto the parent's queue."""

    def __init__(self, q):
        self.q = q

    def __call__(self, nbytes: int, tokens: int, docs: int) -> None:
        self.q.put(("progress", (nbytes, tokens, docs)))


def _histogram(lengths: np.ndarray) -> List[int]:
    idx = np.searchsorted(np.asarray(HISTOGRAM_EDGES), lengths, side="right") - 1
    return np.bincount(idx, minlength=len(HISTOGRAM_EDGES)).tolist()


def _process_shard(shard: Shard, work_dir: str, text_key: str, source_key: Optional[str], dtype_name: str) -> dict:
    """Tokenize one shard into ``work_dir/<shard>/<source>.bin/.idx`` + ``done.json``; returns its stats."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    tok, report = _WORKER["tok"], _WORKER["report"]
    dtype = np.dtype(dtype_name)
    final = Path(work_dir) / shard.name
    tmp = Path(work_dir) / f".{shard.name}.tmp-{os.getpid()}"
    remove_quietly(tmp)
    tmp.mkdir(parents=True)
    builders: Dict[str, object] = {}
    names: Dict[str, str] = {}  # safe file name -> source
    lengths: Dict[str, List[int]] = {}
    skipped: Dict[str, int] = {}
    texts: List[str] = []
    sources: List[str] = []
    pending_bytes = 0

    def flush():
        nonlocal pending_bytes
        if not texts:
            return
        n_tokens = 0
        for ids, src in zip(tok.encode_batch(texts), sources):
            if not ids:  # e.g. only characters the normaliser removes
                skipped[src] = skipped.get(src, 0) + 1
                continue
            name = safe_source_name(src)
            if names.setdefault(name, src) != src:
                raise DataError(f"sources {names[name]!r} and {src!r} map to the same file name {name!r}; "
                                f"rename one of them in the data")
            if name not in builders:
                builders[name] = IndexedDatasetBuilder(str(tmp / f"{name}.bin"), dtype=dtype.type)
                lengths[src] = []
            builders[name].add_document(np.asarray(ids, dtype=dtype), [len(ids)])
            lengths[src].append(len(ids))
            n_tokens += len(ids)
        report(pending_bytes, n_tokens, len(texts))
        texts.clear()
        sources.clear()
        pending_bytes = 0

    for where, rec, nbytes in _iter_records(shard):
        pending_bytes += nbytes
        if not isinstance(rec, dict):
            raise DataError(f"{where()}: expected a JSON object per line, got {type(rec).__name__}")
        try:
            text = _get(rec, text_key)
        except KeyError:
            raise DataError(f"{where()}: no '{text_key}' field (fields: {', '.join(map(str, rec)) or 'none'}); "
                            f"pass --text-key with the field holding the text") from None
        if not isinstance(text, str):
            raise DataError(f"{where()}: field '{text_key}' is {type(text).__name__}, not a string; "
                            f"pass --text-key with the field holding the text")
        try:
            src = _get(rec, source_key) if source_key else shard.default_source
        except KeyError:
            src = shard.default_source
        src = str(src) if src not in (None, "") else shard.default_source
        if not text.strip():
            skipped[src] = skipped.get(src, 0) + 1
            continue
        texts.append(text)
        sources.append(src)
        if len(texts) >= BATCH_TEXTS:
            flush()
    flush()
    report(pending_bytes, 0, 0)
    for name, builder in builders.items():
        builder.finalize(str(tmp / f"{name}.idx"))
    stats = {"shard": shard.name, "sources": {
        src: {"file": safe_source_name(src), "docs": len(lengths.get(src, [])),
              "tokens": int(sum(lengths.get(src, []))), "skipped_empty": skipped.get(src, 0),
              "max_length": int(max(lengths.get(src, [0]))),
              "histogram": _histogram(np.asarray(lengths.get(src, []), dtype=np.int64))}
        for src in sorted(set(lengths) | set(skipped))}}
    (tmp / "done.json").write_text(json.dumps(stats))
    publish_dir(tmp, final)  # the shard appears complete or not at all
    return stats


# ---------------------------------------------------------------------------------------------- driver
def _fingerprint(files: Sequence[str], tokenizer_file: str, text_key: str, source_key: Optional[str]) -> str:
    """Identity of a run's inputs and settings. Paths enter as resolved real paths, so the same files give the
    same fingerprint however they were typed (relative, absolute, through a symlink, from another directory)."""
    def ident(p):
        real = os.path.realpath(p)
        st = os.stat(real)
        return [real, st.st_size, st.st_mtime_ns]

    blob = json.dumps({"inputs": [ident(f) for f in files], "tokenizer": ident(tokenizer_file),
                       "text_key": text_key, "source_key": source_key, "format": FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _run_shards(shards: List[Shard], work_dir: Path, tok, tokenizer_file: str, args: tuple, workers: int,
                progress: bool) -> List[dict]:
    """Process the shards (in this process when workers == 1); returns their stats in shard order."""
    from tqdm import tqdm

    total = sum(s.nbytes for s in shards)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenize", disable=not progress, dynamic_ncols=True,
               mininterval=0.5)
    counts = {"tokens": 0, "docs": 0, "t0": time.perf_counter()}

    def update(nbytes: int, tokens: int, docs: int):
        counts["tokens"] += tokens
        counts["docs"] += docs
        bar.update(nbytes)
        dt = max(time.perf_counter() - counts["t0"], 1e-9)
        bar.set_postfix_str(f"{counts['docs']} docs, {counts['tokens'] / dt / 1e3:.1f}k tok/s", refresh=False)

    results: Dict[int, dict] = {}
    _WORKER["tok"], _WORKER["tok_file"] = tok, tokenizer_file  # inherited by forked workers
    try:
        if workers <= 1:
            _init_worker(tokenizer_file, update, child=False)
            for s in shards:
                results[s.index] = _process_shard(s, str(work_dir), *args)
            return [results[s.index] for s in shards]
        return _run_pool(shards, work_dir, tokenizer_file, args, workers, update)
    finally:
        bar.close()


def _worker_loop(tokenizer_file: str, tasks, out, work_dir: str, args: tuple) -> None:
    """A worker process: shards from ``tasks`` until the None sentinel; progress, results and errors to ``out``."""
    _init_worker(tokenizer_file, _QueueReporter(out), child=True)
    while True:
        shard = tasks.get()
        if shard is None:
            return
        try:
            out.put(("done", (shard.index, _process_shard(shard, work_dir, *args))))
        except DataError as e:
            out.put(("bad_input", str(e)))
            return
        except BaseException:  # noqa: BLE001 - reported to the parent with its traceback
            out.put(("crash", traceback.format_exc()))
            return


def _run_pool(shards: List[Shard], work_dir: Path, tokenizer_file: str, args: tuple, workers: int,
              update: Callable[[int, int, int], None]) -> List[dict]:
    """Process shards in ``workers`` child processes. Our own small pool, not multiprocessing.Pool: a worker
    killed by the OS (out of memory) must end the run with an error, where Pool would wait forever for its task."""
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    tasks, out = ctx.Queue(), ctx.Queue()
    for shard in shards:
        tasks.put(shard)
    for _ in range(workers):
        tasks.put(None)
    procs = [ctx.Process(target=_worker_loop, args=(tokenizer_file, tasks, out, str(work_dir), args), daemon=True)
             for _ in range(min(workers, len(shards)))]
    results: Dict[int, dict] = {}
    try:
        for p in procs:
            p.start()
        stopped = False  # set once every worker has exited or one died: then only what is queued is left
        while len(results) < len(shards):
            try:
                kind, payload = out.get(timeout=0.05)
            except queue.Empty:
                if stopped:
                    codes = [p.exitcode for p in procs]
                    raise RuntimeError(f"preprocessing workers exited (codes {codes}) with shards left, e.g. killed "
                                       f"for lack of memory; re-run the same command to resume")
                stopped = any(p.exitcode not in (None, 0) for p in procs) or all(p.exitcode == 0 for p in procs)
                continue
            if kind == "done":
                results[payload[0]] = payload[1]
            elif kind == "bad_input":
                raise DataError(payload)
            elif kind == "crash":
                raise RuntimeError(f"a preprocessing worker failed:\n{payload}")
            else:
                update(*payload)
    finally:
        for p in procs:
            if p.is_alive() and len(results) < len(shards):
                p.terminate()
        for p in procs:
            p.join()
    return [results[s.index] for s in shards]


def _append_shard(builder, prefix: str) -> None:
    """Append a shard's dataset to a builder: what ``IndexedDatasetBuilder.add_index`` does, minus the
    ``gc.collect()`` it runs per call (0.2 s each with torch loaded: minutes over thousands of shard files)."""
    import shutil

    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix, mmap=True)
    offset = len(builder.sequence_lengths)
    builder.sequence_lengths.extend(np.asarray(ds.sequence_lengths).tolist())
    builder.document_indices.extend((offset + np.asarray(ds.document_indices[1:], dtype=np.int64)).tolist())
    del ds
    with open(prefix + ".bin", "rb") as f:
        shutil.copyfileobj(f, builder.data_file, 16 << 20)


def _merge(shard_dirs: List[Path], shard_stats: List[dict], out: Path, dtype: np.dtype, written: List[Path]
           ) -> Dict[str, dict]:
    """Concatenate the shards per source (in shard order) into ``out/<source>.bin/.idx``, each file atomically."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    sources: Dict[str, dict] = {}
    for stats in shard_stats:
        for src, st in stats["sources"].items():
            agg = sources.setdefault(src, {"prefix": st["file"], "docs": 0, "tokens": 0, "skipped_empty": 0,
                                           "max_length": 0, "histogram": [0] * len(HISTOGRAM_EDGES)})
            if agg["prefix"] != st["file"]:
                raise DataError(f"sources map to different file names across shards: {src!r}")
            for k in ("docs", "tokens", "skipped_empty"):
                agg[k] += st[k]
            agg["max_length"] = max(agg["max_length"], st["max_length"])
            agg["histogram"] = [a + b for a, b in zip(agg["histogram"], st["histogram"])]
    files = [v["prefix"] for v in sources.values()]
    if len(set(files)) != len(files):
        raise DataError(f"two sources map to the same file name among {sorted(sources)}; rename one in the data")
    for src, agg in sorted(sources.items()):
        if agg["docs"] == 0:
            continue
        name = agg["prefix"]
        with atomic_path(out / f"{name}.bin") as tmp_bin, atomic_path(out / f"{name}.idx") as tmp_idx:
            builder = IndexedDatasetBuilder(tmp_bin, dtype=dtype.type)
            for d in shard_dirs:
                if (d / f"{name}.idx").exists():
                    _append_shard(builder, str(d / name))
            builder.finalize(tmp_idx)
        written += [out / f"{name}.bin", out / f"{name}.idx"]
    return sources


def preprocess_text(inputs: Sequence[str], tokenizer: str, output_dir: str, *, text_key: str = "text",
                    source_key: Optional[str] = "source", workers: int = 1, shard_bytes: int = SHARD_BYTES,
                    overwrite: bool = False, progress: bool = True) -> dict:
    """Tokenize text records into one indexed dataset per source under ``output_dir``; returns the summary
    (also written to ``output_dir/summary.json``). Resumes finished shards of an interrupted run; a complete
    output with the same inputs and settings is returned as is."""
    t0 = time.perf_counter()
    if workers < 1:
        raise DataError(f"--workers={workers}: must be >= 1")
    _check_shard_bytes(shard_bytes)  # before anything is created (plan_shards comes after the work dir)
    files = expand_inputs(inputs)
    tokenizer_file = resolve_tokenizer_file(tokenizer)
    tok = load_tokenizer(tokenizer_file)
    from megatron.core.datasets.indexed_dataset import DType

    dtype = np.dtype(DType.optimal_dtype(tok.vocab_size))
    fp = _fingerprint(files, tokenizer_file, text_key, source_key)
    out = Path(output_dir)
    summary_path = out / "summary.json"
    if summary_path.exists() and not overwrite:
        try:
            old = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("fingerprint") == fp:
            log.info("%s is up to date (same inputs, tokenizer and fields); nothing to do", output_dir)
            return old
        raise DataError(f"{output_dir} already holds a dataset built from other inputs or settings; choose another "
                        f"--output-dir or pass --overwrite")
    created = not out.exists()
    make_output_dir(out, "--output-dir")
    work = out / f".work-{fp[:16]}"
    written: List[Path] = []
    try:
        work.mkdir(exist_ok=True)
        for stale in work.glob(".shard-*.tmp-*"):  # a worker killed mid-shard
            remove_quietly(stale)
        plan_file = work / "plan.json"
        if plan_file.exists():  # resume: the plan of the first attempt, whatever --workers is now
            shards = [Shard(**s) for s in json.loads(plan_file.read_text())["shards"]]
        else:
            # enough shards to keep every worker busy on small inputs, at most shard_bytes each
            total = sum(os.path.getsize(f) for f in files)
            size = min(shard_bytes, max(1 << 20, -(-total // (4 * workers))))
            shards = plan_shards(files, size)
            with atomic_path(plan_file) as tmp:
                Path(tmp).write_text(json.dumps({"fingerprint": fp, "shards": [asdict(s) for s in shards]}))
        todo = [s for s in shards if not (work / s.name / "done.json").exists()]
        reused = len(shards) - len(todo)
        if reused:
            log.info("resuming: %d of %d shards already done", reused, len(shards))
        t_shards = time.perf_counter()
        _run_shards(todo, work, tok, tokenizer_file, (text_key, source_key, dtype.name), workers, progress)
        t_shards = time.perf_counter() - t_shards
        stats = [json.loads((work / s.name / "done.json").read_text()) for s in shards]
        total_docs = sum(st["docs"] for s in stats for st in s["sources"].values())
        if total_docs == 0:
            raise DataError(f"no non-empty '{text_key}' texts in {', '.join(files)}; check --text-key")
        sources = _merge([work / s.name for s in shards], stats, out, dtype, written)
        elapsed = time.perf_counter() - t0
        tokens = sum(v["tokens"] for v in sources.values())
        todo_names = {s.name for s in todo}  # throughput of this run's own work (a resume skips done shards)
        new_tokens = sum(st["tokens"] for s in stats if s["shard"] in todo_names for st in s["sources"].values())
        summary = {
            "format": FORMAT, "version": 1, "fingerprint": fp, "tokenizer": tok.describe(), "dtype": dtype.name,
            "text_key": text_key, "source_key": source_key, "inputs": files,
            "histogram_edges": HISTOGRAM_EDGES,
            "sources": {src: {"prefix": v["prefix"], "docs": v["docs"], "tokens": v["tokens"],
                              "skipped_empty": v["skipped_empty"], "max_length": v["max_length"],
                              "length_histogram": v["histogram"]} for src, v in sorted(sources.items())},
            "total": {"docs": total_docs, "tokens": tokens, "bytes": sum(os.path.getsize(f) for f in files)},
            "shards": len(shards), "shards_reused": reused, "workers": workers,
            "seconds": round(elapsed, 3), "tokens_per_s": round(new_tokens / elapsed, 1) if elapsed > 0 else None,
            "tokenize_seconds": round(t_shards, 3),  # the sharded phase alone (no start-up, merge, summary)
        }
        with atomic_path(summary_path) as tmp:
            Path(tmp).write_text(json.dumps(summary, indent=1))
    except DataError:
        # bad input is deterministic: a resume would fail the same way, so leave nothing behind
        remove_quietly(work)
        for p in written:
            remove_quietly(p)
        if created:
            remove_quietly(out)
        raise
    remove_quietly(work)
    return summary
