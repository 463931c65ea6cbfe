#!/usr/bin/env python3
"""Short tasks through lm-evaluation-harness, model vs base; installed as `ultralong-eval-lm` (same options).

    python tools/eval_lm.py --hf hf/llama31-8b-4m --hf-base hf/llama31-8b-instruct --suite paper \
        --confirm-run-unsafe-code --out eval/lm_4m

The code and its options: megatron_ultralong/cli/eval_lm.py (--help).
"""
import sys

from megatron_ultralong.cli.eval_lm import main

if __name__ == "__main__":
    sys.exit(main())
