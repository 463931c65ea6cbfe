"""Context parallelism changes the layout, not the math: CP=N loss and gradients equal CP=1's (gloo, fp32).

Every run gets the same full batch; the forward step keeps each CP rank's zigzag share. Gradients are compared as
Megatron applies them: summed over the CP group (DDP reduces over DP×CP) and divided by the global token count
(finalize_model_grads with calculate_per_token_loss) — i.e. the gradient of the mean loss over the global batch.
"""
import os

import pytest
import torch

from megatron_ultralong.config import load_recipe
from tests.dist import fixed_batch, full_tensor, global_param_name, reinit_by_name, run_ranks

pytestmark = pytest.mark.slow
SEQ = 128  # above the toy card's original 64-token window (YaRN 64 -> 256), divisible by 2·cp·tp for cp, tp <= 4
VOCAB_SHARDED = type("VocabSharded", (), {"tensor_model_parallel": True, "partition_dim": 2})()


def _eval_logits(model, cfg, local):
    """Eval-style forward of this CP rank's share ``local`` through Megatron's schedule (forward only, so the
    pipeline passes activations between stages): the full [b, SEQ, vocab] logits, on every rank."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_ultralong import cpu_shims
    from megatron_ultralong.context_parallel import zigzag_gather
    from megatron_ultralong.model.specs import make_attention_mask, resolve_attention_backend

    device = next(model.parameters()).device
    cp = ps.get_context_parallel_world_size()
    mask = make_attention_mask(resolve_attention_backend(cfg.model), SEQ // cp)

    def logits_step(data_iterator, module):
        b = next(data_iterator)
        out = module(input_ids=b["tokens"].to(device), position_ids=b["position_ids"].to(device), attention_mask=mask)
        return out, lambda output, non_loss_data=False: output.detach()  # last stage: [b, SEQ/cp, vocab/tp]

    with torch.no_grad(), cpu_shims.cuda_to_cpu():
        stored = get_forward_backward_func()(forward_step_func=logits_step, data_iterator=iter([local]), model=[model],
                                             num_microbatches=1, seq_length=SEQ,
                                             micro_batch_size=local["tokens"].shape[0], forward_only=True,
                                             collect_non_loss_data=True)
    logits = None
    if ps.is_pipeline_last_stage():
        assert len(stored) == 1, f"expected the one microbatch's logits, got {len(stored)} outputs"
        logits = full_tensor(zigzag_gather(stored[0], seq_dim=1), VOCAB_SHARDED).float().cpu()
    stages = [None] * ps.get_pipeline_model_parallel_world_size()
    dist.all_gather_object(stages, logits, group=ps.get_pipeline_model_parallel_group())
    return stages[-1]


def _cp_run(rank, world, overrides, use_ddp=False):
    """One forward (logits) and one forward+backward of the fixed batch; everything returned in the CP=1 layout.

    use_ddp: wrap in Megatron's DDP with finalize_model_grads (the trainer's path; TE needs its main_grad buffers)
    instead of reducing the raw gradients by hand."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    from megatron_ultralong.context_parallel import zigzag_split
    from megatron_ultralong.model.builder import build_model
    from megatron_ultralong.parallel import init_distributed
    from megatron_ultralong.train.step import forward_backward

    cfg = load_recipe("toy_cpt", [f"data.seq_length={SEQ}", *overrides])
    init_distributed(cfg)
    gpt = model = build_model(cfg)
    reinit_by_name(gpt)
    if use_ddp:
        gpt.config.finalize_model_grads_func = finalize_model_grads  # called by the schedule with the token count
        model = DistributedDataParallel(config=gpt.config, module=gpt,
                                        ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True))
    cp, cp_rank = ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()
    batch = fixed_batch(cfg, SEQ)
    attention_calls = [0]
    for layer in gpt.decoder.layers:
        layer.self_attention.core_attention.register_forward_hook(
            lambda *_: attention_calls.__setitem__(0, attention_calls[0] + 1))
    result = {"logits": _eval_logits(model, cfg, zigzag_split(batch, cp, cp_rank))}  # every layout, PP too
    forward_calls = attention_calls[0]
    out = forward_backward([model], [batch], cfg)
    result["attention_calls_in_training_step"] = attention_calls[0] - forward_calls
    loss = torch.tensor([out["loss_sum"].item(), float(out["tokens"].item())], dtype=torch.float64,
                        device=next(gpt.parameters()).device)  # NCCL reduces device tensors only
    dist.all_reduce(loss, group=ps.get_context_parallel_group())  # each CP rank holds its share (as the trainer)
    dist.all_reduce(loss, group=ps.get_pipeline_model_parallel_group())  # only the last stage holds values
    result["loss_sum"], result["tokens"] = loss[0].item(), loss[1].item()
    grads = {}
    for name, p in gpt.named_parameters():
        if use_ddp:  # already summed over DP×CP and divided by the global token count
            g = p.main_grad.float()
        else:
            g = p.grad.clone()
            dist.all_reduce(g, group=ps.get_context_parallel_group())  # what DDP does over the DP×CP group
            g /= result["tokens"]  # what finalize_model_grads does
        grads[global_param_name(gpt, name)] = full_tensor(g, p).cpu()
    gathered = [None] * ps.get_pipeline_model_parallel_world_size()
    dist.all_gather_object(gathered, grads, group=ps.get_pipeline_model_parallel_group())
    result["grads"] = {k: v for g in gathered for k, v in g.items()}
    return result


