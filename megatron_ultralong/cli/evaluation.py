"""What the four evaluation tools (tools/eval_*.py) share: their options, their run order, their output.

    add_model_arg(p); add_eval_output_args(p)                      # --hf; --dtype, --out
    add_prompt_args(p); fmt = prompt_format(a)                     # --bos, --chat-template (NIAH, RULER)
    warn_beyond_window(a.hf, a.lengths, "--lengths")               # one stderr line past the model's window
    return run_eval(a, check=lambda tok: plan(tok), evaluate=lambda model, tok, plan: ...)
    write_result(a.out, "niah.json", a.hf, grid)                   # {"model": <abs --hf>, **grid}
    return below_minimum(score, a.min_score, "--min-score", "average score")   # the exit code of a --min-* gate
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from . import bad_input

MODEL_HELP = "directory of a transformers causal LM with its tokenizer files"


def add_model_arg(parser: argparse.ArgumentParser, help: str = MODEL_HELP) -> None:
    """--hf: the exported model folder every evaluation tool runs."""
    parser.add_argument("--hf", required=True, help=help)


def add_eval_output_args(parser: argparse.ArgumentParser) -> None:
    """The options every evaluation tool (tools/eval_*.py) ends with: --dtype of the model run, --out folder."""
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="dtype the model is run in")
    parser.add_argument("--out", required=True, help="output directory")


def add_bos_arg(parser: argparse.ArgumentParser) -> None:
    """--bos: how many BOS tokens start each prompt (docs/eval.md, Prompt format)."""
    from ..eval.prompt import BOS_MODES

    parser.add_argument("--bos", choices=BOS_MODES, default="auto",
                        help="one BOS first in every prompt: 'auto' when the tokenizer's encode adds one (Meta's "
                             "Llama-3.1 tokenizer does) or the chat template starts with one, 'always', or 'never'")


def add_sampling_args(p, samples_help: str) -> None:
    """--samples (trials per cell) and --seed (of the random keys and values)."""
    p.add_argument("--samples", type=int, default=1, help=samples_help)
    p.add_argument("--seed", type=int, default=0, help="seed of the random keys and values")


def add_prompt_args(parser: argparse.ArgumentParser) -> None:
    """--bos and --chat-template of the synthetic tasks (NIAH, RULER)."""
    add_bos_arg(parser)
    parser.add_argument("--chat-template", action="store_true",
                        help="wrap each prompt as one user turn of the tokenizer's chat template, the answer prefix "
                             "opening the assistant turn (instruct models; default: plain text, as for base models)")


def prompt_format(a: argparse.Namespace):
    """The PromptFormat of --bos / --chat-template."""
    from ..eval.prompt import PromptFormat

    return PromptFormat(bos=a.bos, chat_template=bool(getattr(a, "chat_template", False)))


def warn_beyond_window(model_dir: str, lengths, flag: str) -> None:
    """One ``warning:`` line on stderr when a length exceeds the model's window (not an error: extrapolation is a
    legitimate measurement)."""
    from ..eval.hf import window_warning

    message = window_warning(model_dir, lengths, flag)
    if message:
        print(message, file=sys.stderr)


def run_eval(a: argparse.Namespace, check: Callable[[Any], Any], evaluate: Callable[[Any, Any, Any], int]) -> int:
    """Load the tokenizer of ``a.hf`` and run ``check(tokenizer)`` (the input errors: EvalError, one line, exit 2)
    before the long model load; then ``evaluate(model, tokenizer, checked)``, whose return is the exit code."""
    from ..eval import EvalError
    from ..eval.hf import load_hf_model, load_hf_tokenizer

    try:
        tok = load_hf_tokenizer(a.hf)
        checked = check(tok)
    except EvalError as e:
        return bad_input(e)
    return evaluate(load_hf_model(a.hf, a.dtype), tok, checked)


def write_result(out_dir: str, name: str, model_dir: str, result: dict, **extra) -> str:
    """``<out_dir>/<name>``, written atomically: {"model": absolute ``model_dir``, **extra, **result}."""
    from ..atomic import atomic_path

    path = os.path.join(out_dir, name)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump({"model": os.path.abspath(model_dir), **extra, **result}, f, indent=1)
    return path


def model_name(model_dir: str) -> str:
    """The folder's name, the title of the plots."""
    return os.path.basename(os.path.normpath(model_dir))


def below_minimum(value: float, minimum, flag: str, what: str) -> int:
    """Exit code of an evaluation's optional gate (--min-score, --min-accuracy): 1 after a one-line error when
    ``minimum`` is set and ``value`` is below it, else 0."""
    if minimum is not None and value < minimum:
        print(f"error: {what} {value:.3f} is below {flag} {minimum}", file=sys.stderr)
        return 1
    return 0
