"""An exported Hugging Face model folder for evaluation: loading (one-line errors) and greedy decoding.

    check_hf_folder(path)             # EvalError unless it holds a config.json
    model_window(read_hf_config(path))   # tokens the model was made for (max_position_embeddings, rope_scaling)
    tok = load_hf_tokenizer(path)     # EvalError naming --hf-assets when no tokenizer files were exported
    model = load_hf_model(path, "bf16")   # on the GPU when there is one, in eval mode
    generate = hf_generate(model, tok)    # generate(prompt_ids[, max_new_tokens]) -> text
"""
from __future__ import annotations

import os
from typing import Callable, List, Optional

from . import EvalError


def check_hf_folder(path: str) -> None:
    """EvalError unless ``path`` is a folder with a config.json (an exported model)."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise EvalError(f"--hf {path}: no config.json there; point it at an exported HF model directory "
                        f"(python tools/convert_to_hf.py ...)")


def read_hf_config(path: str) -> dict:
    """The folder's config.json (EvalError unless there is one)."""
    import json

    check_hf_folder(path)
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def model_window(config: dict) -> Optional[int]:
    """The context a HF config says its model handles: max_position_embeddings, or factor ×
    original_max_position_embeddings of its rope_scaling (rope_parameters in transformers 5) when that is more;
    None when the config states neither."""
    window = config.get("max_position_embeddings")
    window = int(window) if isinstance(window, (int, float)) and window > 0 else None
    for key in ("rope_scaling", "rope_parameters"):
        rope = config.get(key)
        if isinstance(rope, dict) and isinstance(rope.get("factor"), (int, float)):
            base = rope.get("original_max_position_embeddings") or window
            if isinstance(base, (int, float)) and base > 0:
                window = max(window or 0, int(rope["factor"] * base))
    return window


def window_warning(path: str, lengths, flag: str) -> Optional[str]:
    """A one-line warning when a length in ``lengths`` exceeds the window of the model in ``path``, else None."""
    window = model_window(read_hf_config(path))
    over = sorted({int(n) for n in lengths if window is not None and n > window})
    if not over:
        return None
    return (f"warning: {flag} {','.join(map(str, over))} exceed the model's window of {window} tokens "
            f"(max_position_embeddings / rope_scaling in {os.path.join(path, 'config.json')}): scores there "
            f"measure extrapolation")


def load_hf_tokenizer(path: str):
    """transformers' AutoTokenizer of the folder; EvalError when none can be built from its files."""
    import transformers

    check_hf_folder(path)
    try:
        return transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise EvalError(f"--hf {path}: no loadable tokenizer there ({str(e).splitlines()[0][:120]}); export with "
                        f"tools/convert_to_hf.py --hf-assets <source HF folder> so the tokenizer files are copied"
                        ) from None


def load_hf_model(path: str, dtype: str = "bf16"):
    """The folder's causal LM in ``dtype`` ('bf16' | 'fp32'), on the current GPU when CUDA is up, in eval mode."""
    import torch
    import transformers

    check_hf_folder(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    if torch.cuda.is_available():
        model = model.cuda()
    return model.eval()


def hf_generate(model, tokenizer, max_new_tokens: int = 10, *,
                skip_special_tokens: bool = False) -> Callable[..., str]:
    """Greedy decoding with a transformers causal LM: ``generate(prompt_ids, max_new_tokens=<this default>) ->``
    the decoded continuation (without the tokenizer's special tokens, e.g. an end-of-turn marker, when
    ``skip_special_tokens``). NIAH calls it with the ids only, RULER and InfiniteBench with a per-task budget."""
    import torch

    def generate(prompt_ids: List[int], max_new_tokens: int = max_new_tokens) -> str:
        ids = torch.tensor([prompt_ids], device=model.device)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=model.config.eos_token_id
                                 if isinstance(model.config.eos_token_id, int) else 0)
        new = out[0, len(prompt_ids):].tolist()  # our own tokenizers' decode takes no skip_special_tokens
        return tokenizer.decode(new, skip_special_tokens=True) if skip_special_tokens else tokenizer.decode(new)

    return generate
