"""Passkey needle-in-a-haystack over a length × depth grid, on an exported HF model or a Megatron checkpoint.

    ultralong-eval-niah --hf hf/llama31-8b-4m --lengths 131072,1048576 --depths 0,0.25,0.5,0.75,1 --out eval/niah
    python tools/eval_niah.py ...                                  # the same, from a checkout
    torchrun --nproc-per-node 8 tools/eval_niah.py --ckpt runs/cpt_4m/checkpoints --tp 2 --cp 4 ...   # CP-sharded

Writes <out>/niah.json (every cell and answer) and <out>/niah.png (heatmap). Exit 0 when it ran (whatever the
accuracy; add --min-accuracy to make it a gate), 2 on bad input.
"""
from __future__ import annotations

import os

from . import OneLineParser, comma_floats, comma_ints
from . import evaluation as ev


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split("\n")[0])
    ev.add_model_arg(p, ckpt=True)
    p.add_argument("--tokenizer", default=None, help="with --ckpt: tokenizer.json or HF folder (default: the "
                                                      "checkpoint's recipe or hf_assets)")
    p.add_argument("--lengths", type=comma_ints, default=[4096, 8192], help="comma-separated context lengths (tokens)")
    p.add_argument("--depths", type=comma_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0], help="comma-separated depths")
    ev.add_sampling_args(p, "trials per cell")
    ev.add_prompt_args(p)
    ev.add_eval_output_args(p)
    p.add_argument("--min-accuracy", type=float, default=None, help="exit 1 below this overall accuracy")
    a = p.parse_args(argv)

    from ..eval.niah import check_grid, run_grid
    from ..eval.plots import niah_heatmap

    fmt = ev.prompt_format(a)

    def check(tok, plan):  # input errors before the model load
        check_grid(tok, a.lengths, a.depths, a.samples, fmt)
        ev.check_lengths(a, plan, a.lengths, "--lengths")

    def evaluate(run, tok, _) -> int:
        grid = run_grid(run.generate(tok), tok, a.lengths, a.depths, a.samples, a.seed, log=run.log, fmt=fmt)
        if run.writes:
            ev.write_result(a.out, "niah.json", run.source, grid, **run.record)
            niah_heatmap(grid, os.path.join(a.out, "niah.png"), title=ev.model_name(run.source))
            print(f"accuracy {grid['accuracy']:.1%} over {len(grid['cells'])} cells -> {a.out}/niah.json, niah.png")
        return ev.below_minimum(grid["accuracy"], a.min_accuracy, "--min-accuracy", "accuracy") if run.writes else 0

    return ev.run_model_eval(a, check=check, evaluate=evaluate)
