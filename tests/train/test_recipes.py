"""Stage recipes: the paper's numbers where it gives them (one-step extension from the instruct model, the released
budgets), consistent layouts."""
import json
from pathlib import Path

import pytest

from megatron_ultralong.config import data_parallel_size, load_recipe, to_dict, validate

RESOLVED = json.loads((Path(__file__).parent / "recipes_resolved.json").read_text())
"""Every packaged recipe's resolved values, captured before the CPT stages moved their shared settings into
cpt_base.yaml (without the retired ``eval`` section, which no recipe set); sft and toy_sft re-captured when they
stopped basing on a CPT stage's model and yarn sections (SFT takes both from its checkpoint: train/stage.py);
cpt_2m / cpt_4m init_from, cpt_4m max_steps and sft max_steps / token_budget changed on purpose with the released
budgets and the one-step extension (issue 13)."""

STAGES = {"cpt_1m": (1048576, 128), "cpt_2m": (2097152, 256), "cpt_4m": (4194304, 512)}
INSTRUCT = "ckpt/llama31-8b"  # Llama-3.1-8B-Instruct converted by tools/convert_from_hf.py: every card's base


@pytest.mark.parametrize("name", list(STAGES))
def test_cpt_stage_trains_at_the_target_length_on_about_1b_tokens(name):
    target, factor = STAGES[name]
    cfg = validate(load_recipe(name, ["data.paths=[/data/cpt]"]), world_size=256)
    t = cfg.train
    assert cfg.data.seq_length == cfg.yarn.target_length == target
    assert cfg.yarn.target_length / cfg.yarn.original_max_position_embeddings == factor
    assert (cfg.yarn.beta_slow, cfg.yarn.beta_fast) == (1.0, 4.0)
    tokens = t.max_steps * t.global_batch_size * target
    assert 1.0e9 <= tokens <= 1.3e9 and cfg.data.token_budget >= 10**9
    assert tokens <= 1.01 * cfg.data.token_budget  # the stage's mixture holds what it trains on: no repeated windows
    if name == "cpt_4m":  # the 4M model card: 150 iterations × global batch 2 at 4M tokens
        assert (t.max_steps, t.global_batch_size, target) == (150, 2, 4194304)
    else:  # ~1B tokens: 120 steps of 8M tokens
        assert 1.0e9 <= tokens <= 1.02e9
    assert t.global_batch_size * target == 8 * 2**20  # 8M tokens per step in every stage
    dp = data_parallel_size(cfg.parallel, 256)
    assert t.global_batch_size % dp == 0 and target // cfg.parallel.cp <= 128 * 1024
    assert cfg.train.mode == "cpt" and not cfg.data.mask_cross_document and cfg.train.recompute == "full"


@pytest.mark.parametrize("name", list(STAGES))
def test_every_cpt_stage_extends_the_instruct_checkpoint_in_one_step(name):
    from megatron_ultralong.config import RECIPES_DIR

    assert load_recipe(name).checkpoint.init_from == INSTRUCT
    assert "init_from" not in (RECIPES_DIR / f"{name}.yaml").read_text().split("\nbase:")[1]  # cpt_base's, shared
    # chaining stays an override
    chained = load_recipe(name, ["checkpoint.init_from=runs/cpt_1m/checkpoints"])
    assert chained.checkpoint.init_from == "runs/cpt_1m/checkpoints"
    assert load_recipe("sft").checkpoint.init_from == f"{load_recipe('cpt_4m').train.run_dir}/checkpoints"


@pytest.mark.parametrize("path", ["README.md", "docs/training.md", "docs/slurm.md", "slurm/cpt_1m.sh",
                                  "slurm/cpt_2m.sh", "slurm/cpt_4m.sh"])
def test_no_documented_cpt_command_passes_the_previous_stage(path):
    """The scripts and docs start every CPT stage from the instruct checkpoint: a previous stage shows up only as
    the documented chaining override."""
    import re

    text = (Path(__file__).resolve().parents[2] / path).read_text()
    for stage, prev in (("cpt_2m", "cpt_1m"), ("cpt_4m", "cpt_2m")):
        for line in text.splitlines():
            if re.search(rf"\b{stage}\b", line) and f"runs/{prev}/checkpoints" in line:
                assert "chain" in line.lower(), f"{path}: {line.strip()}"
    if path.startswith("slurm/"):
        assert re.search(r'^ultralong_train cpt_\dm runs/cpt_\dm "" "\$@"$', text, re.M), path


def test_sft_is_short_context_assistant_only_on_the_4m_model(tmp_path):
    from megatron_ultralong.train.stage import load_training_config
    from tests.train.test_stage import fake_checkpoint

    cpt_4m = fake_checkpoint(tmp_path / "cpt_4m", "cpt_4m")  # the stage sft.yaml starts from by default
    cfg = validate(load_training_config("sft", ["data.paths=[/data/sft.jsonl]", f"checkpoint.init_from={cpt_4m}",
                                                f"train.run_dir={tmp_path}/sft"]), world_size=64)
    assert cfg.train.mode == "sft" and cfg.data.seq_length == 8192 and cfg.parallel.cp == 1
    assert cfg.yarn.target_length == 4194304  # the model keeps the 4M stage's rotary, read from its checkpoint
    assert cfg.train.token_budget == 10**9  # ~1B SFT tokens [paper]; the trainer derives max_steps from the data
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


