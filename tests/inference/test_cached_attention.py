"""Flash-decoding pieces: a shard's (output, log-sum-exp) and their merge equal softmax attention over all keys."""
import math

import pytest
import torch

from megatron_ultralong.inference import InferenceError
from megatron_ultralong.inference.cached_attention import merge_partials, partial_attention
from megatron_ultralong.inference.checks import check_prompt_length, check_world_size, padded_length
from megatron_ultralong.inference.kv_cache import KVCache


def _reference(q, k, v, valid, scale):
    """Plain softmax attention, GQA by repeating the KV groups: (b, np, hn)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (b, np, n, hn)
    scores = torch.einsum("bhd,bhnd->bhn", q, k) * scale
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    return torch.einsum("bhn,bhnd->bhd", scores.softmax(-1), v)


def test_merged_shards_equal_attention_over_all_keys_with_gqa_and_pads():
    g = torch.Generator().manual_seed(0)
    b, heads, groups, n, hn = 2, 8, 2, 40, 16
    q = torch.randn(b, heads, hn, generator=g, dtype=torch.float64)
    k, v = (torch.randn(b, groups, n, hn, generator=g, dtype=torch.float64) for _ in range(2))
    valid = torch.rand(b, n, generator=g) > 0.3
    valid[:, 0] = True
    scale = 1.3 / math.sqrt(hn)  # a YaRN-like temperature
    expected = _reference(q, k, v, valid, scale)
    cuts = [0, 7, 7, 25, 40]  # an empty shard among them
    parts = [partial_attention(q, k[:, :, a:e], v[:, :, a:e], valid[:, a:e], scale) for a, e in zip(cuts, cuts[1:])]
    merged = merge_partials(torch.stack([o for o, _ in parts]), torch.stack([s for _, s in parts]))
    torch.testing.assert_close(merged.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.isinf(parts[1][1]).all()  # the empty shard: lse −inf, weighs nothing
    one, _ = partial_attention(q, k, v, valid, scale)
    torch.testing.assert_close(one.double(), expected, rtol=1e-5, atol=1e-6)


def test_a_shard_whose_slots_are_all_pads_weighs_nothing():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 4, generator=g)
    k, v = torch.randn(1, 1, 6, 4, generator=g), torch.randn(1, 1, 6, 4, generator=g)
    valid = torch.tensor([[True, True, True, False, False, False]])
    full = partial_attention(q, k, v, valid, 0.5)
    pads = partial_attention(q, k[:, :, 3:], v[:, :, 3:], valid[:, 3:], 0.5)
    assert torch.isfinite(pads[0]).all() and torch.isinf(pads[1]).all()
    merged = merge_partials(torch.stack([full[0], pads[0]]), torch.stack([full[1], pads[1]]))
    torch.testing.assert_close(merged, full[0])


def test_kv_cache_appends_after_the_prefill_and_counts_bytes():
    cache = KVCache(layers=2, batch=1, groups=1, head_dim=2, capacity=4, dtype=torch.float32, device="cpu")
    assert cache.nbytes() == 2 * 2 * 4 * 2 * 4
    cache.set_valid(torch.tensor([[True, False]]))
    for layer in range(2):
        cache.store(layer, torch.ones(2, 1, 1, 2), torch.ones(2, 1, 1, 2))
    assert cache.open_slot() == 2
    cache.append(0, torch.full((1, 1, 1, 2), 5.0), torch.full((1, 1, 1, 2), 6.0))
    k, v, valid = cache.view(0)
    assert k.shape == (1, 1, 3, 2) and valid.tolist() == [[True, False, True]]
    assert k[0, 0, 2].tolist() == [5.0, 5.0] and v[0, 0, 2].tolist() == [6.0, 6.0]
    assert cache.used_bytes() == 3 * 2 * 2 * 2 * 4
    cache.open_slot()
    with pytest.raises(RuntimeError, match="full"):
        cache.open_slot()


def test_prompt_checks_name_the_window_and_two_cp():
    check_prompt_length(8, window=256, cp=4)
    with pytest.raises(InferenceError, match="longer than the checkpoint's rope window of 256"):
        check_prompt_length(257, window=256, cp=1)
    with pytest.raises(InferenceError, match=r"shorter than 2·cp = 8.*--cp 3"):
        check_prompt_length(7, window=256, cp=4)
    with pytest.raises(InferenceError, match="empty"):
        check_prompt_length(0, window=256, cp=1)
    assert [padded_length(n, 4) for n in (8, 9, 37)] == [8, 16, 40] and padded_length(37, 1) == 37


def test_world_size_must_be_tp_times_cp():
    check_world_size(2, 2, 4)
    with pytest.raises(InferenceError, match=r"world size 2 does not match --tp 2 × --cp 2 = 4"):
        check_world_size(2, 2, 2)
