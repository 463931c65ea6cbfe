"""What every command-line entry point shares (tools/*.py, ``python -m megatron_ultralong.train``).

    parser = OneLineParser(prog="tools/x.py", description="...")   # errors: one line, exit 2; --help shows defaults
    parser.add_argument("--lengths", type=comma_ints)               # "4096,8192" -> [4096, 8192]
    add_eval_output_args(parser)                                    # --dtype, --out of every tools/eval_*.py
    return below_minimum(score, a.min_score, "--min-score", "average score")   # the exit code of a --min-* gate
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


def comma_ints(text: str) -> list:
    """argparse type: "4096,8192" -> [4096, 8192] (a bad item is argparse's one-line error)."""
    return [int(x) for x in text.split(",") if x]


def comma_floats(text: str) -> list:
    """argparse type: "0,0.5,1" -> [0.0, 0.5, 1.0]."""
    return [float(x) for x in text.split(",") if x]


def add_eval_output_args(parser: argparse.ArgumentParser) -> None:
    """The options every evaluation tool (tools/eval_*.py) ends with: --dtype of the model run, --out folder."""
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="dtype the model is run in")
    parser.add_argument("--out", required=True, help="output directory")


def below_minimum(value: float, minimum, flag: str, what: str) -> int:
    """Exit code of an evaluation's optional gate (--min-score, --min-accuracy): 1 after a one-line error when
    ``minimum`` is set and ``value`` is below it, else 0."""
    if minimum is not None and value < minimum:
        print(f"error: {what} {value:.3f} is below {flag} {minimum}", file=sys.stderr)
        return 1
    return 0