@pytest.fixture(scope="module")
def reference():
    cfg = load_recipe("toy_cpt")
    assert cfg.yarn.enabled and SEQ > cfg.yarn.original_max_position_embeddings  # YaRN actually extends here
    return run_ranks(_cp_run, 1, args=([],))[0]


def assert_matches_reference(runs, reference, grad_tol=1e-5, grad_atol=1e-6):
    """Loss sum, token count, gathered logits and every gradient of the mean loss equal the CP=1 run's."""
    for r in runs:
        assert r["tokens"] == reference["tokens"]
        assert r["loss_sum"] == pytest.approx(reference["loss_sum"], rel=1e-6)
        assert r["logits"].shape == (2, SEQ, reference["logits"].shape[-1])
        torch.testing.assert_close(r["logits"], reference["logits"], rtol=1e-5, atol=1e-5)
        assert r["grads"].keys() == reference["grads"].keys()
        for k, g in reference["grads"].items():
            torch.testing.assert_close(r["grads"][k], g, rtol=grad_tol, atol=grad_atol, msg=lambda m: f"{k}: {m}")


def test_cp2_loss_logits_and_grads_equal_cp1(reference):
    assert_matches_reference(run_ranks(_cp_run, 2, args=(["parallel.cp=2"],)), reference)


def test_cp4_loss_logits_and_grads_equal_cp1(reference):
    assert_matches_reference(run_ranks(_cp_run, 4, args=(["parallel.cp=4"],)), reference)


def test_tp2_cp2_equals_tp1_cp1(reference):
    # CP groups are ranks {0, 2} and {1, 3}: the sub-groups on which torch's autograd all_gather breaks on gloo
    assert_matches_reference(run_ranks(_cp_run, 4, args=(["parallel.tp=2", "parallel.cp=2"],)), reference)


def test_pp2_cp2_equals_pp1_cp1_through_megatron_schedule(reference):
    assert_matches_reference(run_ranks(_cp_run, 4, args=(["parallel.pp=2", "parallel.cp=2"],)), reference)


def test_cp2_with_selective_recompute_equals_cp1_and_reruns_core_attention(reference):
    runs = run_ranks(_cp_run, 2, args=(["parallel.cp=2", "train.recompute=selective"],))
    assert_matches_reference(runs, reference)
    layers = load_recipe("toy_cpt").model.num_layers
    assert reference["attention_calls_in_training_step"] == layers
    assert all(r["attention_calls_in_training_step"] == 2 * layers for r in runs)  # forward + recompute


def test_cp2_under_megatron_ddp_and_finalize_model_grads_equals_cp1(reference):
    # the trainer's path: DDP sums grads over DP×CP, finalize_model_grads divides by the all-reduced token count
    assert_matches_reference(run_ranks(_cp_run, 2, args=(["parallel.cp=2"], True)), reference)


