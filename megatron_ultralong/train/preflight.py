"""The input checks of a training command line that need no framework import (no torch, no megatron).

    preflight(cfg)                 # the trainer's: writable run/checkpoint dirs, an existing init_from
    check_init_from(cfg)           # CheckpointError unless init_from is a checkpoint (or the run resumes)
    python launch/preflight.py --world-size 256 --config cpt_2m train.max_steps=10     # main(): prints the run dir
                                   # (main() also runs data.checks.check_data: paths, tokenizer, SFT schema)
"""
from __future__ import annotations

import argparse

from ..checkpoint import CheckpointError
from ..cli import bad_input
from ..config import ConfigError, checkpoint_dir, load_recipe, stated_keys, validate
from . import prepare_run_dir
from .stage import check_init_from, inherit_from_checkpoint


def preflight(cfg) -> None:
    """The trainer's checks before any process group: writable run and checkpoint dirs, an existing init_from."""
    prepare_run_dir(cfg.train.run_dir, "train.run_dir")
    prepare_run_dir(checkpoint_dir(cfg), "checkpoint.dir")
    check_init_from(cfg)


def main(argv=None) -> int:
    """launch/preflight.py: validate a training command line for ``--world-size`` processes (recipe, overrides,
    layout, init_from), print its train.run_dir; one ``error:`` line and EXIT_BAD_INPUT otherwise."""
    parser = argparse.ArgumentParser(description="Check a training command line before any worker starts; print "
                                                 "the run directory.")
    parser.add_argument("--config", required=True, help="recipe: a .yaml path or a packaged recipe name")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=10")
    parser.add_argument("--world-size", type=int, default=None, help="processes the job will start (checks TP·PP·CP)")
    args, _unknown = parser.parse_known_args(argv)  # trainer flags we do not know are the trainer's business
    try:
        cfg = inherit_from_checkpoint(load_recipe(args.config, args.overrides),
                                      stated_keys(args.config, args.overrides), stated_keys(None, args.overrides))
        cfg = validate(cfg, world_size=args.world_size)
        check_init_from(cfg)
        from ..data.checks import check_data

        check_data(cfg)  # before any worker starts: one line here, not one per rank
    except (ConfigError, CheckpointError) as e:
        return bad_input(e)
    print(cfg.train.run_dir)
    return 0

