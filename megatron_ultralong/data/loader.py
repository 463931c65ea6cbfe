"""Batches for the trainer: a deterministic function of (seed, global sample index), split over data parallelism.

    it = build_train_iterator(cfg, dp_rank, dp_size, consumed_samples=restored)
    batch = next(it)   # BATCH_KEYS: tokens/labels/position_ids [b, s] int64, loss_mask float32, doc_ids int32

Sources per config, DP sharding, resume and the DALI / torch loaders: docs/data.md, "The loader".
"""
from __future__ import annotations

import importlib.util
import logging
import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..config import Config, ConfigError, needs_document_masking
from . import DataError
from .packing import DocumentStream, fill_from_stream, fill_whole_samples, plan_whole_samples, window_to_sample
from .tokenizer import Separator, resolve_separator

log = logging.getLogger(__name__)

BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "doc_ids")
"""The tensors of every batch, in this order (the DALI outputs and train/step.py's forward step use it)."""
Window = Tuple[np.ndarray, np.ndarray, np.ndarray]  # tokens, segment ids, target flags; each [S + 1]


# ----------------------------------------------------------------------------------------- sources
class CopyTaskSource:
    """The synthetic copy task: window i is generated from (seed, i)."""

    def __init__(self, vocab_size: int, seq_length: int, seed: int, sft: bool, separator_id: Optional[int]):
        self.args = (vocab_size, seq_length, seed)
        self.sft, self.separator_id = sft, separator_id

    def window(self, index: int) -> Window:
        from .synthetic import copy_task_window

        vocab, seq, seed = self.args
        return copy_task_window(vocab, seq, seed, index, self.sft, self.separator_id)

    def describe(self) -> str:
        return f"synthetic copy task ({'sft: loss on the copy' if self.sft else 'cpt: loss on every token'})"


class MixtureStreamSource:
    """CPT: the mixture's documents, reshuffled every epoch, as one endless separator-joined stream. ``sep_ids``:
    the separator's token ids (one or more); ``seed``: the data-order seed (``stage_seed``)."""

    def __init__(self, names: Sequence[str], prefixes: Sequence[str], draws: np.ndarray,
                 lengths: Sequence[np.ndarray], seq_length: int, sep_ids: Sequence[int], seed: int,
                 separator: Optional[Separator] = None):
        self.names, self.prefixes = list(names), list(prefixes)
        self.draws = np.asarray(draws, dtype=np.int64)
        self.draw_lengths = np.zeros(len(self.draws), np.int64)  # length of the document behind each row
        for s in range(len(self.prefixes)):
            rows = self.draws[:, 0] == s
            self.draw_lengths[rows] = np.asarray(lengths[s], np.int64)[self.draws[rows, 1]]
        self.sep_ids = tuple(int(i) for i in np.atleast_1d(sep_ids))
        self.separator = separator  # for describe() only
        self.epoch_tokens = int((self.draw_lengths + len(self.sep_ids)).sum())
        self.seq_length, self.seed = seq_length, seed
        self._datasets = None  # opened lazily: once per process (DataLoader workers re-open the mmaps)
        self._epochs: Dict[int, Tuple[np.ndarray, DocumentStream]] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_datasets"], state["_epochs"] = None, {}
        return state

    def _epoch(self, e: int) -> Tuple[np.ndarray, DocumentStream]:
        if e not in self._epochs:
            if len(self._epochs) >= 2:  # a window spans at most two epochs
                self._epochs.pop(min(self._epochs))
            perm = np.random.default_rng([self.seed, e, 0x435054]).permutation(len(self.draws))  # "CPT"
            self._epochs[e] = (perm, DocumentStream(self.draw_lengths[perm], len(self.sep_ids)))
        return self._epochs[e]

    def _read(self, perm: np.ndarray, d: int, offset: int, n: int) -> np.ndarray:
        if self._datasets is None:
            from .indexed import open_indexed_dataset

            self._datasets = [open_indexed_dataset(p) for p in self.prefixes]
        src, doc = self.draws[perm[d]]
        return self._datasets[src].get(int(doc), offset=offset, length=n)

    def window(self, index: int) -> Window:
        n = self.seq_length + 1
        tokens, seg = np.empty(n, np.int64), np.empty(n, np.int32)
        at, next_seg, pos = 0, 0, index * self.seq_length
        while at < n:  # a window may run past the end of an epoch into the next one
            e, offset = divmod(pos + at, self.epoch_tokens)
            perm, stream = self._epoch(e)
            take = min(n - at, self.epoch_tokens - offset)
            written, next_seg = fill_from_stream(stream, offset, take, lambda d, o, k: self._read(perm, d, o, k),
                                                 self.sep_ids, tokens, seg, at, next_seg)
            at += written
        return tokens, seg, np.ones(n, np.int8)

    def describe(self) -> str:
        return (f"CPT mixture of {len(self.prefixes)} sources ({', '.join(self.names)}), {len(self.draws):,} "
                f"documents, {self.epoch_tokens:,} tokens per epoch (= {self.epoch_tokens // self.seq_length:,} "
                f"windows), separator {self.separator.describe() if self.separator else list(self.sep_ids)}, "
                f"data-order seed {self.seed}")


