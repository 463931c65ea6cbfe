"""Chunked loss: the same per-token losses and gradients as GPTModel's own loss, one chunk of logits at a time."""
import pytest
import torch

from megatron_ultralong.config import load_recipe
from tests.dist import full_tensor, reinit_by_name, run_ranks

SEQ = 128
CHUNKS = (32, 48, SEQ)  # even split, ragged last chunk (48+48+32), a single chunk


def _loss_run(rank, world, overrides, chunk_sizes):
    """Unchunked loss (model(..., labels=)) vs. gpt_chunked_loss for each chunk size: max differences."""
    from megatron_ultralong.model.builder import build_model
    from megatron_ultralong.model.loss import final_hidden_states, gpt_chunked_loss
    from megatron_ultralong.parallel import init_distributed

    cfg = load_recipe("toy_cpt", [f"data.seq_length={SEQ}", *overrides])
    init_distributed(cfg)
    model = build_model(cfg)
    reinit_by_name(model)
    g = torch.Generator().manual_seed(11)
    tokens = torch.randint(0, cfg.model.vocab_size, (2, SEQ + 1), generator=g)
    inputs = dict(input_ids=tokens[:, :-1], position_ids=None, attention_mask=None)
    labels, mask = tokens[:, 1:], (torch.rand(2, SEQ, generator=g) > 0.3).float()

    def loss_and_grads(per_token):
        ((per_token * mask).sum() / mask.sum()).backward()  # the mean the trainer optimises
        grads = {n: full_tensor(p.grad, p) for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return per_token.detach(), grads

    ref_loss, ref_grads = loss_and_grads(model(**inputs, labels=labels))
    logits_rows = []
    model.output_layer.register_forward_hook(lambda m, i, out: logits_rows.append(out[0].shape[0]))
    result = {"grad_scale": max(g.abs().max().item() for g in ref_grads.values())}
    for chunk in chunk_sizes:
        logits_rows.clear()
        with final_hidden_states(model):
            hidden = model(**inputs)
        assert model.post_process  # restored for the next call
        loss, grads = loss_and_grads(gpt_chunked_loss(model, hidden, labels, chunk))
        result[chunk] = {
            "loss": (loss - ref_loss).abs().max().item(),
            "grad": max((grads[k] - v).abs().max().item() for k, v in ref_grads.items()),
            "hidden_shape": tuple(hidden.shape),
            "logits_rows": list(logits_rows),  # forward, then the recompute in backward
        }
    return result


@pytest.fixture(scope="module")
def single_rank():
    return run_ranks(_loss_run, 1, args=([], CHUNKS))[0]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_loss_equals_unchunked_loss_and_grads(single_rank, chunk):
    r = single_rank[chunk]
    assert r["hidden_shape"] == (SEQ, 2, 64)  # final hidden states, not logits
    assert r["loss"] < 1e-6 and r["grad"] < 1e-6, r
    assert single_rank["grad_scale"] > 1e-3  # the gradients compared are not vanishing


@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_loss_materialises_one_chunk_of_logits_at_a_time_and_recomputes_it(single_rank, chunk):
    n = -(-SEQ // chunk)
    rows = single_rank[chunk]["logits_rows"]
    assert max(rows) == min(chunk, SEQ) and len(rows) == 2 * n  # n chunks in forward, n recomputed in backward
    assert sum(rows) == 2 * SEQ


def test_chunked_loss_with_tied_embeddings_equals_unchunked():
    r = run_ranks(_loss_run, 1, args=(["model.tie_word_embeddings=true"], (48,)))[0]
    assert r[48]["loss"] < 1e-6 and r[48]["grad"] < 1e-6, r


@pytest.mark.slow
def test_tp2_chunked_vocab_parallel_loss_equals_unchunked():
    for r in run_ranks(_loss_run, 2, args=(["parallel.tp=2"], (48,))):
        assert r[48]["loss"] < 1e-6 and r[48]["grad"] < 1e-6, r
        assert max(r[48]["logits_rows"]) == 48


def _sequence_parallel_run(rank, world, chunk):
    """Output layer with sequence parallel (hidden [s/tp, b, h] per rank) vs. plain cross entropy on full logits."""
    import torch.nn.functional as F
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import ColumnParallelLinear, vocab_parallel_cross_entropy

    from megatron_ultralong.model.builder import transformer_config
    from megatron_ultralong.model.loss import chunked_language_model_loss
    from megatron_ultralong.parallel import init_distributed

    # the GPU layout; only the output layer is built here (the torch norms of a CPU model refuse SP)
    cfg = load_recipe("toy_cpt", [f"data.seq_length={SEQ}", "parallel.tp=2", "parallel.sequence_parallel=true"])
    init_distributed(cfg)
    tc = transformer_config(cfg)
    torch.manual_seed(0)
    layer = ColumnParallelLinear(64, 512, config=tc, init_method=lambda w: torch.nn.init.normal_(w, std=0.1),
                                 bias=False, gather_output=False)
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(SEQ, 2, 64, generator=g)  # [s, b, h], same on every rank
    labels = torch.randint(0, 512, (2, SEQ), generator=g)
    tp, r = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    local = hidden.chunk(tp, dim=0)[r].clone().requires_grad_()  # this rank's sequence-parallel rows

    def loss_fn(lab, logits):
        return vocab_parallel_cross_entropy(logits, lab.t().contiguous()).t()

    loss = chunked_language_model_loss(local, labels, layer, loss_fn, chunk)
    loss.mean().backward()
    full = hidden.clone().requires_grad_()
    weight = full_tensor(layer.weight, layer.weight).requires_grad_()  # [V, h], the TP=1 matrix
    ref = F.cross_entropy((full @ weight.t()).permute(1, 2, 0), labels, reduction="none")  # [b, s]
    ref.mean().backward()
    return {"loss": (loss - ref).abs().max().item(),
            "hidden_grad": (local.grad - full.grad.chunk(tp, dim=0)[r]).abs().max().item(),
            "weight_grad": (full_tensor(layer.weight.grad, layer.weight) - weight.grad).abs().max().item(),
            "loss_scale": ref.abs().max().item()}


@pytest.mark.slow
def test_sequence_parallel_chunks_gather_rows_across_tp_and_return_losses_in_sequence_order():
    # 20 tokens per chunk -> 10 rows per rank, ragged against the 64 rows each rank holds
    for r in run_ranks(_sequence_parallel_run, 2, args=(20,)):
        assert r["loss_scale"] > 1.0
        assert r["loss"] < 1e-5 and r["hidden_grad"] < 1e-6 and r["weight_grad"] < 1e-6, r
