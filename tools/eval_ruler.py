#!/usr/bin/env python3
"""RULER-style long-context tasks (multi-key/value/query NIAH, variable tracking) on an exported HF model.

    python tools/eval_ruler.py --hf hf/llama31-8b-4m --lengths 131072,1048576 --samples 4 --out eval/ruler_4m

Writes <out>/ruler.json (every cell, answer and completion) and <out>/ruler.png (task × length heatmap). Exit 0
when it ran (whatever the scores; --min-score makes it a gate), 2 on bad input. See docs/eval.md.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None) -> int:
    from megatron_ultralong.eval.ruler import TASKS

    from megatron_ultralong.cli import OneLineParser, add_eval_output_args, below_minimum, comma_ints

    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--hf", required=True, help="directory of a transformers causal LM with its tokenizer files")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from: {', '.join(TASKS)}")
    p.add_argument("--lengths", type=comma_ints, default=[4096, 8192], help="comma-separated context lengths (tokens)")
    p.add_argument("--samples", type=int, default=1, help="samples per (task, length) cell")
    p.add_argument("--seed", type=int, default=0, help="seed of the random keys and values")
    add_eval_output_args(p)
    p.add_argument("--min-score", type=float, default=None, help="exit 1 below this average score")
    a = p.parse_args(argv)

    from megatron_ultralong.atomic import atomic_path
    from megatron_ultralong.eval.hf import load_hf_model, load_hf_tokenizer
    from megatron_ultralong.eval.plots import ruler_heatmap
    from megatron_ultralong.eval.ruler import EvalError, hf_generate, plan_ruler, run_ruler

    tasks = [t for t in a.tasks.split(",") if t]
    try:
        tok = load_hf_tokenizer(a.hf)
        plan = plan_ruler(tok, tasks, a.lengths, a.samples, a.seed)  # input errors before the model load
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = load_hf_model(a.hf, a.dtype)
    res = run_ruler(hf_generate(model, tok), tok, tasks, a.lengths, a.samples, a.seed, plan=plan)
    os.makedirs(a.out, exist_ok=True)
    with atomic_path(os.path.join(a.out, "ruler.json")) as tmp, open(tmp, "w") as f:
        json.dump({"model": os.path.abspath(a.hf), **res}, f, indent=1)
    ruler_heatmap(res, os.path.join(a.out, "ruler.png"), title=os.path.basename(os.path.normpath(a.hf)))
    for t in tasks:
        print(f"{t:<18} " + "  ".join(f"{n:>9,}: {res['scores'][t][str(n)]:.2f}" for n in a.lengths))
    print(f"average {res['average']:.1%} over {len(res['cells'])} cells -> {a.out}/ruler.json, ruler.png")
    return below_minimum(res["average"], a.min_score, "--min-score", "average score")


if __name__ == "__main__":
    sys.exit(main())
