"""TP and PP change the layout, not the math: logits, losses and gradients equal the single-rank model's."""
import pytest
import torch

from megatron_ultralong.config import load_recipe
from tests.dist import fixed_batch, full_tensor, global_param_name, reinit_by_name, run_ranks

pytestmark = pytest.mark.slow
SEQ = 128  # above the toy card's original 64-token window, so YaRN is exercised


def _layout_run(rank, world, overrides):
    """Build with the same seed, run one forward+backward, return what rank 0 sees in the TP=1 layout."""
    from megatron.core import parallel_state as ps

    from megatron_ultralong.model.builder import build_model
    from megatron_ultralong.model.specs import make_attention_mask, resolve_attention_backend
    from megatron_ultralong.parallel import init_distributed
    from megatron_ultralong.train.step import forward_backward

    cfg = load_recipe("toy_cpt", [f"data.seq_length={SEQ}", *overrides])
    init_distributed(cfg)
    model = build_model(cfg)
    reinit_by_name(model)  # same weights in every layout (PP stages draw init RNG in another order)
    batch = fixed_batch(cfg, SEQ)
    result = {}
    if ps.get_pipeline_model_parallel_world_size() == 1:
        mask = make_attention_mask(resolve_attention_backend(cfg.model), SEQ)
        logits = model(input_ids=batch["tokens"], position_ids=batch["position_ids"], attention_mask=mask)
        result["logits"] = full_tensor(logits, type("P", (), {"tensor_model_parallel": True, "partition_dim": 2})())
    out = forward_backward([model], [batch], cfg)
    loss = torch.tensor([out["loss_sum"].item(), float(out["tokens"].item())])
    torch.distributed.all_reduce(loss)  # only the last stage holds values, once per TP rank
    loss /= ps.get_tensor_model_parallel_world_size()
    result["loss_sum"], result["tokens"] = loss[0].item(), loss[1].item()
    grads = {}
    for name, p in model.named_parameters():
        grads[global_param_name(model, name)] = full_tensor(p.main_grad if hasattr(p, "main_grad") else p.grad, p)
    gathered = [None] * ps.get_pipeline_model_parallel_world_size()
    torch.distributed.all_gather_object(gathered, grads, group=ps.get_pipeline_model_parallel_group())
    result["grads"] = {k: v for g in gathered for k, v in g.items()}
    return result


@pytest.fixture(scope="module")
def reference():
    return run_ranks(_layout_run, 1, args=([],))[0]


def test_tp2_logits_and_grads_equal_tp1(reference):
    tp2 = run_ranks(_layout_run, 2, args=(["parallel.tp=2"],))
    for r in tp2:
        torch.testing.assert_close(r["logits"], reference["logits"], rtol=1e-5, atol=1e-5)
        assert r["loss_sum"] == pytest.approx(reference["loss_sum"], rel=1e-5)
        assert r["grads"].keys() == reference["grads"].keys()
        for k, g in reference["grads"].items():
            torch.testing.assert_close(r["grads"][k], g, rtol=1e-5, atol=1e-5, msg=lambda m: f"{k}: {m}")


def test_pp2_loss_and_grads_equal_pp1_through_megatron_schedule(reference):
    pp2 = run_ranks(_layout_run, 2, args=(["parallel.pp=2"],))
    for r in pp2:
        assert r["tokens"] == reference["tokens"]
        assert r["loss_sum"] == pytest.approx(reference["loss_sum"], rel=1e-6)
        assert r["grads"].keys() == reference["grads"].keys()
        for k, g in reference["grads"].items():
            torch.testing.assert_close(r["grads"][k], g, rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
