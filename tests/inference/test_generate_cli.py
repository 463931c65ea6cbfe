"""tools/generate.py: ids and text prompts in, rank 0 writes the greedy ids (those of transformers' generate) and
their text in input order; bad input is one line, exit 2, before any weight is read."""
import json

import pytest

from tests.dist import run_ranks
from tests.inference.helpers import hf_greedy, make_tiny_yarn, random_prompts, run_main, weightless_copy

pytestmark = pytest.mark.slow
NEW = 6


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate_cli")
    hf, ckpt = make_tiny_yarn(root)
    return {"root": root, "hf": hf, "ckpt": ckpt}


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_generate_cp2_writes_transformers_greedy_ids_and_text_in_input_order(model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model["hf"])
    text = " ".join(f"w{i % 40}" for i in range(0, 90, 7))
    prompts = random_prompts([150, 41, 77])  # sorted into batches by length, written back in input order
    inp = _write(tmp_path / "in.jsonl", [{"ids": prompts[0]}, {"text": text}, {"ids": prompts[1]},
                                         {"ids": prompts[2]}])
    out = tmp_path / "out.jsonl"
    codes = run_ranks(run_main, 2, args=("generate", ["--ckpt", model["ckpt"], "--input", inp, "--out", out,
                                                      "--max-new-tokens", NEW, "--cp", "2", "--batch-size", "2"]))
    assert codes == [0, 0]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    expected, _ = hf_greedy(model["hf"], [prompts[0], tok.encode(text), prompts[1], prompts[2]], NEW)
    assert [r["ids"] for r in lines] == expected
    assert [r["text"] for r in lines] == [tok.decode(ids) for ids in expected]


def test_generate_bad_input_is_one_line_before_any_weight_is_read(model, tmp_path, capsys):
    bare = weightless_copy(model["ckpt"], tmp_path / "bare")
    out = tmp_path / "out.jsonl"
    args = ["--ckpt", bare, "--out", out, "--max-new-tokens", 4]
    too_long = _write(tmp_path / "long.jsonl", [{"ids": [5] * 10}, {"ids": [5] * 257}])
    assert run_main(0, 1, "generate", [*args, "--input", too_long]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prompt 2 of 257 tokens" in err and "rope window of 256" in err
    assert run_main(0, 1, "generate", [*args, "--input", too_long, "--cp", "2"]) == 2
    assert "world size 1 does not match --tp 1 × --cp 2 = 2" in capsys.readouterr().err
    bad = _write(tmp_path / "bad.jsonl", [{"ids": [5] * 10}, {"prompt": "x"}])
    assert run_main(0, 1, "generate", [*args, "--input", bad]) == 2
    assert "bad.jsonl:2: needs an \"ids\" list" in capsys.readouterr().err
    assert not out.exists()
