"""tools/eval_{niah,ruler,perplexity}.py with --ckpt (a Megatron checkpoint, CP = 2 over gloo ranks) give what
--hf gives on the model exported from it: the same NIAH and RULER answers, perplexity to 1e-4; bad input is one
line, before any weight is read."""
import json
import random

import pytest

from tests.dist import run_ranks
from tests.inference.helpers import make_tiny_yarn_with_text, run_main, weightless_copy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt_paths")
    hf, ckpt = make_tiny_yarn_with_text(root)
    rng = random.Random(0)
    docs = root / "docs.jsonl"
    with open(docs, "w") as f:
        for _ in range(2):
            f.write(json.dumps({"text": "".join(rng.choice("abcdefgh ijklmnop.\n") for _ in range(900))}) + "\n")
    return {"root": root, "hf": hf, "ckpt": ckpt, "docs": str(docs)}


def _both(model, tool, name, args, cp=2):
    """(result of --hf, result of --ckpt --cp cp): the JSON each writes."""
    root = model["root"]
    assert run_main(0, 1, tool, ["--hf", model["hf"], "--dtype", "fp32", "--out", root / f"{tool}_hf", *args]) == 0
    codes = run_ranks(run_main, cp, args=(tool, ["--ckpt", model["ckpt"], "--cp", cp, "--dtype", "fp32",
                                                 "--out", root / f"{tool}_ckpt", *args]))
    assert codes == [0] * cp
    read = lambda d: json.loads((root / d / name).read_text())  # noqa: E731
    return read(f"{tool}_hf"), read(f"{tool}_ckpt")


def test_perplexity_with_ckpt_cp2_equals_hf_to_1e4(model):
    hf, ckpt = _both(model, "eval_perplexity", "perplexity.json",
                     ["--data", model["docs"], "--lengths", "333,800", "--documents", "2", "--tail", "100",
                      "--chunk", "64"])
    assert [r["length"] for r in ckpt["results"]] == [333, 800] and ckpt["cp"] == 2
    for a, b in zip(hf["results"], ckpt["results"]):
        assert abs(a["nll"] - b["nll"]) <= 1e-4 and abs(a["tail_nll"] - b["tail_nll"]) <= 1e-4
        assert a["ppl"] == pytest.approx(b["ppl"], rel=1e-4)


def test_niah_with_ckpt_cp2_gives_the_answers_of_hf(model):
    hf, ckpt = _both(model, "eval_niah", "niah.json", ["--lengths", "401,600", "--depths", "0,0.5,1"])
    answers = lambda r: [a["output"] for c in r["cells"] for a in c["answers"]]  # noqa: E731
    assert len(answers(hf)) == 6 and any(answers(hf))
    assert answers(ckpt) == answers(hf) and ckpt["accuracy"] == hf["accuracy"]


def test_ruler_with_ckpt_cp2_gives_the_completions_of_hf(model):
    hf, ckpt = _both(model, "eval_ruler", "ruler.json", ["--tasks", "niah_single,variable_tracking",
                                                         "--lengths", "701"])
    completions = lambda r: [c for cell in r["cells"] for c in json.dumps(cell, sort_keys=True)]  # noqa: E731
    assert hf["cells"] and completions(ckpt) == completions(hf) and ckpt["scores"] == hf["scores"]


def test_ckpt_bad_input_is_one_line_before_any_weight_is_read(model, tmp_path, capsys):
    bare = weightless_copy(model["ckpt"], tmp_path / "bare")  # loading weights from it would fail differently
    out = tmp_path / "out"
    assert run_main(0, 1, "eval_niah", ["--ckpt", bare, "--lengths", "2000", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lengths 2000" in err and "rope window of 1024" in err
    assert run_main(0, 1, "eval_ruler", ["--ckpt", bare, "--tp", "2", "--lengths", "701", "--out", out]) == 2
    assert "world size 1 does not match --tp 2 × --cp 1" in capsys.readouterr().err
    no_recipe = tmp_path / "no_recipe"
    weightless_copy(model["ckpt"], no_recipe)
    meta = next(no_recipe.glob("iter_*/meta.json"))
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "config": {}}))
    assert run_main(0, 1, "eval_perplexity", ["--ckpt", no_recipe, "--data", model["docs"], "--out", out]) == 2
    assert "records no recipe" in capsys.readouterr().err
