"""Stage recipes: the paper's numbers where it gives them, consistent layouts, and the 1M -> 2M -> 4M chain."""
import json
from pathlib import Path

import pytest

from megatron_ultralong.config import data_parallel_size, load_recipe, to_dict, validate

RESOLVED = json.loads((Path(__file__).parent / "recipes_resolved.json").read_text())
"""Every packaged recipe's resolved values, captured before the CPT stages moved their shared settings into
cpt_base.yaml (without the retired ``eval`` section, which no recipe set); sft and toy_sft re-captured when they
stopped basing on a CPT stage's model and yarn sections (SFT takes both from its checkpoint: train/stage.py)."""

STAGES = {"cpt_1m": (1048576, 128), "cpt_2m": (2097152, 256), "cpt_4m": (4194304, 512)}


@pytest.mark.parametrize("name", list(STAGES))
def test_cpt_stage_trains_at_the_target_length_on_about_1b_tokens(name):
    target, factor = STAGES[name]
    cfg = validate(load_recipe(name, ["data.paths=[/data/cpt]"]), world_size=256)
    t = cfg.train
    assert cfg.data.seq_length == cfg.yarn.target_length == target
    assert cfg.yarn.target_length / cfg.yarn.original_max_position_embeddings == factor
    assert (cfg.yarn.beta_slow, cfg.yarn.beta_fast) == (1.0, 4.0)
    tokens = t.max_steps * t.global_batch_size * target
    assert 1.0e9 <= tokens <= 1.1e9 and cfg.data.token_budget == 10**9
    assert t.global_batch_size * target == 8 * 2**20  # 8M tokens per step in every stage
    dp = data_parallel_size(cfg.parallel, 256)
    assert t.global_batch_size % dp == 0 and target // cfg.parallel.cp <= 128 * 1024
    assert cfg.train.mode == "cpt" and not cfg.data.mask_cross_document and cfg.train.recompute == "full"


def test_stages_chain_by_init_from():
    assert load_recipe("cpt_1m").checkpoint.init_from == "ckpt/llama31-8b"
    for prev, nxt in (("cpt_1m", "cpt_2m"), ("cpt_2m", "cpt_4m"), ("cpt_4m", "sft")):
        assert load_recipe(nxt).checkpoint.init_from == f"{load_recipe(prev).train.run_dir}/checkpoints"


def test_sft_is_short_context_assistant_only_on_the_4m_model(tmp_path):
    from megatron_ultralong.train.stage import load_training_config
    from tests.train.test_stage import fake_checkpoint

    cpt_4m = fake_checkpoint(tmp_path / "cpt_4m", "cpt_4m")  # the stage sft.yaml starts from by default
    cfg = validate(load_training_config("sft", ["data.paths=[/data/sft.jsonl]", f"checkpoint.init_from={cpt_4m}",
                                                f"train.run_dir={tmp_path}/sft"]), world_size=64)
    assert cfg.train.mode == "sft" and cfg.data.seq_length == 8192 and cfg.parallel.cp == 1
    assert cfg.yarn.target_length == 4194304  # the model keeps the 4M stage's rotary, read from its checkpoint
    assert cfg.train.max_steps == 150
    from megatron_ultralong.config import stated_keys

    assert not [k for k in stated_keys("sft") if k.startswith("yarn.") or k == "model.max_position_embeddings"]


@pytest.mark.parametrize("name", ["toy_cpt", "toy_sft"])
def test_toy_recipes_validate_on_one_cpu_process(name):
    cfg = validate(load_recipe(name), world_size=1)
    assert cfg.model.params_dtype == "fp32" and cfg.data.synthetic == "copy"
    assert cfg.yarn.enabled == (name == "toy_cpt")  # toy_sft takes its rope from the toy_cpt checkpoint


def test_toy_sft_takes_the_toy_cpt_stages_yarn(tmp_path):
    from megatron_ultralong.train.stage import load_training_config
    from tests.train.test_stage import fake_checkpoint

    toy_cpt = fake_checkpoint(tmp_path / "toy_cpt", "toy_cpt", "yarn.target_length=512")
    cfg = validate(load_training_config("toy_sft", [f"checkpoint.init_from={toy_cpt}",
                                                    f"train.run_dir={tmp_path}/sft"]), world_size=1)
    assert cfg.yarn.enabled and cfg.yarn.target_length == 512 and cfg.yarn.original_max_position_embeddings == 64


@pytest.mark.parametrize("name", sorted(RESOLVED))
def test_recipe_resolves_to_the_values_it_had_before_cpt_base(name):
    resolved = json.loads(json.dumps(to_dict(load_recipe(name))))  # tuples as lists, like the captured JSON
    for section, values in RESOLVED[name].items():
        assert set(values) <= set(resolved[section]), f"{name}: {section} lost keys"
        assert {k: resolved[section][k] for k in values} == values, f"{name}: {section} changed"


@pytest.mark.parametrize("name", ["cpt_1m", "cpt_2m", "cpt_4m"])
def test_cpt_stages_share_cpt_base(name):
    from megatron_ultralong.config import RECIPES_DIR

    text = (RECIPES_DIR / f"{name}.yaml").read_text()
    assert "\nbase: cpt_base.yaml\n" in text and "optim:" not in text  # the shared sections live in cpt_base
