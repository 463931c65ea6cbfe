"""RULER-style long-context tasks (multi-key/value/query NIAH, variable tracking) on an exported HF model.

    ultralong-eval-ruler --hf hf/llama31-8b-4m --lengths 131072,1048576 --samples 4 --out eval/ruler_4m
    python tools/eval_ruler.py ...                                 # the same, from a checkout

Writes <out>/ruler.json (every cell, answer and completion) and <out>/ruler.png (task × length heatmap). Exit 0
when it ran (whatever the scores; --min-score makes it a gate), 2 on bad input. See docs/eval.md.
"""
from __future__ import annotations

import os

from . import OneLineParser, comma_ints, comma_strs
from . import evaluation as ev


def main(argv=None) -> int:
    from ..eval.ruler import TASKS

    p = OneLineParser(description=__doc__.split("\n")[0])
    ev.add_model_arg(p)
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from: {', '.join(TASKS)}")
    p.add_argument("--lengths", type=comma_ints, default=[4096, 8192], help="comma-separated context lengths (tokens)")
    ev.add_sampling_args(p, "samples per (task, length) cell")
    ev.add_prompt_args(p)
    ev.add_eval_output_args(p)
    p.add_argument("--min-score", type=float, default=None, help="exit 1 below this average score")
    a = p.parse_args(argv)

    from ..eval.hf import hf_generate
    from ..eval.plots import ruler_heatmap
    from ..eval.ruler import plan_ruler, run_ruler

    tasks, fmt = comma_strs(a.tasks), ev.prompt_format(a)

    def check(tok):  # input errors before the model load
        plan = plan_ruler(tok, tasks, a.lengths, a.samples, a.seed, fmt)
        ev.warn_beyond_window(a.hf, a.lengths, "--lengths")
        return plan

    def evaluate(model, tok, plan) -> int:
        res = run_ruler(hf_generate(model, tok), tok, tasks, a.lengths, a.samples, a.seed, plan=plan, fmt=fmt)
        ev.write_result(a.out, "ruler.json", a.hf, res, dtype=a.dtype)
        ruler_heatmap(res, os.path.join(a.out, "ruler.png"), title=ev.model_name(a.hf))
        for t in tasks:
            print(f"{t:<18} " + "  ".join(f"{n:>9,}: {res['scores'][t][str(n)]:.2f}" for n in a.lengths))
        print(f"average {res['average']:.1%} over {len(res['cells'])} cells -> {a.out}/ruler.json, ruler.png")
        return ev.below_minimum(res["average"], a.min_score, "--min-score", "average score")

    return ev.run_eval(a, check=check, evaluate=evaluate)