def test_cp2_with_full_recompute_and_chunked_loss_equals_cp1(reference):
    runs = run_ranks(_cp_run, 2, args=(["parallel.cp=2", "train.recompute=full", "train.loss_chunk_size=24"],))
    assert_matches_reference(runs, reference)
    layers = load_recipe("toy_cpt").model.num_layers
    assert all(r["attention_calls_in_training_step"] == 2 * layers for r in runs)  # whole layers re-run


# ----------------------------------------------------------------------- the CP core attention on its own
def _attention_run(rank, world, cp):
    """CP core attention on this rank's zigzag shard vs. the same module at CP=1 on the full sequence."""
    from megatron_ultralong.context_parallel import zigzag_split
    from megatron_ultralong.model.attention import SDPACoreAttention
    from megatron_ultralong.model.builder import transformer_config
    from megatron_ultralong.parallel import init_distributed

    cfg = load_recipe("toy_cpt", [f"data.seq_length={SEQ}", f"parallel.cp={cp}", "model.num_attention_heads=8"])
    init_distributed(cfg)
    tc = transformer_config(cfg)
    cp_attn = SDPACoreAttention(tc, 1, None, "self")
    tc1 = transformer_config(load_recipe("toy_cpt", [f"data.seq_length={SEQ}", "model.num_attention_heads=8"]))
    full_attn = SDPACoreAttention(tc1, 1, None, "self")
    g = torch.Generator().manual_seed(3)
    b, nh, ng, hd = 2, 8, 2, 8  # GQA 4:1
    q, k, v = (torch.randn(SEQ, b, n, hd, generator=g) for n in (nh, ng, ng))
    grad_out = torch.randn(SEQ, b, nh * hd, generator=g)
    # three documents, boundaries inside zigzag chunks (chunk = 16 tokens at cp=4)
    doc_ids = torch.tensor([0] * 37 + [1] * 53 + [2] * 38).expand(b, SEQ)
    out = {}
    for case, docs in (("causal", None), ("documents", doc_ids)):
        qf, kf, vf = (t.clone().requires_grad_() for t in (q, k, v))
        ref = full_attn(qf, kf, vf, docs)
        ref.backward(grad_out)
        ql, kl, vl = (zigzag_split(t, cp, rank, seq_dim=0).detach().requires_grad_() for t in (q, k, v))
        local = cp_attn(ql, kl, vl, None if docs is None else zigzag_split(docs, cp, rank))
        local.backward(zigzag_split(grad_out, cp, rank, seq_dim=0))
        expected = [zigzag_split(t, cp, rank, seq_dim=0) for t in (ref, qf.grad, kf.grad, vf.grad)]
        out[case] = max((a - e).abs().max().item() for a, e in zip((local, ql.grad, kl.grad, vl.grad), expected))
        out[case + "_scale"] = min(e.abs().max().item() for e in expected)
    return out


def test_cp4_core_attention_output_and_qkv_grads_equal_full_attention_with_and_without_documents():
    for r in run_ranks(_attention_run, 4, args=(4,)):
        assert r["causal_scale"] > 0.1 and r["documents_scale"] > 0.1  # outputs and grads are not all zero
        assert r["causal"] < 1e-5 and r["documents"] < 1e-5, r


def _hierarchical_groups(rank, world):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_ultralong.parallel import init_distributed

    os.environ["LOCAL_WORLD_SIZE"] = "2"  # pretend two ranks per node
    cfg = load_recipe("toy_cpt", [f"data.seq_length={SEQ}", "parallel.cp=4", "parallel.cp_comm_type=a2a+p2p",
                                  "model.num_query_groups=4"])
    init_distributed(cfg)
    return [dist.get_process_group_ranks(g) for g in ps.get_hierarchical_context_parallel_groups()]


def test_a2a_p2p_builds_an_intra_node_a2a_group_and_an_inter_node_p2p_group():
    pytest.importorskip("einops", reason="Megatron builds hierarchical CP groups with einops (in the NVIDIA container)")
    groups = run_ranks(_hierarchical_groups, 4)
    assert groups[0] == [[0, 1], [0, 2]] and groups[3] == [[2, 3], [1, 3]]
