"""HF -> Megatron checkpoint -> HF gives back every tensor bit for bit, from a TP=1/PP=1 and a TP=2/PP=2
checkpoint; bad inputs are refused with a one-line error and leave nothing behind."""
import json
import os

import pytest
import torch

from megatron_ultralong.checkpoint import read_meta
from megatron_ultralong.convert import ConvertError
from tests.convert.helpers import LLAMA3_ROPE, in_child, read_hf_tensors, read_json, save_hf, to_hf, to_megatron
from tests.dist import run_ranks
from tests.train.helpers import allow_child_processes

pytestmark = pytest.mark.slow

CASES = {  # Llama: GQA + llama3 RoPE, untied; Qwen2: QKV bias, tied and untied; sharded sources but one single-file
    "llama-fp32": dict(arch="llama", dtype=torch.float32, rope_scaling=LLAMA3_ROPE),
    "llama-bf16": dict(arch="llama", dtype=torch.bfloat16, rope_scaling=LLAMA3_ROPE),
    "qwen2-fp32-tied": dict(arch="qwen2", dtype=torch.float32, tie_word_embeddings=True, shard="1GB"),
    "qwen2-bf16": dict(arch="qwen2", dtype=torch.bfloat16),
}


def assert_bit_identical(src_dir, out_dir):
    src, out = read_hf_tensors(src_dir), read_hf_tensors(out_dir)
    assert sorted(out) == sorted(src) and src
    for name, t in src.items():
        assert out[name].dtype == t.dtype and torch.equal(out[name], t), name


def _convert_all(jobs):
    """Every (direction, src, out, kwargs) job in one process: the checkpoint writer's helper process starts once."""
    from megatron_ultralong.convert import convert_hf_to_megatron, convert_megatron_to_hf

    fns = {"to_megatron": convert_hf_to_megatron, "to_hf": convert_megatron_to_hf}
    return [fns[direction](src, out, progress=False, **kwargs) for direction, src, out, kwargs in jobs]


def _reshard_all(rank, world, pairs):
    """Load each TP=1 checkpoint into a TP=2 × PP=2 model on 4 ranks and save it again from there."""
    from megatron_ultralong.checkpoint import load_checkpoint, save_checkpoint
    from megatron_ultralong.config import config_from_dict
    from megatron_ultralong.model.builder import build_model
    from megatron_ultralong.parallel import init_distributed

    allow_child_processes()
    names = []
    for src, dst in pairs:
        cfg = config_from_dict(read_meta(src)["config"])
        cfg.parallel.tp, cfg.parallel.pp = 2, 2
        cfg.data.synthetic, cfg.data.seq_length = "copy", 32  # a converted model's config carries no data section
        init_distributed(cfg)
        model = build_model(cfg)
        load_checkpoint(src, [model])
        save_checkpoint(dst, 1, [model], cfg)
        names.append(sorted(n for n, _ in model.named_parameters()))
    return names


TP2PP2_CASES = ["llama-fp32", "qwen2-bf16"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """All conversions of this module, done once: per case hf/ -> ckpt/ -> out/, and for TP2PP2_CASES also
    hf/ -> tp1/ (recorded tp=2 pp=2) -> 4 ranks -> tp2pp2/ -> out_tp2pp2/."""
    root = tmp_path_factory.mktemp("roundtrip")
    jobs = []
    for case, spec in {**CASES, "padded": dict(vocab_size=511)}.items():
        d = root / case
        save_hf(d / "hf", **spec)
        jobs += [("to_megatron", str(d / "hf"), str(d / "ckpt"), {"tp": 2} if case == "padded" else {}),
                 ("to_hf", str(d / "ckpt"), str(d / "out"), {"max_shard_size": "64KB"})]
    jobs += [("to_megatron", str(root / c / "hf"), str(root / c / "tp1"), {"tp": 2, "pp": 2}) for c in TP2PP2_CASES]
    results = in_child(_convert_all, jobs)
    names = run_ranks(_reshard_all, 4, args=([(str(root / c / "tp1"), str(root / c / "tp2pp2"))
                                              for c in TP2PP2_CASES],))
    in_child(_convert_all, [("to_hf", str(root / c / "tp2pp2"), str(root / c / "out_tp2pp2"),
                             {"hf_assets": str(root / c / "hf")}) for c in TP2PP2_CASES])
    return {"root": root, "results": results, "names": names}


@pytest.mark.parametrize("case", list(CASES))
def test_hf_to_megatron_to_hf_is_bit_identical(converted, case):
    d = converted["root"] / case
    spec = CASES[case]
    meta = read_meta(str(d / "ckpt"))
    assert meta["step"] == 0 and meta["config"]["model"]["arch"] == spec["arch"]
    assert meta["config"]["model"]["params_dtype"] == {torch.float32: "fp32", torch.bfloat16: "bf16"}[spec["dtype"]]
    single_file = spec.get("shard") == "1GB"  # read without an index
    assert (d / "hf" / "model.safetensors").exists() == single_file
    assert_bit_identical(d / "hf", d / "out")
    # index, config and tokenizer files as transformers expects them
    index = read_json(d / "out" / "model.safetensors.index.json")
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and files == sorted(f for f in os.listdir(d / "out") if f.endswith(".safetensors"))
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                  for t in read_hf_tensors(d / "out").values())
    src_cfg, out_cfg = read_json(d / "hf" / "config.json"), read_json(d / "out" / "config.json")
    for key in ("model_type", "num_hidden_layers", "num_key_value_heads", "vocab_size", "tie_word_embeddings",
                "rope_parameters", "max_position_embeddings", "dtype", "bos_token_id", "eos_token_id"):
        assert out_cfg[key] == src_cfg[key], key
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (d / "out" / name).read_bytes() == (d / "hf" / name).read_bytes(), name


