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


def save_char_tokenizer(folder) -> None:
    """One token per printable character (ids 3 …), <s> = 1, </s> = 2; decode joins them back: NIAH / RULER text
    becomes prompts whose every character is a token of the tiny model."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(string.printable)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)


def make_tiny_yarn_with_text(root, seed: int = 0):
    """(HF folder, checkpoint) of a tiny YaRN Llama whose window is 1024 tokens (YaRN 256 -> 1024) with the
    character tokenizer: long enough for NIAH and RULER prompts of a few hundred characters."""
    hf, ckpt = root / "hf", root / "ckpt"
    rope = {**YARN_ROPE, "original_max_position_embeddings": 256}  # vocab: the 103 characters + 1
    save_hf(hf, seed=seed, tokenizer=False, max_position_embeddings=1024, rope_scaling=rope, vocab_size=104)
    save_char_tokenizer(hf)
    to_megatron(hf, ckpt)
    return str(hf), str(ckpt)


def weightless_copy(ckpt: str, dst) -> str:
    """A copy of a converted checkpoint without its weights (meta.json, 'latest', hf_assets): a tool that gets
    past its input checks on it fails on the load, so an input error from it was raised before any weight read."""
    import os
    import shutil

    from megatron_ultralong.checkpoint import resolve_checkpoint_path

    iter_dir = resolve_checkpoint_path(ckpt)
    os.makedirs(os.path.join(dst, os.path.basename(iter_dir)))
    shutil.copy(os.path.join(iter_dir, "meta.json"), os.path.join(dst, os.path.basename(iter_dir)))
    shutil.copy(os.path.join(ckpt, "latest"), dst)
    shutil.copytree(os.path.join(ckpt, "hf_assets"), os.path.join(dst, "hf_assets"))
    return str(dst)


def run_main(rank, world, module: str, argv):
    """``megatron_ultralong.cli.<module>.main(argv)`` on each rank; its exit code."""
    import importlib

    return importlib.import_module(f"megatron_ultralong.cli.{module}").main(list(map(str, argv)))
