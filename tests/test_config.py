import dataclasses

import pytest
import yaml

from megatron_ultralong.config import (
    Config,
    ConfigError,
    DataConfig,
    config_from_dict,
    describe,
    dump_recipe,
    list_recipes,
    load_recipe,
    parse_overrides,
    to_dict,
    validate,
)

TOY = "toy_cpt"


def test_recipe_round_trip_yaml_dataclasses_yaml(tmp_path):
    cfg = load_recipe(TOY, ["train.max_steps=7", "parallel.tp=2"])
    out = tmp_path / "resolved.yaml"
    dump_recipe(cfg, out)
    again = load_recipe(str(out))
    assert again == cfg
    assert to_dict(again) == yaml.safe_load(out.read_text())
    assert not list(tmp_path.glob(".*.tmp")), "atomic dump left a temp file"


def test_base_chain_merges_card_under_recipe():
    cfg = load_recipe("cpt_1m")
    assert cfg.model.num_layers == 32 and cfg.model.vocab_size == 128256      # from the card
    assert cfg.model.max_position_embeddings == 1048576                       # overridden by the stage
    assert cfg.yarn.enabled and cfg.yarn.target_length == 1048576
    assert (cfg.yarn.beta_fast, cfg.yarn.beta_slow) == (4.0, 1.0)


def test_dotted_overrides_are_typed():
    cfg = load_recipe(TOY, ["optim.lr=1e-4", "train.max_steps=3", "data.paths=[a,b]", "model.fp8=null",
                            "parallel.sequence_parallel=true"])
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 3 and cfg.data.paths == ["a", "b"]
    assert cfg.model.fp8 is None and cfg.parallel.sequence_parallel is True


def test_override_parser_rejects_missing_equals():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_overrides(["train.max_steps"])


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.max_step'; did you mean 'train.max_steps'"):
        load_recipe(TOY, ["train.max_step=3"])


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match=r"train.max_steps='ten': expected an integer"):
        load_recipe(TOY, ["train.max_steps=ten"])


def test_missing_recipe_lists_the_packaged_ones():
    with pytest.raises(ConfigError, match="recipe 'nope' not found.*toy_cpt"):
        load_recipe("nope")


def test_invalid_yaml_gives_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_recipe(str(bad))


def test_every_packaged_stage_recipe_validates():
    for name in list_recipes():
        cfg = load_recipe(name)
        if cfg.data.synthetic or cfg.data.paths:
            validate(cfg)
    assert {"llama3.1-8b", "qwen2-7b", "toy_llama", "toy_cpt", "cpt_1m", "cpt_2m", "cpt_4m"} <= set(list_recipes())


def test_describe_lists_every_field_with_its_docstring():
    text = describe()
    assert "yarn.beta_fast = 4.0" in text and "ramp bound" in text
    assert text.count("\n") > 60


BAD = [
    (["parallel.tp=3"], None, r"parallel.tp=3 does not divide model.num_attention_heads=4"),
    (["parallel.tp=4"], None, r"parallel.tp=4 does not divide model.num_query_groups=2; the KV heads split over tp "
                              r"too: use tp <= 2 dividing it"),
    (["parallel.tp=4", "model.num_query_groups=4", "model.vocab_size=510"], None,
     r"parallel.tp=4 does not divide model.vocab_size=510; pad the vocabulary to a multiple"),
    (["parallel.pp=3"], None, r"parallel.pp=3 does not divide model.num_layers=2"),
    (["parallel.cp=3"], None, r"data.seq_length=256 is not divisible by 2\*cp=6"),
    (["parallel.tp=2"], 3, r"world size 3 is not divisible by tp·pp·cp"),
    (["parallel.cp=4"], 2, r"parallel.cp=4 exceeds the world size 2"),
    (["parallel.sequence_parallel=true"], None, r"sequence_parallel=true needs parallel.tp > 1"),
    (["parallel.cp=2", "parallel.cp_comm_type=a2a", "model.num_query_groups=1"], None,
     r"cp_comm_type='a2a' splits each TP rank's 4 query / 1 KV heads over cp=2 ranks"),
    (["model.num_query_groups=3"], None, r"num_attention_heads=4 is not divisible by model.num_query_groups=3"),
    (["yarn.factor=0"], None, r"yarn.factor=0.0: must be > 0"),
    (["yarn.target_length=32"], None, r"yarn.target_length=32 is below yarn.original_max_position_embeddings=64"),
    (["yarn.beta_fast=1", "yarn.beta_slow=4"], None, r"yarn.beta_fast=1.0 must be > yarn.beta_slow=4.0"),
    (["model.kv_channels=15"], None, r"head dim 15 is odd"),
    (["data.seq_length=512"], None, r"data.seq_length=512 exceeds the model's window 256 \(yarn.target_length\)"),
    (["train.global_batch_size=3", "train.micro_batch_size=2"], 1, r"global_batch_size=3 is not divisible"),
    (["optim.lr_warmup_steps=99"], None, r"optim.lr_warmup_steps=99 must be in \[0, train.max_steps=30\]"),
    (["train.mode=dpo"], None, r"train.mode='dpo': must be one of 'cpt', 'sft'"),
    (["model.fp8=hybrid"], None, r"model.fp8='hybrid' needs model.params_dtype='bf16'"),
    (["data.synthetic=null"], None, r"data.paths is empty and data.synthetic is unset"),
]


