"""Hugging Face ⇄ Megatron-Core conversion (tables in mapping.py and hf_config.py, the conversions in hf.py).

    from megatron_ultralong.convert import convert_hf_to_megatron, convert_megatron_to_hf
    convert_hf_to_megatron("hf/Llama-3.1-8B-Instruct", "ckpt/llama31-8b", tp=8, dtype="bf16")
    convert_megatron_to_hf("runs/cpt_1m/checkpoints", "hf/llama31-8b-1m", verify=True)

Modules: docs/convert.md.
"""
from .errors import ConvertError, VerificationError, log
from .hf import convert_hf_to_megatron, convert_megatron_to_hf
from .verify import verify_hf_against_megatron

__all__ = ["ConvertError", "VerificationError", "convert_hf_to_megatron", "convert_megatron_to_hf", "log",
           "verify_hf_against_megatron"]
