"""The two CLIs end to end, and the stage chain: HF -> Megatron -> YaRN CPT toy run -> HF with rope_scaling yarn,
loadable by transformers, verified against the Megatron model beyond the original window."""
import json
import re

import pytest
import torch
import transformers

from tests.convert.helpers import TINY, in_child, read_hf_tensors, read_json, run_tool, save_hf, to_hf, to_megatron
from tests.dist import run_ranks
from tests.train.helpers import allow_child_processes, toy_cfg

pytestmark = pytest.mark.slow


def _one_error_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_cli_round_trip_verifies_and_bad_input_exits_with_one_line(tmp_path):
    save_hf(tmp_path / "hf", arch="qwen2")
    p = run_tool("convert_from_hf.py", "--hf", tmp_path / "hf", "--out", tmp_path / "ckpt", "--tp", "2", "--pp", "2")
    assert p.returncode == 0, p.stderr
    assert "checkpoint.init_from=" in p.stdout and "hf -> megatron" in p.stderr  # result line + progress bar
    p = run_tool("convert_to_hf.py", "--ckpt", tmp_path / "ckpt", "--out", tmp_path / "out", "--verify")
    assert p.returncode == 0, p.stderr
    diff = float(re.search(r"max abs logit diff ([0-9.e+-]+)", p.stdout).group(1))
    assert diff < 1e-4 and "megatron -> hf" in p.stderr
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert isinstance(model, transformers.Qwen2ForCausalLM)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # copied through byte for byte
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes()

    # verification above tolerance (a model that disagrees by 0.5): exit 1, nothing published
    code, err = in_child(_cli_with_disagreeing_model, ["--ckpt", str(tmp_path / "ckpt"), "--out",
                                                        str(tmp_path / "strict"), "--verify", "--quiet"])
    assert code == 1 and err.startswith("error: verification failed: max abs logit difference 5.000e-01 > ")
    assert not (tmp_path / "strict").exists() and len(err.strip().splitlines()) == 1
    # bad input: exit 2 with one line naming the problem
    p = run_tool("convert_from_hf.py", "--hf", tmp_path / "ckpt", "--out", tmp_path / "x", "--quiet")
    assert p.returncode == 2 and "no config.json" in _one_error_line(p)
    p = run_tool("convert_to_hf.py", "--ckpt", tmp_path / "hf", "--out", tmp_path / "y", "--quiet")
    assert p.returncode == 2 and "not a checkpoint" in _one_error_line(p)
    p = run_tool("convert_from_hf.py", "--hf", tmp_path / "hf", "--out", tmp_path / "x", "--tp", "0", "--quiet")
    assert p.returncode == 2 and "--tp 0 --pp 1: both must be >= 1" in _one_error_line(p)
    p = run_tool("convert_to_hf.py", "--ckpt", tmp_path / "ckpt", "--out", tmp_path / "y", "--verify",
                 "--verify-seq-len", "100000", "--quiet")
    assert p.returncode == 2 and "--verify-seq-len 100000: must be in [1, " in _one_error_line(p)
    p = run_tool("convert_to_hf.py", "--ckpt", tmp_path / "ckpt", "--out", tmp_path / "y", "--bogus")
    assert p.returncode == 2 and "unrecognized arguments: --bogus" in _one_error_line(p)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    # an fp32 checkpoint exported in bf16 verifies: the check measures the conversion, not the chosen rounding
    p = run_tool("convert_to_hf.py", "--ckpt", tmp_path / "ckpt", "--out", tmp_path / "bf16", "--dtype", "bf16",
                 "--verify", "--quiet")
    assert p.returncode == 0, p.stderr
    assert float(re.search(r"max abs logit diff ([0-9.e+-]+)", p.stdout).group(1)) < 1e-4


