"""rope.py equals transformers' reference RoPE initialisers (yarn, llama3, linear, default) and rejects bad settings."""
import itertools
import math

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from megatron_ultralong import rope
from megatron_ultralong.config import ConfigError, ModelConfig, YarnConfig


def _hf_config(head_dim, theta, max_pos, **rope_parameters):
    return transformers.LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                                    max_position_embeddings=max_pos,
                                    rope_parameters={"rope_theta": theta, **rope_parameters})


def _rel(a, b):
    return ((a - b).abs() / b.abs()).max().item()


YARN_GRID = list(itertools.product((64, 128), (1e4, 5e5), (2, 8, 32, 128, 256, 512), (256, 8192, 131072), (4, 32)))


@pytest.mark.parametrize("head_dim,theta,factor,original,beta_fast", YARN_GRID)
def test_yarn_inv_freq_and_attention_factor_equal_transformers(head_dim, theta, factor, original, beta_fast):
    hf = _hf_config(head_dim, theta, int(original * factor), rope_type="yarn", factor=float(factor),
                    original_max_position_embeddings=original, beta_fast=beta_fast, beta_slow=1.0)
    ref_inv, ref_att = ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")
    inv = rope.yarn_inv_freq(head_dim, theta, factor, original, beta_fast=beta_fast, beta_slow=1.0)
    assert inv.shape == (head_dim // 2,) and inv.dtype == torch.float32
    assert _rel(inv, ref_inv) <= 1e-6
    assert rope.yarn_attention_factor(factor) == pytest.approx(ref_att, rel=1e-6)


def test_yarn_defaults_are_the_recipe_bounds_alpha_1_beta_4():
    hf = _hf_config(128, 5e5, 1 << 20, rope_type="yarn", factor=128.0, original_max_position_embeddings=8192,
                    beta_fast=4.0, beta_slow=1.0)
    assert _rel(rope.yarn_inv_freq(128, 5e5, 128.0, 8192), ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")[0]) <= 1e-6
    # β=32 (transformers' default) is a different ramp: the defaults really are 4 / 1
    assert _rel(rope.yarn_inv_freq(128, 5e5, 128.0, 8192), rope.yarn_inv_freq(128, 5e5, 128.0, 8192, 32.0)) > 1e-3


def test_yarn_keeps_fast_pairs_and_interpolates_slow_pairs():
    base = rope.default_inv_freq(128, 5e5)
    inv = rope.yarn_inv_freq(128, 5e5, 128.0, 8192)
    low, high = rope.yarn_ramp_bounds(128, 5e5, 8192)
    assert torch.equal(inv[: int(low)], base[: int(low)])  # > β rotations in the original window: untouched
    assert torch.allclose(inv[int(high):], base[int(high):] / 128.0)  # < α rotations: divided by s
    assert (inv <= base).all() and (inv >= base / 128.0 * (1 - 1e-6)).all()


@pytest.mark.parametrize("mscale,mscale_all_dim", [(1.0, 0.0), (0.707, 0.0), (1.0, 1.0), (1.0, 0.707)])
def test_attention_factor_follows_the_mscale_conventions(mscale, mscale_all_dim):
    factor = 40.0
    m = lambda x: 0.1 * x * math.log(factor) + 1  # noqa: E731
    expected = m(mscale) / m(mscale_all_dim) if mscale_all_dim else m(mscale)
    assert rope.yarn_attention_factor(factor, mscale, mscale_all_dim) == pytest.approx(expected, rel=1e-12)
    assert rope.yarn_attention_factor(1.0, mscale, mscale_all_dim) == 1.0
    assert rope.yarn_attention_factor(0.5, mscale) == 1.0


@pytest.mark.parametrize("target,factor", [(1 << 20, 128), (1 << 21, 256), (1 << 22, 512)])
def test_scale_factor_is_target_over_the_pre_extension_window(target, factor):
    assert rope.yarn_scale_factor(target, 8192) == factor
    assert rope.resolved_yarn_factor(YarnConfig(enabled=True, target_length=target)) == factor
    assert rope.resolved_yarn_factor(YarnConfig(enabled=True, target_length=target, factor=64.0)) == 64.0


@pytest.mark.parametrize("head_dim,theta,factor,low,high,original",
                         [(128, 5e5, 8.0, 1.0, 4.0, 8192), (64, 1e4, 4.0, 1.0, 4.0, 16),
                          (64, 5e5, 32.0, 2.0, 8.0, 256)])
def test_llama3_inv_freq_equals_transformers(head_dim, theta, factor, low, high, original):
    hf = _hf_config(head_dim, theta, 131072, rope_type="llama3", factor=factor, low_freq_factor=low,
                    high_freq_factor=high, original_max_position_embeddings=original)
    ref, att = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    assert _rel(rope.llama3_inv_freq(head_dim, theta, factor, low, high, original), ref) <= 1e-6
    assert att == 1.0


def test_linear_and_default_inv_freq_equal_transformers():
    hf = _hf_config(64, 1e4, 4096, rope_type="linear", factor=4.0)
    assert _rel(rope.linear_inv_freq(64, 1e4, 4.0), ROPE_INIT_FUNCTIONS["linear"](hf, "cpu")[0]) <= 1e-6
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    hf = _hf_config(64, 1e4, 4096, rope_type="default")
    ref = LlamaRotaryEmbedding.compute_default_rope_parameters(hf, device="cpu")[0]
    assert _rel(rope.default_inv_freq(64, 1e4), ref) <= 1e-6


def test_model_config_dispatch_prefers_yarn_over_the_base_scaling():
    llama = ModelConfig(hidden_size=512, num_attention_heads=4, rope_theta=5e5, rope_type="llama3", rope_factor=8.0)
    inv, t = rope.inv_freq_and_attention_factor(llama, YarnConfig())
    assert torch.equal(inv, rope.llama3_inv_freq(128, 5e5, 8.0, 1.0, 4.0, 8192)) and t == 1.0
    yarn = YarnConfig(enabled=True, target_length=1 << 20)
    inv, t = rope.inv_freq_and_attention_factor(llama, yarn)
    assert torch.equal(inv, rope.yarn_inv_freq(128, 5e5, 128.0, 8192))
    assert t == pytest.approx(0.1 * math.log(128) + 1)


@pytest.mark.parametrize("position", [16383, 1_048_575, 2_097_151, 4_194_303])
def test_angles_are_the_float32_product_serving_stacks_compute(position):
    """transformers / vLLM / Megatron multiply positions by frequencies in float32; so do we, bit for bit (the
    float64-reduced angles we had differ from them by up to 0.12 rad at 4M)."""
    inv = rope.yarn_inv_freq(128, 5e5, 512.0, 8192)
    pos = torch.arange(position - 255, position + 1)
    got = rope.rope_angles(pos, inv)
    assert got.dtype == torch.float32 and got.shape == (256, 64)
    assert torch.equal(got, pos[:, None].float() * inv[None, :])  # transformers' LlamaRotaryEmbedding.forward
    assert torch.equal(got, torch.outer(pos.float(), inv))  # Megatron's RotaryEmbedding.get_freqs_non_repeated


def test_yarn_inv_freq_is_bit_identical_to_transformers():
    """1 / (s·θ^(2i/d)) as the reference computes it, not (1 / θ^(2i/d)) / s: they differ in the last bit for
    factors that are not powers of two (3, 40, ...)."""
    for factor in (3.0, 40.0, 100.0, 128.0, 256.0, 512.0):
        hf = _hf_config(128, 5e5, int(8192 * factor), rope_type="yarn", factor=factor,
                        original_max_position_embeddings=8192, beta_fast=4.0, beta_slow=1.0)
        assert torch.equal(rope.yarn_inv_freq(128, 5e5, factor, 8192), ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")[0])


BAD_YARN = [
    (dict(factor=0.0), "yarn.factor=0.0: must be > 0"),
    (dict(factor=-2.0), "yarn.factor=-2.0: must be > 0"),
    (dict(target_length=4096), "yarn.target_length=4096 is below yarn.original_max_position_embeddings=8192"),
    (dict(beta_fast=1.0, beta_slow=4.0), "yarn.beta_fast=1.0 must be > yarn.beta_slow=4.0"),
    (dict(beta_fast=4.0, beta_slow=4.0), "yarn.beta_fast=4.0 must be > yarn.beta_slow=4.0"),
    (dict(target_length=None), "yarn.target_length is not set"),
]


@pytest.mark.parametrize("overrides,message", BAD_YARN)
def test_bad_yarn_settings_raise_config_error(overrides, message):
    yarn = YarnConfig(**{"enabled": True, "target_length": 1 << 20, **overrides})
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("*", r"\*")):
        rope.inv_freq_and_attention_factor(ModelConfig(), yarn)


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        fn(*args, **kwargs)
    return str(err.value)


def _validate(**yarn):
    from megatron_ultralong.config import validate_yarn
    validate_yarn(YarnConfig(**{"enabled": True, "target_length": 1 << 20, **yarn}), ModelConfig())


@pytest.mark.parametrize("rope_call,yarn", [
    (lambda: rope.yarn_inv_freq(128, 5e5, 0.0, 8192), dict(factor=0.0)),
    (lambda: rope.yarn_attention_factor(0.0), dict(factor=0.0)),
    (lambda: rope.resolved_yarn_factor(YarnConfig(enabled=True, target_length=1 << 20, factor=0.0)), dict(factor=0.0)),
    (lambda: rope.yarn_scale_factor(4096, 8192), dict(target_length=4096)),
    (lambda: rope.yarn_scale_factor(1 << 20, 0), dict(original_max_position_embeddings=0)),
    (lambda: rope.yarn_inv_freq(128, 5e5, 4.0, 0), dict(original_max_position_embeddings=0)),
    (lambda: rope.resolved_yarn_factor(YarnConfig(enabled=True)), dict(target_length=None)),
    (lambda: rope.yarn_inv_freq(128, 5e5, 4.0, 8192, beta_fast=1.0, beta_slow=4.0), dict(beta_fast=1.0, beta_slow=4.0)),
    (lambda: rope.yarn_inv_freq(128, 5e5, 4.0, 8192, beta_fast=4.0, beta_slow=0.0), dict(beta_slow=0.0)),
])
def test_rope_math_and_validate_yarn_reject_a_setting_with_the_same_message(rope_call, yarn):
    """One home per YaRN rule (config/validation.py): the RoPE functions raise exactly what validate_yarn does."""
    assert _message(rope_call) == _message(_validate, **yarn)


def test_odd_head_dim_raises_config_error():
    with pytest.raises(ConfigError, match="head dim 63 .* odd"):
        rope.inv_freq_and_attention_factor(ModelConfig(kv_channels=63), YarnConfig(enabled=True, target_length=16384))
    with pytest.raises(ConfigError, match="head dim 7 is odd: .* must be a positive even number"):
        rope.yarn_inv_freq(7, 1e4, 4.0, 256)
    with pytest.raises(ConfigError, match="head dim 0 is not positive"):
        rope.default_inv_freq(0, 1e4)
