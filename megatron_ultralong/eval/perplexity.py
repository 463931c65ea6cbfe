"""Perplexity vs context length on held-out long documents: ``ppl`` and ``tail_ppl`` per length (docs/eval.md).

    nll = hf_nll_fn(model)                              # chunked: never builds [L, vocab] logits
    res = perplexity_by_length(nll, docs, lengths=[8192, 131072, 1048576], documents=4, tail=4096)
    res["results"][i]["ppl"], res["results"][i]["tail_ppl"]

``nll(ids) -> Tensor[len(ids) - 1]`` is any per-position negative log-likelihood (``hf_nll_fn`` wraps a
transformers causal LM of the Llama / Qwen2 families).
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import EvalError
from .hf import check_hf_folder, read_hf_config

NllFn = Callable[[torch.Tensor], torch.Tensor]


def long_documents(docs: Sequence[np.ndarray], length: int, documents: int) -> List[np.ndarray]:
    """The first ``length + 1`` tokens of the first ``documents`` documents with at least that many tokens."""
    out = []
    for d in docs:
        if len(d) >= length + 1:
            out.append(np.asarray(d[:length + 1], dtype=np.int64))
            if len(out) == documents:
                break
    return out


def plan_windows(docs: Sequence[np.ndarray], lengths: Sequence[int], documents: int = 4
                 ) -> List[Tuple[int, List[np.ndarray]]]:
    """(length, the documents' first length + 1 tokens) per length; EvalError when no document is long enough
    for a length (cheap: call it before loading a model)."""
    if not lengths or documents < 1 or any(n < 1 for n in lengths):
        raise EvalError(f"perplexity: give lengths >= 1 (got {list(lengths)}) and documents >= 1 (got {documents})")
    longest = max((len(d) for d in docs), default=0)
    plan = []
    for length in lengths:
        picked = long_documents(docs, length, documents)
        if not picked:
            raise EvalError(f"perplexity at length {length}: no held-out document has {length + 1} tokens (the "
                            f"longest has {longest}); use a corpus of long documents or lengths <= {longest - 1}")
        plan.append((length, picked))
    return plan


def perplexity_by_length(nll: NllFn, docs: Sequence[np.ndarray], lengths: Sequence[int], documents: int = 4,
                         tail: int = 1024, log: Optional[Callable[[str], None]] = print,
                         plan: Optional[List[Tuple[int, List[np.ndarray]]]] = None) -> Dict:
    """Score every length (see the module docstring); EvalError when no document is long enough for one.
    ``plan``: ``plan_windows`` of the same arguments, when the caller made it already (made here when None)."""
    if tail < 1:
        raise EvalError(f"perplexity: tail={tail}: must be >= 1")
    plan = plan if plan is not None else plan_windows(docs, lengths, documents)
    total, done, t0 = sum(len(p) * n for n, p in plan), 0, time.time()
    results = []
    for length, picked in plan:
        sums = np.zeros(2)
        counts = np.zeros(2)
        for k, ids in enumerate(picked, 1):
            losses = nll(torch.from_numpy(ids)).double()
            if losses.shape != (length,):
                raise EvalError(f"the NLL function returned shape {tuple(losses.shape)} for {length + 1} tokens; "
                                f"expected ({length},)")
            sums += [losses.sum().item(), losses[-tail:].sum().item()]
            counts += [length, min(tail, length)]
            done += length
            if log:
                eta = (time.time() - t0) / done * (total - done)
                log(f"perplexity length={length} document {k}/{len(picked)} "
                    f"[{done:,}/{total:,} tokens, eta {eta:.0f}s]")
        mean = sums / counts
        results.append({"length": int(length), "documents": len(picked), "tail": int(min(tail, length)),
                        "nll": mean[0], "ppl": math.exp(mean[0]), "tail_nll": mean[1], "tail_ppl": math.exp(mean[1])})
        if log:
            log(f"perplexity length={length}: ppl {results[-1]['ppl']:.3f}, last-{results[-1]['tail']} "
                f"ppl {results[-1]['tail_ppl']:.3f} over {len(picked)} document(s)")
    return {"lengths": [int(n) for n in lengths], "documents": documents, "tail": tail, "results": results}


def hf_nll_fn(model, chunk: int = 4096) -> NllFn:
    """Per-position NLL with a transformers causal LM (Llama / Qwen2 families): the decoder runs once over the
    sequence, the output head and log-softmax run ``chunk`` positions at a time (no [L, vocab] logits)."""
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    device = next(model.parameters()).device

    def nll(ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(device)
        with torch.no_grad():
            hidden = decoder(input_ids=ids[None, :-1]).last_hidden_state[0]
            out = [torch.nn.functional.cross_entropy(head(hidden[s:s + chunk]).float(), ids[1 + s:1 + s + chunk],
                                                     reduction="none")
                   for s in range(0, hidden.shape[0], chunk)]
        return torch.cat(out).cpu()

    return nll


class IndexedDocument:
    """One document of an indexed dataset, read lazily: ``len()`` comes from the index, and a slice reads only
    those tokens from the memory-mapped ``.bin`` (so picking the first long documents of a large corpus costs
    the index plus the scored prefixes, not the corpus)."""

    def __init__(self, dataset, index: int, length: int):
        self._dataset, self._index, self._length = dataset, index, int(length)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("IndexedDocument supports contiguous slices only, e.g. doc[:n]")
        start, stop, _ = key.indices(self._length)
        if stop <= start:
            return np.zeros(0, dtype=np.int64)
        return np.array(self._dataset.get(self._index, offset=start, length=stop - start), dtype=np.int64)


def documents_from_indexed(prefixes: Sequence[str], max_documents: int = 100000) -> List[IndexedDocument]:
    """The first ``max_documents`` documents of indexed datasets written by tools/preprocess_data.py, in order,
    as lazy ``IndexedDocument`` (the datasets stay open, memory-mapped, while the documents are alive)."""
    from ..data.indexed import open_indexed_dataset

    docs: List[IndexedDocument] = []
    for prefix in prefixes:
        ds = open_indexed_dataset(prefix)
        lengths = ds.sequence_lengths
        docs.extend(IndexedDocument(ds, i, lengths[i]) for i in range(min(len(ds), max_documents - len(docs))))
    return docs


def documents_from_jsonl(paths: Sequence[str], tokenizer, text_key: str = "text") -> List[np.ndarray]:
    """Documents of jsonl files (one record per line with a ``text_key`` field), tokenized without BOS/EOS."""
    import json

    docs = []
    for path in paths:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)[text_key]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise EvalError(f"{path}:{n}: not a JSON record with a {text_key!r} field; pass --text-key "
                                    f"with the field holding the text") from None
                docs.append(np.asarray(tokenizer.encode(text), dtype=np.int64))
    return docs


def prepare_inputs(hf_dir: str, data: Sequence[str], tokenizer: Optional[str] = None, text_key: str = "text",
                   lengths: Sequence[int] = (4096, 8192), documents: int = 4, tail: int = 1024, chunk: int = 4096
                   ) -> Tuple[list, List[Tuple[int, List[np.ndarray]]]]:
    """(documents, plan_windows plan) of ``data`` (.jsonl files tokenized with ``tokenizer`` or the model's, or
    indexed-dataset prefixes), after every check that needs no model: EvalError (or DataError) naming the flag."""
    check_hf_folder(hf_dir)
    jsonl = [d for d in data if d.endswith(".jsonl")]
    if jsonl and len(jsonl) != len(data):
        raise EvalError("--data: give either .jsonl files or indexed-dataset prefixes, not both")
    if jsonl:
        for d in jsonl:
            if not os.path.isfile(d):
                raise EvalError(f"--data {d}: no such file")
        from ..data.tokenizer import load_tokenizer

        docs = documents_from_jsonl(jsonl, load_tokenizer(tokenizer or hf_dir), text_key)
    else:
        docs = documents_from_indexed(data)
    plan = plan_windows(docs, lengths, documents)
    vocab = int(read_hf_config(hf_dir).get("vocab_size") or 0)
    if vocab and any(len(w) and int(w.max()) >= vocab for _, windows in plan for w in windows):
        raise EvalError(f"--data holds token ids >= the model's vocab_size {vocab}: it was tokenized with "
                        f"another tokenizer; preprocess it with the model's")
    if tail < 1 or chunk < 1:
        raise EvalError(f"--tail {tail} / --chunk {chunk}: both must be >= 1")
    return docs, plan
