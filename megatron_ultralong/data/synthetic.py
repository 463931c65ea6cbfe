"""Offline synthetic data for tests and the demo (nothing is downloaded).

    paths = write_synthetic_corpus("corpus/", docs_per_source={"web": 300, "code": 100}, seed=0)
    samples = synthetic_chat_samples(200, seed=0)            # [{"messages": [...], "source": "math"}, ...]
    model = train_sentencepiece(texts, "tok/spm", vocab_size=512)   # with <|sep|> and Llama-3 chat tokens
    tokens, seg, target = copy_task_window(vocab_size=512, seq_length=256, seed=1234, index=7, sft=False)

What the corpus looks like (pseudo-English, per-source styles, log-normal lengths): docs/data.md.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import DataError, atomic_path, make_output_dir

LLAMA3_CHAT_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
"""Chat-format tokens a small sentencepiece model needs for the built-in Llama-3 template."""

# median words per document and log-normal sigma, per source: books run long, code/math short
SOURCE_STYLES: Dict[str, Tuple[float, float]] = {"web": (120, 0.9), "books": (300, 0.8), "code": (90, 0.9),
                                                 "math": (60, 0.7)}

_ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br",
           "ch", "cl", "dr", "gr", "pl", "sh", "st", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st"]


def _lexicon(size: int = 3000, seed: int = 7) -> List[str]:
    """A fixed vocabulary of distinct pseudo-words (same for every seed of the corpus)."""
    rng = np.random.default_rng(seed)
    words, seen = [], set()
    while len(words) < size:
        n = int(rng.integers(1, 4))
        w = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] +
                    _CODAS[rng.integers(len(_CODAS))] for _ in range(n))
        if w not in seen and len(w) > 1:
            seen.add(w)
            words.append(w)
    return words


_LEXICON = _lexicon()
_ZIPF = 1.0 / np.arange(1, len(_LEXICON) + 1) ** 1.1
_ZIPF /= _ZIPF.sum()


def _words(rng: np.random.Generator, n: int) -> List[str]:
    return [_LEXICON[i] for i in rng.choice(len(_LEXICON), size=n, p=_ZIPF)]


def _prose(rng: np.random.Generator, n_words: int) -> str:
    out, left = [], n_words
    while left > 0:
        para = []
        for _ in range(int(rng.integers(2, 7))):
            k = min(left, int(rng.integers(6, 22)))
            if k <= 0:
                break
            w = _words(rng, k)
            para.append(" ".join([w[0].capitalize()] + w[1:]) + rng.choice([".", ".", ".", "?", "!"]))
            left -= k
        out.append(" ".join(para))
    return "\n\n".join(out)


def _code(rng: np.random.Generator, n_words: int) -> str:
    lines, left = [], n_words
    while left > 0:
        name, a, b = _words(rng, 3)
        body = _words(rng, int(rng.integers(2, 6)))
        lines += [f"def {name}_{a}({a}, {b}):", f"    {body[0]} = {a} + {int(rng.integers(100))} * {b}",
                  f"    return {' + '.join(body)}", ""]
        left -= 6 + len(body)
    return "\n".join(lines)


def _math(rng: np.random.Generator, n_words: int) -> str:
    parts, left = [], n_words
    while left > 0:
        x, y = int(rng.integers(2, 999)), int(rng.integers(2, 999))
        who = _words(rng, 2)
        parts.append(f"{who[0].capitalize()} has {x} {who[1]}s and gets {y} more, so {who[0]} has {x} + {y} = "
                     f"{x + y} {who[1]}s.")
        left -= 16
    return " ".join(parts)


_STYLE_WRITERS = {"web": _prose, "books": _prose, "code": _code, "math": _math}


def synthetic_document(source: str, rng: np.random.Generator, mean_words: Optional[float] = None) -> str:
    """One document in the style of ``source`` (web, books, code, math); length log-normal around the source's
    median (or ``mean_words``)."""
    median, sigma = SOURCE_STYLES.get(source, (120, 0.9))
    n = max(3, int(rng.lognormal(np.log(mean_words or median), sigma)))
    return _STYLE_WRITERS.get(source, _prose)(rng, n)


def check_length_scale(length_scale: float, what: str = "length_scale") -> None:
    """DataError unless ``length_scale`` is a finite number > 0."""
    if not (isinstance(length_scale, (int, float)) and np.isfinite(length_scale) and length_scale > 0):
        raise DataError(f"{what} {length_scale!r}: must be a number > 0 (1 = the built-in document lengths)")


def synthetic_documents(source: str, n_docs: int, seed: int = 0, length_scale: float = 1.0) -> Iterator[str]:
    """``n_docs`` documents of one source, deterministic in (source, seed); ``length_scale`` multiplies lengths."""
    rng = np.random.default_rng([seed, sum(map(ord, source))])
    median = SOURCE_STYLES.get(source, (120, 0.9))[0] * length_scale
    for _ in range(n_docs):
        yield synthetic_document(source, rng, median)


DEFAULT_DOCS_PER_SOURCE = {"web": 400, "books": 100, "code": 200, "math": 150}


def parse_docs_per_source(text: str) -> Dict[str, int]:
    """``--docs-per-source`` JSON (``'{"web": 400, "code": 200}'``) → {source: documents}; DataError if it is not
    a JSON object of positive integer counts."""
    try:
        sizes = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"--docs-per-source {text!r}: invalid JSON ({e.msg} at column {e.colno}); quote the source "
                        f"names, e.g. '{{\"web\": 400, \"code\": 200}}'") from None
    if not isinstance(sizes, dict):
        raise DataError(f"--docs-per-source {text!r}: expected a JSON object of source → documents, got "
                        f"{type(sizes).__name__}; e.g. '{{\"web\": 400, \"code\": 200}}'")
    check_docs_per_source(sizes, "--docs-per-source")
    return sizes


def check_docs_per_source(sizes: Dict[str, int], what: str = "docs_per_source") -> None:
    """DataError unless ``sizes`` maps at least one non-empty source name to a positive integer count."""
    if not sizes:
        raise DataError(f"{what}: no sources given; name at least one, e.g. {{\"web\": 400}}")
    for name, n in sizes.items():
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{what}: source name {name!r} must be a non-empty string")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise DataError(f"{what}: {name!r}: {n!r} documents; each count must be a positive integer (leave a "
                            f"source out instead of giving it 0)")


def write_synthetic_corpus(out_dir: str | os.PathLike, docs_per_source: Optional[Dict[str, int]] = None,
                           seed: int = 0, length_scale: float = 1.0, per_source_files: bool = False) -> List[str]:
    """Write jsonl records ``{"text": ..., "source": ...}``: one ``corpus.jsonl`` with the sources interleaved
    (default), or ``<source>.jsonl`` per source. Returns the written paths. DataError on non-positive counts or
    length scale, or an output directory that cannot be created (checked before anything is written)."""
    docs_per_source = DEFAULT_DOCS_PER_SOURCE if docs_per_source is None else docs_per_source
    check_docs_per_source(docs_per_source)
    check_length_scale(length_scale)
    out = make_output_dir(out_dir, "output directory")
    records = {s: [{"text": t, "source": s} for t in synthetic_documents(s, n, seed, length_scale)]
               for s, n in docs_per_source.items()}
    if per_source_files:
        groups = {f"{s}.jsonl": recs for s, recs in records.items()}
    else:  # interleave deterministically so every byte-range shard sees several sources
        order = np.random.default_rng(seed).permutation(sum(len(r) for r in records.values()))
        flat = [r for recs in records.values() for r in recs]
        groups = {"corpus.jsonl": [flat[i] for i in order]}
    paths = []
    for name, recs in groups.items():
        with atomic_path(out / name) as tmp, open(tmp, "w") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
        paths.append(str(out / name))
    return paths


# ------------------------------------------------------------------------------------------- chat data
_GREETINGS = ["Please explain", "Can you describe", "Tell me about", "What do you know about", "Summarize"]


def synthetic_chat_sample(rng: np.random.Generator, source: str) -> Dict[str, object]:
    """One chat sample ``{"messages": [...], "source": source}`` (general, math or code), 1-2 turns."""
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": "You are a helpful assistant."})
    for _ in range(int(rng.integers(1, 3))):
        if source == "math":
            x, y = int(rng.integers(2, 500)), int(rng.integers(2, 500))
            q, a = f"What is {x} + {y}?", f"{x} + {y} = {x + y}. The answer is {x + y}."
        elif source == "code":
            name, arg = _words(rng, 2)
            q = f"Write a function {name} that doubles {arg}."
            a = f"def {name}({arg}):\n    return 2 * {arg}"
        else:
            topic = " ".join(_words(rng, 2))
            q = f"{_GREETINGS[rng.integers(len(_GREETINGS))]} {topic}."
            a = _prose(rng, int(rng.integers(10, 40)))
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": messages, "source": source}


def synthetic_chat_samples(n: int, seed: int = 0, sources: Sequence[str] = ("general", "math", "code")
                           ) -> List[Dict[str, object]]:
    """``n`` chat samples cycling over ``sources``, deterministic in seed."""
    rng = np.random.default_rng([seed, 99])
    return [synthetic_chat_sample(rng, sources[i % len(sources)]) for i in range(n)]


def write_jsonl(path: str | os.PathLike, records: Sequence[dict]) -> str:
    """Write records as jsonl, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


