import json
import random
import re
import shutil
import subprocess
import sys

import pytest

from megatron_ultralong.eval.niah import FILLER, EvalError
from megatron_ultralong.eval.ruler import (
    CHAIN,
    NEEDLES,
    TASKS,
    build_sample,
    plan_ruler,
    run_ruler,
    score,
)
from tests.eval.helpers import TOK, save_tiny_llama3


def oracle(ids, max_new_tokens):
    """Solves every task from the prompt text alone, as a perfect long-context model would."""
    text = TOK.decode(ids)
    if "variable assignment" in text:
        name = re.search(r"VAR (\w+) = " + re.search(r"assigned the value (\d+)", text).group(1), text).group(1)
        chain = [name]
        while m := re.search(rf"VAR (\w+) = VAR {chain[-1]}\.", text):
            chain.append(m.group(1))
        return " " + ", ".join(chain)
    keys = re.search(r"numbers for (.+?) mentioned in the provided text\?", text).group(1).split(", ")
    return " " + ", ".join(v for k in keys for v in re.findall(rf"numbers for {k} is: (\d+)", text))


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("length", [1500, 4096])
def test_sample_has_exact_length_and_its_statements_spread_through_the_haystack(task, length):
    s = build_sample(task, TOK, length, random.Random(3))
    assert len(s.prompt_ids) == length
    text = TOK.decode(s.prompt_ids)
    statements = 2 * CHAIN if task == "variable_tracking" else 1 if task == "niah_single" else NEEDLES
    assert len(s.statement_token_pos) == statements
    for pos in s.statement_token_pos:
        assert text[pos:].startswith("VAR " if task == "variable_tracking" else "One of the special magic numbers")
    start, end = text.index("\n") + 1, text.rindex("\n")  # the haystack: after the intro, before the question
    bounds = [start, *s.statement_token_pos, end]
    gaps = [b - a for a, b in zip(bounds, bounds[1:])]
    sentence = len(FILLER)
    assert max(gaps) <= (end - start) / (statements + 1) + 2 * sentence  # evenly spread, not bunched
    assert all(a in text for a in s.answers)


def test_tasks_ask_for_the_right_number_of_answers_and_multikey_hides_distractors():
    rng = random.Random(0)
    counts = {t: len(build_sample(t, TOK, 2000, rng).answers) for t in TASKS}
    assert counts == {"niah_single": 1, "niah_multikey": 1, "niah_multivalue": NEEDLES, "niah_multiquery": 2,
                      "variable_tracking": CHAIN}
    s = build_sample("niah_multikey", TOK, 2000, rng)
    assert len(set(re.findall(r"numbers for (\S+) is", TOK.decode(s.prompt_ids)))) == NEEDLES


def test_oracle_scores_100_percent_wrong_answers_zero_and_half_the_values_half():
    res = run_ruler(oracle, TOK, list(TASKS), [1500, 3000], samples_per_cell=2, log=None)
    assert res["average"] == 1.0 and len(res["cells"]) == 10
    assert run_ruler(lambda ids, n: " 1234567", TOK, ["niah_single"], [1500], log=None)["average"] == 0.0
    assert score(" 1111111, 2222222", ["1111111", "2222222", "3333333", "4444444"]) == 0.5


def test_bad_input_is_refused_before_any_generation():
    with pytest.raises(EvalError, match=r"niah_multivalue: context length 100 is shorter .* use lengths >= \d+"):
        build_sample("niah_multivalue", TOK, 100, random.Random(0))
    with pytest.raises(EvalError) as err:  # one message for every task that does not fit, with a length that does
        plan_ruler(TOK, list(TASKS), [300, 5000])
    needed = int(re.search(r"use lengths >= (\d+)", str(err.value)).group(1))
    assert "niah_multivalue" in str(err.value) and "variable_tracking" in str(err.value)
    assert len(plan_ruler(TOK, list(TASKS), [needed])) == len(TASKS)
    with pytest.raises(EvalError, match="unknown RULER task.*niah_single"):
        plan_ruler(TOK, ["qa_squad"], [1000])


def test_cli_runs_every_task_on_a_tiny_model_and_writes_json_and_heatmap(tmp_path):
    model_dir = save_tiny_llama3(tmp_path / "hf")
    out = tmp_path / "ruler"
    r = subprocess.run([sys.executable, "tools/eval_ruler.py", "--hf", str(model_dir), "--lengths", "400",
                        "--dtype", "fp32", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "ruler.json").read_text())
    assert [(c["task"], c["length"]) for c in res["cells"]] == [(t, 400) for t in TASKS]
    assert (out / "ruler.png").stat().st_size > 0
    bad = subprocess.run([sys.executable, "tools/eval_ruler.py", "--hf", str(model_dir), "--lengths", "50",
                          "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "use lengths >= " in bad.stderr
    (tmp_path / "no_tok").mkdir()
    shutil.copy(model_dir / "config.json", tmp_path / "no_tok" / "config.json")
    no_tok = subprocess.run([sys.executable, "tools/eval_ruler.py", "--hf", str(tmp_path / "no_tok"),
                             "--out", str(out)], capture_output=True, text=True)
    assert no_tok.returncode == 2 and no_tok.stderr.count("\n") == 1 and "--hf-assets" in no_tok.stderr
