"""Megatron distributed checkpoint (any TP/PP layout) -> Hugging Face model folder that transformers / vLLM load.

    ultralong-convert-to-hf --ckpt runs/cpt_1m/checkpoints --out hf/llama31-8b-1m --dtype bf16 --verify
    python tools/convert_to_hf.py ...                              # the same, from a checkout

Writes sharded safetensors + index + config.json (YaRN as rope_scaling) + tokenizer files (from hf_assets along
the checkpoint's init_from chain, or --hf-assets). --verify compares transformers' logits with Megatron's.
Exit 0 on success, 1 when verification fails, 2 on bad input (one line on stderr). See docs/convert.md.
"""
from __future__ import annotations

import os
import sys
import warnings

from . import OneLineParser, bad_input


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint directory (follows 'latest') or one iter_* folder")
    p.add_argument("--out", required=True, help="HF folder to create (must not exist, or be empty)")
    p.add_argument("--dtype", choices=["bf16", "fp32", "fp16"], default=None,
                   help="dtype of the written weights (default: the checkpoint's)")
    p.add_argument("--hf-assets", default=None,
                   help="folder with the source config.json and tokenizer files (default: found via the checkpoint)")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB or 500MB")
    p.add_argument("--verify", action="store_true", help="compare transformers logits with Megatron's")
    p.add_argument("--verify-seq-len", type=int, default=None, help="tokens of the verification batch")
    p.add_argument("--verify-tol", type=float, default=1e-3,
                   help="largest accepted max abs logit difference (the Megatron side uses the exported dtype's "
                        "weights, so this measures the conversion, not the rounding)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    a = p.parse_args(argv)

    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # conversion (and the fp32 verification) run on CPU
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")  # TE/apex absent: irrelevant here
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..convert import ConvertError, VerificationError, convert_megatron_to_hf

    try:
        r = convert_megatron_to_hf(a.ckpt, a.out, dtype=a.dtype, hf_assets=a.hf_assets,
                                   max_shard_size=a.max_shard_size, verify=a.verify,
                                   verify_seq_len=a.verify_seq_len, verify_tol=a.verify_tol, progress=not a.quiet)
    except VerificationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1  # the export is there but does not match: not bad input
    except (ConvertError, ConfigError, CheckpointError) as e:
        return bad_input(e)
    rope = r["config"].get("rope_scaling") or {"rope_type": "default"}
    verified = f"; verified: max abs logit diff {r['max_abs_diff']:.2e}" if r["max_abs_diff"] is not None else ""
    print(f"wrote {r['path']} ({r['arch']}, {r['dtype']}, {r['shards']} shard(s), {r['bytes'] / 1e9:.2f} GB, "
          f"rope {rope['rope_type']}, max_position_embeddings {r['config']['max_position_embeddings']}) in "
          f"{r['seconds']:.1f}s{verified}")
    return 0