# ------------------------------------------------------------------------------------------ tokenizer
def digit_group_pieces(max_digits: int) -> List[str]:
    """Every digit string of 1..``max_digits`` digits, longest first: as sentencepiece user-defined symbols they
    split numbers left to right into groups of up to ``max_digits`` digits, as Llama-3's tokenizer does with 3."""
    return [f"{i:0{k}d}" for k in range(max_digits, 0, -1) for i in range(10 ** k)]


def train_sentencepiece(texts: Sequence[str], model_prefix: str | os.PathLike, vocab_size: int = 512,
                        chat_tokens: bool = True, digit_groups: int = 0) -> str:
    """Train a small BPE sentencepiece model (sub-second on ~1 MB) with ``<|sep|>`` as a control symbol (the
    packing separator) and, with ``chat_tokens``, the Llama-3 chat tokens. BOS/EOS are named like Llama-3's.
    ``digit_groups`` > 0: numbers split into groups of that many digits (digit_group_pieces; the vocabulary must
    hold them). Returns the ``.model`` path."""
    import io

    import sentencepiece

    controls = ["<|sep|>"] + (list(LLAMA3_CHAT_TOKENS) if chat_tokens else [])
    extra = {"user_defined_symbols": digit_group_pieces(digit_groups)} if digit_groups > 0 else {}
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(t.replace("\n", " ") for t in texts if t.strip()), model_writer=buf,
        vocab_size=vocab_size, model_type="bpe", character_coverage=1.0, byte_fallback=True,
        control_symbols=controls, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        bos_piece="<|begin_of_text|>", eos_piece="<|end_of_text|>", minloglevel=2, num_threads=1,
        max_sentence_length=1 << 16, **extra)
    path = f"{model_prefix}.model"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buf.getvalue())
    return path


