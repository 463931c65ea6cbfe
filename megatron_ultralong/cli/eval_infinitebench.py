"""InfiniteBench tasks (retrieval, book QA / choice, dialogue, math, code) on an exported HF model.

    ultralong-eval-infinitebench --hf hf/llama31-8b-4m --data data/InfiniteBench --out eval/infbench_4m
    python tools/eval_infinitebench.py ...                         # the same, from a checkout

--data is the folder of the benchmark's task files (<task>.jsonl from the Hugging Face dataset
xinrongzhang2022/InfiniteBench; download it yourself, nothing is fetched here). Writes <out>/infinitebench.json
(scores per task) and <out>/preds_<task>.jsonl (every prediction, in the benchmark's own format). Exit 0 when it
ran (whatever the scores; --min-score makes it a gate), 2 on bad input. See docs/eval.md.
"""
from __future__ import annotations

import os

from . import OneLineParser, comma_strs
from .evaluation import (
    add_bos_arg,
    add_eval_output_args,
    add_model_arg,
    below_minimum,
    run_eval,
    warn_beyond_window,
    write_result,
)

DEFAULT_TASKS = "passkey,number_string,kv_retrieval,longbook_choice_eng,longbook_qa_eng,math_find,code_debug"


def main(argv=None) -> int:
    from ..eval.infinitebench import TASKS

    p = OneLineParser(description=__doc__.split("\n")[0])
    add_model_arg(p)
    p.add_argument("--data", required=True, help="folder of the InfiniteBench <task>.jsonl files")
    p.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated, from: {', '.join(TASKS)}")
    p.add_argument("--max-length", type=int, default=None,
                   help="prompt + answer tokens; longer prompts are cut in the middle (default: the model's "
                        "max_position_embeddings)")
    p.add_argument("--limit", type=int, default=None, help="first N records of each task (default: all)")
    p.add_argument("--no-chat-template", action="store_true",
                   help="send the plain prompt instead of one user turn through the tokenizer's chat template")
    add_bos_arg(p)
    add_eval_output_args(p)
    p.add_argument("--min-score", type=float, default=None, help="exit 1 below this average score")
    a = p.parse_args(argv)

    from ..eval import EvalError
    from ..eval.hf import hf_generate
    from ..eval.infinitebench import (
        PredictionFiles,
        check_max_length,
        load_tasks,
        resolve_max_length,
        run_infinitebench,
    )
    from ..eval.prompt import resolve_bos

    tasks = comma_strs(a.tasks)

    def check(tok):  # input errors before the model load
        max_length = resolve_max_length(a.hf, a.max_length)
        samples = load_tasks(a.data, tasks, a.limit)
        check_max_length(tasks, max_length)
        resolve_bos(tok, a.bos)
        warn_beyond_window(a.hf, [max_length], "--max-length")
        try:
            os.makedirs(a.out, exist_ok=True)
        except OSError as e:
            raise EvalError(f"--out {a.out}: cannot create it ({e.strerror})") from None
        return samples, max_length

    def evaluate(model, tok, checked) -> int:
        samples, max_length = checked
        with PredictionFiles(a.out) as stream:
            res = run_infinitebench(hf_generate(model, tok, skip_special_tokens=True), tok, samples, max_length,
                                    chat=not a.no_chat_template, on_prediction=stream, bos=a.bos)
        summary = {k: v for k, v in res.items() if k != "predictions"}
        write_result(a.out, "infinitebench.json", a.hf, summary, data=os.path.abspath(a.data), dtype=a.dtype)
        for t in tasks:
            print(f"{t:<20} {res['scores'][t]:6.1%}  ({res['samples'][t]} samples, {res['truncated'][t]} cut to fit)")
        print(f"average {res['average']:.1%} -> {a.out}/infinitebench.json, preds_<task>.jsonl")
        return below_minimum(res["average"], a.min_score, "--min-score", "average score")

    return run_eval(a, check=check, evaluate=evaluate)
