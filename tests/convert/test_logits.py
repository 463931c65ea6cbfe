"""A converted checkpoint is the same model: Megatron (local spec, fp32) logits equal the source transformers
model's to 1e-4, for plain, llama3 and YaRN RoPE, beyond the original window."""
import pytest

from tests.convert.helpers import LLAMA3_ROPE, in_child, save_hf

pytestmark = pytest.mark.slow

YARN_ROPE = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 4.0,
             "beta_slow": 1.0}
# case -> (source model, verification length in tokens, scaled RoPE checked beyond its original window)
CASES = {
    "llama-gqa": (dict(arch="llama"), 64, False),
    "qwen2-qkv-bias": (dict(arch="qwen2"), 64, False),
    "llama3-rope": (dict(arch="llama", rope_scaling=LLAMA3_ROPE), 64, True),  # original window 16
    "yarn": (dict(arch="llama", max_position_embeddings=256, rope_scaling=YARN_ROPE), 192, True),  # window 64
}
TOL = 1e-4


def _convert_and_compare(jobs, other_hf):
    from megatron_ultralong.convert import convert_hf_to_megatron, verify_hf_against_megatron

    diffs = {}
    for case, hf, ckpt, seq in jobs:
        convert_hf_to_megatron(hf, ckpt, progress=False)
        diffs[case] = verify_hf_against_megatron(hf, ckpt, seq_len=seq, batch_size=2, attention_backend="local",
                                                 progress=False)
    # negative control: the same architecture with other weights must not pass
    diffs["other-weights"] = verify_hf_against_megatron(other_hf, jobs[0][2], seq_len=64, attention_backend="local",
                                                        progress=False)
    return diffs


@pytest.fixture(scope="module")
def max_abs_diffs(tmp_path_factory):
    root = tmp_path_factory.mktemp("logits")
    jobs = []
    for case, (spec, seq, _) in CASES.items():
        save_hf(root / case, tokenizer=False, **spec)
        jobs.append((case, str(root / case), str(root / f"{case}-ckpt"), seq))
    save_hf(root / "other", tokenizer=False, seed=1)
    diffs = in_child(_convert_and_compare, jobs, str(root / "other"))
    print("max |logits_megatron - logits_transformers|:", diffs)
    return diffs


def test_every_case_is_compared(max_abs_diffs):
    assert set(max_abs_diffs) == set(CASES) | {"other-weights"}


@pytest.mark.parametrize("case", [c for c, (_, _, scaled) in CASES.items() if not scaled])
def test_megatron_logits_equal_transformers_logits(max_abs_diffs, case):
    assert max_abs_diffs[case] <= TOL


@pytest.mark.parametrize("case", [c for c, (_, _, scaled) in CASES.items() if scaled])
def test_megatron_logits_equal_transformers_logits_with_scaled_rope_beyond_the_original_window(max_abs_diffs, case):
    assert max_abs_diffs[case] <= TOL


def test_comparison_notices_other_weights(max_abs_diffs):
    assert max_abs_diffs["other-weights"] > 100 * TOL
