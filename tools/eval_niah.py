#!/usr/bin/env python3
"""Passkey needle-in-a-haystack over a length × depth grid; installed as `ultralong-eval-niah` (same options).

    python tools/eval_niah.py --hf hf/llama31-8b-4m --lengths 131072,1048576 --depths 0,0.25,0.5,0.75,1 --out eval/niah

The code and its options: megatron_ultralong/cli/eval_niah.py (--help).
"""
import sys

from megatron_ultralong.cli.eval_niah import main

if __name__ == "__main__":
    sys.exit(main())
