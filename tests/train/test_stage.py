"""A stage and its checkpoint (train/stage.py): SFT keeps the stage's rope, model.from_checkpoint, and no silent
change of θ, rope scaling, norm eps or shapes — all decided from meta.json, before any process group."""
import json

import pytest

from megatron_ultralong.checkpoint import FORMAT, CheckpointError, iter_dir_name
from megatron_ultralong.config import ConfigError, load_recipe, to_dict, validate
from megatron_ultralong.convert.hf_config import hf_config_from_model
from megatron_ultralong.train.stage import load_training_config

SFT_DATA = "data.paths=[/data/sft.jsonl]"


def fake_checkpoint(ckpt_dir, recipe, *overrides, step=120):
    """A checkpoint directory whose meta.json holds ``recipe``'s config (no weights: the stage reads only this)."""
    cfg = load_recipe(recipe, list(overrides))
    iter_dir = ckpt_dir / iter_dir_name(step)
    iter_dir.mkdir(parents=True)
    (iter_dir / "meta.json").write_text(json.dumps({"format": FORMAT, "step": step, "config": to_dict(cfg),
                                                    "extra": {}, "layout": {"tp": 8, "pp": 1, "cp": 16, "dp": 2}}))
    (ckpt_dir / "latest").write_text(iter_dir_name(step) + "\n")
    return str(ckpt_dir)


def test_sft_from_the_1m_stage_is_a_1m_model_whose_export_says_factor_128(tmp_path):
    """`sbatch slurm/sft.sh checkpoint.init_from=runs/cpt_1m/checkpoints` trains (and exports) the 1M model."""
    cpt_1m = fake_checkpoint(tmp_path / "cpt_1m", "cpt_1m")
    cfg = validate(load_training_config("sft", [f"checkpoint.init_from={cpt_1m}", SFT_DATA,
                                                f"train.run_dir={tmp_path}/sft"]), world_size=32)
    assert cfg.train.mode == "sft" and cfg.data.seq_length == 8192
    assert cfg.yarn.enabled and cfg.yarn.target_length == 1048576 and cfg.model.max_position_embeddings == 1048576
    assert cfg.model.num_layers == 32 and cfg.model.vocab_size == 128256 and cfg.model.rope_theta == 5e5
    exported = hf_config_from_model(cfg.model, cfg.yarn, "bf16")
    assert exported["rope_scaling"]["factor"] == 128.0 and exported["max_position_embeddings"] == 1048576


@pytest.mark.parametrize("stage,target", [("cpt_2m", 2097152), ("cpt_4m", 4194304)])
def test_sft_takes_whichever_stage_it_starts_from(tmp_path, stage, target):
    ckpt = fake_checkpoint(tmp_path / stage, stage)
    cfg = load_training_config("sft", [f"checkpoint.init_from={ckpt}", f"train.run_dir={tmp_path}/sft"])
    assert cfg.yarn.target_length == cfg.model.max_position_embeddings == target


@pytest.mark.parametrize("override", ["yarn.target_length=4194304", "yarn.beta_fast=32.0",
                                      "model.max_position_embeddings=131072", "yarn.enabled=false"])
def test_sft_refuses_stated_rope_values_unlike_its_stage_unless_allowed(tmp_path, override):
    cpt_1m = fake_checkpoint(tmp_path / "cpt_1m", "cpt_1m")
    args = [f"checkpoint.init_from={cpt_1m}", f"train.run_dir={tmp_path}/sft", override]
    with pytest.raises(ConfigError, match="train.mode=sft keeps the rope of the checkpoint it starts from") as e:
        load_training_config("sft", args)
    assert "\n" not in str(e.value) and "checkpoint.allow_rope_change=true" in str(e.value)
    key, value = override.split("=")
    cfg = load_training_config("sft", [*args, "checkpoint.allow_rope_change=true"])
    assert str(getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1])).lower() == value.lower()


