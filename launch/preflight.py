#!/usr/bin/env python3
"""Check a training command line before any worker starts; print the run directory.

    python launch/preflight.py --world-size 256 --config cpt_2m data.paths=[<mixture>] data.tokenizer=<dir>

launch/torchrun.sh runs this on every node first (one error line and exit 2 instead of every worker's traceback;
docs/slurm.md). The checks: megatron_ultralong/train/preflight.py. Imports neither torch nor megatron.
"""
import sys

if __name__ == "__main__":
    try:
        from megatron_ultralong.train.preflight import main
    except ImportError as e:
        print(f"error: {sys.executable} cannot import megatron_ultralong ({e}); set ULTRALONG_PYTHON to the python "
              f"of an environment where `pip install -e .` was run", file=sys.stderr)
        sys.exit(2)  # EXIT_BAD_INPUT, which lives in the package this python cannot import
    sys.exit(main())
