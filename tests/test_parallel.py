"""Zigzag CP layout (pure functions) and the CP settings that must fail before any process group starts."""
import pytest
import torch

from megatron_ultralong.config import ConfigError, check_cp_seq_length, load_recipe, validate
from megatron_ultralong.context_parallel import zigzag_chunk_ids, zigzag_merge, zigzag_split
from megatron_ultralong.model import rotary
from megatron_ultralong.model.specs import validate_context_parallel
from megatron_ultralong.parallel import hierarchical_cp_sizes


def test_zigzag_split_gives_rank_r_chunks_r_and_2cp_minus_1_minus_r():
    pos = torch.arange(16).view(1, 16)  # cp=2: 4 chunks of 4
    assert zigzag_split(pos, 2, 0).tolist() == [[0, 1, 2, 3, 12, 13, 14, 15]]
    assert zigzag_split(pos, 2, 1).tolist() == [[4, 5, 6, 7, 8, 9, 10, 11]]
    assert [zigzag_chunk_ids(4, r) for r in range(4)] == [(0, 7), (1, 6), (2, 5), (3, 4)]


@pytest.mark.parametrize("cp", [1, 2, 4, 8])
def test_zigzag_shards_partition_the_sequence_with_equal_causal_work(cp):
    s = 64
    shards = [zigzag_split(torch.arange(s).view(1, s), cp, r)[0] for r in range(cp)]
    assert sorted(torch.cat(shards).tolist()) == list(range(s))
    # causal work of a query = its position + 1 keys: zigzag gives every rank the same total
    work = {int((sh + 1).sum()) for sh in shards}
    assert len(work) == 1


def test_zigzag_split_splits_every_per_token_field_alike_and_merge_inverts_it():
    g = torch.Generator().manual_seed(0)
    batch = {"tokens": torch.randint(0, 100, (2, 24), generator=g),
             "labels": torch.randint(0, 100, (2, 24), generator=g),
             "loss_mask": torch.rand(2, 24, generator=g), "position_ids": torch.arange(24).expand(2, 24),
             "doc_ids": torch.tensor([0] * 10 + [1] * 14).expand(2, 24)}
    shards = [zigzag_split(batch, 3, r) for r in range(3)]
    for r, shard in enumerate(shards):
        assert all(v.shape == (2, 8) for v in shard.values())
        # positions tell where each kept token came from: every field must agree with them
        pos = shard["position_ids"][0]
        for k in ("tokens", "labels", "loss_mask", "doc_ids"):
            torch.testing.assert_close(shard[k], batch[k][:, pos], rtol=0, atol=0)
    for k, v in batch.items():
        torch.testing.assert_close(zigzag_merge([s[k] for s in shards]), v, rtol=0, atol=0)


def test_zigzag_merge_inverts_split_on_the_sequence_dim_of_sbh_tensors():
    x = torch.randn(32, 2, 5)  # [s, b, h] like hidden states / rotary angles
    shards = [zigzag_split(x, 4, r, seq_dim=0) for r in range(4)]
    torch.testing.assert_close(zigzag_merge(shards, seq_dim=0), x, rtol=0, atol=0)


def test_zigzag_split_with_cp1_is_the_identity():
    t = torch.arange(10).view(1, 10)
    assert zigzag_split(t, 1, 0) is t


def test_zigzag_split_rejects_length_not_divisible_by_2cp_with_the_fix():
    with pytest.raises(ConfigError,
                       match=r"parallel.cp=3: sequence length 100 is not divisible by 2\*cp=6 \(zigzag split\); "
                             r"use a multiple of 6"):
        zigzag_split(torch.zeros(1, 100), 3, 0)


def test_zigzag_split_rejects_fields_of_different_lengths():
    with pytest.raises(ValueError, match="disagree on the sequence length"):
        zigzag_split({"tokens": torch.zeros(1, 8), "labels": torch.zeros(1, 12)}, 2, 0)


def test_sequence_parallel_needs_length_divisible_by_tp_times_2cp():
    check_cp_seq_length(48, cp_size=2, tp_size=3, sequence_parallel=True)  # 48 = 3·2·2·4
    with pytest.raises(ConfigError, match=r"tp=2, cp=2: sequence length 36 is not divisible by tp·2·cp=8"):
        check_cp_seq_length(36, cp_size=2, tp_size=2, sequence_parallel=True)
    check_cp_seq_length(36, cp_size=2, tp_size=2, sequence_parallel=False)  # 36 % 4 == 0 suffices without SP