def test_sft_stating_the_stages_own_rope_values_is_fine(tmp_path):
    cpt_1m = fake_checkpoint(tmp_path / "cpt_1m", "cpt_1m")
    cfg = load_training_config("sft", [f"checkpoint.init_from={cpt_1m}", f"train.run_dir={tmp_path}/sft",
                                       "yarn.target_length=1048576", "yarn.beta_fast=4.0"])
    assert cfg.yarn.target_length == 1048576


@pytest.mark.parametrize("override,field,allow", [
    ("model.rope_theta=10000", "model.rope_theta=10000.0 (checkpoint: 500000.0)", "allow_rope_change"),
    ("model.norm_eps=1e-6", "model.norm_eps=1e-06 (checkpoint: 1e-05)", "allow_model_change"),
    ("model.arch=qwen2", "model.arch='qwen2' (checkpoint: 'llama')", "allow_model_change"),
])
def test_cpt_refuses_a_model_field_unlike_the_checkpoints_unless_allowed(tmp_path, override, field, allow):
    base = fake_checkpoint(tmp_path / "llama31-8b", "llama3.1-8b", step=0)
    args = [f"checkpoint.init_from={base}", f"train.run_dir={tmp_path}/cpt", override]
    with pytest.raises(ConfigError, match="this run changes the checkpoint's model") as e:
        load_training_config("cpt_1m", args)
    assert field in str(e.value) and f"checkpoint.{allow}=true" in str(e.value) and "\n" not in str(e.value)
    load_training_config("cpt_1m", [*args, f"checkpoint.{allow}=true"])


def test_cpt_stage_extends_the_converted_models_rope_with_yarn(tmp_path):
    base = fake_checkpoint(tmp_path / "llama31-8b", "llama3.1-8b", step=0)  # llama3 scaling, no YaRN
    cfg = load_training_config("cpt_1m", [f"checkpoint.init_from={base}", f"train.run_dir={tmp_path}/cpt"])
    assert cfg.yarn.enabled and cfg.yarn.target_length == 1048576  # the stage's job: not a refused change
    with pytest.raises(ConfigError, match=r"model.rope_factor=4.0 \(checkpoint: 8.0\)"):  # without YaRN it is
        load_training_config("cpt_1m", [f"checkpoint.init_from={base}", f"train.run_dir={tmp_path}/cpt",
                                        "yarn.enabled=false", "model.rope_factor=4.0"])


def test_another_shape_is_refused_before_any_model_is_built(tmp_path):
    base = fake_checkpoint(tmp_path / "llama31-8b", "llama3.1-8b", step=0)
    with pytest.raises(CheckpointError, match=r"checkpoint vs model: num_layers 32 vs 4\).*model.from_checkpoint"):
        load_training_config("cpt_1m", [f"checkpoint.init_from={base}", f"train.run_dir={tmp_path}/cpt",
                                        "model.num_layers=4", "checkpoint.allow_model_change=true"])


def test_model_from_checkpoint_takes_the_unstated_model_fields(tmp_path):
    base = fake_checkpoint(tmp_path / "qwen", "qwen2-7b", step=0)
    with pytest.raises(CheckpointError, match="num_layers 28 vs 2"):  # toy_cpt states the toy model card
        load_training_config("toy_cpt", [f"checkpoint.init_from={base}", f"train.run_dir={tmp_path}/run"])
    cfg = load_training_config("sft", [f"checkpoint.init_from={base}", f"train.run_dir={tmp_path}/run",
                                       "model.attention_backend=sdpa"])
    assert (cfg.model.arch, cfg.model.num_layers, cfg.model.qkv_bias, cfg.model.rope_theta) == ("qwen2", 28, True, 1e6)
    assert cfg.model.attention_backend == "sdpa" and cfg.model.from_checkpoint  # this run's choices stay


