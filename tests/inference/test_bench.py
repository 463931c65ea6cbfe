"""bench/inference.py: its figures on this CPU at a tiny size, and the gpu-marked run at 128K tokens on an 8B-shaped
layer stack (2 layers of h 4096, GQA 32/8, bf16), skipped without a CUDA GPU. Both check that every row has
positive prefill and decode tokens/s and that each CP rank's KV shard is the formula's bytes, total / CP; on the GPU
also that the measured peak memory stays within docs/eval.md's estimate."""
import json
import subprocess
import sys

import pytest
import torch

from tests.train.helpers import REPO

BENCH = REPO / "bench" / "inference.py"


def _bench(tmp_path, *args, timeout):
    out = tmp_path / "inference.json"
    r = subprocess.run([sys.executable, str(BENCH), *args, "--json", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    return json.loads(out.read_text())


def _check(figures, cps, transformers=True):
    rows = figures["rows"]
    assert sorted(rows) == sorted([f"ours cp={cp}" for cp in cps] + (["transformers"] if transformers else []))
    for row in rows.values():
        assert row["prefill_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0
    shape, layers = figures["shape"], figures["layers"]
    elem = 2 if figures["device"].endswith("bf16") else 4
    per_token = 2 * layers * shape["num_query_groups"] * shape["kv_channels"] * elem  # keys and values
    for cp in cps:
        kv = rows[f"ours cp={cp}"]["kv_bytes_per_rank"]
        assert len(kv) == cp and all(b == rows[f"ours cp={cp}"]["kv_bytes_formula"] for b in kv)
        # total / CP, within one zigzag chunk of padding and the decode tokens a rank keeps
        slack = (2 + figures["new_tokens"]) * per_token
        assert abs(kv[0] - per_token * figures["length"] / cp) <= slack


@pytest.mark.slow
def test_cpu_bench_prints_tokens_per_s_and_kv_bytes_per_rank(tmp_path):
    figures = _bench(tmp_path, "--length", "96", "--new-tokens", "3", "--layers", "1", "--repeats", "1",
                     "--cps", "1,2", timeout=300)
    assert figures["device"] == "CPU fp32"
    _check(figures, [1, 2])
    kv = {cp: figures["rows"][f"ours cp={cp}"]["kv_bytes_per_rank"][0] for cp in (1, 2)}
    assert kv[2] < kv[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bench_at_128k_tokens_on_an_8b_shaped_stack(tmp_path):
    cps = [cp for cp in (1, 2) if cp <= torch.cuda.device_count()]
    figures = _bench(tmp_path, "--length", "131072", "--layers", "2", "--new-tokens", "8",
                     "--cps", ",".join(map(str, cps)), timeout=580)
    assert figures["shape"]["hidden_size"] == 4096 and figures["length"] == 131072
    _check(figures, cps)
    for cp in cps:
        row = figures["rows"][f"ours cp={cp}"]
        # docs/eval.md's per-GPU table: weights + KV shard + one layer's activations bound the measured peak
        assert row["weights_bytes"] + row["kv_bytes_per_rank"][0] < row["peak_bytes"]
        assert row["peak_bytes"] <= 1.1 * row["predicted_peak_bytes"], (row["peak_bytes"], row["predicted_peak_bytes"])
