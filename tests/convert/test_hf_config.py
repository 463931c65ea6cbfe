"""config.json translation: the released configs map onto our model cards, and exported RoPE scaling is read the
same way by transformers 5 (rope_parameters), transformers 4 / vLLM (rope_scaling + rope_theta)."""
import copy
import math

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from megatron_ultralong.config import YarnConfig, head_dim, load_recipe
from megatron_ultralong.convert import ConvertError
from megatron_ultralong.convert.hf_config import default_attention_factor, hf_config_from_model, model_config_from_hf
from megatron_ultralong.rope import yarn_attention_factor

# config.json of meta-llama/Llama-3.1-8B-Instruct and Qwen/Qwen2-7B-Instruct as published
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256}
QWEN2_7B = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
    "max_position_embeddings": 32768, "max_window_layers": 28, "model_type": "qwen2", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2", "use_cache": True, "use_sliding_window": False, "vocab_size": 152064}
# a 1M YaRN stage of Llama-3.1-8B as it comes back from an earlier export (or a released long-context checkpoint)
LLAMA_1M_YARN = {**LLAMA31_8B, "max_position_embeddings": 1048576,
                 "rope_scaling": {"rope_type": "yarn", "factor": 128.0, "original_max_position_embeddings": 8192,
                                  "beta_fast": 4.0, "beta_slow": 1.0}}


@pytest.mark.parametrize("hf,recipe", [(LLAMA31_8B, "llama3.1-8b"), (QWEN2_7B, "qwen2-7b")])
def test_published_config_translates_to_our_model_card(hf, recipe):
    model, yarn, notes = model_config_from_hf(hf)
    assert model == load_recipe(recipe).model
    assert not yarn.enabled and notes == []


def test_yarn_config_imports_as_yarn_with_its_factor_window_and_betas():
    model, yarn, notes = model_config_from_hf(LLAMA_1M_YARN)
    assert yarn == YarnConfig(enabled=True, target_length=1048576, original_max_position_embeddings=8192,
                              factor=128.0, beta_fast=4.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=0.0)
    assert model.rope_type == "default" and model.max_position_embeddings == 1048576  # YaRN replaces llama3
    assert notes == []


def test_yarn_without_betas_takes_transformers_defaults_32_and_1():
    hf = copy.deepcopy(LLAMA_1M_YARN)
    del hf["rope_scaling"]["beta_fast"], hf["rope_scaling"]["beta_slow"]
    _, yarn, _ = model_config_from_hf(hf)
    assert (yarn.beta_fast, yarn.beta_slow) == (32.0, 1.0)


