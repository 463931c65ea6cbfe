#!/usr/bin/env python3
"""How many GPUs and which TP/PP/CP/DP layout for a length; installed as `ultralong-plan` (same options).

    python tools/plan.py --model llama3.1-8b --target-length 4194304 --gpu h100-80gb --gpus-per-node 8 --nodes 32

The code and its options: megatron_ultralong/cli/plan.py (--help).
"""
import sys

from megatron_ultralong.cli.plan import main

if __name__ == "__main__":
    sys.exit(main())