class PackedSamplesSource:
    """SFT: samples packed whole into windows once (seeded); the window order is reshuffled every epoch."""

    def __init__(self, lengths: Sequence[int], get: Callable[[int], Tuple[np.ndarray, np.ndarray]],
                 seq_length: int, pad_id: int, seed: int):
        self.width, self.pad_id, self.seed, self.get = seq_length + 1, pad_id, seed, get
        self.bins, self.dropped = plan_whole_samples(lengths, self.width, seed=seed)
        if not self.bins:
            raise DataError(f"no SFT sample fits a window of {self.width} tokens; raise data.seq_length")
        self.num_samples = len(lengths)
        self.data_tokens = sum(int(lengths[i]) for b in self.bins for i in b)  # sample tokens in the windows
        self._order: Tuple[int, Optional[np.ndarray]] = (-1, None)

    def window(self, index: int) -> Window:
        e, j = divmod(index, len(self.bins))
        if self._order[0] != e:
            self._order = (e, np.random.default_rng([self.seed, e, 0x534654]).permutation(len(self.bins)))  # "SFT"
        return fill_whole_samples(self.bins[self._order[1][j]], self.get, self.width, self.pad_id)

    def describe(self) -> str:
        return (f"SFT: {self.num_samples - len(self.dropped):,} samples packed into {len(self.bins):,} windows"
                + (f", {len(self.dropped)} longer than the window dropped" if self.dropped else ""))


def _is_text_dataset(path: str) -> bool:
    """Whether ``path`` is a ``preprocess_data.py text`` output directory, or one of its source prefixes (listed
    in the ``summary.json`` beside it) — CPT text, never an SFT dataset."""
    from .indexed import FORMAT as TEXT_FORMAT
    from .indexed import read_summary
    from .sft import sft_summary_path

    if sft_summary_path(path):
        return False
    folder, name = (path, None) if os.path.isdir(path) else (os.path.dirname(path) or ".", os.path.basename(path))
    try:
        summary = read_summary(folder)
    except DataError:  # no (readable) summary.json there: not a text output
        return False
    if not isinstance(summary, dict) or summary.get("format") != TEXT_FORMAT:
        return False
    return name is None or any(isinstance(v, dict) and v.get("prefix") == name
                               for v in (summary.get("sources") or {}).values())


