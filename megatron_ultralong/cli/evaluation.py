"""What the four evaluation tools (tools/eval_*.py) share: their options, their run order, their output.

    add_model_arg(p, ckpt=True); add_eval_output_args(p)           # --hf | --ckpt [--tp --cp]; --dtype, --out
    add_prompt_args(p); fmt = prompt_format(a)                     # --bos, --chat-template (NIAH, RULER)
    return run_eval(a, check=lambda tok: plan(tok), evaluate=lambda model, tok, plan: ...)     # --hf only
    return run_model_eval(a, check=lambda tok, plan: ..., evaluate=lambda run, tok, checked: ...)  # --hf | --ckpt
    write_result(a.out, "niah.json", run.source, grid, **run.record)   # {"model": <abs path>, **record, **grid}
    return below_minimum(score, a.min_score, "--min-score", "average score")   # the exit code of a --min-* gate
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Optional

from . import bad_input

MODEL_HELP = "directory of a transformers causal LM with its tokenizer files"


def add_model_arg(parser: argparse.ArgumentParser, help: str = MODEL_HELP, ckpt: bool = False) -> None:
    """--hf: the exported model folder every evaluation tool runs; with ``ckpt`` its alternative --ckpt, a
    Megatron checkpoint run under torchrun with --tp / --cp (inference/)."""
    if not ckpt:
        parser.add_argument("--hf", required=True, help=help)
        return
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf", help=help)
    source.add_argument("--ckpt", help="Megatron checkpoint (directory following 'latest', or an iter_* folder), "
                                       "run under torchrun with world size tp·cp: CP-sharded prefill and KV cache")
    add_layout_args(parser)


def add_layout_args(parser: argparse.ArgumentParser) -> None:
    """--tp and --cp of a Megatron-checkpoint run (the launcher starts tp·cp processes)."""
    parser.add_argument("--tp", type=int, default=1, help="with --ckpt: tensor-parallel size (splits heads)")
    parser.add_argument("--cp", type=int, default=1,
                        help="with --ckpt: context-parallel size (splits each prompt and its KV cache)")


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


class ModelRun:
    """The model an evaluation runs: an exported HF folder (transformers, one process) or a Megatron checkpoint
    (inference.Engine on every rank of a tp·cp launch; rank 0 writes)."""

    def __init__(self, source: str, model=None, engine=None, record: Optional[dict] = None):
        self.source = source
        """--hf or --ckpt, as given (write_result makes it absolute)."""
        self.model, self.engine = model, engine
        self.record = record or {}
        """The run's settings stored next to the result (dtype; tp, cp with --ckpt)."""

    @property
    def writes(self) -> bool:
        """This process writes the result, the plots and the summary lines (rank 0)."""
        import torch.distributed as dist

        return self.engine is None or not dist.is_initialized() or dist.get_rank() == 0

    @property
    def log(self):
        """print on the writing process, None on the others."""
        return print if self.writes else None

    def generate(self, tokenizer, **kwargs):
        """``generate(prompt_ids[, max_new_tokens]) -> text`` (eval.hf.hf_generate or inference.generate_fn)."""
        if self.engine is None:
            from ..eval.hf import hf_generate

            return hf_generate(self.model, tokenizer, **kwargs)
        from ..inference.engine import generate_fn

        return generate_fn(self.engine, tokenizer, **kwargs)

    def nll(self, chunk: int):
        """``nll(ids) -> Tensor[len(ids) − 1]`` (eval.perplexity.hf_nll_fn or inference.nll_fn)."""
        if self.engine is None:
            from ..eval.perplexity import hf_nll_fn

            return hf_nll_fn(self.model, chunk)
        from ..inference.engine import nll_fn

        return nll_fn(self.engine, chunk)


def plan_checkpoint_run(a: argparse.Namespace, tokenizer: Optional[str] = None):
    """The inference plan of --ckpt / --tp / --cp / --dtype (checks only: meta.json, layout, world size)."""
    from ..inference.loading import plan_inference

    return plan_inference(a.ckpt, a.tp, a.cp, dtype=a.dtype, tokenizer=tokenizer)


def check_lengths(a: argparse.Namespace, plan, lengths, flag: str) -> None:
    """--hf: warn past the model's window; --ckpt: InferenceError for a length the sharded prefill cannot take
    (past the checkpoint's rope window, or shorter than 2·cp)."""
    if plan is None:
        warn_beyond_window(a.hf, lengths, flag)
        return
    from ..inference.checks import check_prompt_length

    for n in lengths:
        check_prompt_length(int(n), plan.window, a.cp, what=f"{flag} {n}")


def open_checkpoint_run(a: argparse.Namespace, plan) -> ModelRun:
    """Process groups, model and weights of a checked --ckpt plan (every rank)."""
    from ..inference.loading import load_engine

    return ModelRun(a.ckpt, engine=load_engine(plan), record={"dtype": a.dtype, "tp": a.tp, "cp": a.cp})


def close_run(run: ModelRun) -> None:
    """Tear down the process groups of a --ckpt run."""
    if run.engine is not None:
        from ..parallel import destroy_distributed

        destroy_distributed()


def run_eval(a: argparse.Namespace, check: Callable[[Any], Any], evaluate: Callable[[Any, Any, Any], int]) -> int:
    """Load the tokenizer of ``a.hf`` and run ``check(tokenizer)`` (the input errors: EvalError, one line, exit 2)
    before the long model load; then ``evaluate(model, tokenizer, checked)``, whose return is the exit code."""
    return run_model_eval(a, check=lambda tok, _: check(tok),
                          evaluate=lambda run, tok, checked: evaluate(run.model, tok, checked))


def run_model_eval(a: argparse.Namespace, check: Callable[[Any, Any], Any],
                   evaluate: Callable[[ModelRun, Any, Any], int]) -> int:
    """``run_eval`` for tools that take --hf or --ckpt: the tokenizer (of --hf, or of --ckpt:
    inference.loading.checkpoint_tokenizer), then ``check(tokenizer, plan)`` (``plan``: the inference plan with
    --ckpt, else None; input errors are one line, exit 2) before any weight is read; then
    ``evaluate(run, tokenizer, checked)`` on every rank, whose return is the exit code."""
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..eval import EvalError
    from ..eval.hf import load_hf_model, load_hf_tokenizer
    from ..inference import InferenceError

    plan = None
    try:
        if getattr(a, "ckpt", None):
            from ..inference.loading import checkpoint_tokenizer

            plan = plan_checkpoint_run(a, getattr(a, "tokenizer", None))
            tok = checkpoint_tokenizer(plan)
        else:
            tok = load_hf_tokenizer(a.hf)
        checked = check(tok, plan)
    except (EvalError, InferenceError, ConfigError, CheckpointError) as e:
        return bad_input(e)
    if plan is None:
        return evaluate(ModelRun(a.hf, model=load_hf_model(a.hf, a.dtype), record={"dtype": a.dtype}), tok, checked)
    run = open_checkpoint_run(a, plan)
    try:
        return evaluate(run, tok, checked)
    finally:
        close_run(run)


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