class _Packed:
    """A stand-in for the loader's PackedSamplesSource: windows (bins) holding data_tokens sample tokens."""

    def __init__(self, windows, data_tokens):
        self.bins, self.data_tokens = [[0]] * windows, data_tokens


def test_sft_token_budget_becomes_steps_for_the_packed_data():
    from megatron_ultralong.train.trainer import budget_steps

    cfg = load_recipe("sft", ["data.paths=[/data/sft.jsonl]"])
    steps, how = budget_steps(cfg, _Packed(1000, 1000 * 8192))  # full windows: ceil(1e9 / (128 × 8192))
    assert steps == 954 and "train.max_steps=954 from train.token_budget=1,000,000,000" in how
    steps, _ = budget_steps(cfg, _Packed(1000, 1000 * 4096))  # half-full windows: twice the steps
    assert steps == 1908
    assert budget_steps(cfg, _Packed(1000, 1000 * 4096))[0] == 1908  # a function of the data: a resume agrees
    steps, _ = budget_steps(load_recipe("cpt_1m", ["train.token_budget=1000000000"]), object())  # full windows
    assert steps == 120
    from megatron_ultralong.config import ConfigError

    with pytest.raises(ConfigError, match="fewer than optim.lr_warmup_steps=10"):
        budget_steps(load_recipe("sft", ["train.token_budget=1000"]), _Packed(10, 10 * 8192))
    with pytest.raises(ConfigError, match="train.token_budget=0: must be > 0"):
        validate(load_recipe("toy_sft", ["train.token_budget=0"]), world_size=1)


@pytest.mark.parametrize("path", ["README.md", "docs/training.md", "docs/slurm.md", "docs/convert.md", "docs/data.md"])
def test_every_documented_training_command_carries_its_data_and_tokenizer(path):
    """A stage queued without data.paths / data.tokenizer fails only after it waited for 32 nodes."""
    import re

    text = (Path(__file__).resolve().parents[2] / path).read_text()
    blocks = [b.replace("\\\n", " ") for b in re.findall(r"```bash\n(.*?)```", text, re.S)]  # joined continuations
    commands = [line for block in blocks for line in block.splitlines()
                if not line.lstrip().startswith("#")  # a command's printed output
                and "ULTRALONG_RECIPE=" not in line  # a replacement recipe (e.g. a synthetic smoke test) brings its own
                and re.search(r"(sbatch .*slurm/(cpt_\dm|sft)\.sh|--config (cpt_\dm|sft)\b)", line)]
    assert commands, path
    for line in commands:
        assert "data.paths=" in line and "data.tokenizer=" in line, f"{path}: {line.strip()}"


def test_help_config_says_auto_attention_is_sdpa_on_cpu():
    from megatron_ultralong.config import describe

    line = next(x for x in describe().splitlines() if "attention_backend" in x)
    assert "local on CPU" not in line and "SDPA" in line


def test_sft_steps_come_from_the_loaders_packed_windows_the_same_on_every_build():
    import numpy as np

    from megatron_ultralong.data.loader import PackedSamplesSource, stage_seed
    from megatron_ultralong.train.trainer import budget_steps

    cfg = load_recipe("toy_sft", ["train.token_budget=100000"])
    lengths = np.random.default_rng(0).integers(5, 40, size=500).tolist()

    def source():
        return PackedSamplesSource(lengths, None, cfg.data.seq_length, 0, stage_seed(cfg))

    first, second = source(), source()  # a resumed run builds the same windows from the same data
    assert first.data_tokens == second.data_tokens == sum(lengths)
    steps = budget_steps(cfg, first)[0]
    windows = len(first.bins)
    assert steps == budget_steps(cfg, second)[0] == -(-100000 * windows // (2 * sum(lengths)))
    assert steps > -(-100000 // (2 * 64))  # padding in the packed windows: more steps than full windows need


def test_readme_describes_the_recipe_the_code_runs():
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    recipe = text[text.index("The recipe:"):text.index("## Two commands")]
    assert "Stages chain" not in recipe and "dedicated separator" not in recipe
    assert '`"<s>"`' in recipe and "~1B tokens" in recipe and "in one step" in recipe
    assert "Megatron-Core's local layer spec" not in text  # CPU runs SDPA (model.attention_backend=auto)


def test_a_window_too_short_for_seq_length_says_what_to_raise_or_shorten():
    from megatron_ultralong.config import ConfigError

    with pytest.raises(ConfigError, match=r"\(yarn.target_length\); raise yarn.target_length or shorten "
                                          r"data.seq_length to at most 256$"):
        validate(load_recipe("toy_cpt", ["data.seq_length=512"]), world_size=1)
