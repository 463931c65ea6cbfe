#!/usr/bin/env python3
"""Check a training command line before any worker starts; print the run directory.

    python launch/preflight.py --world-size 256 --config cpt_2m train.max_steps=10     # prints runs/cpt_2m

launch/torchrun.sh runs this on every node first: a bad recipe, override or missing ``checkpoint.init_from`` then
costs one line on stderr and exit 2 instead of eight workers' tracebacks, and the run directory it prints is where
rank 0 leaves ``exit_status.json`` (torchrun reports every worker failure as 1; that file keeps the 75 of a
preemption). Cheap: imports neither torch nor megatron.
"""
import argparse
import os
import sys

EXIT_BAD_INPUT = 2  # same meaning as the trainer's exit code 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="recipe: a .yaml path or a packaged recipe name")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=10")
    parser.add_argument("--world-size", type=int, default=None, help="processes the job will start (checks TP·PP·CP)")
    args, _unknown = parser.parse_known_args(argv)  # trainer flags we do not know are the trainer's business
    try:
        from megatron_ultralong.checkpoint import CheckpointError, find_latest, read_meta
        from megatron_ultralong.config import ConfigError, checkpoint_dir, load_recipe, validate
    except ImportError as e:
        print(f"error: {sys.executable} cannot import megatron_ultralong ({e}); set ULTRALONG_PYTHON to the python "
              f"of an environment where `pip install -e .` was run", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        cfg = validate(load_recipe(args.config, args.overrides), world_size=args.world_size)
        init_from = cfg.checkpoint.init_from
        if init_from and find_latest(checkpoint_dir(cfg)) is None:  # a resumed run ignores init_from
            hint = "finish the stage that writes it first, or pass checkpoint.init_from=<checkpoint dir>"
            if not os.path.isdir(init_from):
                raise CheckpointError(f"checkpoint.init_from={init_from}: no such directory (seen from "
                                      f"{os.getcwd()}); {hint}")
            try:
                read_meta(init_from)
            except CheckpointError as e:
                raise CheckpointError(f"checkpoint.init_from: {e}; {hint}") from None
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(cfg.train.run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
