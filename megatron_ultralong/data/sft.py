"""SFT data: chat jsonl → tokens with the chat template, loss on assistant tokens only, packing, the SFT dataset.

    python tools/preprocess_data.py chat --input sft/general.jsonl sft/math.jsonl sft/code.jsonl \\
        --tokenizer llama3/tokenizer.json --output-prefix data/sft --eval-files eval/gsm8k.jsonl eval/mmlu.jsonl

    tokens, target = encode_chat(messages, tok)        # target[i] = 1 on assistant tokens (content + <|eot_id|>)
    pairs = load_sft_dataset("data/sft")               # [(tokens, target), ...]

Templates (``llama3``, ``hf``, ``auto``), the loss mask and the dataset layout: docs/data.md (SFT).
Decontamination: data/decontam.py.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import DataError, atomic_path, make_output_dir, remove_quietly
from .decontam import decontaminate
from .packing import PackedWindows, pack_whole_samples
from .tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

FORMAT = "megatron-ultralong-sft"
TEMPLATES = ("auto", "llama3", "hf")


@dataclass
class ChatSample:
    """One conversation from a chat jsonl file."""

    messages: List[Dict[str, str]]
    """[{"role": ..., "content": ...}, ...]"""
    where: str
    """'file:line' of the record."""
    source: Optional[str] = None
    """The record's 'source' field (general / math / code ...), if any."""


def read_chat_jsonl(paths: Sequence[str]) -> List[ChatSample]:
    """Read and validate chat records (DataError naming file:line on the first bad one)."""
    samples: List[ChatSample] = []
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"chat file {path} not found; check data.paths / --input")
        n_before = len(samples)
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise DataError(f"{where}: invalid JSON ({getattr(e, 'msg', e)}); fix or remove the line") from None
                msgs = rec.get("messages") if isinstance(rec, dict) else None
                if not isinstance(msgs, list) or not msgs:
                    raise DataError(f"{where}: no 'messages' list (chat records look like {{\"messages\": "
                                    f"[{{\"role\": \"user\", \"content\": \"...\"}}, ...]}})")
                for i, m in enumerate(msgs):
                    if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                            or not isinstance(m.get("content"), str):
                        raise DataError(f"{where}: message {i} needs string 'role' and 'content' fields")
                samples.append(ChatSample([{"role": m["role"], "content": m["content"]} for m in msgs], where,
                                          str(rec["source"]) if rec.get("source") is not None else None))
        if len(samples) == n_before:
            raise DataError(f"{path}: empty chat file, no samples; remove it or fix the export")
    return samples


# ------------------------------------------------------------------------------------------ templates
def _require(tok: Tokenizer, token: str) -> int:
    tid = tok.token_to_id(token)
    if tid is None:
        raise DataError(f"{tok.path} has no {token} token, which the built-in Llama-3 chat format needs; use a "
                        f"tokenizer with a chat template (data.chat_template=hf) or one with the Llama-3 tokens")
    return tid


