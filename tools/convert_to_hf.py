#!/usr/bin/env python3
"""Megatron distributed checkpoint (any TP/PP layout) -> Hugging Face model folder that transformers / vLLM load.

    python tools/convert_to_hf.py --ckpt runs/cpt_1m/checkpoints --out hf/llama31-8b-1m --dtype bf16 --verify

Writes sharded safetensors + model.safetensors.index.json + config.json (YaRN as rope_scaling, readable by
transformers 4.x/5.x and vLLM) + tokenizer files (from hf_assets next to the checkpoint or along its init_from
chain, or --hf-assets). --verify loads the result with transformers and compares logits with the Megatron model on
a random batch (default: twice the original window for YaRN models), printing the max abs difference.
Exit 0 on success, 1 when verification fails, 2 on bad input (one line on stderr).
"""
import os
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None) -> int:
    from megatron_ultralong.cli import OneLineParser

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
    from megatron_ultralong.checkpoint import CheckpointError
    from megatron_ultralong.config import ConfigError
    from megatron_ultralong.convert import ConvertError, VerificationError, convert_megatron_to_hf

    try:
        r = convert_megatron_to_hf(a.ckpt, a.out, dtype=a.dtype, hf_assets=a.hf_assets,
                                   max_shard_size=a.max_shard_size, verify=a.verify,
                                   verify_seq_len=a.verify_seq_len, verify_tol=a.verify_tol, progress=not a.quiet)
    except VerificationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ConvertError, ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rope = r["config"].get("rope_scaling") or {"rope_type": "default"}
    verified = f"; verified: max abs logit diff {r['max_abs_diff']:.2e}" if r["max_abs_diff"] is not None else ""
    print(f"wrote {r['path']} ({r['arch']}, {r['dtype']}, {r['shards']} shard(s), {r['bytes'] / 1e9:.2f} GB, "
          f"rope {rope['rope_type']}, max_position_embeddings {r['config']['max_position_embeddings']}) in "
          f"{r['seconds']:.1f}s{verified}")
    return 0


if __name__ == "__main__":  # dist_checkpointing's writer starts a spawned helper process that re-imports this file
    sys.exit(main())
