"""The weight tables: fusion layouts are Megatron's, and every HF / checkpoint tensor is named exactly once."""
import dataclasses

import pytest
import torch

from megatron_ultralong.config import Config, ModelConfig
from megatron_ultralong.convert import ConvertError
from megatron_ultralong.convert.mapping import (
    LLAMA,
    QWEN2,
    Dims,
    DirectMapping,
    GatedMLPMapping,
    QKVMapping,
    checkpoint_key,
    layer_name,
    table_for_arch,
    table_for_hf_model_type,
)
from tests.convert.helpers import in_child, tiny_hf_model

# 8 query heads in 2 groups (k = 4 per group), head_dim 3: small enough to spell out the expected row order
D = Dims(hidden=5, ffn=7, heads=8, groups=2, head_dim=3, vocab=12, hf_vocab=10)


def _rows_tagged(n_rows, tag, width=None):
    """Row r holds tag·1000 + r, so each fused row says where it came from."""
    col = torch.arange(n_rows, dtype=torch.float32) + tag * 1000
    return col if width is None else col[:, None].expand(n_rows, width).clone()


@pytest.mark.parametrize("bias", [False, True])
def test_qkv_rows_are_grouped_q_heads_then_k_then_v_per_query_group(bias):
    width = None if bias else D.hidden
    q, k, v = _rows_tagged(24, 1, width), _rows_tagged(6, 2, width), _rows_tagged(6, 3, width)
    m = QKVMapping("qkv", "q", "k", "v", bias=bias)
    fused = m.to_megatron([q, k, v], D)
    assert tuple(fused.shape) == m.megatron_shape(D) == ((24 + 12,) + (() if bias else (5,)))
    expected = []
    for g in range(2):  # group g: query heads 4g..4g+3 (rows 12g..12g+11), then kv head g (rows 3g..3g+2) of k, v
        expected += [1000 + r for r in range(12 * g, 12 * g + 12)]
        expected += [2000 + r for r in range(3 * g, 3 * g + 3)]
        expected += [3000 + r for r in range(3 * g, 3 * g + 3)]
    got = fused if bias else fused[:, 0]
    assert got.tolist() == expected
    back = m.to_hf(fused, D)
    assert len(back) == 3 and all(torch.equal(a, b) for a, b in zip(back, (q, k, v)))


def test_gated_mlp_fc1_is_gate_rows_then_up_rows_and_splits_back():
    gate, up = _rows_tagged(7, 1, 5), _rows_tagged(7, 2, 5)
    m = GatedMLPMapping("fc1", "gate", "up")
    fused = m.to_megatron([gate, up], D)
    assert fused[:, 0].tolist() == [1000 + r for r in range(7)] + [2000 + r for r in range(7)]
    g2, u2 = m.to_hf(fused, D)
    assert torch.equal(g2, gate) and torch.equal(u2, up)


def test_vocab_rows_are_padded_with_zero_rows_and_trimmed_back():
    emb = torch.randn(10, 5)
    m = DirectMapping("emb", "embed", ("hf_vocab", "hidden"), vocab_rows=True)
    padded = m.to_megatron([emb], D)
    assert padded.shape == (12, 5) and m.megatron_shape(D) == (12, 5) and m.hf_shapes(D) == ((10, 5),)
    assert torch.equal(padded[:10], emb) and not padded[10:].any()
    assert torch.equal(m.to_hf(padded, D)[0], emb)


def test_checkpoint_key_strips_the_layer_index_onto_the_stacked_axis():
    assert checkpoint_key("decoder.layers.11.mlp.linear_fc2.weight") == ("decoder.layers.mlp.linear_fc2.weight", 11)
    assert checkpoint_key("decoder.final_layernorm.weight") == ("decoder.final_layernorm.weight", None)
    assert layer_name("decoder.layers.mlp.linear_fc2.weight", 11) == "decoder.layers.11.mlp.linear_fc2.weight"


@pytest.mark.parametrize("arch,tied", [("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True)])
def test_table_names_every_tensor_of_the_transformers_model_exactly_once(arch, tied):
    hf = tiny_hf_model(arch, tie_word_embeddings=tied)
    table = table_for_hf_model_type(arch)
    model = dataclasses.replace(ModelConfig(), arch=arch, num_layers=2, tie_word_embeddings=tied,
                                qkv_bias=table.qkv_bias)
    names = [n for m in table.mappings(model) for n in m.hf_names]
    assert len(names) == len(set(names))
    expected = set(hf.state_dict()) - ({"lm_head.weight"} if tied else set())  # tied: lm_head is the embedding
    assert set(names) == expected


def _megatron_checkpoint_names(arch, tied):
    from megatron_ultralong.convert.megatron_io import checkpoint_names, conversion_model
    from megatron_ultralong.convert.process_group import single_process

    table = table_for_arch(arch)
    model_cfg = dataclasses.replace(ModelConfig(), arch=arch, qkv_bias=table.qkv_bias, tie_word_embeddings=tied,
                                    num_layers=3)
    with single_process():
        names = set(checkpoint_names(conversion_model(Config(model=model_cfg))))
    return names, {m.megatron for m in table.mappings(model_cfg)}


@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen2", True)])
def test_table_targets_the_keys_megatron_writes_into_a_checkpoint(arch, tied):
    """Read from Megatron's own sharded_state_dict (local spec, TE names): a rename upstream fails here."""
    in_model, in_table = in_child(_megatron_checkpoint_names, arch, tied)
    assert in_model == in_table
    assert "decoder.layers.2.self_attention.linear_qkv.layer_norm_weight" in in_model  # TE name, not input_layernorm
    assert ("output_layer.weight" in in_model) == (not tied)


def test_qwen2_differs_from_llama_only_by_the_qkv_bias():
    llama = {m.megatron for m in LLAMA.layer}
    qwen = {m.megatron for m in QWEN2.layer}
    assert qwen - llama == {"decoder.layers.{i}.self_attention.linear_qkv.bias"} and llama <= qwen


def test_unknown_architecture_is_refused_naming_the_supported_ones():
    with pytest.raises(ConvertError, match=r"model_type='mistral'.*supported: llama, qwen2"):
        table_for_hf_model_type("mistral")
    with pytest.raises(ConvertError, match="model.arch='gpt2'"):
        table_for_arch("gpt2")
