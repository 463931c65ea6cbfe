"""`make demo` end to end: data -> YaRN CPT with a preemption and resume -> HF export verified -> NIAH."""
import json
import subprocess
import sys

import pytest

from megatron_ultralong.train import EXIT_OK, EXIT_PREEMPTED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, "-m", "megatron_ultralong.demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "summary.json").read_text()), proc.stdout


def test_demo_builds_the_mixture_from_preprocessed_sources(demo):
    out, summary, _ = demo
    for src in ("web", "books", "code", "math"):
        assert (out / "data" / "idx" / f"{src}.bin").stat().st_size > 0
    manifest = json.loads((out / "data" / "cpt_mix.json").read_text())
    assert manifest["num_draws"] == summary["data"]["draws"] > 0
    assert (out / "data" / "cpt_mix.png").exists()


def test_demo_trains_through_a_preemption_and_resumes_to_the_last_step(demo):
    out, summary, stdout = demo
    cpt = summary["cpt"]
    assert cpt["exit_codes"] == [EXIT_PREEMPTED, EXIT_OK]
    assert 10 <= cpt["preempted_at"] < 40
    assert cpt["steps"] == 40 and cpt["checkpoints"][-1] == 40
    steps = [json.loads(line)["step"] for line in (out / "toy_cpt" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))  # resumed at the step after the checkpoint: no gap, no repeat
    assert cpt["loss_last"] < cpt["loss_first"] - 0.5  # learns the corpus's unigram statistics at least
    assert cpt["yarn_factor"] == 4


def test_demo_exports_a_yarn_config_whose_logits_match_megatron(demo):
    out, summary, _ = demo
    cfg = json.loads((out / "hf" / "config.json").read_text())
    assert cfg["rope_scaling"]["rope_type"] == "yarn" and cfg["rope_scaling"]["factor"] == 4
    assert cfg["max_position_embeddings"] == 256
    assert summary["export"]["max_abs_diff"] < 1e-3


def test_demo_runs_the_passkey_grid_on_the_exported_model(demo):
    out, summary, stdout = demo
    cells = [json.loads(line) for line in (out / "eval" / "niah.jsonl").read_text().splitlines()]
    assert len(cells) == len(summary["niah"]["lengths"]) * len(summary["niah"]["depths"])
    assert all(c["answers"][0]["passkey"].isdigit() for c in cells)
    assert (out / "eval" / "niah.png").stat().st_size > 0
    assert "~0 is the expected result" in stdout  # the toy accuracy is labelled, not sold


def test_demo_measures_held_out_perplexity_by_length_below_uniform_guessing(demo):
    out, summary, _ = demo
    ppl = summary["niah"]["perplexity"]
    assert [int(n) for n in ppl] == [32, 64, 128, 240]
    assert all(v["ppl"] < 300 for v in ppl.values())  # uniform over the 512-token vocabulary: 512
    assert (out / "eval" / "perplexity.png").stat().st_size > 0
