#!/usr/bin/env python3
"""Passkey needle-in-a-haystack over a length × depth grid, on an exported Hugging Face model.

    python tools/eval_niah.py --hf hf/llama31-8b-4m --lengths 131072,1048576 --depths 0,0.25,0.5,0.75,1 --out eval/niah

Writes <out>/niah.json (every cell and answer) and <out>/niah.png (heatmap). Exit 0 when it ran (whatever the
accuracy; add --min-accuracy to make it a gate), 2 on bad input.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None) -> int:
    from megatron_ultralong.cli import OneLineParser, add_eval_output_args, below_minimum, comma_floats, comma_ints

    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--hf", required=True, help="directory of a transformers causal LM with its tokenizer files")
    p.add_argument("--lengths", type=comma_ints, default=[4096, 8192], help="comma-separated context lengths (tokens)")
    p.add_argument("--depths", type=comma_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0], help="comma-separated depths")
    p.add_argument("--samples", type=int, default=1, help="trials per cell")
    p.add_argument("--seed", type=int, default=0, help="seed of the random keys and values")
    add_eval_output_args(p)
    p.add_argument("--min-accuracy", type=float, default=None, help="exit 1 below this overall accuracy")
    a = p.parse_args(argv)

    from megatron_ultralong.atomic import atomic_path
    from megatron_ultralong.eval.hf import load_hf_model, load_hf_tokenizer
    from megatron_ultralong.eval.niah import EvalError, check_grid, hf_generate_fn, run_grid
    from megatron_ultralong.eval.plots import niah_heatmap

    try:
        tok = load_hf_tokenizer(a.hf)
        check_grid(tok, a.lengths, a.depths, a.samples)  # input errors before the model load
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = load_hf_model(a.hf, a.dtype)
    grid = run_grid(hf_generate_fn(model, tok), tok, a.lengths, a.depths, a.samples, a.seed)
    with atomic_path(os.path.join(a.out, "niah.json")) as tmp, open(tmp, "w") as f:
        json.dump({"model": os.path.abspath(a.hf), **grid}, f, indent=1)
    niah_heatmap(grid, os.path.join(a.out, "niah.png"), title=os.path.basename(os.path.normpath(a.hf)))
    print(f"accuracy {grid['accuracy']:.1%} over {len(grid['cells'])} cells -> {a.out}/niah.json, niah.png")
    return below_minimum(grid["accuracy"], a.min_accuracy, "--min-accuracy", "accuracy")


if __name__ == "__main__":
    sys.exit(main())
