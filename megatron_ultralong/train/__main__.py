"""Entry point:  python -m megatron_ultralong.train --config <recipe.yaml> [section.key=value ...]

    python -m megatron_ultralong.train --config toy_cpt train.max_steps=20              # one process (ultralong-train)
    torchrun --nproc-per-node 2 -m megatron_ultralong.train --config toy_cpt parallel.tp=2
    python -m megatron_ultralong.train --help-config                                   # every recipe key

Exit codes: 0 done, 75 preempted after a checkpoint, 2 bad input (one line), 1 else; rank 0 also writes
``<run_dir>/exit_status.json`` because torchrun reports every worker failure as 1 (docs/training.md).
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
from ..config import ConfigError, describe, validate
from . import EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED
from .preflight import preflight
from .stage import load_training_config


def _route_library_chatter_to_stdout() -> None:
    """Library warnings/logs go to stdout, so stderr carries only our one-line error on bad input."""
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex) (and Apex )?(is|are) not installed.*")
    logging.captureWarnings(True)
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="[%(name)s] %(levelname)s %(message)s")


def _write_exit_status(run_dir: str, code: int, reason: str, step) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    try:  # atomically: a launcher reading it never sees half a file
        with atomic_path(os.path.join(run_dir, "exit_status.json")) as tmp, open(tmp, "w") as f:
            json.dump({"code": code, "reason": reason, "step": step}, f)
    except OSError:
        pass  # the run dir may be the very thing that is broken; the exit code still says it


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m megatron_ultralong.train",
                            description="CPT / SFT training on Megatron-Core from a YAML recipe.")
    parser.add_argument("--config", help="recipe: a .yaml path or a packaged recipe name (e.g. toy_cpt, cpt_1m)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=10 parallel.tp=2")
    parser.add_argument("--help-config", action="store_true", help="list every recipe key with its meaning")
    args = parser.parse_args(argv)
    if args.help_config:
        print(describe())
        return EXIT_OK
    if not args.config:
        parser.error("--config is required")
    try:
        # paths absolute from here on: config.yaml and the checkpoints name the same files from any directory
        # + what the stage inherits from its checkpoint (train/stage.py; meta.json only, before any process group)
        cfg = validate(load_training_config(args.config, args.overrides))  # world size: init_distributed
        preflight(cfg)
    except (ConfigError, CheckpointError) as e:
        return bad_input(e)

    _route_library_chatter_to_stdout()
    from .trainer import Trainer

    trainer = None
    code, reason = EXIT_FAILED, "error"
    try:
        trainer = Trainer(cfg)
        code = trainer.train()
        reason = {EXIT_OK: "finished", EXIT_PREEMPTED: f"preempted ({trainer.preemption.received or 'peer'})"}[code]
    except (ConfigError, CheckpointError) as e:
        code, reason = bad_input(e), f"bad input: {e}"
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
