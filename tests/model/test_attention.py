"""SDPACoreAttention (model/attention.py) on one process: causal and document-masked attention against a naive
explicit-mask softmax. (CP shards are checked against this module at CP=1 in tests/distributed/test_cp.py.)"""
import math

import pytest
import torch

from megatron_ultralong.config import load_recipe
from megatron_ultralong.model import attention
from megatron_ultralong.model.attention import SDPACoreAttention, document_runs
from megatron_ultralong.model.builder import transformer_config

SEQ, B, NH, NG, HD = 48, 3, 4, 2, 8  # GQA 2:1


def _module():
    tc = transformer_config(load_recipe("toy_cpt", [f"data.seq_length={SEQ}", f"model.num_attention_heads={NH}",
                                                    f"model.num_query_groups={NG}"]))
    return SDPACoreAttention(tc, 1, None, "self").eval()


def _naive(q, k, v, doc_ids, scale):
    """[s, b, h, d] inputs -> [s, b, h·d], masking with an explicit [b, s, s] matrix (causal & same document)."""
    s, b, nh, hd = q.shape
    rep = nh // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("sbhd,tbhd->bhst", q, k) * scale
    allowed = torch.ones(s, s, dtype=torch.bool).tril()[None].expand(b, s, s)
    if doc_ids is not None:
        allowed = allowed & (doc_ids[:, :, None] == doc_ids[:, None, :])
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    out = torch.einsum("bhst,tbhd->sbhd", scores.softmax(-1), v)
    return out.reshape(s, b, nh * hd)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SEQ, B, n, HD, generator=g, requires_grad=True) for n in (NH, NG, NG)]


@pytest.mark.parametrize("docs", ["none", "packed"])
def test_output_and_grads_equal_an_explicit_mask_softmax_with_gqa(docs):
    # every sample has its own boundaries; sample 2 is one document; sample 1 has one-token documents
    doc_ids = None if docs == "none" else torch.tensor([
        [0] * 10 + [1] * 30 + [2] * 8,
        [0] * 5 + [1] + [2] + [3] * 40 + [4],
        [0] * SEQ,
    ])
    module = _module()
    q, k, v = _inputs()
    grad_out = torch.randn(SEQ, B, NH * HD, generator=torch.Generator().manual_seed(1))
    out = module(q, k, v, doc_ids)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    ref = _naive(q, k, v, doc_ids, module.softmax_scale)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad_out)
    assert out.shape == (SEQ, B, NH * HD)
    for got, want in zip((out, *grads), (ref, *ref_grads)):
        assert (got - want).abs().max().item() < 1e-5
    if doc_ids is not None:  # the mask matters: plain causal attention gives other outputs
        assert (out - _naive(q, k, v, None, module.softmax_scale)).abs().max().item() > 1e-2


def test_a_document_sees_nothing_of_the_one_before_it():
    module = _module()
    doc_ids = torch.tensor([[0] * 20 + [1] * 28] * B)
    q, k, v = _inputs()
    out = module(q, k, v, doc_ids)
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:20], v2[:20] = torch.randn(20, B, NG, HD), torch.randn(20, B, NG, HD)  # rewrite document 0's keys/values
    out2 = module(q, k2, v2, doc_ids)
    assert torch.equal(out[20:], out2[20:]) and not torch.allclose(out[:20], out2[:20])


def test_document_runs_are_contiguous_spans_and_a_revisited_id_is_refused():
    assert document_runs(torch.tensor([[0, 0, 1, 2, 2], [7, 7, 7, 7, 7]])) == [[(0, 2), (2, 3), (3, 5)], [(0, 5)]]
    with pytest.raises(ValueError, match="revisit an id"):
        document_runs(torch.tensor([[0, 0, 1, 0]]))


def test_runs_are_read_once_per_doc_id_tensor_not_once_per_layer(monkeypatch):
    calls = []
    real = attention.document_runs
    monkeypatch.setattr(attention, "document_runs", lambda d: calls.append(1) or real(d))
    module = _module()
    doc_ids = torch.tensor([[0] * 24 + [1] * 24] * B)
    q, k, v = _inputs()
    first = module(q, k, v, doc_ids)
    for _ in range(3):  # later layers get the same tensor
        assert torch.equal(module(q, k, v, doc_ids), first)
    assert len(calls) == 1
    module(q, k, v, doc_ids.clone())  # the next microbatch: a new tensor, read again
    assert len(calls) == 2
    assert math.isfinite(first.sum().item())
