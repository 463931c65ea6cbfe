"""Perplexity vs context length on held-out long documents, on an exported Hugging Face model.

    ultralong-eval-perplexity --hf hf/llama31-8b-4m --data data/heldout_idx/books \
        --lengths 8192,131072,1048576 --documents 4 --tail 4096 --out eval/ppl
    python tools/eval_perplexity.py ...                            # the same, from a checkout

--data: indexed-dataset prefixes (tools/preprocess_data.py text, same tokenizer as the model) or .jsonl files
with a text field (tokenized with --tokenizer, default: the tokenizer files in --hf). Writes <out>/perplexity.json
and <out>/perplexity.png. Exit 0 when it ran, 2 on bad input (one line on stderr). See docs/eval.md.
"""
from __future__ import annotations

import logging
import os
import warnings

from . import OneLineParser, bad_input, comma_ints
from .evaluation import add_eval_output_args, add_model_arg, model_name, warn_beyond_window, write_result


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split("\n")[0])
    add_model_arg(p, help="directory of a transformers causal LM (Llama / Qwen2 family)")
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

    from ..config import ConfigError
    from ..eval import EvalError
    from ..eval.hf import load_hf_model
    from ..eval.perplexity import hf_nll_fn, perplexity_by_length, prepare_inputs
    from ..eval.plots import perplexity_plot

    try:
        docs, plan = prepare_inputs(a.hf, a.data, a.tokenizer, a.text_key, a.lengths, a.documents, a.tail,
                                    a.chunk)  # input errors before the (long) model load
        warn_beyond_window(a.hf, a.lengths, "--lengths")
        model = load_hf_model(a.hf, a.dtype)
        res = perplexity_by_length(hf_nll_fn(model, a.chunk), docs, a.lengths, a.documents, a.tail, plan=plan)
    except (EvalError, ConfigError) as e:  # DataError is a ConfigError
        return bad_input(e)
    write_result(a.out, "perplexity.json", a.hf, res, data=a.data)
    perplexity_plot([r["length"] for r in res["results"]], [r["tail_ppl"] for r in res["results"]],
                    os.path.join(a.out, "perplexity.png"), title=f"{model_name(a.hf)}: last-{a.tail} perplexity")
    for r in res["results"]:
        print(f"length {r['length']:>9,}: ppl {r['ppl']:.3f}  last-{r['tail']} ppl {r['tail_ppl']:.3f}  "
              f"({r['documents']} docs)")
    print(f"-> {a.out}/perplexity.json, perplexity.png")
    return 0