class _IndexedSamples:
    """get(i) → (tokens, target) of an SFT indexed dataset, opened lazily per process."""

    def __init__(self, prefixes: Sequence[str]):
        from .indexed import open_indexed_dataset
        from .sft import NOT_SFT_LAYOUT, has_sft_layout

        self.prefixes = list(prefixes)
        self.index: List[Tuple[int, int]] = []
        self.lengths: List[int] = []
        for p, prefix in enumerate(self.prefixes):
            if _is_text_dataset(prefix):
                raise DataError(f"data path {prefix!r} is CPT text from tools/preprocess_data.py text, not an SFT "
                                f"dataset; train on it with train.mode=cpt, or build SFT data with "
                                f"tools/preprocess_data.py chat")
            ds = open_indexed_dataset(prefix)
            if not has_sft_layout(ds):
                raise DataError(f"{prefix}: {NOT_SFT_LAYOUT}")
            docs = np.array(ds.document_indices)  # copies: the views die with ds's mmap
            self.lengths += np.asarray(ds.sequence_lengths[0::2]).tolist()
            self.index += [(p, i) for i in range(len(docs) - 1)]
            del ds
        self._datasets = None

    def __getstate__(self):
        return {**self.__dict__, "_datasets": None}

    def __call__(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        if self._datasets is None:
            from .indexed import open_indexed_dataset

            self._datasets = [open_indexed_dataset(p) for p in self.prefixes]
        p, k = self.index[i]
        ds = self._datasets[p]
        return np.array(ds[2 * k], np.int64), np.array(ds[2 * k + 1], np.int8)


def _tokenizer(cfg: Config):
    from .tokenizer import load_tokenizer

    if not cfg.data.tokenizer:
        return None
    tok = load_tokenizer(cfg.data.tokenizer, cfg.data.separator_id)
    if tok.vocab_size > cfg.model.vocab_size:
        raise DataError(f"data.tokenizer {tok.path} has {tok.vocab_size} tokens but model.vocab_size="
                        f"{cfg.model.vocab_size}; use the model's tokenizer or a larger (padded) vocabulary")
    return tok


def run_separator(cfg: Config, tok=None) -> Separator:
    """The separator this CPT run packs with (data.separator_id, else data.separator encoded by data.tokenizer,
    else the tokenizer's dedicated token); ``tok``: the loaded data.tokenizer, if the caller has it."""
    tok = tok if tok is not None else _tokenizer(cfg)
    return resolve_separator(tok, cfg.data.separator, cfg.data.separator_id)


def stage_seed(cfg: Config) -> int:
    """The data-order seed of this stage: train.seed mixed with what tells stages apart (train.mode and
    data.seq_length, the stage's target length), so no two stages replay one stream; the same stage, resumed or
    rerun, gets the same order whatever its run directory or parallel layout (docs/data.md, "Stage seeds")."""
    import hashlib
    import json

    key = json.dumps(["data-order", cfg.train.seed, cfg.train.mode, cfg.data.seq_length])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1  # 63 bits: numpy takes it


def _cpt_source(cfg: Config):
    from .indexed import read_document_lengths
    from .mixture import (
        MixtureParams,
        build_mixture,
        check_not_sft_dataset,
        load_mixture,
        report_table,
        resolve_sources,
    )

    d = cfg.data
    sep = run_separator(cfg)
    if len(d.paths) == 1 and d.paths[0].endswith(".json"):
        mix = load_mixture(d.paths[0])
        for prefix in mix.prefixes:  # resolve_sources checks the other paths; a manifest may predate that check
            check_not_sft_dataset(prefix)
    else:
        mix = build_mixture(resolve_sources(d.paths), MixtureParams.from_data_config(d, cfg.train.seed),
                            separator=sep.as_dict())
        log.info("mixture built from %s:\n%s", d.paths, report_table(mix.report))
    lengths = [read_document_lengths(p) for p in mix.prefixes]
    for s, (name, x) in enumerate(zip(mix.names, lengths)):
        rows = mix.draws[mix.draws[:, 0] == s, 1]
        if len(rows) and rows.max() >= len(x):
            raise DataError(f"mixture source {name!r} refers to document {int(rows.max())} but {mix.prefixes[s]} "
                            f"has {len(x)}; the dataset changed after the mixture was built — rebuild the mixture")
    return MixtureStreamSource(mix.names, mix.prefixes, mix.draws, lengths, d.seq_length, sep.ids, stage_seed(cfg),
                               separator=sep)


def _sft_source(cfg: Config):
    from .decontam import decontaminate
    from .sft import read_chat_jsonl, tokenize_samples

    d = cfg.data
    jsonl = [p for p in d.paths if p.endswith((".jsonl", ".json"))]
    if jsonl and len(jsonl) != len(d.paths):
        raise ConfigError(f"data.paths mixes chat jsonl files and SFT dataset prefixes ({d.paths}); use one kind")
    tok = _tokenizer(cfg)
    if jsonl:
        if tok is None:
            raise ConfigError("SFT from chat jsonl needs data.tokenizer (the chat template is applied here); or "
                              "preprocess with tools/preprocess_data.py chat and give the prefix")
        samples = read_chat_jsonl(jsonl)
        if d.eval_files:
            samples, report = decontaminate(samples, d.eval_files, d.decontamination_ngram)
            log.info("decontamination: %d of %d samples removed (%d-gram overlap with %s)", report["samples_removed"],
                     report["samples_checked"], d.decontamination_ngram, ", ".join(d.eval_files))
        encoded, no_target = tokenize_samples(samples, tok, d.chat_template)
        if not encoded:
            raise DataError(f"no sample in {', '.join(jsonl)} has an assistant message; nothing to train on")
        lengths, get = [len(t) for t, _ in encoded], encoded.__getitem__
    else:
        if d.eval_files:
            raise ConfigError("data.eval_files applies to chat jsonl; preprocessed SFT prefixes were decontaminated "
                              "by tools/preprocess_data.py chat --eval-files (see its .decontam.json)")
        get = _IndexedSamples(d.paths)
        lengths = get.lengths
    pad = next((t for t in ((tok.pad_id, tok.eos_id) if tok else ()) if t is not None), 0)
    return PackedSamplesSource(lengths, get, d.seq_length, pad, stage_seed(cfg))


def build_source(cfg: Config):
    """The window source the config asks for (docs/data.md, "The loader")."""
    d = cfg.data
    if d.synthetic == "copy":
        return CopyTaskSource(cfg.model.vocab_size, d.seq_length, cfg.train.seed, cfg.train.mode == "sft",
                              d.separator_id)
    if d.synthetic is not None:
        raise ConfigError(f"data.synthetic={d.synthetic!r}: only 'copy' exists")
    if not d.paths:
        raise ConfigError("data.paths is empty and data.synthetic is unset: give data.paths=[...] or "
                          "data.synthetic=copy")
    return _sft_source(cfg) if cfg.train.mode == "sft" else _cpt_source(cfg)


# ------------------------------------------------------------------------------------ sampling order
class RankBatchSampler:
    """Global sample indices of this DP rank's micro-batches, endless, starting after ``consumed_samples``."""

    def __init__(self, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int):
        if not 0 <= dp_rank < dp_size:
            raise ConfigError(f"data-parallel rank {dp_rank} is outside 0..{dp_size - 1}")
        if consumed_samples < 0:
            raise ConfigError(f"consumed_samples={consumed_samples}: must be >= 0")
        self.consumed, self.mbs, self.rank, self.size = consumed_samples, micro_batch_size, dp_rank, dp_size

    def batch(self, k: int) -> List[int]:
        """Indices of this rank's k-th micro-batch from the start position."""
        base = self.consumed + k * self.mbs * self.size + self.rank * self.mbs
        return list(range(base, base + self.mbs))

    def __iter__(self):
        k = 0
        while True:
            yield self.batch(k)
            k += 1


class SampleDataset:
    """Map-style dataset: global sample index → the trainer's per-sample numpy arrays."""

    def __init__(self, source, masking: bool):
        self.source, self.masking = source, masking

    def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
        return window_to_sample(*self.source.window(int(index)), masking=self.masking)


def collate(rows: Sequence[Dict[str, np.ndarray]]) -> Dict[str, "torch.Tensor"]:  # noqa: F821
    """Stack per-sample arrays into [b, s] CPU tensors."""
    import torch

    return {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in BATCH_KEYS}


# ------------------------------------------------------------------------------------------ loaders
def _torch_iterator(dataset: SampleDataset, sampler: RankBatchSampler, num_workers: int) -> Iterator[dict]:
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                        pin_memory=torch.cuda.is_available(), prefetch_factor=4 if num_workers else None,
                        persistent_workers=num_workers > 0)
    return iter(loader)


