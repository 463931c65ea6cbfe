#!/usr/bin/env python3
"""InfiniteBench tasks; installed as `ultralong-eval-infinitebench` (same options).

    python tools/eval_infinitebench.py --hf hf/llama31-8b-4m --data data/InfiniteBench --out eval/infbench_4m

The code and its options: megatron_ultralong/cli/eval_infinitebench.py (--help).
"""
import sys

from megatron_ultralong.cli.eval_infinitebench import main

if __name__ == "__main__":
    sys.exit(main())