def encode_llama3(messages: Sequence[Dict[str, str]], tok: Tokenizer) -> Tuple[np.ndarray, np.ndarray]:
    """Built-in Llama-3 chat format (see the module docstring) → (tokens, target flags)."""
    sh, eh, eot = (_require(tok, t) for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
    nl = tok.encode("\n\n")
    tokens: List[int] = [tok.bos_id] if tok.bos_id is not None else []
    target: List[int] = [0] * len(tokens)
    for m in messages:
        head = [sh] + tok.encode(m["role"]) + [eh] + nl
        body = tok.encode(m["content"].strip()) + [eot]
        flag = 1 if m["role"] == "assistant" else 0
        tokens += head + body
        target += [0] * len(head) + [flag] * len(body)
    return np.asarray(tokens, np.int64), np.asarray(target, np.int8)


def _jinja_template(source: str):
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise DataError("rendering the tokenizer's chat template needs jinja2; pip install jinja2, or use "
                        "data.chat_template=llama3") from None

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    return env.from_string(source)


def encode_hf_template(messages: Sequence[Dict[str, str]], tok: Tokenizer) -> Tuple[np.ndarray, np.ndarray]:
    """The tokenizer's own chat template → (tokens, target flags); assistant spans by prefix rendering."""
    if not tok.chat_template:
        raise DataError(f"{tok.path}: no chat_template in tokenizer_config.json; use data.chat_template=llama3")
    template = _jinja_template(tok.chat_template)
    special = {"bos_token": tok.decode([tok.bos_id]) if tok.bos_id is not None else "",
               "eos_token": tok.decode([tok.eos_id]) if tok.eos_id is not None else ""}

    def render(msgs, gen):
        return template.render(messages=list(msgs), add_generation_prompt=gen, **special)

    full = render(messages, False)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt, upto = render(messages[:k], True), render(messages[: k + 1], False)
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise DataError(f"{tok.path}: the chat template is not prefix-stable (rendering a conversation prefix "
                            f"changes earlier text), so assistant spans cannot be located; use "
                            f"data.chat_template=llama3")
        spans.append((len(prompt), len(upto)))
    tokens: List[int] = []
    target: List[int] = []
    pos = 0
    for a, b in spans + [(len(full), len(full))]:
        for text, flag in ((full[pos:a], 0), (full[a:b], 1)):
            if text:
                ids = tok.encode_with_specials(text)
                tokens += ids
                target += [flag] * len(ids)
        pos = b
    return np.asarray(tokens, np.int64), np.asarray(target, np.int8)


def encode_chat(messages: Sequence[Dict[str, str]], tok: Tokenizer, template: str = "auto"
                ) -> Tuple[np.ndarray, np.ndarray]:
    """Tokens and assistant-target flags of one conversation with ``template`` ('auto', 'llama3', 'hf')."""
    if template not in TEMPLATES:
        raise DataError(f"chat template {template!r}: use one of {', '.join(TEMPLATES)}")
    if template == "hf" or (template == "auto" and tok.chat_template):
        return encode_hf_template(messages, tok)
    return encode_llama3(messages, tok)


# ------------------------------------------------------------------------------------ tokenize, pack
def tokenize_samples(samples: Sequence[ChatSample], tok: Tokenizer, template: str = "auto"
                     ) -> Tuple[List[Tuple[np.ndarray, np.ndarray]], List[str]]:
    """Encode every sample; returns (encoded (tokens, target) pairs, 'file:line' of samples without an
    assistant token, which are dropped: they would carry no loss)."""
    out, no_target = [], []
    for s in samples:
        tokens, target = encode_chat(s.messages, tok, template)
        if target.any():
            out.append((tokens, target))
        else:
            no_target.append(s.where)
    return out, no_target


def pack_sft(samples: Sequence[Tuple[np.ndarray, np.ndarray]], seq_length: int, pad_id: int, seed: int
             ) -> Tuple[PackedWindows, List[int]]:
    """Pack encoded samples whole into SFT windows of ``seq_length + 1`` tokens (see packing.pack_whole_samples);
    returns (windows, indices of samples too long for a window)."""
    packed, dropped = pack_whole_samples(samples, seq_length, pad_id, seed=seed)
    if dropped:
        log.warning("%d SFT samples are longer than the window (%d tokens) and were dropped; raise "
                    "data.seq_length to keep them", len(dropped), seq_length + 1)
    return packed, dropped


def preprocess_chat(inputs: Sequence[str], tokenizer: str, output_prefix: str, *, eval_files: Sequence[str] = (),
                    ngram: int = 13, template: str = "auto") -> Dict[str, object]:
    """Chat jsonl → decontaminated, tokenized SFT dataset: ``<prefix>.bin/.idx`` (per sample two sequences:
    tokens, then target flags), ``<prefix>.decontam.json`` (what was removed and why) and
    ``<prefix>.summary.json`` (written last). Returns the summary."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    tok = load_tokenizer(tokenizer)
    samples = read_chat_jsonl(inputs)
    kept, report = decontaminate(samples, eval_files, ngram) if eval_files else (samples, None)
    encoded, no_target = tokenize_samples(kept, tok, template)
    if not encoded:
        raise DataError(f"no sample of {', '.join(inputs)} has an assistant message left; nothing to train on")
    dtype = np.dtype(DType.optimal_dtype(tok.vocab_size))
    prefix = Path(output_prefix)
    make_output_dir(prefix.parent, "--output-prefix folder")  # one-line error if e.g. a path component is a file
    written: List[Path] = []
    try:
        with atomic_path(f"{prefix}.bin") as tmp_bin, atomic_path(f"{prefix}.idx") as tmp_idx:
            builder = IndexedDatasetBuilder(tmp_bin, dtype=dtype.type)
            for tokens, target in encoded:
                builder.add_document(np.concatenate([tokens, target]).astype(dtype), [len(tokens), len(target)])
            builder.finalize(tmp_idx)
        written += [Path(f"{prefix}.bin"), Path(f"{prefix}.idx")]
        if report is not None:
            with atomic_path(f"{prefix}.decontam.json") as tmp:
                Path(tmp).write_text(json.dumps(report, indent=1))
            written.append(Path(f"{prefix}.decontam.json"))
        sources: Dict[str, int] = {}
        for s in kept:
            sources[s.source or "unknown"] = sources.get(s.source or "unknown", 0) + 1
        summary = {"format": FORMAT, "version": 1, "tokenizer": tok.describe(), "template": template,
                   "inputs": list(inputs), "samples_read": len(samples),
                   "removed_by_decontamination": report["samples_removed"] if report else 0,
                   "dropped_without_assistant": no_target, "samples": len(encoded),
                   "tokens": int(sum(len(t) for t, _ in encoded)),
                   "target_tokens": int(sum(int(m.sum()) for _, m in encoded)),
                   "max_length": int(max(len(t) for t, _ in encoded)), "samples_per_source": sources,
                   "eval_files": list(eval_files), "ngram": ngram}
        with atomic_path(f"{prefix}.summary.json") as tmp:
            Path(tmp).write_text(json.dumps(summary, indent=1))
    except BaseException:
        for p in written:
            remove_quietly(p)
        raise
    return summary


NOT_SFT_LAYOUT = ("not an SFT dataset (each sample must be two sequences, tokens and targets); build it with "
                  "tools/preprocess_data.py chat")
"""The end of the DataError for an indexed dataset without the SFT layout."""


def has_sft_layout(ds) -> bool:
    """Whether an open IndexedDataset has the layout ``preprocess_chat`` writes: every document exactly two
    sequences of equal length (tokens, 0/1 targets). Text datasets hold one sequence per document."""
    docs, lengths = np.asarray(ds.document_indices), np.asarray(ds.sequence_lengths)
    return bool(len(docs) >= 2 and len(lengths) == 2 * (len(docs) - 1)
                and np.array_equal(docs, np.arange(0, len(lengths) + 1, 2))
                and np.array_equal(lengths[0::2], lengths[1::2]))


def sft_summary_path(prefix: str | os.PathLike) -> Optional[str]:
    """``<prefix>.summary.json`` when it marks ``prefix`` as a dataset written by ``preprocess_chat`` (format
    FORMAT), else None. Text datasets never have one: their summary is the output directory's ``summary.json``."""
    path = f"{prefix}.summary.json"
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    return path if isinstance(summary, dict) and summary.get("format") == FORMAT else None


def load_sft_dataset(prefix: str) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(tokens, target) pairs of a dataset written by ``preprocess_chat`` (DataError if it is not one)."""
    from .indexed import open_indexed_dataset

    ds = open_indexed_dataset(prefix)
    if not has_sft_layout(ds):
        raise DataError(f"{prefix}: {NOT_SFT_LAYOUT}")
    docs = np.array(ds.document_indices)  # a copy: views die with the dataset's mmap
    out = []
    for i in range(len(docs) - 1):
        tokens, target = ds[2 * i], ds[2 * i + 1]
        out.append((np.array(tokens, np.int64), np.array(target, np.int8)))
    return out
