"""Command-line entry points (one module per tools/*.py) and what they share.

    parser = OneLineParser(prog="tools/x.py", description="...")   # errors: one line, exit 2; --help shows defaults
    parser.add_argument("--lengths", type=comma_ints)               # "4096,8192" -> [4096, 8192]
    except EvalError as e: return bad_input(e)                      # "error: <message>" on stderr, EXIT_BAD_INPUT
"""
from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2
"""Exit code of every entry point on bad input (a bad flag, file, recipe or checkpoint): one line on stderr."""


def bad_input(error) -> int:
    """Print ``error`` as the one ``error:`` line on stderr; returns EXIT_BAD_INPUT (``return bad_input(e)``)."""
    print(f"error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` for our CLIs: a bad command line is bad input, reported as one line on stderr
    with exit code 2 (argparse's default prints the whole usage block), and ``--help`` lists each default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        sys.exit(bad_input(f"{message} (see --help)"))


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults appended to option help (unless the help already names its default, or it is None/False);
    descriptions kept as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS or not action.option_strings:
            return text
        return super()._get_help_string(action)


def comma_ints(text: str) -> list:
    """argparse type: "4096,8192" -> [4096, 8192] (a bad item is argparse's one-line error)."""
    return [int(x) for x in text.split(",") if x]


def comma_floats(text: str) -> list:
    """argparse type: "0,0.5,1" -> [0.0, 0.5, 1.0]."""
    return [float(x) for x in text.split(",") if x]


def comma_strs(text: str) -> list:
    """"passkey,kv_retrieval," -> ["passkey", "kv_retrieval"] (empty items dropped)."""
    return [x for x in text.split(",") if x]
