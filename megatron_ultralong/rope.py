"""RoPE frequency math: plain, linear, Llama-3 and YaRN scalings as pure functions (torch only, no distributed).

    inv_freq, t = inv_freq_and_attention_factor(cfg.model, cfg.yarn)    # float32 [head_dim // 2], temperature
    factor = resolved_yarn_factor(cfg.yarn)                             # the one home of the YaRN scale factor

Everything returns float32 CPU tensors; the formulas and the recipe's α, β, s: docs/yarn.md.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from .config import ConfigError, ModelConfig, YarnConfig, check_rope_head_dim
from .config import head_dim as _head_dim
from .config.validation import check_yarn_betas, check_yarn_factor, check_yarn_original, check_yarn_target


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def default_inv_freq(head_dim: int, rope_theta: float) -> torch.Tensor:
    """θ_i = base^(−2i/d) for i = 0 … d/2−1 (float32)."""
    check_rope_head_dim(head_dim)
    _check(rope_theta > 1, f"rope_theta={rope_theta}: the RoPE base must be > 1 (10000 or 500000 usually)")
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").to(torch.float32) / head_dim
    return 1.0 / (rope_theta ** exponent)


def linear_inv_freq(head_dim: int, rope_theta: float, factor: float) -> torch.Tensor:
    """Position interpolation: every θ_i divided by ``factor``."""
    _check(factor > 0, f"rope factor={factor}: must be > 0")
    return default_inv_freq(head_dim, rope_theta) / factor


def llama3_inv_freq(head_dim: int, rope_theta: float, factor: float, low_freq_factor: float,
                    high_freq_factor: float, original_max_position_embeddings: int) -> torch.Tensor:
    """Llama-3.1's scaling: keep high frequencies, divide low ones by ``factor``, blend in between."""
    _check(factor > 0, f"llama3 rope factor={factor}: must be > 0 (8 for Llama-3.1)")
    _check(high_freq_factor > low_freq_factor > 0,
           f"llama3 rope high_freq_factor={high_freq_factor} must be > low_freq_factor={low_freq_factor} > 0 "
           f"(Llama-3.1: 4 and 1)")
    _check(original_max_position_embeddings > 0,
           f"llama3 rope original_max_position_embeddings={original_max_position_embeddings}: must be > 0")
    inv_freq = default_inv_freq(head_dim, rope_theta)
    low_freq_wavelen = original_max_position_embeddings / low_freq_factor
    high_freq_wavelen = original_max_position_embeddings / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(medium, blended, scaled)


def yarn_scale_factor(target_length: int, original_max_position_embeddings: int) -> float:
    """s = target / original, where original is the *pre-extension* pretraining window (8192 for Llama-3.1).

    1M / 2M / 4M over 8192 give 128 / 256 / 512.
    """
    check_yarn_target(target_length, original_max_position_embeddings)
    return target_length / original_max_position_embeddings


def _correction_dim(num_rotations: float, dim: int, base: float, original: int) -> float:
    """The (fractional) pair index whose wavelength fits ``num_rotations`` times into the original window."""
    return dim * math.log(original / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_ramp_bounds(head_dim: int, rope_theta: float, original_max_position_embeddings: int,
                     beta_fast: float = 4.0, beta_slow: float = 1.0, truncate: bool = True) -> Tuple[float, float]:
    """(low, high) pair indices of the YaRN ramp: below low pairs are kept, above high they are interpolated."""
    low = _correction_dim(beta_fast, head_dim, rope_theta, original_max_position_embeddings)
    high = _correction_dim(beta_slow, head_dim, rope_theta, original_max_position_embeddings)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, head_dim - 1)


def yarn_inv_freq(head_dim: int, rope_theta: float, factor: float, original_max_position_embeddings: int,
                  beta_fast: float = 4.0, beta_slow: float = 1.0, truncate: bool = True) -> torch.Tensor:
    """YaRN inverse frequencies [head_dim // 2] (α = ``beta_slow``, β = ``beta_fast``; docs/yarn.md)."""
    check_yarn_factor(factor)
    check_yarn_betas(beta_fast, beta_slow)
    check_yarn_original(original_max_position_embeddings)
    check_rope_head_dim(head_dim)
    # the reference's exact float32 operations (transformers' _compute_yarn_parameters), so the frequencies are
    # bit-identical to the served model's: 1 / (s·θ^(2i/d)), not (1 / θ^(2i/d)) / s
    pos_freqs = rope_theta ** (torch.arange(0, head_dim, 2, device="cpu").to(torch.float32) / head_dim)
    extrapolation = 1.0 / pos_freqs  # kept as is
    interpolation = 1.0 / (factor * pos_freqs)
    low, high = yarn_ramp_bounds(head_dim, rope_theta, original_max_position_embeddings, beta_fast, beta_slow,
                                 truncate)
    if low == high:
        high += 0.001  # a one-pair ramp: avoid 0/0 (same guard as the reference)
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp
    return interpolation * (1 - keep) + extrapolation * keep


def yarn_attention_factor(factor: float, mscale: float = 1.0, mscale_all_dim: float = 0.0) -> float:
    """Attention temperature t (q·k is scaled by t²): 0.1·mscale·ln(factor) + 1 for factor > 1, else 1.

    With ``mscale_all_dim`` ≠ 0 (DeepSeek convention) the ratio m(mscale) / m(mscale_all_dim).
    """
    check_yarn_factor(factor)

    def m(x: float) -> float:
        return 1.0 if factor <= 1 else 0.1 * x * math.log(factor) + 1.0

    return m(mscale) / m(mscale_all_dim) if mscale_all_dim else m(mscale)


def resolved_yarn_factor(yarn: YarnConfig) -> float:
    """The YaRN scale factor of a config: the explicit ``yarn.factor``, else target_length / original."""
    if yarn.factor is not None:
        check_yarn_factor(yarn.factor)
        return float(yarn.factor)
    return yarn_scale_factor(yarn.target_length, yarn.original_max_position_embeddings)


def inv_freq_and_attention_factor(model: ModelConfig, yarn: YarnConfig) -> Tuple[torch.Tensor, float]:
    """(inverse frequencies [head_dim // 2] float32, attention temperature t) for a model as configured.

    YaRN, when enabled, replaces the base model's own scaling (``model.rope_type``).
    """
    d, base = _head_dim(model), model.rope_theta
    if yarn.enabled:
        from .config import validate_yarn

        validate_yarn(yarn, model)
        factor = resolved_yarn_factor(yarn)
        inv = yarn_inv_freq(d, base, factor, yarn.original_max_position_embeddings, yarn.beta_fast, yarn.beta_slow)
        return inv, yarn_attention_factor(factor, yarn.mscale, yarn.mscale_all_dim)
    if model.rope_type == "default":
        return default_inv_freq(d, base), 1.0
    if model.rope_type == "linear":
        return linear_inv_freq(d, base, model.rope_factor), 1.0
    if model.rope_type == "llama3":
        return llama3_inv_freq(d, base, model.rope_factor, model.rope_low_freq_factor, model.rope_high_freq_factor,
                               model.rope_original_max_position_embeddings), 1.0
    raise ConfigError(f"model.rope_type={model.rope_type!r} is not supported; use default, linear or llama3 "
                      f"(or yarn.enabled=true)")


def rope_angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotation angles [len(positions), head_dim // 2]: the float32 outer product p·θ_i, computed exactly as
    transformers, vLLM and Megatron-Core compute it, so training sees the positions the served model sees
    (docs/yarn.md, "Angle precision")."""
    return torch.outer(positions.to(torch.float32), inv_freq.to(device=positions.device, dtype=torch.float32))
