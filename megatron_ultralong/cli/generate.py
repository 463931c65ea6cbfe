"""Greedy generation from a Megatron checkpoint with context parallelism: prefill sharded over CP ranks, KV cache
sharded, distributed decode; installed as `ultralong-generate`.

    torchrun --nproc-per-node 8 tools/generate.py --ckpt runs/cpt_1m/checkpoints --input prompts.jsonl \
        --out out.jsonl --max-new-tokens 32 --tp 2 --cp 4
    python tools/generate.py ...                                    # one process (tp = cp = 1), from a checkout

Input lines: {"ids": [...]} or {"text": "..."} (tokenizer: --tokenizer, else the checkpoint's recipe, else its
hf_assets). Rank 0 writes {"ids": [generated ids], "text": "..."} per input line, in input order. Exit 0 on
success, 2 on bad input (one line on stderr, before any weight is read). See docs/eval.md.
"""
from __future__ import annotations

import json
import warnings
from typing import List

from . import OneLineParser, bad_input
from .evaluation import add_layout_args


def read_prompts(path: str, tokenizer_fn) -> List[List[int]]:
    """Prompt ids of a jsonl file of {"ids": [...]} / {"text": "..."} lines; ``tokenizer_fn()`` gives the tokenizer
    when a text line needs one. InferenceError naming the line for anything else."""
    from ..inference import InferenceError

    prompts: List[List[int]] = []
    try:
        f = open(path)
    except OSError as e:
        raise InferenceError(f"--input {path}: cannot be read ({e.strerror})") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise InferenceError(f"{path}:{n}: not JSON; give one {{\"ids\": [...]}} or {{\"text\": \"...\"}} "
                                     f"per line") from None
            ids = record.get("ids") if isinstance(record, dict) else None
            text = record.get("text") if isinstance(record, dict) else None
            if isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                prompts.append(ids)
            elif isinstance(text, str):
                prompts.append(list(tokenizer_fn().encode(text)))
            else:
                raise InferenceError(f"{path}:{n}: needs an \"ids\" list of integers or a \"text\" string")
    if not prompts:
        raise InferenceError(f"--input {path}: no prompts in it")
    return prompts


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint directory (follows 'latest') or one iter_* folder")
    p.add_argument("--input", required=True, help="jsonl of prompts: {\"ids\": [...]} or {\"text\": \"...\"} lines")
    p.add_argument("--out", required=True, help="jsonl written by rank 0, one line per prompt, input order")
    p.add_argument("--max-new-tokens", type=int, required=True, help="greedy tokens per prompt (stops at EOS)")
    add_layout_args(p)
    p.add_argument("--batch-size", type=int, default=1, help="prompts decoded together (similar lengths batched)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json or HF folder (default: the checkpoint's)")
    p.add_argument("--dtype", choices=["bf16", "fp32", "fp16"], default=None,
                   help="dtype the model runs in (default: the checkpoint's)")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")  # TE/apex absent on CPU

    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..inference import InferenceError
    from ..inference.checks import check_prompt_length
    from ..inference.loading import checkpoint_tokenizer, load_engine, plan_inference

    tok = []
    try:
        if a.max_new_tokens < 1:
            raise InferenceError(f"--max-new-tokens {a.max_new_tokens}: must be >= 1")
        plan = plan_inference(a.ckpt, a.tp, a.cp, dtype=a.dtype, tokenizer=a.tokenizer, batch_size=a.batch_size)

        def tokenizer():
            if not tok:
                tok.append(checkpoint_tokenizer(plan))
            return tok[0]

        prompts = read_prompts(a.input, tokenizer)
        vocab = plan.cfg.model.vocab_size
        for n, ids in enumerate(prompts, 1):
            check_prompt_length(len(ids), plan.window, a.cp, what=f"{a.input}: prompt {n}")
            if ids and not 0 <= min(ids) <= max(ids) < vocab:
                raise InferenceError(f"{a.input}: prompt {n} holds ids outside the vocabulary 0..{vocab - 1}")
        try:
            tokenizer()
        except InferenceError:
            pass  # ids in, ids out: the text field stays null
    except (InferenceError, ConfigError, CheckpointError) as e:
        return bad_input(e)
    engine = load_engine(plan)
    outputs = engine.generate(prompts, a.max_new_tokens)
    import torch.distributed as dist

    if dist.get_rank() == 0:
        from ..atomic import atomic_path

        with atomic_path(a.out) as tmp, open(tmp, "w") as f:
            for ids in outputs:
                f.write(json.dumps({"ids": ids, "text": tok[0].decode(ids) if tok else None}) + "\n")
        print(f"{len(outputs)} prompt(s), {sum(map(len, outputs))} generated tokens -> {a.out} "
              f"(tp {a.tp} × cp {a.cp}; KV shard {engine.kv_bytes / 2**20:.1f} MiB per rank in the last batch)")
    from ..parallel import destroy_distributed

    destroy_distributed()
    return 0