# ------------------------------------------------------------------------------- bad CP settings (ConfigError)
BAD_CP = [
    (["parallel.cp=3", "data.seq_length=250"], None, r"parallel.cp=3: data.seq_length=250 is not divisible by 2\*cp=6"),
    (["parallel.cp=8"], 4, r"parallel.cp=8 exceeds the world size 4; lower cp or add GPUs"),
    (["parallel.cp=4", "parallel.cp_comm_type=a2a"], None,
     r"cp_comm_type='a2a' splits each TP rank's 4 query / 2 KV heads over cp=4 ranks"),
    (["parallel.cp=2", "parallel.tp=2", "parallel.sequence_parallel=true", "data.seq_length=244"], None,
     r"sequence_parallel with tp=2, cp=2: data.seq_length=244 is not divisible by tp·2·cp=8"),
    (["parallel.cp=2", "parallel.cp_comm_type=ring"], None, r"parallel.cp_comm_type='ring': must be one of"),
]


@pytest.mark.parametrize("overrides,world,message", BAD_CP, ids=[b[2][:40] for b in BAD_CP])
def test_bad_cp_config_raises_one_line_error_naming_field_and_fix(overrides, world, message):
    cfg = load_recipe("toy_cpt", overrides)
    with pytest.raises(ConfigError, match=message) as err:
        validate(cfg, world_size=world)
    assert "\n" not in str(err.value)


def test_cp_with_megatron_local_attention_is_refused_before_building():
    cfg = load_recipe("toy_cpt", ["parallel.cp=2", "model.attention_backend=local"])
    validate(cfg, world_size=2)  # the backend is only resolved per machine
    with pytest.raises(ConfigError, match=r"attention_backend='local': .* use model.attention_backend=sdpa"):
        validate_context_parallel(cfg)


def test_a2a_needs_cp_to_divide_the_heads_of_each_tp_rank_not_just_the_model_heads():
    # 8 KV heads divide by cp=4, but tp=4 leaves 2 per rank: all-to-all cannot split 2 heads over 4 ranks
    cfg = load_recipe("toy_cpt", ["model.num_attention_heads=8", "model.num_query_groups=8", "model.hidden_size=128",
                                  "parallel.tp=4", "parallel.cp=4", "parallel.cp_comm_type=a2a"])
    with pytest.raises(ConfigError, match=r"splits each TP rank's 2 query / 2 KV heads over cp=4 ranks "
                                          r"\(model.num_attention_heads=8, model.num_query_groups=8, tp=4\)"):
        validate(cfg, world_size=16)
    cfg.parallel.tp = 2  # 4 heads per rank: fits
    validate(cfg, world_size=8)
    validate_context_parallel(cfg)
    # the KV heads alone decide too: 8 query heads but 2 KV heads per rank at tp=1
    with pytest.raises(ConfigError, match=r"splits each TP rank's 8 query / 2 KV heads over cp=4 ranks"):
        validate(load_recipe("toy_cpt", ["model.num_attention_heads=8", "model.hidden_size=128", "parallel.cp=4",
                                         "parallel.cp_comm_type=a2a"]), world_size=4)


def test_a2a_p2p_puts_the_largest_head_dividing_level_inside_a_node():
    llama = ["model.num_attention_heads=32", "model.num_query_groups=8", "model.hidden_size=256",
             "parallel.cp_comm_type=a2a+p2p"]
    cfg = load_recipe("toy_cpt", llama + ["parallel.cp=8", "parallel.tp=2"])
    assert hierarchical_cp_sizes(cfg, ranks_per_node=8) == [4, 2]  # 4 KV heads per TP rank, 4 CP ranks per node
    cfg.parallel.tp = 8  # one KV head per rank: nothing to exchange by all-to-all
    with pytest.raises(ConfigError, match=r"no all-to-all level fits .* use parallel.cp_comm_type=p2p"):
        hierarchical_cp_sizes(cfg, ranks_per_node=8)
    cfg.parallel.cp_comm_type = "p2p"
    assert hierarchical_cp_sizes(cfg, ranks_per_node=8) is None


def test_rotary_zigzag_positions_follow_the_batch_split():
    for cp in (1, 2, 4):
        for r in range(cp):
            expected = zigzag_split(torch.arange(64), cp, r, seq_dim=0)
            assert torch.as_tensor(rotary.zigzag_positions(64, cp, r)).tolist() == expected.tolist()
