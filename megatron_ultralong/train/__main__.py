"""Entry point:  python -m megatron_ultralong.train --config <recipe.yaml> [section.key=value ...]

    python -m megatron_ultralong.train --config toy_cpt train.max_steps=20              # one process (ultralong-train)
    torchrun --nproc-per-node 2 -m megatron_ultralong.train --config toy_cpt parallel.tp=2
    python -m megatron_ultralong.train --help-config                                   # every recipe key
    python -m megatron_ultralong.train --config cpt_1m --dry-run --nodes 32 --gpus-per-node 8 data.paths=[...] \
        data.tokenizer=...          # every check, no GPU, no process group: layout + memory per GPU (train/dry_run.py)

Exit codes: 0 done, 75 preempted after a checkpoint, 2 bad input (one line, from rank 0 only), 1 else; rank 0 also
writes ``<run_dir>/exit_status.json`` (bad input included) because torchrun reports every worker failure as 1:
launch/torchrun.sh turns it back into the trainer's code (docs/training.md).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import traceback
import warnings

from ..atomic import atomic_path
from ..checkpoint import CheckpointError
from ..cli import OneLineParser, bad_input
from ..config import ConfigError, absolute_paths, describe, load_recipe, validate
from . import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED
from .preflight import preflight
from .stage import load_training_config


def _route_library_chatter_to_stdout() -> None:
    """Library warnings/logs go to stdout, so stderr carries only our one-line error on bad input."""
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex) (and Apex )?(is|are) not installed.*")
    logging.captureWarnings(True)
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="[%(name)s] %(levelname)s %(message)s")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _write_exit_status(run_dir, code: int, reason: str, step) -> None:
    if _rank() != 0 or not run_dir:
        return
    try:  # atomically: a launcher reading it never sees half a file
        os.makedirs(run_dir, exist_ok=True)  # a bad command line may stop before the run dir is made
        with atomic_path(os.path.join(run_dir, "exit_status.json")) as tmp, open(tmp, "w") as f:
            json.dump({"code": code, "reason": reason, "step": step}, f)
    except OSError:
        pass  # the run dir may be the very thing that is broken; the exit code still says it


def _run_dir_of(recipe: str, overrides) -> str | None:
    """train.run_dir of a command line whose config failed to load or validate (None when even that fails)."""
    try:
        return absolute_paths(load_recipe(recipe, overrides)).train.run_dir
    except Exception:
        return None


def _bad_input(error, run_dir) -> int:
    """Every rank finds the same bad input: rank 0 prints the one line and records it; returns EXIT_BAD_INPUT."""
    if _rank() == 0:
        bad_input(error)
    _write_exit_status(run_dir, EXIT_BAD_INPUT, f"bad input: {error}", None)
    return EXIT_BAD_INPUT


def _dry_run(args) -> int:
    """--dry-run: the report on stdout and EXIT_OK, or one line on stderr and EXIT_BAD_INPUT; writes nothing."""
    from .dry_run import dry_run

    _route_library_chatter_to_stdout()
    try:
        print(dry_run(args.config, args.overrides, nodes=args.nodes, gpus_per_node=args.gpus_per_node))
    except (ConfigError, CheckpointError) as e:
        return bad_input(e)
    print("dry run: every check passed")
    return EXIT_OK


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m megatron_ultralong.train",
                            description="CPT / SFT training on Megatron-Core from a YAML recipe.")
    parser.add_argument("--config", help="recipe: a .yaml path or a packaged recipe name (e.g. toy_cpt, cpt_1m)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=10 parallel.tp=2")
    parser.add_argument("--help-config", action="store_true", help="list every recipe key with its meaning")
    parser.add_argument("--dry-run", action="store_true", help="check the recipe, world size, data, tokenizer and "
                        "init_from without GPUs or a process group; print the layout and memory per GPU")
    parser.add_argument("--nodes", type=int, help="--dry-run: nodes of the job (default: SLURM_JOB_NUM_NODES)")
    parser.add_argument("--gpus-per-node", type=int, help="--dry-run: GPUs (workers) per node (default: "
                        "SLURM_GPUS_ON_NODE)")
    args = parser.parse_args(argv)
    if args.help_config:
        print(describe())
        return EXIT_OK
    if not args.config:
        parser.error("--config is required")
    if not args.dry_run and (args.nodes is not None or args.gpus_per_node is not None):
        parser.error("--nodes and --gpus-per-node go with --dry-run (a run takes its world size from torchrun)")
    if args.dry_run:
        return _dry_run(args)
    try:
        # paths absolute from here on: config.yaml and the checkpoints name the same files from any directory
        # + what the stage inherits from its checkpoint (train/stage.py; meta.json only, before any process group)
        cfg = validate(load_training_config(args.config, args.overrides))  # world size: init_distributed
        preflight(cfg)
    except (ConfigError, CheckpointError) as e:
        return _bad_input(e, _run_dir_of(args.config, args.overrides))

    _route_library_chatter_to_stdout()
    from .trainer import Trainer

    trainer = None
    code, reason = EXIT_FAILED, "error"
    try:
        trainer = Trainer(cfg)
        code = trainer.train()
        reason = {EXIT_OK: "finished", EXIT_PREEMPTED: f"preempted ({trainer.preemption.received or 'peer'})"}[code]
    except (ConfigError, CheckpointError) as e:
        code, reason = EXIT_BAD_INPUT, f"bad input: {e}"
        if _rank() == 0:
            bad_input(e)
    except Exception:
        traceback.print_exc()
        code = EXIT_FAILED
    finally:
        step = trainer.step if trainer is not None else None
        if trainer is not None:
            trainer.close()
        else:
            from ..parallel import destroy_distributed

            destroy_distributed()
    _write_exit_status(cfg.train.run_dir, code, reason, step)
    return code


if __name__ == "__main__":
    sys.exit(main())
