"""Hugging Face ⇄ Megatron-Core conversion (tables in mapping.py and hf_config.py, the conversions in hf.py).

    from megatron_ultralong.convert import convert_hf_to_megatron, convert_megatron_to_hf
    convert_hf_to_megatron("hf/Llama-3.1-8B-Instruct", "ckpt/llama31-8b", tp=8, dtype="bf16")
    convert_megatron_to_hf("runs/cpt_1m/checkpoints", "hf/llama31-8b-1m", verify=True)

Modules: docs/convert.md.
"""
import sys


class ConvertError(ValueError):
    """A conversion that cannot be done as asked (unknown architecture, missing tensor, shape or layout mismatch).
    The message is one line: what is wrong and how to fix it."""


class VerificationError(ConvertError):
    """The exported model's logits differ from the Megatron model's by more than the tolerance."""


def log(msg: str, enabled: bool = True) -> None:
    """A '[convert] ...' line on stderr (when ``enabled``)."""
    if enabled:
        print(f"[convert] {msg}", file=sys.stderr, flush=True)


from .hf import convert_hf_to_megatron, convert_megatron_to_hf  # noqa: E402
from .verify import verify_hf_against_megatron  # noqa: E402

__all__ = ["ConvertError", "VerificationError", "convert_hf_to_megatron", "convert_megatron_to_hf",
           "verify_hf_against_megatron"]