def test_yarn_window_shorter_than_factor_times_original_is_normalised_with_a_note():
    """Qwen2.5-style: max_position_embeddings left at the original 32768 next to a factor-4 yarn block."""
    hf = {**QWEN2_7B, "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
    model, yarn, notes = model_config_from_hf(hf)
    assert yarn.target_length == model.max_position_embeddings == 131072 and yarn.factor == 4.0
    assert len(notes) == 1 and "32768 -> 131072" in notes[0]


def _exported_yarn(**yarn_fields):
    model = load_recipe("llama3.1-8b").model
    yarn = YarnConfig(enabled=True, target_length=1048576, original_max_position_embeddings=8192, beta_fast=4.0,
                      beta_slow=1.0, **yarn_fields)
    return model, yarn, hf_config_from_model(model, yarn, "bf16", template=LLAMA31_8B)


def _transformers_rope(config_dict):
    """(inv_freq, attention factor) transformers computes for a config.json dict."""
    cfg = transformers.LlamaConfig.from_dict(copy.deepcopy(config_dict))
    return ROPE_INIT_FUNCTIONS[cfg.rope_parameters["rope_type"]](cfg, "cpu")


def _reader_views(hf):
    """The same config.json as each reader sees it."""
    legacy = {k: v for k, v in hf.items() if k != "rope_parameters"}  # transformers 4.x / vLLM
    new = {k: v for k, v in hf.items() if k not in ("rope_scaling", "rope_theta")}  # transformers 5.x
    return {"full": hf, "rope_scaling+rope_theta": legacy, "rope_parameters": new}


def test_exported_yarn_config_is_read_the_same_by_every_reader():
    model, yarn, hf = _exported_yarn()
    assert hf["rope_scaling"] == {"rope_type": "yarn", "factor": 128.0, "original_max_position_embeddings": 8192,
                                  "beta_fast": 4.0, "beta_slow": 1.0}
    assert hf["rope_parameters"] == {**hf["rope_scaling"], "rope_theta": 500000.0} and hf["rope_theta"] == 500000.0
    assert hf["max_position_embeddings"] == 1048576 == 128 * 8192  # vLLM: servable length = original × factor
    views = {name: _transformers_rope(d) for name, d in _reader_views(hf).items()}
    inv_full, att_full = views["full"]
    for name, (inv, att) in views.items():
        assert torch.equal(inv, inv_full) and att == att_full, name
    assert att_full == pytest.approx(0.1 * math.log(128) + 1, abs=1e-12)
    assert hf["bos_token_id"] == 128000 and hf["eos_token_id"] == [128001, 128008, 128009]  # from the template
    assert hf["dtype"] == hf["torch_dtype"] == "bfloat16"


@pytest.mark.parametrize("fields", [{"mscale": 0.8}, {"mscale": 1.0, "mscale_all_dim": 0.5}])
def test_non_default_temperature_is_written_for_transformers_and_for_vllm(fields):
    model, yarn, hf = _exported_yarn(**fields)
    ours = yarn_attention_factor(128.0, yarn.mscale, yarn.mscale_all_dim)
    assert ours != pytest.approx(default_attention_factor(128.0))
    for name, d in _reader_views(hf).items():
        assert _transformers_rope(d)[1] == pytest.approx(ours, rel=1e-12), name
    vllm = default_attention_factor(hf["rope_scaling"]["factor"]) * hf["rope_scaling"]["attn_factor"]
    assert vllm == pytest.approx(ours, rel=1e-12)
    # and back in: one temperature, in our mscale convention
    _, yarn_back, _ = model_config_from_hf(hf)
    assert yarn_attention_factor(128.0, yarn_back.mscale, yarn_back.mscale_all_dim) == pytest.approx(ours, rel=1e-12)


@pytest.mark.parametrize("hf", [LLAMA31_8B, LLAMA_1M_YARN, QWEN2_7B], ids=["llama3", "yarn", "default"])
def test_config_round_trip_hf_ours_hf_ours_is_stable(hf):
    model, yarn, _ = model_config_from_hf(hf)
    out = hf_config_from_model(model, yarn, model.params_dtype, template=hf)
    model2, yarn2, _ = model_config_from_hf(out)
    assert (model2, yarn2) == (model, yarn)
    scaling = hf.get("rope_scaling")
    assert out["rope_scaling"] == scaling and out["max_position_embeddings"] == hf["max_position_embeddings"]
    if scaling and scaling["rope_type"] == "llama3":  # the base model's own scaling is read identically
        for name, d in _reader_views(out).items():
            inv, att = _transformers_rope(d)
            ref_inv, ref_att = _transformers_rope(hf)
            assert torch.equal(inv, ref_inv) and att == ref_att, name


def test_config_without_template_is_complete_enough_for_transformers():
    model = load_recipe("qwen2-7b").model
    out = hf_config_from_model(model, YarnConfig(), "bf16")
    cfg = transformers.AutoConfig.for_model(**{k: v for k, v in out.items() if k != "architectures"})
    assert isinstance(cfg, transformers.Qwen2Config) and cfg.num_key_value_heads == 4 and not cfg.use_sliding_window
    assert out["architectures"] == ["Qwen2ForCausalLM"] and out["head_dim"] == 128


def test_yarn_factor_that_disagrees_with_target_over_original_is_refused():
    model = load_recipe("llama3.1-8b").model
    yarn = YarnConfig(enabled=True, target_length=1048576, original_max_position_embeddings=8192, factor=64.0)
    with pytest.raises(ConvertError, match="yarn.factor=64.*differs from yarn.target_length=1048576"):
        hf_config_from_model(model, yarn, "bf16")


@pytest.mark.parametrize("change,message", [
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"mlp_bias": True}, "mlp_bias=true"),
    ({"attention_bias": True}, "attention_bias=true.*o_proj"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_type='dynamic' is not supported"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192,
                       "truncate": False}}, "truncate=false"),
    ({"use_sliding_window": True}, "use_sliding_window=true"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
    ({"model_type": "mistral"}, "unknown architecture.*'mistral'"),
    ({"hidden_size": None}, "lacks hidden_size"),
])
def test_unsupported_configs_are_refused_with_the_offending_field(change, message):
    with pytest.raises(ConvertError, match=message):
        model_config_from_hf({**LLAMA31_8B, **change})


@pytest.mark.parametrize("fields", [{}, {"mscale": 0.8}, {"mscale_all_dim": 0.5}])
def test_exported_attention_factor_is_the_one_our_model_applies(fields):
    """The model folds the temperature into the softmax scale (mscale² / sqrt(head_dim))."""
    from megatron_ultralong.model.rotary import rope_softmax_scale

    model, yarn, hf = _exported_yarn(**fields)
    transformers_factor = _transformers_rope(hf)[1]
    assert rope_softmax_scale(model, yarn) == pytest.approx(transformers_factor ** 2 / head_dim(model) ** 0.5,
                                                            rel=1e-9)
