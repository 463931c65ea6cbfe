#!/usr/bin/env python3
"""Perplexity vs context length on held-out documents; installed as `ultralong-eval-perplexity` (same options).

    python tools/eval_perplexity.py --hf hf/llama31-8b-4m --data data/heldout_idx/books --out eval/ppl

The code and its options: megatron_ultralong/cli/eval_perplexity.py (--help).
"""
import sys

from megatron_ultralong.cli.eval_perplexity import main

if __name__ == "__main__":
    sys.exit(main())
