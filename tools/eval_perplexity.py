#!/usr/bin/env python3
"""Perplexity vs context length on held-out long documents, on an exported Hugging Face model.

    python tools/eval_perplexity.py --hf hf/llama31-8b-4m --data data/heldout_idx/books \
        --lengths 8192,131072,1048576 --documents 4 --tail 4096 --out eval/ppl

--data: indexed-dataset prefixes (tools/preprocess_data.py text, same tokenizer as the model) or .jsonl files
with a text field (tokenized with --tokenizer, default: the tokenizer files in --hf). Writes <out>/perplexity.json
and <out>/perplexity.png. Exit 0 when it ran, 2 on bad input (one line on stderr). See docs/eval.md.
"""
import json
import logging
import os
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None) -> int:
    from megatron_ultralong.cli import OneLineParser, add_eval_output_args, comma_ints

    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--hf", required=True, help="directory of a transformers causal LM (Llama / Qwen2 family)")
    p.add_argument("--data", nargs="+", required=True, help="indexed-dataset prefixes or .jsonl files")
    p.add_argument("--tokenizer", help="for .jsonl data: tokenizer file or folder (default: --hf)")
    p.add_argument("--text-key", default="text", help="for .jsonl data: the field holding the text")
    p.add_argument("--lengths", type=comma_ints, default=[4096, 8192], help="comma-separated context lengths (tokens)")
    p.add_argument("--documents", type=int, default=4, help="documents scored per length")
    p.add_argument("--tail", type=int, default=1024, help="tail_ppl covers the last this many predictions")
    p.add_argument("--chunk", type=int, default=4096, help="positions per output-head chunk (memory)")
    add_eval_output_args(p)
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")  # TE/apex absent: irrelevant here
    logging.getLogger("megatron").setLevel(logging.WARNING)  # its dataset readers log every file they open

    from megatron_ultralong.config import ConfigError
    from megatron_ultralong.atomic import atomic_path
    from megatron_ultralong.eval.perplexity import (EvalError, documents_from_indexed, documents_from_jsonl,
                                                    hf_nll_fn, perplexity_by_length, plan_windows)
    from megatron_ultralong.eval.hf import check_hf_folder, load_hf_model
    from megatron_ultralong.eval.plots import perplexity_plot

    try:
        check_hf_folder(a.hf)
        jsonl = [d for d in a.data if d.endswith(".jsonl")]
        if jsonl and len(jsonl) != len(a.data):
            raise EvalError("--data: give either .jsonl files or indexed-dataset prefixes, not both")
        if jsonl:
            for d in jsonl:
                if not os.path.isfile(d):
                    raise EvalError(f"--data {d}: no such file")
            from megatron_ultralong.data.tokenizer import load_tokenizer

            docs = documents_from_jsonl(jsonl, load_tokenizer(a.tokenizer or a.hf), a.text_key)
        else:
            docs = documents_from_indexed(a.data)
        plan = plan_windows(docs, a.lengths, a.documents)  # input errors before the (long) model load
        with open(os.path.join(a.hf, "config.json")) as f:
            vocab = int(json.load(f).get("vocab_size") or 0)
        if vocab and any(len(w) and int(w.max()) >= vocab for _, windows in plan for w in windows):
            raise EvalError(f"--data holds token ids >= the model's vocab_size {vocab}: it was tokenized with "
                            f"another tokenizer; preprocess it with the model's")
        if a.tail < 1 or a.chunk < 1:
            raise EvalError(f"--tail {a.tail} / --chunk {a.chunk}: both must be >= 1")
        model = load_hf_model(a.hf, a.dtype)
        res = perplexity_by_length(hf_nll_fn(model, a.chunk), docs, a.lengths, a.documents, a.tail, plan=plan)
    except (EvalError, ConfigError) as e:  # DataError is a ConfigError
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    with atomic_path(os.path.join(a.out, "perplexity.json")) as tmp, open(tmp, "w") as f:
        json.dump({"model": os.path.abspath(a.hf), "data": a.data, **res}, f, indent=1)
    perplexity_plot([r["length"] for r in res["results"]], [r["tail_ppl"] for r in res["results"]],
                    os.path.join(a.out, "perplexity.png"),
                    title=f"{os.path.basename(os.path.normpath(a.hf))}: last-{a.tail} perplexity")
    for r in res["results"]:
        print(f"length {r['length']:>9,}: ppl {r['ppl']:.3f}  last-{r['tail']} ppl {r['tail_ppl']:.3f}  "
              f"({r['documents']} docs)")
    print(f"-> {a.out}/perplexity.json, perplexity.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