def _cli_with_disagreeing_model(argv):
    """tools/convert_to_hf.py's main() with a verification that measures a 0.5 logit difference."""
    import contextlib
    import importlib.util
    import io

    from megatron_ultralong.convert import hf
    from tests.convert.helpers import REPO

    spec = importlib.util.spec_from_file_location("convert_to_hf", REPO / "tools" / "convert_to_hf.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    real = hf.verify_hf_against_megatron
    hf.verify_hf_against_megatron = lambda *args, **kwargs: 0.5
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = tool.main(argv)
    finally:
        hf.verify_hf_against_megatron = real  # later tests in this process verify for real
    return code, err.getvalue()


def _train_toy_cpt(rank, world, run_dir, base):
    from megatron_ultralong.train.trainer import Trainer

    allow_child_processes()
    trainer = Trainer(toy_cfg(run_dir, f"checkpoint.init_from={base}", "train.max_steps=2"))
    try:
        return trainer.train()
    finally:
        trainer.close()


@pytest.fixture(scope="module")
def cpt_run(tmp_path_factory):
    """A tiny HF Llama of toy_llama's shape -> converted -> 2 steps of the toy YaRN CPT recipe (64 -> 256 tokens)."""
    root = tmp_path_factory.mktemp("cpt")
    save_hf(root / "hf", arch="llama")
    to_megatron(root / "hf", root / "base")
    code = run_ranks(_train_toy_cpt, 1, args=(str(root / "run"), str(root / "base")))[0]
    assert code == 0
    return root


def test_yarn_cpt_run_exports_rope_scaling_yarn_and_the_base_models_tokenizer(cpt_run, tmp_path):
    r = to_hf(cpt_run / "run" / "checkpoints", tmp_path / "hf")
    cfg = read_json(tmp_path / "hf" / "config.json")
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 4.0,
            "beta_slow": 1.0}
    assert cfg["rope_scaling"] == yarn and cfg["rope_parameters"] == {**yarn, "rope_theta": TINY["rope_theta"]}
    assert cfg["max_position_embeddings"] == 256 and cfg["rope_theta"] == TINY["rope_theta"]
    # found by following the run's checkpoint.init_from back to the converted base model
    assert r["assets_from"] == str(cpt_run / "base" / "hf_assets")
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (cpt_run / "hf" / "tokenizer.json").read_bytes()
    loaded = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
    assert loaded.rope_parameters["rope_type"] == "yarn" and loaded.rope_parameters["factor"] == 4.0
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    trained, base = read_hf_tensors(tmp_path / "hf"), read_hf_tensors(cpt_run / "hf")
    assert sorted(trained) == sorted(base)
    assert not torch.equal(trained["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])  # the trained weights, not the base's


def test_yarn_cpt_run_export_verifies_beyond_the_original_window(cpt_run, tmp_path):
    p = run_tool("convert_to_hf.py", "--ckpt", cpt_run / "run" / "checkpoints", "--out", tmp_path / "hf", "--verify")
    assert p.returncode == 0, p.stderr
    assert re.search(r"over 128 tokens", p.stderr)  # default length: twice the 64-token original window
    diff = float(re.search(r"max abs logit diff ([0-9.e+-]+)", p.stdout).group(1))
    assert diff < 1e-4
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["rope_scaling"]["rope_type"] == "yarn"


def test_recipe_tokenizer_is_exported_under_the_name_transformers_loads(tmp_path):
    from megatron_ultralong.config import load_recipe
    from megatron_ultralong.convert.assets import tokenizer_fallback
    from megatron_ultralong.data.synthetic import synthetic_documents, train_sentencepiece
    from megatron_ultralong.data.tokenizer import load_tokenizer

    spm = train_sentencepiece(list(synthetic_documents("web", 40, seed=0)), tmp_path / "my_spm", vocab_size=512)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert tokenizer_fallback(load_recipe("toy_cpt", [f"data.tokenizer={spm}"]), str(out)) == ["tokenizer.model"]
    text = "Hello there, the sky is blue and 12345 is a number."
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.encode(text, add_special_tokens=False) == load_tokenizer(spm).encode(text)
