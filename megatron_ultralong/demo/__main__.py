"""python -m megatron_ultralong.demo [--out runs/demo] [--variant full|smoke] [--ablation]   (`make demo`)"""
import argparse
import sys
from pathlib import Path

from .plan import PLANS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m megatron_ultralong.demo",
                                description="The paper's effect at toy scale on CPU (docs/demo.md).")
    p.add_argument("--out", default="runs/demo", help="output folder (replaced on each run)")
    p.add_argument("--variant", choices=sorted(PLANS), default="full",
                   help="full: the measured demo (~15 min on 2 cores); smoke: every stage at minimal size (< 3 min)")
    p.add_argument("--ablation", action="store_true",
                   help="also run CPT + SFT with no scaling, linear, NTK-aware, YaRN beta=4 and beta=32")
    a = p.parse_args(argv)
    from . import run_demo
    from .stages import StageError

    try:
        run_demo(Path(a.out).resolve(), a.variant, a.ablation)
    except StageError as e:
        print(f"[demo] failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