@pytest.mark.parametrize("overrides,world,message", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_config_raises_one_line_error_naming_field_and_fix(overrides, world, message):
    cfg = load_recipe(TOY, overrides)
    with pytest.raises(ConfigError, match=message) as err:
        validate(cfg, world_size=world)
    assert "\n" not in str(err.value)


def test_defaults_form_a_valid_config_once_data_is_given():
    cfg = config_from_dict({"data": {"synthetic": "copy"}})
    assert cfg == dataclasses.replace(Config(), data=DataConfig(synthetic="copy"))  # nothing but the defaults
    assert validate(cfg, world_size=1) is cfg  # no ConfigError, the config itself handed back
    with pytest.raises(ConfigError, match="data.paths is empty and data.synthetic is unset"):
        validate(Config(), world_size=1)  # the one default that is not valid on its own


def test_absolute_paths_resolves_every_path_key_against_the_launch_directory(tmp_path):
    from megatron_ultralong.config import PATH_KEYS, absolute_paths

    cfg = load_recipe("toy_cpt", ["train.run_dir=runs/a", "checkpoint.init_from=../ckpt", "data.tokenizer=tok.model",
                                  "data.paths=[mix.json,/abs/x]", "data.eval_files=[ev.jsonl]",
                                  "checkpoint.dir=~/c"])
    out = absolute_paths(cfg, tmp_path / "w")
    assert out.train.run_dir == str(tmp_path / "w" / "runs" / "a")
    assert out.checkpoint.init_from == str(tmp_path / "ckpt")
    assert out.data.tokenizer == str(tmp_path / "w" / "tok.model")
    assert out.data.paths == [str(tmp_path / "w" / "mix.json"), "/abs/x"]
    assert out.data.eval_files == [str(tmp_path / "w" / "ev.jsonl")]
    assert out.checkpoint.dir.startswith("/") and "~" not in out.checkpoint.dir
    unset = absolute_paths(load_recipe("toy_cpt"), tmp_path)
    assert unset.checkpoint.dir is None and unset.checkpoint.init_from is None  # unset stays unset
    assert cfg.train.run_dir == "runs/a"  # a copy: the input is untouched
    assert len(PATH_KEYS) == 6


def test_configs_saved_with_the_retired_eval_section_still_load_but_recipes_naming_it_are_refused(tmp_path):
    saved = {**to_dict(load_recipe(TOY)), "eval": {"lengths": [1024], "depths": [0.5], "output_dir": None}}
    assert config_from_dict(saved) == load_recipe(TOY)  # checkpoint metadata written before the removal
    with pytest.raises(ConfigError, match=r"recipe section 'eval' was removed .*; delete it"):
        load_recipe(TOY, ["eval.lengths=[1024]"])
    recipe = tmp_path / "old.yaml"
    recipe.write_text(yaml.safe_dump({"base": TOY, "eval": {"depths": [0.5]}}))
    with pytest.raises(ConfigError, match=r"recipe section 'eval' was removed"):
        load_recipe(str(recipe))


BAD_MIXTURE = [
    (["data.short_threshold=9000"], r"data.short_threshold=9000, data.long_threshold=8192: need 0 < short <= long"),
    (["data.short_threshold=0"], r"data.short_threshold=0, data.long_threshold=8192: need 0 < short <= long"),
    (["data.short_keep_ratio=1.5"], r"data.short_keep_ratio=1.5: must be in \(0, 1\]"),
    (["data.long_upsample=0.5"], r"data.long_upsample=0.5: must be >= 1"),
    (["data.token_budget=0"], r"data.token_budget=0: must be > 0 tokens; leave it unset"),
]


@pytest.mark.parametrize("overrides,message", BAD_MIXTURE, ids=[b[1][:30] for b in BAD_MIXTURE])
def test_bad_mixture_parameters_are_refused_by_validate_with_the_data_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(load_recipe(TOY, overrides))