def test_model_from_checkpoint_replaces_the_model_card_a_recipe_bases_on(tmp_path):
    """docs/convert.md, "Your own model": cpt_1m (on the Llama-3.1-8B card) from a converted Qwen2-7B."""
    base = fake_checkpoint(tmp_path / "qwen", "qwen2-7b", step=0)
    args = [f"checkpoint.init_from={base}", f"train.run_dir={tmp_path}/run", "model.from_checkpoint=true"]
    cfg = validate(load_training_config("cpt_1m", [*args, "data.paths=[/data/cpt]", "parallel.tp=4"]), world_size=256)
    assert (cfg.model.arch, cfg.model.hidden_size, cfg.model.vocab_size, cfg.model.norm_eps) == ("qwen2", 3584,
                                                                                                152064, 1e-6)
    assert cfg.yarn.target_length == 1048576  # the stage's own YaRN on the checkpoint's θ
    with pytest.raises(CheckpointError, match="num_layers 28 vs 4"):  # what an override states is compared
        load_training_config("cpt_1m", [*args, "model.num_layers=4"])


def test_model_from_checkpoint_needs_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="model.from_checkpoint=true but checkpoint.init_from is not set"):
        load_training_config("sft", ["checkpoint.init_from=", f"train.run_dir={tmp_path}/run"])
    with pytest.raises(CheckpointError, match=r"checkpoint.init_from=.*nowhere: no such directory"):
        load_training_config("sft", [f"checkpoint.init_from={tmp_path}/nowhere", f"train.run_dir={tmp_path}/run"])


def test_a_resumed_run_is_compared_with_its_own_checkpoint(tmp_path):
    own = fake_checkpoint(tmp_path / "run" / "checkpoints", "sft", "model.num_layers=32", step=50)
    # no init_from on disk any more: the run's own checkpoint is the source (its config says 4M, as saved)
    meta = json.loads((tmp_path / "run" / "checkpoints" / "iter_0000050" / "meta.json").read_text())
    meta["config"]["model"] = to_dict(load_recipe("cpt_4m"))["model"]
    meta["config"]["yarn"] = to_dict(load_recipe("cpt_4m"))["yarn"]
    (tmp_path / "run" / "checkpoints" / "iter_0000050" / "meta.json").write_text(json.dumps(meta))
    cfg = load_training_config("sft", [f"checkpoint.init_from={tmp_path}/gone", f"train.run_dir={tmp_path}/run"])
    assert cfg.yarn.target_length == 4194304 and own


# ---------------------------------------------------------------------------------- toy stages on CPU
@pytest.mark.slow
def test_toy_cpt_then_toy_sft_trains_and_saves_the_cpt_stages_rope(tmp_path):
    """toy_cpt (YaRN 64 -> 512) -> toy_sft through `python -m megatron_ultralong.train`: the SFT checkpoint keeps
    512 positions and factor 8, its export config says so; an override stating other rope values exits 2."""
    from megatron_ultralong.checkpoint import read_meta
    from megatron_ultralong.config import config_from_dict
    from megatron_ultralong.train import EXIT_BAD_INPUT, EXIT_OK
    from tests.train.helpers import launch

    def run(run_dir, recipe, *overrides):
        p = launch(run_dir, "train.max_steps=2", *overrides, recipe=recipe)
        out, err = p.communicate(timeout=300)
        return p.returncode, out, err

    code, _, err = run(tmp_path / "cpt", "toy_cpt", "yarn.target_length=512")
    assert code == EXIT_OK, err
    cpt = f"checkpoint.init_from={tmp_path}/cpt/checkpoints"
    code, _, err = run(tmp_path / "sft", "toy_sft", cpt)
    assert code == EXIT_OK, err
    saved = config_from_dict(read_meta(tmp_path / "sft" / "checkpoints")["config"])
    assert saved.train.mode == "sft" and saved.yarn.enabled and saved.yarn.target_length == 512
    exported = hf_config_from_model(saved.model, saved.yarn, "fp32")
    assert exported["rope_scaling"]["factor"] == 8.0 and exported["max_position_embeddings"] == 512

    code, _, err = run(tmp_path / "sft_refused", "toy_sft", cpt, "yarn.target_length=256")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_BAD_INPUT and len(lines) == 1, err
    assert "yarn.target_length=256 (checkpoint: 512)" in lines[0] and "allow_rope_change" in lines[0]
    assert not (tmp_path / "sft_refused" / "checkpoints" / "latest").exists()