@pytest.mark.parametrize("case", TP2PP2_CASES)
def test_export_of_a_checkpoint_saved_at_tp2_pp2_is_bit_identical(converted, case):
    d = converted["root"] / case
    assert read_meta(str(d / "tp1"))["config"]["parallel"]["tp"] == 2  # the intended layout is recorded
    names = converted["names"]
    assert names[0] != names[2]  # stage 0 and stage 1 really hold different layers
    meta = read_meta(str(d / "tp2pp2"))
    assert (meta["layout"]["tp"], meta["layout"]["pp"]) == (2, 2)
    shards = [f for f in os.listdir(meta["path"]) if f.endswith(".distcp")]
    assert {f.split("_")[2] for f in shards} == {"0", "1", "2", "3"}  # every rank wrote its own slices
    assert_bit_identical(d / "hf", d / "out_tp2pp2")


def test_vocabulary_not_divisible_by_tp_is_padded_then_trimmed_back(converted):
    d = converted["root"] / "padded"
    r = next(x for x in converted["results"] if x["path"] == str(d / "ckpt"))
    assert any("511 -> 512" in n for n in r["notes"])
    assert read_meta(r["path"])["config"]["model"]["vocab_size"] == 512
    shapes = in_child(_tensor_shapes, r["iter_dir"])
    assert shapes["embedding.word_embeddings.weight"] == (512, 64)
    assert_bit_identical(d / "hf", d / "out")
    assert read_json(d / "out" / "config.json")["vocab_size"] == 511


def _tensor_shapes(iter_dir):
    from megatron.core import dist_checkpointing

    return {k: tuple(v.global_shape) for k, v in dist_checkpointing.load_tensors_metadata(iter_dir).items()}


