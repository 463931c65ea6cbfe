"""HF ⇄ Megatron-Core weight names: one declarative table per architecture, fusions as named transforms.

    table = table_for_hf_model_type("llama")          # or table_for_arch("qwen2")
    for m in table.mappings(model_cfg):                # DirectMapping | QKVMapping | GatedMLPMapping
        fused = m.to_megatron([hf[n] for n in m.hf_names], dims);  hf_tensors = m.to_hf(fused, dims)

The Megatron names are checkpoint keys (TE names on every backend; ``{i}`` is a row of the stacked layer axis).
Why, and how to add an architecture (an ``ArchTable`` in ``TABLES``): docs/convert.md (Weights: the tables).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..config import ModelConfig, head_dim
from .errors import ConvertError

LAYER_PREFIX = "decoder.layers."


# --------------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Dims:
    """The sizes a table's shapes are written in (symbolic names in the mappings below)."""

    hidden: int
    """Model width."""
    ffn: int
    """MLP width per branch."""
    heads: int
    """Query heads."""
    groups: int
    """Key/value heads."""
    head_dim: int
    """Channels per head."""
    vocab: int
    """Rows of the Megatron embedding / output layer (HF vocabulary padded to a multiple of TP if needed)."""
    hf_vocab: int
    """Rows of the HF embedding / lm_head."""

    @classmethod
    def of(cls, model: ModelConfig, hf_vocab: Optional[int] = None) -> "Dims":
        return cls(hidden=model.hidden_size, ffn=model.ffn_hidden_size, heads=model.num_attention_heads,
                   groups=model.num_query_groups, head_dim=head_dim(model), vocab=model.vocab_size,
                   hf_vocab=hf_vocab or model.vocab_size)

    def size(self, name: str) -> int:
        """A symbolic size: hidden, ffn, q (= heads·head_dim), kv (= groups·head_dim), vocab, hf_vocab."""
        sizes = {"hidden": self.hidden, "ffn": self.ffn, "q": self.heads * self.head_dim,
                 "kv": self.groups * self.head_dim, "vocab": self.vocab, "hf_vocab": self.hf_vocab}
        return sizes[name]

    def shape(self, symbolic: Sequence[str]) -> Tuple[int, ...]:
        return tuple(self.size(s) for s in symbolic)


# ------------------------------------------------------------------------------------------ mappings
# Conditions a mapping may depend on (named, so tables stay data).
CONDITIONS: Dict[str, Callable[[ModelConfig], bool]] = {
    "untied": lambda m: not m.tie_word_embeddings,  # a tied model has no separate output layer / lm_head
}


@dataclass(frozen=True)
class DirectMapping:
    """One HF tensor is one Megatron tensor. ``shape`` is symbolic (see :meth:`Dims.size`) and is the HF shape;
    with ``vocab_rows`` the first axis is the vocabulary, padded with zero rows up to ``Dims.vocab`` in Megatron."""

    megatron: str
    hf: str
    shape: Tuple[str, ...]
    vocab_rows: bool = False
    only_if: Optional[str] = None

    @property
    def hf_names(self) -> Tuple[str, ...]:
        return (self.hf,)

    def hf_shapes(self, d: Dims) -> Tuple[Tuple[int, ...], ...]:
        return (d.shape(self.shape),)

    def megatron_shape(self, d: Dims) -> Tuple[int, ...]:
        shape = d.shape(self.shape)
        return (d.vocab,) + shape[1:] if self.vocab_rows else shape

    def to_megatron(self, tensors: Sequence[torch.Tensor], d: Dims) -> torch.Tensor:
        (t,) = tensors
        if self.vocab_rows and d.vocab > t.shape[0]:
            # padding rows never win a softmax by accident of init: zero embedding, zero output logit weight
            t = torch.cat([t, t.new_zeros((d.vocab - t.shape[0],) + tuple(t.shape[1:]))], dim=0)
        return t

    def to_hf(self, tensor: torch.Tensor, d: Dims) -> Tuple[torch.Tensor, ...]:
        return (tensor[:d.hf_vocab] if self.vocab_rows else tensor,)


