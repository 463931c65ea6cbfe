"""RULER-style long-context tasks (multi-key/value/query NIAH, variable tracking) on an HF model or a checkpoint.

    ultralong-eval-ruler --hf hf/llama31-8b-4m --lengths 131072,1048576 --samples 4 --out eval/ruler_4m
    python tools/eval_ruler.py ...                                 # the same, from a checkout
    torchrun --nproc-per-node 8 tools/eval_ruler.py --ckpt runs/cpt_4m/checkpoints --tp 2 --cp 4 ...  # CP-sharded

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
    ev.add_model_arg(p, ckpt=True)
    p.add_argument("--tokenizer", default=None, help="with --ckpt: tokenizer.json or HF folder (default: the "
                                                      "checkpoint's recipe or hf_assets)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from: {', '.join(TASKS)}")
    p.add_argument("--lengths", type=comma_ints, default=[4096, 8192], help="comma-separated context lengths (tokens)")
    ev.add_sampling_args(p, "samples per (task, length) cell")
    ev.add_prompt_args(p)
    ev.add_eval_output_args(p)
    p.add_argument("--min-score", type=float, default=None, help="exit 1 below this average score")
    a = p.parse_args(argv)

    from ..eval.plots import ruler_heatmap
    from ..eval.ruler import plan_ruler, run_ruler

    tasks, fmt = comma_strs(a.tasks), ev.prompt_format(a)

    def check(tok, inference_plan):  # input errors before the model load
        plan = plan_ruler(tok, tasks, a.lengths, a.samples, a.seed, fmt)
        ev.check_lengths(a, inference_plan, a.lengths, "--lengths")
        return plan

    def evaluate(run, tok, plan) -> int:
        res = run_ruler(run.generate(tok), tok, tasks, a.lengths, a.samples, a.seed, log=run.log, plan=plan, fmt=fmt)
        if not run.writes:
            return 0
        ev.write_result(a.out, "ruler.json", run.source, res, **run.record)
        ruler_heatmap(res, os.path.join(a.out, "ruler.png"), title=ev.model_name(run.source))
        for t in tasks:
            print(f"{t:<18} " + "  ".join(f"{n:>9,}: {res['scores'][t][str(n)]:.2f}" for n in a.lengths))
        print(f"average {res['average']:.1%} over {len(res['cells'])} cells -> {a.out}/ruler.json, ruler.png")
        return ev.below_minimum(res["average"], a.min_score, "--min-score", "average score")

    return ev.run_model_eval(a, check=check, evaluate=evaluate)
