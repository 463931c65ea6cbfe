"""--verify: it also compares a window ending at the model's last position (where float32 RoPE angles are coarse),
and its memory stays bounded at a Llama-3 vocabulary."""
import pytest

from tests.convert.helpers import in_child, save_hf

pytestmark = pytest.mark.slow

TARGET = 1 << 20
YARN_1M = {"rope_type": "yarn", "factor": 128.0, "original_max_position_embeddings": 8192, "beta_fast": 4.0,
           "beta_slow": 1.0}


def _float64_reduced_angles(positions, inv_freq):
    """The angles we computed before serving-exact RoPE: float64 product reduced mod 2π (up to 0.03 rad off the
    served float32 product at 1M)."""
    import math

    import torch

    angles = torch.outer(positions.to(torch.float64), inv_freq.to(device=positions.device, dtype=torch.float64))
    return torch.remainder(angles, 2 * math.pi).to(torch.float32)


def _verify_near_and_far(hf, ckpt):
    from megatron_ultralong.convert import convert_hf_to_megatron, verify_hf_against_megatron
    from megatron_ultralong.model import rotary

    convert_hf_to_megatron(hf, ckpt, progress=False)
    kwargs = dict(seq_len=64, attention_backend="local", progress=False)
    out = {"serving-exact": verify_hf_against_megatron(hf, ckpt, **kwargs)}
    rotary.rope_angles = _float64_reduced_angles  # a rotary that is right near 0 and off near the target
    out["float64, from 0 only"] = verify_hf_against_megatron(hf, ckpt, far_len=0, **kwargs)
    out["float64, with the far window"] = verify_hf_against_megatron(hf, ckpt, **kwargs)
    return out


def test_verify_compares_a_window_just_below_the_target_length(tmp_path):
    save_hf(tmp_path / "hf", tokenizer=False, max_position_embeddings=TARGET, rope_theta=5e5, rope_scaling=YARN_1M)
    diffs = in_child(_verify_near_and_far, str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    print("max |Δlogit|:", diffs)
    assert diffs["serving-exact"] <= 1e-4
    assert diffs["float64, from 0 only"] <= 1e-4  # a window from position 0 cannot see the difference ...
    assert diffs["float64, with the far window"] > 1e-3  # ... the window below 1M does


def test_verify_windows_end_at_the_last_position():
    from megatron_ultralong.config import Config, YarnConfig
    from megatron_ultralong.convert.verify import verify_windows

    cfg = Config(yarn=YarnConfig(enabled=True, target_length=TARGET, original_max_position_embeddings=8192))
    assert verify_windows(cfg, 16384) == [(0, 16384), (TARGET - 128, 128)]
    assert verify_windows(cfg, TARGET) == [(0, TARGET)]  # the first window already reaches it
    assert verify_windows(cfg, 64, far_len=0) == [(0, 64)]


LLAMA3_VOCAB = 128256
_PEAK_SCRIPT = """
import json, resource, sys
import psutil, torch, transformers  # everything verify imports, before the baseline
import megatron.core.models.gpt, megatron.core.dist_checkpointing
import megatron_ultralong.model.builder
from megatron_ultralong.convert import verify_hf_against_megatron
hf, ckpt, seq = sys.argv[1], sys.argv[2], int(sys.argv[3])
transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)  # warm the loader's caches too
base = psutil.Process().memory_info().rss
diff = verify_hf_against_megatron(hf, ckpt, seq_len=seq, progress=False)
print(json.dumps({"diff": diff, "grew": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base}))
"""


def verify_peak_growth(hf, ckpt, seq_len: int) -> dict:
    """{'diff', 'grew'}: verify's result and how far (bytes) the process's peak RSS rose above its state after
    imports, in a fresh interpreter."""
    import json
    import os
    import subprocess
    import sys

    from tests.convert.helpers import REPO

    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(hf), str(ckpt), str(seq_len)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _convert(hf, ckpt):
    from megatron_ultralong.convert import convert_hf_to_megatron

    convert_hf_to_megatron(hf, ckpt, progress=False)


def test_verify_peak_memory_stays_below_half_of_one_full_logits_tensor_at_a_llama3_vocabulary(tmp_path):
    seq = 2048
    save_hf(tmp_path / "hf", tokenizer=False, vocab_size=LLAMA3_VOCAB, max_position_embeddings=4 * seq)
    in_child(_convert, str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    r = verify_peak_growth(tmp_path / "hf", tmp_path / "ckpt", seq)
    full_logits = seq * LLAMA3_VOCAB * 4  # one [L, V] fp32 tensor: 1.05 GB; verify held four before
    print(f"verify at {seq} tokens, vocabulary {LLAMA3_VOCAB}: peak RSS +{r['grew'] / 2**20:.0f} MiB "
          f"(one full logits tensor: {full_logits / 2**20:.0f} MiB), max |Δlogit| {r['diff']:.2e}")
    assert r["diff"] <= 1e-4
    assert r["grew"] < full_logits / 2
