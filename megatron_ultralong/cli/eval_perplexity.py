"""Perplexity vs context length on held-out long documents, on an exported HF model or a Megatron checkpoint.

    ultralong-eval-perplexity --hf hf/llama31-8b-4m --data data/heldout_idx/books \
        --lengths 8192,131072,1048576 --documents 4 --tail 4096 --out eval/ppl
    python tools/eval_perplexity.py ...                            # the same, from a checkout
    torchrun --nproc-per-node 4 tools/eval_perplexity.py --ckpt runs/cpt_1m/checkpoints --cp 4 ...  # sharded prefill

--data: indexed-dataset prefixes (tools/preprocess_data.py text, same tokenizer as the model) or .jsonl files
with a text field (tokenized with --tokenizer, default: the model's). Writes <out>/perplexity.json and
<out>/perplexity.png. Exit 0 when it ran, 2 on bad input (one line on stderr). See docs/eval.md.
"""
from __future__ import annotations

import logging
import os
import warnings

from . import OneLineParser, bad_input, comma_ints
from .evaluation import (
    ModelRun,
    add_eval_output_args,
    add_model_arg,
    check_lengths,
    close_run,
    model_name,
    open_checkpoint_run,
    plan_checkpoint_run,
    write_result,
)


def _checkpoint_inputs(a, plan):
    """(documents, plan_windows plan) of --data for a --ckpt run: eval.perplexity.prepare_inputs' checks, with the
    checkpoint's tokenizer and vocabulary instead of an HF folder's."""
    import os

    from ..eval import EvalError
    from ..eval.perplexity import documents_from_indexed, documents_from_jsonl, plan_windows
    from ..inference.loading import checkpoint_tokenizer

    jsonl = [d for d in a.data if d.endswith(".jsonl")]
    if jsonl and len(jsonl) != len(a.data):
        raise EvalError("--data: give either .jsonl files or indexed-dataset prefixes, not both")
    for d in jsonl:
        if not os.path.isfile(d):
            raise EvalError(f"--data {d}: no such file")
    docs = documents_from_jsonl(jsonl, checkpoint_tokenizer(plan), a.text_key) if jsonl else \
        documents_from_indexed(a.data)
    windows = plan_windows(docs, a.lengths, a.documents)
    vocab = plan.cfg.model.vocab_size
    if any(len(w) and int(w.max()) >= vocab for _, ws in windows for w in ws):
        raise EvalError(f"--data holds token ids >= the model's vocab_size {vocab}: it was tokenized with "
                        f"another tokenizer; preprocess it with the model's")
    if a.tail < 1 or a.chunk < 1:
        raise EvalError(f"--tail {a.tail} / --chunk {a.chunk}: both must be >= 1")
    return docs, windows


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split("\n")[0])
    add_model_arg(p, help="directory of a transformers causal LM (Llama / Qwen2 family)", ckpt=True)
    p.add_argument("--data", nargs="+", required=True, help="indexed-dataset prefixes or .jsonl files")
    p.add_argument("--tokenizer", help="for .jsonl data: tokenizer file or folder (default: --hf's, or the "
                                       "checkpoint's recipe / hf_assets)")
    p.add_argument("--text-key", default="text", help="for .jsonl data: the field holding the text")
    p.add_argument("--lengths", type=comma_ints, default=[4096, 8192], help="comma-separated context lengths (tokens)")
    p.add_argument("--documents", type=int, default=4, help="documents scored per length")
    p.add_argument("--tail", type=int, default=1024, help="tail_ppl covers the last this many predictions")
    p.add_argument("--chunk", type=int, default=4096, help="positions per output-head chunk (memory)")
    add_eval_output_args(p)
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")  # TE/apex absent: irrelevant here
    logging.getLogger("megatron").setLevel(logging.WARNING)  # its dataset readers log every file they open

    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..eval import EvalError
    from ..eval.hf import load_hf_model
    from ..eval.perplexity import perplexity_by_length, prepare_inputs
    from ..eval.plots import perplexity_plot
    from ..inference import InferenceError

    try:  # input errors before the (long) model load
        if a.ckpt:
            plan = plan_checkpoint_run(a, a.tokenizer)
            check_lengths(a, plan, a.lengths, "--lengths")
            docs, windows = _checkpoint_inputs(a, plan)
        else:
            docs, windows = prepare_inputs(a.hf, a.data, a.tokenizer, a.text_key, a.lengths, a.documents, a.tail,
                                           a.chunk)
            check_lengths(a, None, a.lengths, "--lengths")
    except (EvalError, ConfigError, CheckpointError, InferenceError) as e:  # DataError is a ConfigError
        return bad_input(e)
    run = open_checkpoint_run(a, plan) if a.ckpt else \
        ModelRun(a.hf, model=load_hf_model(a.hf, a.dtype), record={"dtype": a.dtype})
    try:
        res = perplexity_by_length(run.nll(a.chunk), docs, a.lengths, a.documents, a.tail, log=run.log, plan=windows)
    except EvalError as e:
        return bad_input(e)
    finally:
        close_run(run)
    if not run.writes:
        return 0
    write_result(a.out, "perplexity.json", run.source, res, data=a.data, **run.record)
    perplexity_plot([r["length"] for r in res["results"]], [r["tail_ppl"] for r in res["results"]],
                    os.path.join(a.out, "perplexity.png"), title=f"{model_name(run.source)}: last-{a.tail} perplexity")
    for r in res["results"]:
        print(f"length {r['length']:>9,}: ppl {r['ppl']:.3f}  last-{r['tail']} ppl {r['tail_ppl']:.3f}  "
              f"({r['documents']} docs)")
    print(f"-> {a.out}/perplexity.json, perplexity.png")
    return 0
