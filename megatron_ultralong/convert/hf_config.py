"""config.json ⇄ our ModelConfig / YarnConfig: a field translation table both ways, plus RoPE scaling.

    model, yarn, notes = model_config_from_hf(json.load(open("hf/config.json")))
    hf = hf_config_from_model(model, yarn, dtype="bf16", template=source_config_json)

RoPE scaling types in and out, and what each reader (transformers 4.x / 5.x, vLLM) looks at: docs/yarn.md.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Tuple

from .. import rope
from ..config import ModelConfig, YarnConfig, head_dim
from .errors import ConvertError
from .mapping import ArchTable, table_for_arch, table_for_hf_model_type

# config.json key -> ModelConfig field, one-to-one both ways
FIELDS: Tuple[Tuple[str, str], ...] = (
    ("num_hidden_layers", "num_layers"),
    ("hidden_size", "hidden_size"),
    ("intermediate_size", "ffn_hidden_size"),
    ("num_attention_heads", "num_attention_heads"),
    ("num_key_value_heads", "num_query_groups"),
    ("head_dim", "kv_channels"),
    ("vocab_size", "vocab_size"),
    ("rms_norm_eps", "norm_eps"),
    ("tie_word_embeddings", "tie_word_embeddings"),
    ("initializer_range", "init_method_std"),
)
REQUIRED = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
# what transformers assumes for a key config.json leaves out
HF_DEFAULTS: Dict[str, Any] = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "initializer_range": 0.02}

HF_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""Our dtype name (config.DTYPE_NAMES) -> config.json's name for it."""
DTYPE_NAMES_FROM_HF = {v: k for k, v in HF_DTYPE_NAMES.items()}
"""config.json dtype name -> ours."""

# keys the exporter writes itself; a template's values for them are dropped
_OWNED = {k for k, _ in FIELDS} | {"max_position_embeddings", "rope_theta", "rope_scaling", "rope_parameters", "dtype",
                                   "torch_dtype", "architectures", "model_type", "transformers_version",
                                   "attention_bias"}


# ------------------------------------------------------------------------------ YaRN attention factor
def default_attention_factor(factor: float) -> float:
    """The YaRN temperature every reader computes from the factor alone: 0.1·ln(factor) + 1 (1 for factor <= 1)."""
    return rope.yarn_attention_factor(factor)


# ------------------------------------------------------------------------------------------------- in
def hf_dtype(hf: Dict[str, Any]) -> Optional[str]:
    """Our dtype name for config.json's 'dtype' (5.x) / 'torch_dtype' (4.x), or None when absent or unknown."""
    return DTYPE_NAMES_FROM_HF.get(str(hf.get("dtype") or hf.get("torch_dtype") or ""))


def _rope_parameters(hf: Dict[str, Any]) -> Tuple[Dict[str, Any], float]:
    """(scaling parameters, theta) as transformers 5 resolves them: ``rope_scaling`` wins over ``rope_parameters``;
    theta inside the parameters wins over the top-level ``rope_theta``."""
    params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ConvertError(f"config.json rope_scaling/rope_parameters={params!r}: expected a mapping")
    layer_types = set(hf.get("layer_types") or ())
    if params and set(params) <= layer_types:  # nested per layer type (gemma-style): one entry must serve all
        distinct = {repr(sorted(v.items())) for v in params.values() if v}
        if len(distinct) != 1:
            raise ConvertError(f"config.json has different RoPE parameters per layer type ({sorted(params)}); "
                               f"only one RoPE for all layers is supported")
        params = next(v for v in params.values() if v)
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    return dict(params), float(theta)


def _check_supported(hf: Dict[str, Any], table: ArchTable) -> None:
    """Refuse config.json features the Megatron model here does not have."""
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ConvertError(f"config.json hidden_act={act!r}: only SwiGLU (silu) MLPs are supported")
    if hf.get("mlp_bias"):
        raise ConvertError("config.json mlp_bias=true: MLP biases are not supported (Megatron add_bias_linear=False)")
    if table.arch == "llama" and hf.get("attention_bias"):
        raise ConvertError("config.json attention_bias=true: Llama's attention_bias also puts a bias on o_proj, which "
                           "the model here does not have; only bias-free Llama-3.x is supported")
    if hf.get("use_sliding_window"):
        raise ConvertError("config.json use_sliding_window=true: sliding-window attention is not supported; "
                           "set it to false if the checkpoint was trained with full attention")
    prf = (hf.get("rope_parameters") or {}).get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if prf not in (None, 1, 1.0):
        raise ConvertError(f"config.json partial_rotary_factor={prf}: only full-head RoPE is supported")


