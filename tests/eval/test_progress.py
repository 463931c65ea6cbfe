"""Eval progress: ETAs weighted by the cost of each sample (eval/progress.py), the model-window warning
(eval/hf.py) and what niah.json / ruler.json record, through the CLIs."""
import json
import re
import subprocess
import sys

import pytest

from megatron_ultralong.eval import niah, ruler
from megatron_ultralong.eval.hf import model_window
from megatron_ultralong.eval.progress import Eta
from tests.eval.helpers import BOS, TOK, save_tiny_llama3


def test_eta_is_elapsed_times_remaining_tokens_over_done_tokens_while_one_length_is_done():
    eta = Eta([4096, 4096, 1048576])
    assert eta.seconds_left() == 0.0
    eta.done(1.0)
    eta.done(1.0)
    assert eta.seconds_left() == pytest.approx(2.0 * 1048576 / 8192)  # not 1 s: the last cell is 256x longer


def test_eta_becomes_quadratic_when_the_samples_done_say_so():
    lengths = [1000, 2000, 4000, 8000]
    eta = Eta(lengths)
    for n in lengths[:2]:
        eta.done(1e-3 * n + 1e-6 * n * n)  # seconds = a·L + b·L², as prefill attention makes it
    assert eta.seconds_left() == pytest.approx(sum(1e-3 * n + 1e-6 * n * n for n in lengths[2:]))
    flat = Eta([1000, 2000, 3000])
    flat.done(5.0)
    flat.done(3.0)  # longer and faster (noise): no negative term, the better one-term fit
    assert flat.seconds_left() > 0


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def time(self):
        return self.now


def test_niah_and_ruler_logs_weigh_cells_by_their_length(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(niah, "time", clock)
    monkeypatch.setattr(ruler, "time", clock)

    def generate(ids, max_new_tokens=10):
        clock.now += 1e-3 * len(ids)  # seconds proportional to tokens
        return " 1"

    logs = []
    niah.run_grid(generate, TOK, [500, 5000], [0.0, 1.0], log=logs.append)
    etas = [float(re.search(r"eta (\d+)s", m).group(1)) for m in logs]
    assert etas[0] == pytest.approx(0.5 + 5 + 5, abs=1)  # count-weighted, it said 1.5 s
    assert etas[-1] == 0
    logs.clear()
    ruler.run_ruler(generate, TOK, ["niah_single"], [1000, 8000], log=logs.append)
    assert float(re.search(r"eta (\d+)s", logs[0]).group(1)) == pytest.approx(8, abs=1)


def test_model_window_reads_max_position_embeddings_and_rope_scaling():
    llama31 = {"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                                                    "original_max_position_embeddings": 8192}}
    assert model_window(llama31) == 131072
    qwen_yarn = {"max_position_embeddings": 32768, "rope_scaling": {"type": "yarn", "factor": 4.0,
                                                                     "original_max_position_embeddings": 32768}}
    assert model_window(qwen_yarn) == 131072
    assert model_window({"max_position_embeddings": 4096, "rope_parameters": {"rope_type": "default"}}) == 4096
    assert model_window({}) is None


@pytest.mark.slow
def test_clis_record_the_prompt_format_dtype_and_seed_and_warn_past_the_window(tmp_path):
    model = save_tiny_llama3(tmp_path / "hf", max_position_embeddings=512, meta=True)

    def run(tool, *args):
        return subprocess.run([sys.executable, f"tools/{tool}.py", "--hf", str(model), "--dtype", "fp32", *args],
                              capture_output=True, text=True)

    r = run("eval_niah", "--lengths", "300,600", "--depths", "0", "--seed", "3", "--chat-template",
            "--out", str(tmp_path / "niah"))
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--lengths 600 exceed the model's window of 512 tokens" in warnings[0]
    res = json.loads((tmp_path / "niah" / "niah.json").read_text())
    assert {k: res[k] for k in ("dtype", "seed", "bos", "bos_token_id", "chat_template")} == {
        "dtype": "fp32", "seed": 3, "bos": "auto", "bos_token_id": BOS, "chat_template": True}
    r = run("eval_ruler", "--lengths", "400", "--tasks", "niah_single", "--bos", "never",
            "--out", str(tmp_path / "ruler"))
    assert r.returncode == 0, r.stderr
    assert not [line for line in r.stderr.splitlines() if line.startswith("warning:")]  # 400 fits in 512
    res = json.loads((tmp_path / "ruler" / "ruler.json").read_text())
    assert {k: res[k] for k in ("dtype", "seed", "bos", "bos_token_id", "chat_template")} == {
        "dtype": "fp32", "seed": 0, "bos": "never", "bos_token_id": None, "chat_template": False}
    bad = run("eval_niah", "--lengths", "300", "--bos", "twice", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--bos" in bad.stderr
