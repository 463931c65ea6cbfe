"""Data input checks that need no model: run first by the trainer (before any process group), reusable by a dry-run.

    check_data(cfg)     # DataError / ConfigError (one line): data paths, tokenizer, separator, SFT schema,
                        # and each dataset's recorded tokenizer (summary.json) against data.tokenizer / model.vocab_size

What is compared and data.allow_tokenizer_mismatch: docs/data.md ("Checks before the model is built").
"""
from __future__ import annotations

import json
import logging
import os
from typing import List, Optional

from ..config import Config, ConfigError
from . import DataError

log = logging.getLogger(__name__)


def check_data(cfg: Config) -> None:
    """Everything about ``cfg.data`` that can fail without a model: raises on the first problem."""
    from .loader import _tokenizer, run_separator

    d = cfg.data
    if d.synthetic is not None or not d.paths:  # the copy task needs no files; validate() refuses empty paths
        return
    tok = _tokenizer(cfg)  # a readable tokenizer whose vocabulary fits the model
    if cfg.train.mode == "cpt":
        run_separator(cfg, tok)
        prefixes = _cpt_prefixes(d.paths)
    else:
        prefixes = _sft_prefixes(cfg, tok)
    check_dataset_tokenizer(prefixes, tok, cfg)


def _cpt_prefixes(paths: List[str]) -> List[str]:
    from .indexed import open_indexed_dataset
    from .mixture import check_not_sft_dataset, load_mixture, resolve_sources

    if len(paths) == 1 and paths[0].endswith(".json"):
        prefixes = load_mixture(paths[0]).prefixes
        for prefix in prefixes:
            check_not_sft_dataset(prefix)
    else:
        prefixes = [p for _, p in resolve_sources(paths)]
    for prefix in prefixes:
        open_indexed_dataset(prefix)  # the .bin/.idx pair is whole
    return prefixes


def _sft_prefixes(cfg: Config, tok) -> List[str]:
    from .loader import _IndexedSamples
    from .sft import read_chat_jsonl

    d = cfg.data
    jsonl = [p for p in d.paths if p.endswith((".jsonl", ".json"))]
    if jsonl and len(jsonl) != len(d.paths):
        raise ConfigError(f"data.paths mixes chat jsonl files and SFT dataset prefixes ({d.paths}); use one kind")
    if jsonl:
        if tok is None:
            raise ConfigError("SFT from chat jsonl needs data.tokenizer (the chat template is applied here); or "
                              "preprocess with tools/preprocess_data.py chat and give the prefix")
        read_chat_jsonl(jsonl)  # every record: JSON, a 'messages' list of role/content strings
        return []
    _IndexedSamples(d.paths)  # SFT layout, not CPT text
    return list(d.paths)


def recorded_tokenizer(prefix: str) -> Optional[dict]:
    """The tokenizer record (``Tokenizer.describe()``) of the summary that ``tools/preprocess_data.py`` wrote for
    ``prefix``: ``<prefix>.summary.json`` (SFT) or the ``summary.json`` of its folder (text); None without one."""
    from .sft import sft_summary_path

    path = sft_summary_path(prefix) or os.path.join(os.path.dirname(prefix) or ".", "summary.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None  # an unreadable summary is reported by the readers that need it
    rec = summary.get("tokenizer") if isinstance(summary, dict) else None
    return rec if isinstance(rec, dict) else None


def _differences(rec: dict, tok) -> List[str]:
    """What differs between a recorded tokenizer and ``tok``: vocabulary, special ids, the separator."""
    from .tokenizer import DEFAULT_SEPARATOR, resolve_separator

    if rec.get("vocab_size") != tok.vocab_size:
        return [f"vocabulary {rec.get('vocab_size')} vs {tok.vocab_size} ids"]
    out = [f"{k} {rec[k]} vs {getattr(tok, k)}" for k in ("bos_id", "eos_id", "eot_id", "pad_id")
           if k in rec and rec[k] != getattr(tok, k)]
    sep = rec.get("separator")
    if isinstance(sep, dict):
        try:
            ours = list(resolve_separator(tok, DEFAULT_SEPARATOR, None).ids)
        except DataError:
            ours = None
        if ours != sep.get("ids"):
            out.append(f"separator {DEFAULT_SEPARATOR!r} = ids {sep.get('ids')} vs {ours}")
    return out


def check_dataset_tokenizer(prefixes: List[str], tok, cfg: Config) -> None:
    """DataError (one line) when a dataset's recorded tokenizer does not fit this run: ids beyond
    model.vocab_size (always refused), or a tokenizer other than data.tokenizer (vocabulary, special ids, the
    encoding of the default separator) unless data.allow_tokenizer_mismatch."""
    vocab = cfg.model.vocab_size
    for prefix in prefixes:
        rec = recorded_tokenizer(prefix)
        if rec is None:
            continue
        made_with = f"{prefix} was tokenized with {rec.get('path')}"
        if isinstance(rec.get("vocab_size"), int) and rec["vocab_size"] > vocab:
            raise DataError(f"{made_with} ({rec['vocab_size']} ids) but model.vocab_size={vocab}: its ids do not "
                            f"fit the embedding; use the model's tokenizer to preprocess the data")
        diff = _differences(rec, tok) if tok is not None else []
        if not diff:
            continue
        if not cfg.data.allow_tokenizer_mismatch:
            raise DataError(f"{made_with}, not data.tokenizer={tok.path} ({'; '.join(diff)}); preprocess it with "
                            f"data.tokenizer, point data.tokenizer at the one it was built with, or set "
                            f"data.allow_tokenizer_mismatch=true")
        log.warning("%s, not data.tokenizer=%s (%s); training anyway (data.allow_tokenizer_mismatch=true)",
                    made_with, tok.path, "; ".join(diff))
