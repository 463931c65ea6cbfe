#!/usr/bin/env python3
"""Greedy generation from a Megatron checkpoint, CP-sharded prefill and KV cache; installed as `ultralong-generate`.

    python tools/generate.py --ckpt CKPT --input prompts.jsonl --out out.jsonl --max-new-tokens 32   # 1 process
    torchrun --nproc-per-node 8 tools/generate.py --ckpt CKPT ... --tp 2 --cp 4                       # TP 2 × CP 4

The code and its options: megatron_ultralong/cli/generate.py (--help).
"""
import sys

from megatron_ultralong.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
