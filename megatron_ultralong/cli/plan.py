"""tools/plan.py / ultralong-plan: how many GPUs and which TP/PP/CP/DP layout for a model card and a length.

    python tools/plan.py --model llama3.1-8b --target-length 4194304 --gpu h100-80gb --gpus-per-node 8 \
        [--nodes N] [--json]

Formulas and constants: docs/planner.md. An infeasible request exits 2 with one line (why, and what would fit).
"""
from __future__ import annotations

import json
from typing import List, Optional

from . import OneLineParser, bad_input

TOKENS_PER_STEP = 8 * 1024 * 1024
"""Default global batch: 8M tokens per step (the CPT recipes'), at least one sequence."""


def build_parser() -> OneLineParser:
    from ..planner import GPUS

    p = OneLineParser(prog="tools/plan.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model card: a recipe name (llama3.1-8b, qwen2-7b) or YAML path")
    p.add_argument("--target-length", type=int, required=True, help="tokens per sequence")
    p.add_argument("--gpu", default="h100-80gb", choices=sorted(GPUS), help="GPU model")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node")
    p.add_argument("--nodes", type=int, default=None,
                   help="rank this cluster's layouts (default: the best layout of each node count that fits, "
                        "fewest nodes first)")
    p.add_argument("--global-batch", type=int, default=None,
                   help="sequences per step (default: 8M tokens per step, at least 1)")
    p.add_argument("--recompute", default="full", choices=["none", "selective", "full"], help="activation recompute")
    p.add_argument("--top", type=int, default=10, help="table rows")
    p.add_argument("--json", action="store_true", help="print a JSON list of layouts, the recommended one first")
    return p


def table(plans) -> List[str]:
    """The text table of ``plans`` (first row: the recommended layout)."""
    head = (f"{'':2}{'tp':>3} {'pp':>3} {'cp':>4} {'dp':>4} {'nodes':>5}  {'weights':>7} {'grads':>6} {'optim':>6} "
            f"{'activ':>6} {'logits':>6} {'total':>6} GB  {'step s':>8} {'tokens/s':>10} {'mfu':>5}")
    rows = [head]
    for i, p in enumerate(plans):
        g, lay = p.memory_gb, p.layout
        rows.append(f"{'*' if i == 0 else ' ':2}{lay.tp:>3} {lay.pp:>3} {lay.cp:>4} {lay.dp:>4} {p.nodes:>5}  "
                    f"{g['weights']:>7.1f} {g['grads']:>6.1f} {g['optimizer']:>6.1f} {g['activations']:>6.1f} "
                    f"{g['logits']:>6.1f} {g['total']:>6.1f}     {p.step_time_s:>8.1f} {p.tokens_per_s:>10.0f} "
                    f"{p.mfu:>5.1%}")
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    from ..config import ConfigError, load_recipe
    from ..planner import GPUS, Infeasible, Workload, param_count, plan

    args = build_parser().parse_args(argv)
    for name in ("target_length", "gpus_per_node", "nodes", "global_batch", "top"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return bad_input(f"--{name.replace('_', '-')}={value}: must be a positive integer")
    try:
        model = load_recipe(args.model).model
    except ConfigError as e:
        return bad_input(f"--model {args.model}: {e}")
    batch = args.global_batch or max(1, TOKENS_PER_STEP // args.target_length)
    work = Workload(seq_length=args.target_length, global_batch=batch, recompute=args.recompute)
    try:
        plans = plan(model, work, GPUS[args.gpu], args.gpus_per_node, args.nodes)
    except Infeasible as e:
        return bad_input(e)
    if args.json:
        print(json.dumps([p.as_dict() for p in plans], indent=1))
        return 0
    print(f"{args.model}: {param_count(model):,} parameters; {args.target_length} tokens × batch {batch} per step "
          f"on {args.gpu} ({args.gpus_per_node} per node); * = recommended (docs/planner.md)")
    print("\n".join(table(plans[:args.top])))
    return 0
