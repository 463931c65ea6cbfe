"""Hugging Face model folder -> Megatron distributed checkpoint (the trainer's checkpoint.init_from).

    ultralong-convert-from-hf --hf hf/Llama-3.1-8B-Instruct --out ckpt/llama31-8b --tp 8 --pp 1 --dtype bf16
    python tools/convert_from_hf.py ...                            # the same, from a checkout

Writes <out>/iter_0000000, <out>/latest and <out>/hf_assets (source config + tokenizer files, used by
tools/convert_to_hf.py). CPU, one process; --tp/--pp are checked and recorded (the checkpoint reshards on load).
Exit 0 on success, 2 on bad input (one line on stderr). See docs/convert.md.
"""
from __future__ import annotations

import os
import warnings

from . import OneLineParser, bad_input


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--hf", required=True, help="HF model folder: config.json + *.safetensors (+ tokenizer files)")
    p.add_argument("--out", required=True, help="checkpoint directory to create (must not exist, or be empty)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size the checkpoint is meant for")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size the checkpoint is meant for")
    p.add_argument("--dtype", choices=["bf16", "fp32", "fp16"], default=None,
                   help="dtype of the stored weights (default: config.json's)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    a = p.parse_args(argv)

    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # conversion is CPU work; keep the GPUs (and their init) out of it
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")  # TE/apex absent: irrelevant here
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..convert import ConvertError, convert_hf_to_megatron

    try:
        r = convert_hf_to_megatron(a.hf, a.out, tp=a.tp, pp=a.pp, dtype=a.dtype, progress=not a.quiet)
    except (ConvertError, ConfigError, CheckpointError) as e:
        return bad_input(e)
    print(f"wrote {r['path']} ({r['arch']}, {r['dtype']}, meant for tp={r['tp']} pp={r['pp']}) in "
          f"{r['seconds']:.1f}s; train from it with checkpoint.init_from={r['path']}")
    return 0
