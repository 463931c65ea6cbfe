#!/usr/bin/env python3
"""HF model folder -> Megatron distributed checkpoint; installed as `ultralong-convert-from-hf` (same options).

    python tools/convert_from_hf.py --hf hf/Llama-3.1-8B-Instruct --out ckpt/llama31-8b --tp 8 --pp 1 --dtype bf16

The code and its options: megatron_ultralong/cli/convert_from_hf.py (--help).
"""
import sys

from megatron_ultralong.cli.convert_from_hf import main

if __name__ == "__main__":  # dist_checkpointing's writer starts a spawned helper process that re-imports this file
    sys.exit(main())