# ------------------------------------------------------------------------------------------ copy task
COPY_ALPHABET = 64
"""Content ids of the copy task are drawn from this many ids: the unigram part of the loss falls in a few steps
(ln V → ln 64) and the copy part keeps falling as the model learns to copy."""


def copy_task_ids(vocab_size: int, separator_id: Optional[int] = None) -> Tuple[int, int, np.ndarray]:
    """(separator id, copy-marker id, content alphabet) for the copy task on a vocabulary of ``vocab_size``:
    separator = ``separator_id`` or V-1, marker = the highest other id, content = the lowest ids left."""
    sep = vocab_size - 1 if separator_id is None else int(separator_id)
    marker = vocab_size - 1 if sep != vocab_size - 1 else vocab_size - 2
    reserved = {sep, marker}
    alphabet = np.array([i for i in range(min(vocab_size, COPY_ALPHABET + 2)) if i not in reserved][:COPY_ALPHABET])
    return sep, marker, alphabet


def copy_task_window(vocab_size: int, seq_length: int, seed: int, index: int, sft: bool,
                     separator_id: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window ``index`` of the copy task: ``seq_length + 1`` tokens, a pure function of (seed, index).

    Each document is ``prefix, MARKER, prefix`` (prefix of 1..seq_length/8 random ids). CPT (``sft=False``):
    documents closed by the separator and cut at the window edge, every token a target. SFT: whole samples
    ``prefix MARKER copy SEP``, the copy and its closing separator are the targets ("assistant" part), the rest of
    the window is padding (separator ids, not targets, own segment).
    Returns (tokens, segment id per token, target flag per token), each [seq_length + 1]."""
    n = seq_length + 1
    sep, marker, alphabet = copy_task_ids(vocab_size, separator_id)
    rng = np.random.default_rng([seed, index, 0x636F7079])  # "copy"
    max_prefix = max(1, seq_length // 8)
    tokens, seg, target = np.full(n, sep, np.int64), np.zeros(n, np.int32), np.zeros(n, np.int8)
    pos, doc = 0, 0
    while pos < n:
        k = int(rng.integers(min(4, max_prefix), max_prefix + 1))
        prefix = alphabet[rng.integers(len(alphabet), size=k)]
        sample = np.concatenate([prefix, [marker], prefix, [sep]])
        if sft:
            if pos + len(sample) > n:
                break  # samples are never cut: the rest is padding
            flags = np.concatenate([np.zeros(k + 1, np.int8), np.ones(k + 1, np.int8)])
        else:
            sample, flags = sample[: n - pos], np.ones(min(len(sample), n - pos), np.int8)
        tokens[pos: pos + len(sample)] = sample
        target[pos: pos + len(sample)] = flags
        seg[pos: pos + len(sample)] = doc
        pos += len(sample)
        doc += 1
    seg[pos:] = doc  # padding (SFT only) is a segment of its own
    return tokens, seg, target
