"""The engine on a converted tiny YaRN Llama (fp32) equals transformers on the same HF model: greedy tokens of
``generate`` and prefill logits (1e-4), for CP = 1, 2, 4 and TP 2 × CP 2, prompts of uneven length (not multiples
of 2·cp, batched with right padding), some beyond the original 64-token window; the KV shard is total / cp."""
import pytest

from tests.dist import run_ranks
from tests.inference.helpers import engine_run, hf_greedy, make_tiny_yarn, random_prompts

pytestmark = pytest.mark.slow
LENGTHS = [37, 61, 100, 150]  # 37, 61: not multiples of 2·cp; 100, 150: past the original window of 64
NEW = 8
TOL = 1e-4
LAYOUTS = {"cp1": (1, 1), "cp2": (1, 2), "cp4": (1, 4), "tp2cp2": (2, 2)}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    hf, ckpt = make_tiny_yarn(tmp_path_factory.mktemp("tiny_yarn"))
    prompts = random_prompts(LENGTHS)
    tokens, logits = hf_greedy(hf, prompts, NEW)
    return {"ckpt": ckpt, "prompts": prompts, "tokens": tokens, "logits": logits, "runs": {}}


def _run(model, layout):
    if layout not in model["runs"]:
        tp, cp = LAYOUTS[layout]
        model["runs"][layout] = run_ranks(engine_run, tp * cp, args=(model["ckpt"], tp, cp, model["prompts"], NEW))
    return model["runs"][layout]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_greedy_tokens_equal_transformers_generate(model, layout):
    runs = _run(model, layout)
    assert all(len(t) == NEW for t in model["tokens"])  # no early EOS: every step is compared
    for r in runs:  # every rank returns the same tokens
        assert r["tokens"] == model["tokens"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_prefill_logits_equal_transformers_to_1e4(model, layout):
    ours = _run(model, layout)[0]["logits"]
    assert len(ours) == len(model["logits"])
    for a, b in zip(ours, model["logits"]):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= TOL
    assert (ours[0] - model["logits"][1][:LENGTHS[0]]).abs().max().item() > 100 * TOL  # a wrong prompt shows


def test_kv_shard_is_the_total_over_cp_within_one_chunk(model):
    total = _run(model, "cp1")[0]["kv_bytes"]  # the last batch: prompts of 100 and 150 tokens, 7 kept decode tokens
    per_slot = total // (150 + NEW - 1)
    for layout in ("cp2", "cp4", "tp2cp2"):
        tp, cp = LAYOUTS[layout]
        shards = [r["kv_bytes"] * tp for r in _run(model, layout)]  # a TP rank holds 1/tp of the heads
        assert len(set(shards)) == 1
        # within the padding to 2·cp and the round-robin rounding of the decode tokens
        assert abs(shards[0] - total / cp) <= per_slot * (2 * cp), (layout, shards[0], total / cp)
