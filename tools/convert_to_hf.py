#!/usr/bin/env python3
"""Megatron distributed checkpoint -> HF model folder; installed as `ultralong-convert-to-hf` (same options).

    python tools/convert_to_hf.py --ckpt runs/cpt_1m/checkpoints --out hf/llama31-8b-1m --dtype bf16 --verify

The code and its options: megatron_ultralong/cli/convert_to_hf.py (--help).
"""
import sys

from megatron_ultralong.cli.convert_to_hf import main

if __name__ == "__main__":  # dist_checkpointing's writer starts a spawned helper process that re-imports this file
    sys.exit(main())