def model_config_from_hf(hf: Dict[str, Any]) -> Tuple[ModelConfig, YarnConfig, List[str]]:
    """Our (ModelConfig, YarnConfig) for a config.json, plus human-readable notes about normalisations made.

    ``params_dtype`` is set from config.json's dtype when known (the caller may override it)."""
    table = table_for_hf_model_type(hf.get("model_type"))
    _check_supported(hf, table)
    missing = [k for k in REQUIRED if hf.get(k) is None]
    if missing:
        raise ConvertError(f"config.json lacks {', '.join(missing)}; is this a causal-LM config?")
    notes: List[str] = []
    model = dataclasses.replace(ModelConfig(), arch=table.arch, qkv_bias=table.qkv_bias)
    values = {**HF_DEFAULTS, **{k: v for k, v in hf.items() if v is not None}}
    for hf_key, ours in FIELDS:
        if hf_key in values:
            setattr(model, ours, values[hf_key])
    model.num_query_groups = hf.get("num_key_value_heads") or model.num_attention_heads
    model.kv_channels = hf.get("head_dim") or model.hidden_size // model.num_attention_heads
    model.params_dtype = hf_dtype(hf) or "fp32"
    max_pos = int(hf.get("max_position_embeddings") or 2048)
    model.max_position_embeddings = max_pos

    params, theta = _rope_parameters(hf)
    model.rope_theta = theta
    rope_type = params.get("rope_type", params.get("type", "default"))
    yarn = YarnConfig()
    if rope_type == "default":
        model.rope_type = "default"
    elif rope_type == "linear":
        model.rope_type, model.rope_factor = "linear", float(params["factor"])
    elif rope_type == "llama3":
        model.rope_type = "llama3"
        model.rope_factor = float(params["factor"])
        model.rope_low_freq_factor = float(params.get("low_freq_factor", 1.0))
        model.rope_high_freq_factor = float(params.get("high_freq_factor", 4.0))
        model.rope_original_max_position_embeddings = int(params.get("original_max_position_embeddings", max_pos))
    elif rope_type == "yarn":
        yarn, yarn_notes = _yarn_from_hf(params, max_pos)
        notes += yarn_notes
        model.rope_type = "default"  # YaRN replaces whatever the base model had
        model.max_position_embeddings = yarn.target_length
    else:
        raise ConvertError(f"config.json rope_type={rope_type!r} is not supported; supported: default, linear, "
                           f"llama3, yarn")
    return model, yarn, notes


def _yarn_from_hf(params: Dict[str, Any], max_pos: int) -> Tuple[YarnConfig, List[str]]:
    notes = []
    if params.get("truncate") is False:
        raise ConvertError("config.json yarn truncate=false: only the standard (truncated) YaRN correction range is "
                           "supported")
    original = int(params.get("original_max_position_embeddings") or max_pos)
    factor = float(params.get("factor") or max_pos / original)
    target = int(round(factor * original))
    if target != max_pos:
        notes.append(f"max_position_embeddings {max_pos} -> {target} (= yarn factor {factor:g} × original "
                     f"{original}: the window the YaRN model serves, as vLLM derives it)")
    attention = params.get("attention_factor")
    if attention is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:  # transformers' DeepSeek convention: the ratio, only when both are set
            attention = rope.yarn_attention_factor(factor, mscale, mscale_all_dim)
        else:
            attention = default_attention_factor(factor)
        if params.get("attn_factor") not in (None, 1, 1.0):
            notes.append(f"attn_factor={params['attn_factor']} is read by vLLM only; following transformers, "
                         f"which ignores it (attention factor {attention:.6g})")
    # one temperature, expressed in our convention (mscale_all_dim = 0): attention = 0.1·mscale·ln(factor) + 1
    mscale = (attention - 1.0) / (0.1 * math.log(factor)) if factor > 1 else 1.0
    if factor > 1 and math.isclose(attention, default_attention_factor(factor), rel_tol=0, abs_tol=1e-15):
        mscale = 1.0  # keep the default exact, so the export writes no attention_factor
    yarn = YarnConfig(enabled=True, target_length=target, original_max_position_embeddings=original, factor=factor,
                      beta_fast=float(params.get("beta_fast") or 32.0), beta_slow=float(params.get("beta_slow") or 1.0),
                      mscale=mscale, mscale_all_dim=0.0)
    return yarn, notes


