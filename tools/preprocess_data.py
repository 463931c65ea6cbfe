#!/usr/bin/env python3
"""Data preparation (text, mixture, chat, synthetic); installed as `ultralong-preprocess-data` (same options).

    python tools/preprocess_data.py text --input data/raw/*.jsonl --tokenizer tokenizer.json --output-dir data/idx

The code and its options (the mixture defaults too): megatron_ultralong/cli/preprocess_data.py (--help).
"""
import sys

from megatron_ultralong.cli.preprocess_data import main

if __name__ == "__main__":
    sys.exit(main())
