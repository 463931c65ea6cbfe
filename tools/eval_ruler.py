#!/usr/bin/env python3
"""RULER-style long-context tasks; installed as `ultralong-eval-ruler` (same options).

    python tools/eval_ruler.py --hf hf/llama31-8b-4m --lengths 131072,1048576 --samples 4 --out eval/ruler_4m

The code and its options: megatron_ultralong/cli/eval_ruler.py (--help).
"""
import sys

from megatron_ultralong.cli.eval_ruler import main

if __name__ == "__main__":
    sys.exit(main())
