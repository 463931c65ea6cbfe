"""A tiny YaRN Llama (fp32) as an HF folder and as the Megatron checkpoint converted from it, and engine runs on
N gloo ranks; shared by the inference tests."""
from __future__ import annotations

from typing import List, Sequence

import torch

from tests.convert.helpers import save_hf, to_megatron

YARN_ROPE = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 4.0,
             "beta_slow": 1.0}
WINDOW = 256
"""The tiny model's rope window: YaRN 64 -> 256 tokens."""


def make_tiny_yarn(root, seed: int = 0):
    """(HF folder, Megatron checkpoint) of one random tiny YaRN Llama under ``root``."""
    hf, ckpt = root / "hf", root / "ckpt"
    save_hf(hf, seed=seed, max_position_embeddings=WINDOW, rope_scaling=dict(YARN_ROPE))
    to_megatron(hf, ckpt)
    return str(hf), str(ckpt)


def random_prompts(lengths: Sequence[int], vocab: int = 512, seed: int = 1) -> List[List[int]]:
    """Random prompts of the given lengths (ids 3 … vocab − 1: no BOS/EOS)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def hf_greedy(hf_dir: str, prompts, max_new_tokens: int):
    """(generated ids per prompt, fp32 logits [L, V] per prompt) of transformers' generate, one prompt at a time."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokens, logits = [], []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=0)
            tokens.append(out[0, len(p):].tolist())
            logits.append(model(ids).logits[0].float())
    return tokens, logits


def engine_run(rank, world, ckpt, tp, cp, prompts, max_new_tokens, batch_size=2):
    """On each rank: load the engine (tp × cp) and return its greedy ids, prefill logits and KV bytes."""
    from megatron_ultralong.inference.loading import load_engine, plan_inference

    engine = load_engine(plan_inference(ckpt, tp=tp, cp=cp, world_size=world, batch_size=batch_size))
    out = {"tokens": engine.generate(prompts, max_new_tokens), "kv_bytes": engine.kv_bytes,
           "kv_used_bytes": engine.kv_used_bytes}
    logits = [engine.logits(p) for p in prompts]  # collective: every rank runs it
    out["logits"] = logits if rank == 0 else None
    return out