@dataclass(frozen=True)
class QKVMapping:
    """q_proj / k_proj / v_proj (weights [out, hidden] or biases [out]) -> Megatron's fused ``linear_qkv``.

    HF (repeat_kv) serves query heads g·k .. g·k+k-1 from key/value head g, k = heads / groups. Megatron keeps each
    query group's rows together, [q_{g·k} .. q_{g·k+k-1}, k_g, v_g], groups one after another, so a TP rank owning
    a contiguous block of groups holds whole groups.
    """

    megatron: str
    q: str
    k: str
    v: str
    bias: bool = False
    only_if: Optional[str] = None

    @property
    def hf_names(self) -> Tuple[str, ...]:
        return (self.q, self.k, self.v)

    def _tail(self, d: Dims) -> Tuple[int, ...]:
        return () if self.bias else (d.hidden,)

    def hf_shapes(self, d: Dims) -> Tuple[Tuple[int, ...], ...]:
        tail = self._tail(d)
        return ((d.size("q"),) + tail, (d.size("kv"),) + tail, (d.size("kv"),) + tail)

    def megatron_shape(self, d: Dims) -> Tuple[int, ...]:
        return (d.size("q") + 2 * d.size("kv"),) + self._tail(d)

    def to_megatron(self, tensors: Sequence[torch.Tensor], d: Dims) -> torch.Tensor:
        q, k, v = tensors
        g, per, hd, tail = d.groups, d.heads // d.groups, d.head_dim, self._tail(d)
        grouped = torch.cat([q.reshape((g, per * hd) + tail),  # (groups, k·hd, ...)
                             k.reshape((g, hd) + tail),         # (groups, hd, ...)
                             v.reshape((g, hd) + tail)], dim=1)  # (groups, (k+2)·hd, ...)
        return grouped.reshape(self.megatron_shape(d))

    def to_hf(self, tensor: torch.Tensor, d: Dims) -> Tuple[torch.Tensor, ...]:
        g, per, hd, tail = d.groups, d.heads // d.groups, d.head_dim, self._tail(d)
        q, k, v = tensor.reshape((g, (per + 2) * hd) + tail).split([per * hd, hd, hd], dim=1)
        return (q.reshape((d.size("q"),) + tail), k.reshape((d.size("kv"),) + tail),
                v.reshape((d.size("kv"),) + tail))


@dataclass(frozen=True)
class GatedMLPMapping:
    """gate_proj and up_proj ([ffn, hidden] each) -> Megatron's ``linear_fc1`` = [gate; up] ([2·ffn, hidden]).
    SwiGLU: fc1 output is split in two halves, silu(first) · second."""

    megatron: str
    gate: str
    up: str
    only_if: Optional[str] = None

    @property
    def hf_names(self) -> Tuple[str, ...]:
        return (self.gate, self.up)

    def hf_shapes(self, d: Dims) -> Tuple[Tuple[int, ...], ...]:
        return ((d.ffn, d.hidden), (d.ffn, d.hidden))

    def megatron_shape(self, d: Dims) -> Tuple[int, ...]:
        return (2 * d.ffn, d.hidden)

    def to_megatron(self, tensors: Sequence[torch.Tensor], d: Dims) -> torch.Tensor:
        gate, up = tensors
        return torch.cat([gate, up], dim=0)

    def to_hf(self, tensor: torch.Tensor, d: Dims) -> Tuple[torch.Tensor, ...]:
        gate, up = tensor.chunk(2, dim=0)
        return gate, up


Mapping = DirectMapping | QKVMapping | GatedMLPMapping


def _at_layer(m: Mapping, i: int) -> Mapping:
    """The mapping with ``{i}`` replaced by layer ``i`` in every name."""
    changes = {f.name: getattr(m, f.name).format(i=i) for f in dataclasses.fields(m)
               if isinstance(getattr(m, f.name), str) and f.name != "only_if"}
    return dataclasses.replace(m, **changes)


# ------------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class ArchTable:
    """Everything architecture-specific the converters need: HF identity, weight mappings, fixed config facts."""

    arch: str
    """Our ``model.arch``."""
    hf_model_type: str
    """``model_type`` in config.json."""
    hf_architecture: str
    """``architectures[0]`` in config.json (the transformers class)."""
    qkv_bias: bool
    """Whether the architecture has Q/K/V biases (Qwen2 always, Llama never in the supported variants)."""
    pre: Tuple[Mapping, ...]
    """Mappings before the layers (embedding)."""
    layer: Tuple[Mapping, ...]
    """Per-layer mappings; names contain ``{i}``."""
    post: Tuple[Mapping, ...]
    """Mappings after the layers (final norm, output layer)."""
    hf_defaults: Dict[str, object]
    """config.json keys written when exporting without a source config to start from."""
    hf_ignored: Tuple[str, ...] = ()
    """Name suffixes of HF tensors that carry no weights (e.g. rotary ``inv_freq`` buffers in old checkpoints)."""

    def units(self, model: ModelConfig) -> Iterator[Tuple[str, List[Mapping]]]:
        """(label, mappings) in file order: 'embedding', 'layer 0' .. 'layer L-1', 'final'. Conditional
        mappings that do not apply to ``model`` are left out."""
        keep = lambda m: m.only_if is None or CONDITIONS[m.only_if](model)  # noqa: E731
        yield "embedding", [m for m in self.pre if keep(m)]
        for i in range(model.num_layers):
            yield f"layer {i}", [_at_layer(m, i) for m in self.layer if keep(m)]
        yield "final", [m for m in self.post if keep(m)]

    def mappings(self, model: ModelConfig) -> List[Mapping]:
        return [m for _, unit in self.units(model) for m in unit]


