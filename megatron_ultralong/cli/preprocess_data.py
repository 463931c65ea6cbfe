"""Data preparation: text → indexed datasets, CPT mixture, chat → SFT dataset, synthetic demo corpus.

    ultralong-preprocess-data text --input data/raw/*.jsonl --tokenizer llama3/tokenizer.json \
        --output-dir data/idx --workers 16                      # = python tools/preprocess_data.py text ...
    ultralong-preprocess-data mixture --inputs data/idx --output data/cpt_mix.json --token-budget 1000000000
    ultralong-preprocess-data chat --input sft/*.jsonl --tokenizer llama3/tokenizer.json \
        --output-prefix data/sft --eval-files eval/*.jsonl
    ultralong-preprocess-data synthetic --output-dir data/raw_demo     # offline multi-source corpus + chat data

Exit 0 on success, 2 on bad input (one line on stderr, nothing partial left behind). See docs/data.md.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import warnings

from . import OneLineParser, bad_input


def _text(a):
    from ..data import DataError
    from ..data.preprocess import preprocess_text

    if a.shard_mb < 1:  # before anything is created
        raise DataError(f"--shard-mb {a.shard_mb}: the shard size must be at least 1 (MiB); the default is 64")
    s = preprocess_text(a.input, a.tokenizer, a.output_dir, text_key=a.text_key, source_key=a.source_key or None,
                        workers=a.workers, shard_bytes=a.shard_mb << 20, overwrite=a.overwrite,
                        progress=not a.quiet)
    for src, v in s["sources"].items():
        print(f"{src:<20} {v['docs']:>10,} docs {v['tokens']:>15,} tokens  -> {a.output_dir}/{v['prefix']}.bin/.idx")
    print(f"total {s['total']['docs']:,} docs, {s['total']['tokens']:,} tokens in {s['seconds']:.1f} s "
          f"({s['tokens_per_s'] or 0:,.0f} tok/s, {s['shards_reused']} of {s['shards']} shards reused); "
          f"summary: {a.output_dir}/summary.json")


def _mixture(a):
    from ..data import DataError
    from ..data.mixture import MixtureParams, build_mixture, report_table, resolve_sources, write_mixture

    if not a.output.endswith(".json"):  # before the (possibly long) build
        sys.exit(bad_input(f"--output {a.output}: use a .json file name (sidecars take the same stem)"))
    budget = a.token_budget
    if budget is not None and not (math.isfinite(budget) and budget >= 1):  # 0 is not "one pass": omit the flag
        raise DataError(f"--token-budget {budget:g}: the budget must be at least 1 token (e.g. 1e9); omit the flag "
                        f"for one pass over the data with the sampling weights")
    params = MixtureParams(a.short_threshold, a.long_threshold, a.short_keep_ratio, a.long_upsample,
                           None if budget is None else int(budget), a.seed)
    params.check()  # before reading the sources
    mix = build_mixture(resolve_sources(a.inputs), params)
    files = write_mixture(mix, a.output, plot=not a.no_plot)
    print(report_table(mix.report))
    print("wrote " + ", ".join(files.values()))


def _chat(a):
    from ..data.sft import preprocess_chat

    s = preprocess_chat(a.input, a.tokenizer, a.output_prefix, eval_files=a.eval_files or (), ngram=a.ngram,
                        template=a.template)
    print(f"{s['samples']:,} samples ({s['tokens']:,} tokens, {s['target_tokens']:,} assistant) of "
          f"{s['samples_read']:,} read; {s['removed_by_decontamination']} removed by decontamination, "
          f"{len(s['dropped_without_assistant'])} without an assistant turn -> {a.output_prefix}.bin/.idx"
          + (f", report {a.output_prefix}.decontam.json" if a.eval_files else ""))


def _synthetic(a):
    from ..data import DataError
    from ..data.synthetic import (
        check_length_scale,
        parse_docs_per_source,
        synthetic_chat_samples,
        write_jsonl,
        write_synthetic_corpus,
    )

    # everything is checked before the first file is written (write_synthetic_corpus checks the rest first)
    sizes = parse_docs_per_source(a.docs_per_source) if a.docs_per_source is not None else None
    if a.chat_samples < 1:
        raise DataError(f"--chat-samples {a.chat_samples}: must be >= 1 (default 300)")
    check_length_scale(a.length_scale, "--length-scale")
    paths = write_synthetic_corpus(a.output_dir, sizes, seed=a.seed, length_scale=a.length_scale,
                                   per_source_files=a.per_source_files)
    paths.append(write_jsonl(os.path.join(a.output_dir, "chat.jsonl"), synthetic_chat_samples(a.chat_samples, a.seed)))
    print("wrote " + ", ".join(paths))


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser)

    t = sub.add_parser("text", help="jsonl/parquet text → one Megatron indexed dataset per source")
    t.add_argument("--input", nargs="+", required=True, help="files (.jsonl, .jsonl.gz, .parquet) or directories")
    t.add_argument("--tokenizer", required=True, help="sentencepiece .model, HF tokenizer.json, or a directory")
    t.add_argument("--output-dir", required=True, help="gets <source>.bin/.idx and summary.json")
    t.add_argument("--text-key", default="text", help="field holding the text (dotted for nested fields)")
    t.add_argument("--source-key", default="source",
                   help="field naming the source/domain (default: source; '' = one source per input file)")
    t.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)), help="tokenizer processes")
    t.add_argument("--shard-mb", type=int, default=64, help="shard size in MiB (the unit of resume)")
    t.add_argument("--overwrite", action="store_true", help="rebuild even if --output-dir holds another dataset")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=_text)

    from ..data.mixture import MixtureParams

    mix = MixtureParams()  # the defaults of the recipe's data.* mixture keys
    m = sub.add_parser("mixture", help="per-source datasets → CPT mixture manifest + report table + PNG")
    m.add_argument("--inputs", nargs="+", required=True, help="preprocessing output dirs or dataset prefixes")
    m.add_argument("--output", required=True, help="manifest .json (sidecars: .draws.npy, .report.json, .png)")
    m.add_argument("--short-threshold", type=int, default=mix.short_threshold,
                   help="docs shorter than this are down-sampled")
    m.add_argument("--long-threshold", type=int, default=mix.long_threshold,
                   help="docs longer than this are up-sampled")
    m.add_argument("--short-keep-ratio", type=float, default=mix.short_keep_ratio, help="sampling weight of short docs")
    m.add_argument("--long-upsample", type=float, default=mix.long_upsample, help="sampling weight of long docs")
    m.add_argument("--token-budget", type=float, default=mix.token_budget,
                   help="total document tokens (default: one pass)")
    m.add_argument("--seed", type=int, default=mix.seed, help="seed of the fractional-copy choice")
    m.add_argument("--no-plot", action="store_true", help="skip the PNG")
    m.set_defaults(run=_mixture)

    c = sub.add_parser("chat", help="chat jsonl → decontaminated, tokenized SFT dataset")
    c.add_argument("--input", nargs="+", required=True, help="chat jsonl files ({'messages': [...]})")
    c.add_argument("--tokenizer", required=True, help="sentencepiece .model, HF tokenizer.json, or a directory")
    c.add_argument("--output-prefix", required=True, help="gets .bin/.idx, .summary.json (and .decontam.json)")
    c.add_argument("--eval-files", nargs="*", help="eval sets to decontaminate against (jsonl or txt)")
    c.add_argument("--ngram", type=int, default=13, help="decontamination n-gram size in words")
    c.add_argument("--template", default="auto", choices=("auto", "llama3", "hf"), help="chat format")
    c.set_defaults(run=_chat)

    s = sub.add_parser("synthetic", help="offline multi-source corpus (corpus.jsonl) and chat.jsonl")
    s.add_argument("--output-dir", required=True)
    s.add_argument("--docs-per-source", help='JSON, e.g. \'{"web": 400, "code": 200}\'')
    s.add_argument("--length-scale", type=float, default=1.0, help="multiplies document lengths")
    s.add_argument("--chat-samples", type=int, default=300)
    s.add_argument("--per-source-files", action="store_true", help="<source>.jsonl instead of one corpus.jsonl")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(run=_synthetic)

    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stdout)
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*not installed")  # CPU-only chatter
    logging.getLogger("megatron").setLevel(logging.WARNING)  # its dataset readers log every file they open
    from ..config import ConfigError  # DataError is a ConfigError

    try:
        a.run(a)
    except ConfigError as e:
        return bad_input(e)
    return 0