# ------------------------------------------------------------------------------------------------ out
def rope_scaling_for(model: ModelConfig, yarn: YarnConfig) -> Tuple[Optional[Dict[str, Any]], int]:
    """(rope_scaling dict or None for plain RoPE, max_position_embeddings) of the model as configured."""
    if yarn.enabled:
        factor = rope.resolved_yarn_factor(yarn)
        original = yarn.original_max_position_embeddings
        if not math.isclose(factor * original, yarn.target_length, rel_tol=1e-12):
            raise ConvertError(f"yarn.factor={factor:g} × yarn.original_max_position_embeddings={original} = "
                               f"{factor * original:g} differs from yarn.target_length={yarn.target_length}: some "
                               f"transformers 4.x releases and vLLM derive the factor (or the servable length) from "
                               f"max_position_embeddings / original, so the exported config would be read two ways; "
                               f"unset yarn.factor or make target_length = factor × original")
        scaling: Dict[str, Any] = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original,
                                   "beta_fast": float(yarn.beta_fast), "beta_slow": float(yarn.beta_slow)}
        attention = rope.yarn_attention_factor(factor, yarn.mscale, yarn.mscale_all_dim)
        default = default_attention_factor(factor)
        if not math.isclose(attention, default, rel_tol=0, abs_tol=1e-12):
            scaling["attention_factor"] = attention  # transformers: replaces 0.1·ln(factor) + 1
            scaling["attn_factor"] = attention / default  # vLLM: multiplies 0.1·ln(factor) + 1
        return scaling, int(yarn.target_length)
    if model.rope_type == "llama3":
        return {"rope_type": "llama3", "factor": float(model.rope_factor),
                "low_freq_factor": float(model.rope_low_freq_factor),
                "high_freq_factor": float(model.rope_high_freq_factor),
                "original_max_position_embeddings": int(model.rope_original_max_position_embeddings)}, \
            int(model.max_position_embeddings)
    if model.rope_type == "linear":
        return {"rope_type": "linear", "factor": float(model.rope_factor)}, int(model.max_position_embeddings)
    if model.rope_type == "default":
        return None, int(model.max_position_embeddings)
    raise ConvertError(f"model.rope_type={model.rope_type!r} has no HF equivalent here")


def hf_config_from_model(model: ModelConfig, yarn: YarnConfig, dtype: str, template: Optional[Dict[str, Any]] = None,
                         hf_vocab_size: Optional[int] = None) -> Dict[str, Any]:
    """config.json for the model. ``template`` (the source model's config.json) contributes every key this module
    does not own (token ids, generation defaults, ...); ``hf_vocab_size`` undoes vocabulary padding."""
    table = table_for_arch(model.arch)
    if template is not None and template.get("model_type") not in (None, table.hf_model_type):
        raise ConvertError(f"the HF config to start from has model_type={template.get('model_type')!r} but the "
                           f"checkpoint is model.arch={model.arch!r}; pass the matching source config")
    out: Dict[str, Any] = {"architectures": [table.hf_architecture], "model_type": table.hf_model_type}
    base = {k: v for k, v in (template or table.hf_defaults).items() if k not in _OWNED}
    out.update(base)
    values = dataclasses.asdict(model)
    for hf_key, ours in FIELDS:
        out[hf_key] = values[ours]
    out["head_dim"] = head_dim(model)
    out["vocab_size"] = hf_vocab_size or model.vocab_size
    if table.arch == "llama":
        out["attention_bias"] = False
    scaling, max_pos = rope_scaling_for(model, yarn)
    theta = float(model.rope_theta)
    out["max_position_embeddings"] = max_pos
    out["rope_theta"] = theta                       # transformers 4.x / vLLM
    out["rope_scaling"] = scaling                   # transformers 4.x / vLLM (and 5.x, which prefers it)
    out["rope_parameters"] = {**(scaling or {"rope_type": "default"}), "rope_theta": theta}  # transformers 5.x
    out["dtype"] = out["torch_dtype"] = HF_DTYPE_NAMES[dtype]  # 5.x reads 'dtype', 4.x 'torch_dtype'
    if "layer_types" in out:
        out["layer_types"] = ["full_attention"] * model.num_layers
    return dict(sorted(out.items()))
