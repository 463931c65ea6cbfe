"""Loading an exported Hugging Face model folder for evaluation, with one-line errors instead of tracebacks.

    check_hf_folder(path)             # EvalError unless it holds a config.json
    tok = load_hf_tokenizer(path)     # EvalError naming --hf-assets when no tokenizer files were exported
    model = load_hf_model(path, "bf16")   # on the GPU when there is one, in eval mode
"""
from __future__ import annotations

import os

from .niah import EvalError


def check_hf_folder(path: str) -> None:
    """EvalError unless ``path`` is a folder with a config.json (an exported model)."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise EvalError(f"--hf {path}: no config.json there; point it at an exported HF model directory "
                        f"(python tools/convert_to_hf.py ...)")


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
