"""The one-node GPU smoke recipes (smoke_cpt, smoke_sft) and docs/slurm.md's "First launch" commands that run them
through the stage scripts: what the scripts pass to the trainer, and that it is a valid run on one 8-GPU node."""
import shlex

import pytest

from megatron_ultralong.config import load_recipe, validate

from .helpers import REPO
from .test_scripts import dry_run

DOCS = (REPO / "docs" / "slurm.md").read_text()
# (documented command, script, what the trainer must get)
COMMANDS = [
    ("ULTRALONG_RECIPE=smoke_cpt sbatch --parsable --nodes=1 slurm/cpt_1m.sh train.run_dir=runs/smoke_cpt",
     {"run_dir": "runs/smoke_cpt", "init_from": None, "backend": "te", "cp": 2}),
    ("ULTRALONG_RECIPE=smoke_sft sbatch --nodes=1 --dependency=afterok:$j slurm/sft.sh train.run_dir=runs/smoke_sft "
     "checkpoint.init_from=runs/smoke_cpt/checkpoints",
     {"run_dir": "runs/smoke_sft", "init_from": "runs/smoke_cpt/checkpoints", "backend": "te", "cp": 1}),
]


@pytest.mark.parametrize("command, expected", COMMANDS, ids=["cpt", "sft"])
def test_documented_smoke_command_runs_the_smoke_recipe_in_its_own_run_dir_on_one_node(tmp_path, command,
                                                                                       expected):
    assert command in " ".join(DOCS.replace("\\\n", " ").split()), "docs/slurm.md lost the command"
    words = shlex.split(command.replace("$j", "1"))
    recipe = words[0].split("=", 1)[1]
    script = next(w for w in words if w.startswith("slurm/")).removeprefix("slurm/")
    overrides = words[words.index(f"slurm/{script}") + 1:]
    _, argv = dry_run(script, *overrides, cwd=tmp_path, ULTRALONG_RECIPE=recipe, SLURM_JOB_ID="7",
                      SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="gpu001", SLURM_CPUS_ON_NODE="64")
    trainer_args = argv[argv.index("--config") + 1:]
    assert trainer_args[0] == recipe
    cfg = load_recipe(recipe, trainer_args[1:])
    assert cfg.train.run_dir == expected["run_dir"] and cfg.checkpoint.init_from == expected["init_from"]
    assert (cfg.model.attention_backend, cfg.parallel.cp, cfg.model.params_dtype) == (expected["backend"],
                                                                                    expected["cp"], "bf16")
    for gpus in (2, 4, 8):  # one node, whatever its GPU count
        validate(cfg, world_size=gpus)