class DaliBatchSource:
    """DALI external source (batch mode): iteration k → this rank's k-th micro-batch, as per-key lists."""

    def __init__(self, dataset: SampleDataset, sampler: RankBatchSampler):
        self.dataset, self.sampler = dataset, sampler

    def __call__(self, batch_info) -> Tuple[List[np.ndarray], ...]:
        rows = [self.dataset[i] for i in self.sampler.batch(batch_info.iteration)]
        return tuple([r[k] for r in rows] for k in BATCH_KEYS)


def dali_available() -> bool:
    """nvidia-dali importable and a CUDA device present."""
    if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _dali_iterator(dataset: SampleDataset, sampler: RankBatchSampler, threads: int,
                   device_id: Optional[int]) -> Iterator[dict]:
    """DALI pipeline over the same micro-batches; ``device_id`` None builds a CPU-only pipeline (tests)."""
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    @pipeline_def(batch_size=sampler.mbs, num_threads=max(1, threads), device_id=device_id, prefetch_queue_depth=2)
    def pipeline():
        outs = fn.external_source(source=DaliBatchSource(dataset, sampler), num_outputs=len(BATCH_KEYS),
                                  batch=True, batch_info=True)
        # on GPU the copy to the device overlaps the training step (prefetch_queue_depth batches ahead)
        return tuple(o.gpu() for o in outs) if device_id is not None else tuple(outs)

    pipe = pipeline()
    pipe.build()
    for out in DALIGenericIterator([pipe], list(BATCH_KEYS)):
        yield out[0]


