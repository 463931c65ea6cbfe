"""The demo's data, all generated here: corpus jsonl → sentencepiece tokenizer → indexed datasets → the CPT
mixture (real up/down-sampling, documents joined by "<s>"), chat jsonl for both SFT stages, held-out questions.

    files = build_demo_data(out / "data", plan, seed=0)     # DemoData: paths of everything the stages read
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

from . import corpus
from .plan import DemoPlan

VOCAB = 1024
"""Tokenizer size (= demo_model.yaml's vocab_size): 256 byte-fallback pieces, 110 digit pieces, the chat tokens
and ~650 merges, enough for the toy world's words to be whole tokens, as Llama-3's are (at 640 "river" was three
pieces and a base document 131 tokens, more than W)."""
DIGIT_GROUPS = 2
"""Numbers split left to right in groups of up to 2 digits (Llama-3 uses 3; at toy scale the 1,110 pieces of
3-digit groups are each seen too rarely to be copied; docs/demo.md has the measurements)."""


@dataclass
class DemoData:
    """Where the stages find their inputs."""

    tokenizer: str
    """sentencepiece .model."""
    base_corpus: str
    """Preprocessed (indexed) short documents + prose: the base model's pretraining data."""
    cpt_mixture: str
    """Mixture manifest of long documents + prose at the CPT window."""
    base_chat: str
    """Chat jsonl of the base model's SFT."""
    sft_chat: str
    """Chat jsonl of the SFT after CPT (other samples, same tasks)."""
    summary: Dict[str, object]
    """Documents and tokens per source, mixture draws, the template check."""


def check_no_passkey_template(texts: List[str], what: str) -> int:
    """RuntimeError if a passkey-prompt sentence (corpus.passkey_template_lines) occurs in ``texts``; returns the
    number of texts checked."""
    lines = corpus.passkey_template_lines()
    for i, t in enumerate(texts):
        low = t.lower()
        for line in lines:
            if line in low:
                raise RuntimeError(f"{what} text {i} contains the passkey prompt's {line!r}: the demo's corpus must "
                                   f"not teach the evaluation's template")
    return len(texts)


def _documents(n: int, seed: int, make: Callable[[random.Random], str], source: str) -> List[dict]:
    rng = random.Random(f"{seed}-{source}")
    return [{"text": make(rng), "source": source} for _ in range(n)]


def build_demo_data(out: Path, plan: DemoPlan, seed: int = 0, log: Callable[[str], None] = print) -> DemoData:
    """Generate, tokenize and mix everything; every file is written atomically under ``out``."""
    from ..data.mixture import MixtureParams, build_mixture, report_table, resolve_sources, write_mixture
    from ..data.preprocess import preprocess_text
    from ..data.synthetic import train_sentencepiece, write_jsonl

    out.mkdir(parents=True, exist_ok=True)
    w, target = plan.window, plan.target_length
    base_docs = _documents(plan.base_documents, seed, corpus.short_document, "facts")
    prose = _documents(plan.prose_documents, seed, lambda r: corpus.prose_document(r, r.randint(4, 40)), "prose")
    # long documents: 0.5-2 × the target window in tokens (≈ 7 tokens per sentence); facts recalled far away
    long_docs = _documents(plan.long_documents, seed,
                           lambda r: corpus.long_document(r, r.randint(target // 14, target * 2 // 7),
                                                          facts=r.randint(3, 8),
                                                          recalls=plan.long_recalls), "long")
    chat_rng = random.Random(f"{seed}-chat")
    base_chat = [corpus.chat_sample(chat_rng) for _ in range(plan.chat_samples)]
    sft_chat = [corpus.chat_sample(chat_rng) for _ in range(plan.chat_samples)]
    checked = sum(check_no_passkey_template([d["text"] for d in docs], name)
                  for name, docs in (("base", base_docs), ("prose", prose), ("long", long_docs)))
    checked += sum(check_no_passkey_template([json.dumps(c) for c in chats], name)
                   for name, chats in (("base chat", base_chat), ("sft chat", sft_chat)))

    raw = out / "raw"
    raw.mkdir(exist_ok=True)
    # the base model's tokenizer, fixed before CPT (as Llama-3's): trained on its pretraining corpus only
    spm = train_sentencepiece([d["text"] for d in base_docs[:3000] + prose[:500]],
                              out / "tokenizer", vocab_size=VOCAB, digit_groups=DIGIT_GROUPS)
    base_path = write_jsonl(raw / "base.jsonl", base_docs + prose)
    # the CPT mixture's general corpus: the long documents, prose and a share of the base's short documents
    long_path = write_jsonl(raw / "long.jsonl", long_docs + prose + base_docs[:plan.cpt_short_documents])
    base_idx = preprocess_text([base_path], spm, str(out / "idx_base"), workers=1, progress=False)
    long_idx = preprocess_text([long_path], spm, str(out / "idx_long"), workers=1, progress=False)
    for name, summary in (("base", base_idx), ("cpt", long_idx)):
        for src, v in summary["sources"].items():
            log(f"    {name:<4} {src:<6} {v['docs']:>6} docs {v['tokens']:>10,} tokens (longest {v['max_length']:,})")
    # the paper's thresholds (4K / 8K for an 8K-window model) scaled to W: below W/2 down-sampled, above W up
    params = MixtureParams(short_threshold=w // 2, long_threshold=w, seed=seed + 1234)
    mix = build_mixture(resolve_sources([str(out / "idx_long")]), params)
    files = write_mixture(mix, out / "cpt_mix.json")
    log("    " + report_table(mix.report).replace("\n", "\n    "))
    summary = {"documents": {"base": len(base_docs), "prose": len(prose), "long": len(long_docs)},
               "tokens": {"base": base_idx["total"]["tokens"], "cpt_sources": long_idx["total"]["tokens"]},
               "mixture_draws": int(len(mix.draws)), "chat_samples": {"base": len(base_chat), "sft": len(sft_chat)},
               "template_check": {"texts": checked, "lines": corpus.passkey_template_lines()}}
    return DemoData(tokenizer=spm, base_corpus=str(out / "idx_base"), cpt_mixture=files["manifest"],
                    base_chat=write_jsonl(out / "base_chat.jsonl", base_chat),
                    sft_chat=write_jsonl(out / "sft_chat.jsonl", sft_chat), summary=summary)
