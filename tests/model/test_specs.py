"""Layer-spec selection: which core attention runs, and which mask it gets, per backend and masking."""
import os

import pytest
import torch
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

from megatron_ultralong.config import load_recipe, needs_document_masking
from megatron_ultralong.model import specs
from megatron_ultralong.model.attention import SDPACoreAttention


def test_sft_and_mask_cross_document_need_document_masking_plain_cpt_does_not():
    assert needs_document_masking(load_recipe("toy_sft"))
    assert not needs_document_masking(load_recipe("toy_cpt"))
    assert needs_document_masking(load_recipe("toy_cpt", ["data.mask_cross_document=true"]))
    assert needs_document_masking(load_recipe("sft"))  # the cluster recipe, on TE GPUs


@pytest.mark.parametrize("backend, masking, kind", [("te", False, "te"), ("te", True, "sdpa"), ("sdpa", False, "sdpa"),
                                                    ("sdpa", True, "sdpa"), ("local", True, "local")])
def test_core_attention_kind_routes_masked_te_layers_to_sdpa(backend, masking, kind):
    assert specs.core_attention_kind(backend, masking) == kind


def test_te_layers_keep_te_linears_and_take_sdpa_core_attention_when_documents_are_masked(monkeypatch):
    # Transformer Engine is not importable here: stand a distinct local spec in for the TE one, to check that
    # the masked TE layer is the TE spec (its linears untouched) with only the core attention swapped.
    te_stand_in = get_gpt_layer_local_spec(normalization="RMSNorm")
    te_core = te_stand_in.submodules.self_attention.submodules.core_attention
    te_qkv = te_stand_in.submodules.self_attention.submodules.linear_qkv
    monkeypatch.setattr(specs, "resolve_attention_backend", lambda model: "te")
    monkeypatch.setattr(specs, "get_gpt_layer_with_transformer_engine_spec",
                        lambda: get_gpt_layer_local_spec(normalization="RMSNorm"))
    model = load_recipe("toy_sft").model
    plain = specs.layer_spec(model).submodules.self_attention.submodules
    masked = specs.layer_spec(model, document_masking=True).submodules.self_attention.submodules
    assert plain.core_attention is te_core and plain.core_attention is not SDPACoreAttention
    assert masked.core_attention is SDPACoreAttention
    assert masked.linear_qkv is te_qkv


def test_masks_follow_the_core_attention_kind():
    doc_ids = torch.tensor([[0, 0, 1, 1]])
    assert specs.make_attention_mask("sdpa", 4, doc_ids) is doc_ids
    assert specs.make_attention_mask("te", 4) is None
    local = specs.make_attention_mask("local", 4, doc_ids)
    assert local[0, 0, 3].tolist() == [True, True, False, False]  # token 3 sees 2..3 only
    with pytest.raises(ValueError, match="document_masking=True"):
        specs.make_attention_mask("te", 4, doc_ids)


def test_te_older_than_1_10_is_refused_when_it_would_drop_the_yarn_temperature(monkeypatch):
    import megatron.core.utils as mcu

    from megatron_ultralong.config import ConfigError
    from megatron_ultralong.model import builder

    cfg = load_recipe("toy_cpt")  # YaRN x4: a softmax scale that carries the temperature
    scale = builder.transformer_config(cfg).softmax_scale
    assert scale is not None
    monkeypatch.setattr(builder, "resolve_attention_backend", lambda model: "te")
    monkeypatch.setattr(mcu, "is_te_min_version", lambda v, check_equality=True: False)
    monkeypatch.setattr(mcu, "get_te_version", lambda: "1.9.0")
    with pytest.raises(ConfigError, match=r"Engine 1\.9\.0 ignores softmax_scale .* model\.attention_backend=sdpa"):
        builder.check_te_keeps_softmax_scale(cfg, scale)
    builder.check_te_keeps_softmax_scale(cfg, None)  # no temperature: nothing to lose
    masked = load_recipe("toy_cpt", ["data.mask_cross_document=true"])  # te layers run the sdpa core: it keeps it
    builder.check_te_keeps_softmax_scale(masked, scale)
    monkeypatch.setattr(mcu, "is_te_min_version", lambda v, check_equality=True: True)
    builder.check_te_keeps_softmax_scale(cfg, scale)


@pytest.mark.parametrize("backend, exported, error", [
    ("te", {}, None), ("te", {"NVTE_FLASH_ATTN": "1"}, None),
    ("te", {"NVTE_FLASH_ATTN": "0"}, "NVTE_FLASH_ATTN=0"), ("te", {"NVTE_FUSED_ATTN": "0"}, "NVTE_FUSED_ATTN=0"),
    ("sdpa", {"NVTE_FLASH_ATTN": "0", "NVTE_FUSED_ATTN": "0"}, None), ("sdpa", {"NVTE_FUSED_ATTN": "1"}, None),
    ("local", {"NVTE_FLASH_ATTN": "1", "NVTE_FUSED_ATTN": "0"}, None), ("local", {}, None),
    ("sdpa", {"NVTE_FLASH_ATTN": "1", "NVTE_FUSED_ATTN": "1", "NVTE_UNFUSED_ATTN": "0"},
     "NVTE_FLASH_ATTN=1, NVTE_FUSED_ATTN=1, NVTE_UNFUSED_ATTN=0"),
])
def test_attention_backend_maps_onto_megatron_and_a_conflicting_nvte_variable_is_one_line(monkeypatch, backend,
                                                                                         exported, error):
    from types import SimpleNamespace

    from megatron.core.models.common.language_module.language_module import LanguageModule

    monkeypatch.setattr(specs, "_nvte_set_by_megatron", {})
    for name in specs._NVTE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in exported.items():
        monkeypatch.setenv(name, value)
    from megatron.core.transformer.enums import AttnBackend

    def megatron_accepts(kind) -> bool:
        with monkeypatch.context() as m:  # Megatron writes the variables: keep the exported ones for the next try
            for name in specs._NVTE_VARIABLES:
                value = os.environ.get(name)
                m.setenv(name, value or "unset")  # registers the restore
                if value is None:
                    m.delenv(name)
            try:
                LanguageModule._set_attention_backend(SimpleNamespace(config=SimpleNamespace(attention_backend=kind)))
            except AssertionError:
                return False
        return True

    if error:
        with pytest.raises(specs.ConfigError) as e:
            specs.megatron_attention_backend(backend)
        assert str(e.value).startswith(error) and "\n" not in str(e.value)
        # what the user got before: Megatron's assert while building (te: with auto; sdpa: with every backend)
        assert not any(megatron_accepts(k) for k in ([AttnBackend.auto] if backend == "te" else AttnBackend))
        return
    kind = specs.megatron_attention_backend(backend)
    assert kind.name == "auto" if backend == "te" else kind.name == "local" or exported
    assert megatron_accepts(kind)
    LanguageModule._set_attention_backend(SimpleNamespace(config=SimpleNamespace(attention_backend=kind)))
    # a later build in the same process with another backend is not blocked by what Megatron wrote
    other = "sdpa" if backend == "te" else "te"
    if not exported:
        assert specs.megatron_attention_backend(other).name == ("auto" if other == "te" else "local")
