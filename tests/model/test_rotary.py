"""The rotary module: transformers-exact cos/sin and logits with YaRN, zigzag CP slicing, cache, limits."""
import json
import math
import shutil

import pytest
import torch
import transformers

from megatron_ultralong.config import ConfigError, ModelConfig, YarnConfig
from megatron_ultralong.context_parallel import zigzag_merge
from megatron_ultralong.model.rotary import UltralongRotaryEmbedding, rope_softmax_scale, zigzag_positions

MODEL = ModelConfig(hidden_size=256, num_attention_heads=4, num_query_groups=2, rope_theta=5e5,
                    max_position_embeddings=8192)
YARN = YarnConfig(enabled=True, target_length=32768, original_max_position_embeddings=256)  # factor 128


class _Group:
    """Just enough of a process group for the rotary module's CP slicing."""

    def __init__(self, size, rank):
        self._size, self._rank = size, rank

    def size(self):
        return self._size

    def rank(self):
        return self._rank


def test_cos_sin_times_attention_factor_equal_transformers_yarn_rotary():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    hf_cfg = transformers.LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=32768,
                                      rope_parameters={"rope_type": "yarn", "rope_theta": 5e5, "factor": 128.0,
                                                       "original_max_position_embeddings": 256, "beta_fast": 4.0,
                                                       "beta_slow": 1.0})
    seq = 3000
    ref_cos, ref_sin = LlamaRotaryEmbedding(hf_cfg)(torch.zeros(1, seq, 1), torch.arange(seq)[None])
    rotary = UltralongRotaryEmbedding(MODEL, YARN)
    emb = rotary(seq)[:, 0, 0, :]
    t = rotary.attention_factor
    assert t == pytest.approx(0.1 * math.log(128) + 1)
    # the same float32 product of positions and frequencies as transformers: equal to rounding of the final ·t
    assert torch.allclose(torch.cos(emb) * t, ref_cos[0], rtol=0, atol=1e-6)
    assert torch.allclose(torch.sin(emb) * t, ref_sin[0], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ serving-exact at the stage lengths
STAGE_TARGETS = (1 << 20, 1 << 21, 1 << 22)


def _llama31_stage(target):
    """Llama-3.1-8B's rotary shape (head_dim 128, θ 500000) with the stage's YaRN (factor target / 8192)."""
    model = ModelConfig(num_layers=1, hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32,
                        num_query_groups=8, kv_channels=128, vocab_size=128256, max_position_embeddings=target,
                        rope_theta=5e5, rope_type="llama3", rope_factor=8.0)
    return model, YarnConfig(enabled=True, target_length=target, original_max_position_embeddings=8192)


def _served_rotary(model, yarn):
    """transformers' LlamaRotaryEmbedding built from the config.json our export writes for this model."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from megatron_ultralong.convert.hf_config import hf_config_from_model

    exported = hf_config_from_model(model, yarn, dtype="bf16")
    assert exported["rope_scaling"]["factor"] == yarn.target_length / 8192
    return LlamaRotaryEmbedding(transformers.LlamaConfig(**exported))


def _max_diff(emb, t, served, positions):
    ref_cos, ref_sin = served(torch.zeros(1, len(positions), 1), positions[None])
    return max((torch.cos(emb) * t - ref_cos[0]).abs().max().item(),
               (torch.sin(emb) * t - ref_sin[0]).abs().max().item())


@pytest.mark.parametrize("target", STAGE_TARGETS)
@pytest.mark.parametrize("where", ["below-target", "16K"])
def test_cos_sin_equal_the_served_model_at_256_positions_below_the_target_and_at_16k(target, where):
    model, yarn = _llama31_stage(target)
    rotary, served = UltralongRotaryEmbedding(model, yarn), _served_rotary(model, yarn)
    start = target - 256 if where == "below-target" else 16384 - 256
    emb = rotary(256, offset=start)[:, 0, 0, :]
    assert emb.shape == (256, 128)
    assert _max_diff(emb, rotary.attention_factor, served, torch.arange(start, start + 256)) <= 1e-6


@pytest.mark.parametrize("target", STAGE_TARGETS)
@pytest.mark.parametrize("cp", [2, 4])
def test_zigzag_cp_positions_equal_the_served_model_below_the_target(target, cp):
    model, yarn = _llama31_stage(target)
    served = _served_rotary(model, yarn)
    seq = 512
    start = target - seq
    for r in range(cp):
        emb = UltralongRotaryEmbedding(model, yarn, cp_group=_Group(cp, r))(seq, offset=start)[:, 0, 0, :]
        positions = zigzag_positions(seq, cp, r) + start
        assert emb.shape == (seq // cp, 128)
        assert _max_diff(emb, UltralongRotaryEmbedding(model, yarn).attention_factor, served, positions) <= 1e-6


def test_softmax_scale_carries_the_squared_temperature():
    t = 0.1 * math.log(128) + 1
    assert rope_softmax_scale(MODEL, YARN) == pytest.approx(t * t / math.sqrt(64))
    assert rope_softmax_scale(MODEL, YarnConfig()) is None  # no temperature: Megatron's 1/sqrt(d)
    llama3 = ModelConfig(hidden_size=256, num_attention_heads=4, rope_type="llama3", rope_factor=8.0)
    assert rope_softmax_scale(llama3, YarnConfig()) is None


@pytest.mark.parametrize("cp", [2, 4])
def test_cp_ranks_get_the_angles_of_their_zigzag_positions(cp):
    seq = 512
    full = UltralongRotaryEmbedding(MODEL, YARN, cp_group=_Group(1, 0))(seq)
    shards = [UltralongRotaryEmbedding(MODEL, YARN, cp_group=_Group(cp, r))(seq) for r in range(cp)]
    assert all(s.shape == (seq // cp, 1, 1, 64) for s in shards)
    assert torch.equal(zigzag_merge(shards, seq_dim=0), full)
    # rank 0 holds the first and the last chunk of 2·cp
    chunk = seq // (2 * cp)
    assert zigzag_positions(seq, cp, 0).tolist() == list(range(chunk)) + list(range(seq - chunk, seq))


def test_packed_sequences_get_the_whole_table_for_te_to_split():
    emb = UltralongRotaryEmbedding(MODEL, YARN, cp_group=_Group(2, 1))(256, packed_seq=True)
    assert emb.shape[0] == 256


def test_angles_are_cached_per_length_and_rebuilt_on_change():
    rotary = UltralongRotaryEmbedding(MODEL, YARN)
    a = rotary(1024)
    assert rotary(1024) is a
    b = rotary(2048)
    assert b is not a and torch.equal(b[:1024], a)


def test_sequences_longer_than_the_target_are_refused():
    rotary = UltralongRotaryEmbedding(MODEL, YARN)
    with pytest.raises(ValueError, match="exceeds the rotary module's maximum 32768"):
        rotary(32770)


def test_construction_touches_no_device_and_works_under_meta():
    with torch.device("meta"):
        rotary = UltralongRotaryEmbedding(MODEL, YARN)
    assert rotary.inv_freq.device.type == "cpu"
    assert rotary.state_dict() == {}  # nothing to checkpoint: frequencies come from the config


def test_bad_yarn_settings_fail_at_construction():
    with pytest.raises(ConfigError, match="yarn.beta_fast=1.0 must be > yarn.beta_slow=4.0"):
        UltralongRotaryEmbedding(MODEL, YarnConfig(enabled=True, target_length=32768, beta_fast=1.0, beta_slow=4.0,
                                                   original_max_position_embeddings=256))


# ---------------------------------------------------------------------------------------------------- logits
def _verify_pair(hf_dir, no_temperature_dir, ckpt, seq):
    from megatron_ultralong.convert import convert_hf_to_megatron, verify_hf_against_megatron

    convert_hf_to_megatron(hf_dir, ckpt, progress=False)
    return {backend: verify_hf_against_megatron(hf_dir, ckpt, seq_len=seq, attention_backend=backend, progress=False)
            for backend in ("local", "sdpa")} | {
        "no-temperature": verify_hf_against_megatron(no_temperature_dir, ckpt, seq_len=seq, attention_backend="local",
                                                     progress=False)}


@pytest.mark.slow
def test_yarn_gpt_logits_equal_transformers_llama_beyond_the_original_window(tmp_path):
    """A GPTModel with YaRN (factor 16, β=4, α=1) gives transformers' logits at 4× the original window; the same
    model compared with a transformers model whose temperature is forced to 1 differs: the temperature reaches
    the softmax."""
    from tests.convert.helpers import in_child, save_hf

    yarn = {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 32, "beta_fast": 4.0,
            "beta_slow": 1.0}
    save_hf(tmp_path / "hf", tokenizer=False, max_position_embeddings=512, rope_scaling=yarn)
    shutil.copytree(tmp_path / "hf", tmp_path / "hf-t1")
    cfg_path = tmp_path / "hf-t1" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("rope_scaling", "rope_parameters"):
        if isinstance(cfg.get(key), dict):
            cfg[key]["attention_factor"] = 1.0
    cfg_path.write_text(json.dumps(cfg))
    diffs = in_child(_verify_pair, str(tmp_path / "hf"), str(tmp_path / "hf-t1"), str(tmp_path / "ckpt"), 128)
    print("max |logits diff|:", diffs)
    assert diffs["local"] <= 1e-4 and diffs["sdpa"] <= 1e-4
    assert diffs["no-temperature"] > 1e-2
