"""What every command-line entry point shares (tools/*.py, ``python -m megatron_ultralong.train``).

    parser = OneLineParser(prog="tools/x.py", description="...")   # errors: one line, exit 2; --help shows defaults
"""
from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2
"""Exit code of every entry point on bad input (a bad flag, file, recipe or checkpoint)."""


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` for our CLIs: a bad command line is bad input, reported as one line on stderr
    with exit code 2 (argparse's default prints the whole usage block), and ``--help`` lists each default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults appended to option help (unless the help already names its default, or it is None/False);
    descriptions kept as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS or not action.option_strings:
            return text
        return super()._get_help_string(action)