def build_train_iterator(cfg: Config, dp_rank: int, dp_size: int, consumed_samples: int = 0, source=None
                         ) -> Iterator[dict]:
    """Infinite iterator of micro-batches for this data-parallel rank. Each batch is a dict of tensors
    (CPU; CUDA when the DALI loader is used): tokens [b, s] int64, labels [b, s] int64 (next token), loss_mask
    [b, s] float32 (1 = counts), position_ids [b, s] int64, doc_ids [b, s] int32 (segment index of the packed
    document/sample each token belongs to; position_ids restart at 0 per segment exactly when masking is on,
    else 0..s-1). b = cfg.train.micro_batch_size, s = cfg.data.seq_length. Sample order is a function of
    (cfg.train.seed, global sample index); rank r of dp_size takes its share of each block of
    micro_batch_size·dp_size samples, so DP=N sees the same global batches as DP=1. ``consumed_samples`` =
    global samples already consumed (resume); ``source``: build_source(cfg), if the caller built it already."""
    source = source if source is not None else build_source(cfg)
    dataset = SampleDataset(source, needs_document_masking(cfg))
    sampler = RankBatchSampler(consumed_samples, cfg.train.micro_batch_size, dp_rank, dp_size)
    if dp_rank == 0:
        log.info("data: %s; masking across documents %s; starting at sample %d", source.describe(),
                 "on" if dataset.masking else "off", consumed_samples)
    use_dali = cfg.data.loader == "dali" or (cfg.data.loader == "auto" and cfg.data.synthetic is None
                                             and dali_available())
    if use_dali:
        if not dali_available():
            raise ConfigError("data.loader=dali needs nvidia-dali and a CUDA GPU; install nvidia-dali-cuda120 or "
                              "use data.loader=torch")
        import torch

        return _dali_iterator(dataset, sampler, cfg.data.num_workers, torch.cuda.current_device())
    workers = 0 if cfg.data.synthetic else cfg.data.num_workers
    return _torch_iterator(dataset, sampler, workers)