def _drop_tensor(folder, name, keep_in_index=False):
    """Rewrite the shard holding ``name`` without it; the index keeps naming it if ``keep_in_index``."""
    from safetensors.torch import load_file, save_file

    index = read_json(folder / "model.safetensors.index.json")
    shard = folder / index["weight_map"][name]
    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    if not keep_in_index:
        index["weight_map"].pop(name)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _edit_config(folder, **changes):
    cfg = read_json(folder / "config.json")
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("problem,message", [
    ("missing_tensor", r"missing tensors model\.layers\.1\.mlp\.up_proj\.weight"),
    ("index_names_absent_tensor", r"puts model\.layers\.1\.mlp\.up_proj\.weight in model-0000\d-of-00006"),
    ("missing_shard", r"names shard files that are missing: model-00002-of-00006\.safetensors"),
    ("shape_mismatch", r"k_proj\.weight: shape \[32, 64\] but config\.json implies \[16, 64\]"),
    ("tp_not_dividing_heads", r"parallel.tp=3 does not divide model.num_attention_heads=4"),
    ("unknown_architecture", r"unknown architecture: config\.json model_type='gpt_neox'"),
    ("unmapped_tensor", r"not in the 'llama' table"),
    ("output_not_empty", r"already exists and is not empty"),
])
def test_bad_input_is_refused_with_one_line_and_leaves_nothing_behind(tmp_path, problem, message):
    hf = tmp_path / "hf"
    save_hf(hf, tokenizer=False)
    tp = 1
    if problem == "missing_tensor":
        _drop_tensor(hf, "model.layers.1.mlp.up_proj.weight")
    elif problem == "index_names_absent_tensor":
        _drop_tensor(hf, "model.layers.1.mlp.up_proj.weight", keep_in_index=True)
    elif problem == "missing_shard":
        (hf / "model-00002-of-00006.safetensors").unlink()
    elif problem == "shape_mismatch":
        _edit_config(hf, num_key_value_heads=1)  # k_proj now 'should' be 1 head of 16 rows
    elif problem == "tp_not_dividing_heads":
        tp = 3
    elif problem == "unknown_architecture":
        _edit_config(hf, model_type="gpt_neox")
    elif problem == "unmapped_tensor":
        _edit_config(hf, tie_word_embeddings=True)  # then lm_head.weight is fine, but a Qwen-style bias is not
        from safetensors.torch import save_file
        save_file({"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}, hf / "extra.safetensors")
        index = read_json(hf / "model.safetensors.index.json")
        index["weight_map"]["model.layers.0.self_attn.q_proj.bias"] = "extra.safetensors"
        (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    elif problem == "output_not_empty":
        (tmp_path / "ckpt").mkdir()
        (tmp_path / "ckpt" / "keep.txt").write_text("mine")
    with pytest.raises(ConvertError, match=message) as err:
        to_megatron(hf, tmp_path / "ckpt", tp=tp)
    assert "\n" not in str(err.value)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == (["ckpt", "hf"] if problem == "output_not_empty" else ["hf"])
    if problem == "output_not_empty":
        assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["keep.txt"]


def _edit_meta(iter_dir, **model_changes):
    meta_path = os.path.join(iter_dir, "meta.json")
    meta = read_json(meta_path)
    meta["config"]["model"].update(model_changes)
    with open(meta_path, "w") as f:
        json.dump(meta, f)


def test_export_refuses_a_checkpoint_that_lacks_a_tensor_its_config_implies(tmp_path):
    """A tied model's checkpoint has no output layer; a config edited to say 'untied' must not export."""
    save_hf(tmp_path / "hf", arch="qwen2", tie_word_embeddings=True, tokenizer=False)
    r = to_megatron(tmp_path / "hf", tmp_path / "ckpt")
    _edit_meta(r["iter_dir"], tie_word_embeddings=False)
    with pytest.raises(ConvertError, match=r"checkpoint lacks output_layer\.weight"):
        to_hf(r["path"], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    _edit_meta(r["iter_dir"], tie_word_embeddings=True, arch="llama")  # Llama has no Q/K/V biases
    with pytest.raises(ConvertError, match=r"model.arch='llama' with model.qkv_bias=True has no HF equivalent"):
        to_hf(r["path"], tmp_path / "out")
    with pytest.raises(ConvertError, match="no such checkpoint directory"):
        to_hf(tmp_path / "nowhere", tmp_path / "out2")


def test_export_without_source_assets_builds_a_loadable_config_from_the_table(converted, tmp_path):
    import shutil

    import transformers

    d = converted["root"] / "llama-fp32"
    shutil.copytree(d / "ckpt", tmp_path / "ckpt", ignore=shutil.ignore_patterns("hf_assets"))
    r = to_hf(tmp_path / "ckpt", tmp_path / "out")
    assert r["assets_from"] is None and r["assets"] == []
    cfg = read_json(tmp_path / "out" / "config.json")
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["rope_scaling"] == LLAMA3_ROPE
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.num_key_value_heads == 2 and model.config.head_dim == 16
    assert_bit_identical(d / "hf", tmp_path / "out")


def _as_trained_stage(converted_ckpt, stage_dir):
    """A copy of a converted checkpoint's iter folder posing as a trained stage: its meta.json records no import,
    its config's init_from names the converted checkpoint (as a CPT stage's does)."""
    import shutil

    src = read_meta(converted_ckpt)["path"]
    shutil.copytree(src, stage_dir / "iter_0000003")
    (stage_dir / "latest").write_text("iter_0000003\n")
    meta = read_json(stage_dir / "iter_0000003" / "meta.json")
    meta["extra"], meta["step"] = {"consumed_samples": 6}, 3
    meta["config"]["checkpoint"]["init_from"] = str(converted_ckpt)
    (stage_dir / "iter_0000003" / "meta.json").write_text(json.dumps(meta))
    return stage_dir


def test_padded_vocabulary_is_trimmed_from_the_recorded_hf_vocab_size_without_any_hf_assets(converted, tmp_path):
    import shutil

    d = converted["root"] / "padded"
    shutil.copytree(d / "ckpt", tmp_path / "ckpt", ignore=shutil.ignore_patterns("hf_assets"))
    r = to_hf(tmp_path / "ckpt", tmp_path / "out")
    assert r["assets_from"] is None
    assert read_json(tmp_path / "out" / "config.json")["vocab_size"] == 511
    assert_bit_identical(d / "hf", tmp_path / "out")
    # a stage trained from it records no import itself: the size is found along its init_from chain
    stage = _as_trained_stage(tmp_path / "ckpt", tmp_path / "stage")
    to_hf(stage, tmp_path / "out_stage")
    assert read_json(tmp_path / "out_stage" / "config.json")["vocab_size"] == 511
    assert read_hf_tensors(tmp_path / "out_stage")["model.embed_tokens.weight"].shape == (511, 64)


def test_export_removes_the_temp_folder_a_killed_export_left(converted, tmp_path):
    stale = tmp_path / ".out.k1ll3d00.tmp"  # what atomic_dir leaves behind when the export is SIGKILLed
    (stale / "model-00001-of-00002.safetensors").parent.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"half")
    other = tmp_path / ".outer.k1ll3d00.tmp"  # another output's: not ours to remove
    other.mkdir()
    to_hf(converted["root"] / "llama-fp32" / "ckpt", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".outer.k1ll3d00.tmp", "out"]
