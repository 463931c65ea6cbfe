import json
import re
import subprocess
import sys

import pytest

from megatron_ultralong.eval.niah import (
    FILLER,
    INTRO,
    NEEDLE,
    QUESTION,
    EvalError,
    build_sample,
    run_grid,
    score_answer,
)
from megatron_ultralong.eval.plots import niah_heatmap
from tests.eval.helpers import TOK, save_tiny_llama3


@pytest.mark.parametrize("length", [600, 1000, 4096])
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_sample_has_exact_length_and_needle_at_depth(length, depth):
    s = build_sample(TOK, length, depth, "12345")
    assert len(s.prompt_ids) == length
    text = TOK.decode(s.prompt_ids)
    assert text[s.needle_token_pos:].startswith("The pass key is 12345.")
    assert text.count("12345") == 2 and text.endswith("The pass key is")
    intro, sentence = len(TOK.encode(INTRO)), len(TOK.encode(FILLER))
    hay = length - intro - len(TOK.encode(NEEDLE.format(key="12345"))) - len(TOK.encode(QUESTION))
    rel = (s.needle_token_pos - intro) / hay
    assert abs(rel - depth) <= sentence / hay  # snapped to a filler-sentence boundary


def test_oracle_scores_100_percent_and_a_wrong_model_zero():
    def oracle(ids):
        return " " + re.search(r"pass key is (\d+)", TOK.decode(ids)).group(1) + "."

    grid = run_grid(oracle, TOK, [500, 800], [0.0, 0.5, 1.0], samples_per_cell=2, log=None)
    assert grid["accuracy"] == 1.0 and len(grid["cells"]) == 6
    grid = run_grid(lambda ids: " 00000", TOK, [500], [0.5], log=None)
    assert grid["accuracy"] == 0.0


def test_answer_scoring_takes_the_first_number():
    assert score_answer(" 48213. Remember", "48213")
    assert not score_answer(" 4821", "48213")
    assert not score_answer(" the key", "48213")
    assert not score_answer(" 11111 48213", "48213")


def test_too_short_context_is_a_clear_error():
    with pytest.raises(EvalError, match="shorter than the prompt skeleton"):
        build_sample(TOK, 50, 0.5, "12345")
    with pytest.raises(EvalError, match="outside \\[0, 1\\]"):
        build_sample(TOK, 1000, 1.5, "12345")


def test_heatmap_png_is_written(tmp_path):
    grid = run_grid(lambda ids: " 1", TOK, [500, 700], [0.0, 1.0], log=None)
    niah_heatmap(grid, str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["h.png"]


@pytest.mark.slow
def test_cli_runs_a_tiny_hf_model_end_to_end(tmp_path):
    model_dir = save_tiny_llama3(tmp_path / "hf")
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "tools/eval_niah.py", "--hf", str(model_dir), "--lengths", "300,600",
                        "--depths", "0,1", "--dtype", "fp32", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "niah.json").read_text())
    assert [(c["length"], c["depth"]) for c in res["cells"]] == [(300, 0.0), (300, 1.0), (600, 0.0), (600, 1.0)]
    assert (out / "niah.png").exists()
    bad = subprocess.run([sys.executable, "tools/eval_niah.py", "--hf", str(tmp_path / "nope"), "--out", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no config.json" in bad.stderr
    short = subprocess.run([sys.executable, "tools/eval_niah.py", "--hf", str(model_dir), "--lengths", "20",
                            "--out", str(tmp_path / "short")], capture_output=True, text=True)
    assert short.returncode == 2 and short.stderr.count("\n") == 1
    assert "shorter than the prompt skeleton" in short.stderr
    assert not (tmp_path / "short").exists()
