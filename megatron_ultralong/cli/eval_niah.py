"""Passkey needle-in-a-haystack over a length × depth grid, on an exported Hugging Face model.

    ultralong-eval-niah --hf hf/llama31-8b-4m --lengths 131072,1048576 --depths 0,0.25,0.5,0.75,1 --out eval/niah
    python tools/eval_niah.py ...                                  # the same, from a checkout

Writes <out>/niah.json (every cell and answer) and <out>/niah.png (heatmap). Exit 0 when it ran (whatever the
accuracy; add --min-accuracy to make it a gate), 2 on bad input.
"""
from __future__ import annotations

import os

from . import OneLineParser, comma_floats, comma_ints
from . import evaluation as ev


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split("\n")[0])
    ev.add_model_arg(p)
    p.add_argument("--lengths", type=comma_ints, default=[4096, 8192], help="comma-separated context lengths (tokens)")
    p.add_argument("--depths", type=comma_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0], help="comma-separated depths")
    ev.add_sampling_args(p, "trials per cell")
    ev.add_prompt_args(p)
    ev.add_eval_output_args(p)
    p.add_argument("--min-accuracy", type=float, default=None, help="exit 1 below this overall accuracy")
    a = p.parse_args(argv)

    from ..eval.hf import hf_generate
    from ..eval.niah import check_grid, run_grid
    from ..eval.plots import niah_heatmap

    fmt = ev.prompt_format(a)

    def check(tok):  # input errors before the model load
        check_grid(tok, a.lengths, a.depths, a.samples, fmt)
        ev.warn_beyond_window(a.hf, a.lengths, "--lengths")

    def evaluate(model, tok, _) -> int:
        grid = run_grid(hf_generate(model, tok), tok, a.lengths, a.depths, a.samples, a.seed, fmt=fmt)
        ev.write_result(a.out, "niah.json", a.hf, grid, dtype=a.dtype)
        niah_heatmap(grid, os.path.join(a.out, "niah.png"), title=ev.model_name(a.hf))
        print(f"accuracy {grid['accuracy']:.1%} over {len(grid['cells'])} cells -> {a.out}/niah.json, niah.png")
        return ev.below_minimum(grid["accuracy"], a.min_accuracy, "--min-accuracy", "accuracy")

    return ev.run_eval(a, check=check, evaluate=evaluate)