def _llama_like(arch: str, model_type: str, architecture: str, qkv_bias: bool, defaults: Dict[str, object]):
    """Llama-3.x and Qwen2 share names; Qwen2 adds the Q/K/V biases."""
    attn, mlp, dl = "model.layers.{i}.self_attn.", "model.layers.{i}.mlp.", "decoder.layers.{i}."
    layer: List[Mapping] = [
        DirectMapping(dl + "self_attention.linear_qkv.layer_norm_weight", "model.layers.{i}.input_layernorm.weight",
                      ("hidden",)),
        QKVMapping(dl + "self_attention.linear_qkv.weight", attn + "q_proj.weight", attn + "k_proj.weight",
                   attn + "v_proj.weight"),
    ]
    if qkv_bias:
        layer.append(QKVMapping(dl + "self_attention.linear_qkv.bias", attn + "q_proj.bias", attn + "k_proj.bias",
                                attn + "v_proj.bias", bias=True))
    layer += [
        DirectMapping(dl + "self_attention.linear_proj.weight", attn + "o_proj.weight", ("hidden", "q")),
        DirectMapping(dl + "mlp.linear_fc1.layer_norm_weight", "model.layers.{i}.post_attention_layernorm.weight",
                      ("hidden",)),
        GatedMLPMapping(dl + "mlp.linear_fc1.weight", mlp + "gate_proj.weight", mlp + "up_proj.weight"),
        DirectMapping(dl + "mlp.linear_fc2.weight", mlp + "down_proj.weight", ("hidden", "ffn")),
    ]
    return ArchTable(
        arch=arch, hf_model_type=model_type, hf_architecture=architecture, qkv_bias=qkv_bias,
        pre=(DirectMapping("embedding.word_embeddings.weight", "model.embed_tokens.weight", ("hf_vocab", "hidden"),
                           vocab_rows=True),),
        layer=tuple(layer),
        post=(DirectMapping("decoder.final_layernorm.weight", "model.norm.weight", ("hidden",)),
              DirectMapping("output_layer.weight", "lm_head.weight", ("hf_vocab", "hidden"), vocab_rows=True,
                            only_if="untied")),
        hf_defaults={"hidden_act": "silu", "initializer_range": 0.02, "use_cache": True, **defaults},
        hf_ignored=(".rotary_emb.inv_freq",),
    )


LLAMA = _llama_like("llama", "llama", "LlamaForCausalLM", qkv_bias=False,
                    defaults={"attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
                              "pretraining_tp": 1})
QWEN2 = _llama_like("qwen2", "qwen2", "Qwen2ForCausalLM", qkv_bias=True,
                    defaults={"attention_dropout": 0.0, "use_sliding_window": False, "sliding_window": None})

TABLES: Dict[str, ArchTable] = {t.arch: t for t in (LLAMA, QWEN2)}


def table_for_arch(arch: str) -> ArchTable:
    """The table of our ``model.arch``."""
    if arch not in TABLES:
        raise ConvertError(f"model.arch={arch!r} has no conversion table; supported: {', '.join(TABLES)} "
                           f"(add an ArchTable to megatron_ultralong/convert/mapping.py)")
    return TABLES[arch]


def table_for_hf_model_type(model_type: Optional[str]) -> ArchTable:
    """The table whose HF ``model_type`` this is."""
    for t in TABLES.values():
        if t.hf_model_type == model_type:
            return t
    raise ConvertError(f"unknown architecture: config.json model_type={model_type!r}; supported: "
                       f"{', '.join(t.hf_model_type for t in TABLES.values())} "
                       f"(add an ArchTable to megatron_ultralong/convert/mapping.py)")


# ------------------------------------------------------------------------------- checkpoint keys
def checkpoint_key(name: str) -> Tuple[str, Optional[int]]:
    """'decoder.layers.3.mlp.linear_fc2.weight' -> ('decoder.layers.mlp.linear_fc2.weight', 3): the key stored in
    the distributed checkpoint and the row of its stacked layer axis; other names -> (name, None)."""
    if not name.startswith(LAYER_PREFIX):
        return name, None
    index, _, rest = name[len(LAYER_PREFIX):].partition(".")
    if not index.isdigit():
        raise ValueError(f"{name}: expected '{LAYER_PREFIX}<layer>.<name>'")
    return LAYER_PREFIX + rest, int(index)


def layer_name(key: str, layer: Optional[int]) -> str:
    """Inverse of :func:`checkpoint_key`."""
    if layer is None:
        return key
    return f"{LAYER_PREFIX}{layer}.{key[len(LAYER_PREFIX):]}"
