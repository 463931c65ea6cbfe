"""train/separator_rows.py: untrained separator rows take the mean of the trained rows (TP shards included), and a
stage started from init_from does it and says so."""
import contextlib
import io

import torch

from tests.dist import run_ranks
from tests.train.helpers import toy_cfg

V, H = 512, 64  # toy_llama: vocab_size, hidden_size
ZEROED, RESERVED, TRAINED = (10, 20), 30, 40


def _full(seed: int) -> torch.Tensor:
    w = torch.randn(V, H, generator=torch.Generator().manual_seed(seed)) * 0.02
    w[list(ZEROED)] = 1e-6  # untrained rows: near-zero norm, like Llama-3's reserved tokens
    return w


def _expected(w: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(V, dtype=torch.bool)
    keep[list(ZEROED) + [RESERVED]] = False
    return w[keep].mean(dim=0)


def _reset_on_ranks(rank, world, tmp):
    from megatron.core import parallel_state as ps
    from megatron.core.utils import unwrap_model

    from megatron_ultralong.train.separator_rows import reset_untrained_rows
    from tests.dist import full_tensor
    from tests.train.helpers import build_parts

    cfg = toy_cfg(f"{tmp}/r{world}", f"parallel.tp={world}")
    model, _ = build_parts(cfg)
    m = unwrap_model(model[0])
    tp, r = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    params = {"emb": m.embedding.word_embeddings.weight, "out": m.output_layer.weight}
    with torch.no_grad():
        for seed, p in enumerate(params.values()):
            p.copy_(_full(seed).chunk(tp)[r])  # this rank's vocabulary shard of a known matrix
    reset = reset_untrained_rows(model, [ZEROED[0], RESERVED, TRAINED], reserved_ids=[RESERVED])
    return reset, {k: full_tensor(p, p) for k, p in params.items()}


def test_untrained_separator_rows_get_the_trained_mean_under_tp1_and_tp2(tmp_path):
    for world in (1, 2):
        reset, full = run_ranks(_reset_on_ranks, world, args=(str(tmp_path),))[0]
        assert reset == {ZEROED[0]: ["input embedding", "output"], RESERVED: ["input embedding", "output"]}, world
        for seed, key in enumerate(("emb", "out")):
            w = _full(seed)
            for t in (ZEROED[0], RESERVED):  # the mean over the whole vocabulary, not over this rank's shard
                torch.testing.assert_close(full[key][t], _expected(w), rtol=1e-5, atol=1e-7)
            others = [t for t in range(V) if t not in (ZEROED[0], RESERVED)]
            assert torch.equal(full[key][others], w[others]), (world, key)  # nothing else moves


def _init_from_zeroed_separator(rank, world, tmp):
    from megatron.core.utils import unwrap_model

    from megatron_ultralong.checkpoint import save_checkpoint
    from megatron_ultralong.parallel import destroy_distributed
    from megatron_ultralong.train.trainer import Trainer
    from tests.train.helpers import build_parts

    base_cfg = toy_cfg(f"{tmp}/base", "yarn.enabled=false")
    model, _ = build_parts(base_cfg)
    m = unwrap_model(model[0])
    with torch.no_grad():  # the copy task's separator (V-1) never trained in the base model
        m.embedding.word_embeddings.weight[V - 1] = 0
        m.output_layer.weight[V - 1] = 0
    trained_mean = m.embedding.word_embeddings.weight[: V - 1].detach().clone().mean(dim=0)
    save_checkpoint(f"{tmp}/base_ckpt", 0, model, base_cfg)
    destroy_distributed()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        trainer = Trainer(toy_cfg(f"{tmp}/run", f"checkpoint.init_from={tmp}/base_ckpt", "train.max_steps=2",
                                  "optim.lr_warmup_steps=0"))
    try:
        row = unwrap_model(trainer.model[0]).embedding.word_embeddings.weight[V - 1].detach().clone()
    finally:
        trainer.close()
    return out.getvalue(), row, trained_mean


def test_a_stage_from_init_from_resets_an_untrained_separator_and_says_so(tmp_path):
    logged, row, trained_mean = run_ranks(_init_from_zeroed_separator, 1, args=(str(tmp_path),))[0]
    assert "separator token 511 is untrained (its row norm is that of an untrained row): its input embedding " \
           "and output rows set to the mean of the trained rows" in logged, logged
    torch.testing.assert_close(row, trained_mean)
