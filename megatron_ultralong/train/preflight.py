"""The input checks of a training command line that need no framework import (no torch, no megatron).

    preflight(cfg)                 # the trainer's: writable run/checkpoint dirs, an existing init_from
    check_init_from(cfg)           # CheckpointError unless init_from is a checkpoint (or the run resumes)
    python launch/preflight.py --world-size 256 --config cpt_2m train.max_steps=10     # main(): prints the run dir
"""
from __future__ import annotations

import argparse
import os

from ..checkpoint import CheckpointError, find_latest, read_meta
from ..cli import bad_input
from ..config import ConfigError, checkpoint_dir, load_recipe, validate
from . import prepare_run_dir


def check_init_from(cfg) -> None:
    """CheckpointError when ``checkpoint.init_from`` is set, the run has no checkpoint of its own to resume from
    (a resumed run ignores init_from), and it is not a readable checkpoint."""
    init_from = cfg.checkpoint.init_from
    if not init_from or find_latest(checkpoint_dir(cfg)) is not None:
        return
    hint = "finish the stage that writes it first, or pass checkpoint.init_from=<checkpoint dir>"
    if not os.path.isdir(init_from):
        raise CheckpointError(f"checkpoint.init_from={init_from}: no such directory (seen from {os.getcwd()}); "
                              f"{hint}")
    try:
        read_meta(init_from)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint.init_from: {e}; {hint}") from None


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
        cfg = validate(load_recipe(args.config, args.overrides), world_size=args.world_size)
        check_init_from(cfg)
    except (ConfigError, CheckpointError) as e:
        return bad_input(e)
    print(cfg.train.run_dir)
    return 0

