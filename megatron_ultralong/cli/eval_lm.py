"""Short tasks (MMLU, GSM8K, ...) through lm-evaluation-harness on an exported model, and what the extension cost.

    ultralong-eval-lm --hf hf/llama31-8b-4m --hf-base hf/llama31-8b-instruct --suite paper \
        --confirm-run-unsafe-code --out eval/lm_4m
    python tools/eval_lm.py --hf <dir> [--hf-base <dir>] --tasks mmlu,gsm8k [--include-path DIR] [--limit N] \
        [--num-fewshot K] --out OUT                                 # the same, from a checkout

Writes <out>/results.json (the harness's results dict: per task, per metric, with stderr), with --hf-base also
<out>/results_base.json, and <out>/retention.md (base, extended, delta, average over tasks). Needs the eval extra
(pip install -e '.[eval]'). Exit 0 when it ran, 2 on bad input. See docs/eval.md.
"""
from __future__ import annotations

import argparse
import os

from . import OneLineParser, bad_input, comma_strs
from .evaluation import add_eval_output_args, add_model_arg


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split("\n")[0])
    add_model_arg(p)
    p.add_argument("--hf-base", default=None, help="the model it was extended from, run on the same tasks")
    p.add_argument("--tasks", type=comma_strs, default=None,
                   help="comma-separated lm-eval tasks, groups or tags (registry or --include-path)")
    p.add_argument("--suite", choices=["paper"], default=None,
                   help="preset tasks and prompt settings: 'paper' = MMLU, MMLU-Pro, MATH, GSM8K, HumanEval")
    p.add_argument("--include-path", default=None, help="folder of your own task YAMLs (added to the registry)")
    p.add_argument("--limit", type=int, default=None, help="first N documents of each task (default: all)")
    p.add_argument("--num-fewshot", type=int, default=None, help="shots of every task (default: each task's own)")
    p.add_argument("--apply-chat-template", action="store_true", default=None,
                   help="prompt through the tokenizer's chat template (--suite paper: on)")
    p.add_argument("--no-chat-template", dest="apply_chat_template", action="store_false", default=argparse.SUPPRESS,
                   help="plain prompts, also with --suite")
    p.add_argument("--batch-size", default=None, help="an integer or 'auto' (default: auto on a GPU, 1 on the CPU)")
    p.add_argument("--max-length", type=int, default=8192, help="context window the harness uses, in tokens")
    p.add_argument("--confirm-run-unsafe-code", action="store_true",
                   help="allow tasks that execute model-written code (HumanEval); sets HF_ALLOW_CODE_EVAL=1")
    add_eval_output_args(p)
    a = p.parse_args(argv)
    if (a.tasks is None) == (a.suite is None):
        p.error("give --tasks or --suite (one of them)")
    if a.batch_size is not None and not (a.batch_size.isdigit() or a.batch_size.startswith("auto")):
        p.error(f"argument --batch-size: {a.batch_size!r} is neither an integer nor 'auto'")

    from ..eval import EvalError
    from ..eval.hf import load_hf_tokenizer
    from ..eval.lm_harness import (
        SUITES,
        HarnessOptions,
        check_tasks,
        evaluate_hf,
        require_lm_eval,
        retention_table,
        task_manager,
        write_results,
    )

    suite = SUITES[a.suite] if a.suite else None
    tasks = [t.task for t in suite.tasks] if suite else a.tasks
    chat = a.apply_chat_template if a.apply_chat_template is not None else bool(suite and suite.apply_chat_template)
    opts = HarnessOptions(limit=a.limit, num_fewshot=a.num_fewshot, apply_chat_template=chat,
                          fewshot_as_multiturn=suite.fewshot_as_multiturn if suite else True, dtype=a.dtype,
                          batch_size=a.batch_size, max_length=a.max_length,
                          confirm_run_unsafe_code=a.confirm_run_unsafe_code)
    models = [("--hf", a.hf)] + ([("--hf-base", a.hf_base)] if a.hf_base else [])
    try:  # every input error before the first model load
        require_lm_eval()
        for flag, path in models:
            try:
                tok = load_hf_tokenizer(path)
            except EvalError as e:
                raise EvalError(str(e).replace("--hf ", f"{flag} ", 1)) from None
            if chat and not getattr(tok, "chat_template", None):
                raise EvalError(f"{flag} {path}: its tokenizer has no chat template; export with --hf-assets "
                                f"<source HF folder>, or pass --no-chat-template")
        tm = task_manager(os.path.abspath(a.include_path) if a.include_path else None)
        check_tasks(tm, tasks, a.confirm_run_unsafe_code)
        try:
            os.makedirs(a.out, exist_ok=True)
        except OSError as e:
            raise EvalError(f"--out {a.out}: cannot create it ({e.strerror})") from None
    except EvalError as e:
        return bad_input(e)

    results = evaluate_hf(a.hf, tasks, tm, opts)
    write_results(os.path.join(a.out, "results.json"), results)
    base = None
    if a.hf_base:
        base = evaluate_hf(a.hf_base, tasks, tm, opts)
        write_results(os.path.join(a.out, "results_base.json"), base)
    names = (os.path.basename(os.path.normpath(a.hf)), os.path.basename(os.path.normpath(a.hf_base or "")))
    table = retention_table(results, base, names=names,
                            benchmarks={t.task: t.benchmark for t in suite.tasks} if suite else None)
    title = f"# Short tasks: `{os.path.abspath(a.hf)}`" + (f" vs base `{os.path.abspath(a.hf_base)}`" if base else "")
    setup = (f"lm-eval {results.get('lm_eval_version', '?')}, limit {a.limit if a.limit is not None else 'none'}, "
             f"chat template {'on' if chat else 'off'}, shots "
             f"{a.num_fewshot if a.num_fewshot is not None else 'task defaults'}; scores in points (×100) ± stderr.")
    from ..atomic import atomic_path

    with atomic_path(os.path.join(a.out, "retention.md")) as tmp, open(tmp, "w", encoding="utf8") as f:
        f.write(f"{title}\n\n{setup}\n\n{table}")
    print(table, end="")
    print(f"-> {a.out}/results.json{', results_base.json' if base else ''}, retention.md")
    return 0
