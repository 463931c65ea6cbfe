#!/usr/bin/env python3
"""InfiniteBench tasks (retrieval, book QA / choice, dialogue, math, code) on an exported HF model.

    python tools/eval_infinitebench.py --hf hf/llama31-8b-4m --data data/InfiniteBench --out eval/infbench_4m

--data is the folder of the benchmark's task files (<task>.jsonl from the Hugging Face dataset
xinrongzhang2022/InfiniteBench; download it yourself, nothing is fetched here). Writes <out>/infinitebench.json
(scores per task) and <out>/preds_<task>.jsonl (every prediction, in the benchmark's own format). Exit 0 when it
ran (whatever the scores; --min-score makes it a gate), 2 on bad input. See docs/eval.md.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None) -> int:
    from megatron_ultralong.cli import OneLineParser, add_eval_output_args, below_minimum
    from megatron_ultralong.eval.infinitebench import TASKS

    default_tasks = "passkey,number_string,kv_retrieval,longbook_choice_eng,longbook_qa_eng,math_find,code_debug"
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--hf", required=True, help="directory of a transformers causal LM with its tokenizer files")
    p.add_argument("--data", required=True, help="folder of the InfiniteBench <task>.jsonl files")
    p.add_argument("--tasks", default=default_tasks, help=f"comma-separated, from: {', '.join(TASKS)}")
    p.add_argument("--max-length", type=int, default=None,
                   help="prompt + answer tokens; longer prompts are cut in the middle (default: the model's "
                        "max_position_embeddings)")
    p.add_argument("--limit", type=int, default=None, help="first N records of each task (default: all)")
    p.add_argument("--no-chat-template", action="store_true",
                   help="send the plain prompt instead of one user turn through the tokenizer's chat template")
    add_eval_output_args(p)
    p.add_argument("--min-score", type=float, default=None, help="exit 1 below this average score")
    a = p.parse_args(argv)

    from megatron_ultralong.atomic import atomic_path
    from megatron_ultralong.eval.hf import load_hf_model, load_hf_tokenizer
    from megatron_ultralong.eval.infinitebench import EvalError, check_max_length, load_tasks, run_infinitebench
    from megatron_ultralong.eval.ruler import hf_generate

    tasks = [t for t in a.tasks.split(",") if t]
    try:
        tok = load_hf_tokenizer(a.hf)
        with open(os.path.join(a.hf, "config.json")) as f:
            max_length = a.max_length if a.max_length is not None else int(
                json.load(f).get("max_position_embeddings") or 0)
        if max_length < 1:
            raise EvalError(f"--max-length {max_length}: give the model's context length in tokens")
        samples = load_tasks(a.data, tasks, a.limit)  # input errors before the model load
        check_max_length(tasks, max_length)
        try:
            os.makedirs(a.out, exist_ok=True)
        except OSError as e:
            raise EvalError(f"--out {a.out}: cannot create it ({e.strerror})") from None
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = load_hf_model(a.hf, a.dtype)
    files = {}

    def stream(task, record):  # predictions reach disk as they are made: a killed run keeps what it did
        if task not in files:
            files[task] = open(os.path.join(a.out, f"preds_{task}.jsonl.partial"), "w", encoding="utf8")
        files[task].write(json.dumps(record, ensure_ascii=False) + "\n")
        files[task].flush()

    try:
        res = run_infinitebench(hf_generate(model, tok, skip_special_tokens=True), tok, samples, max_length,
                                chat=not a.no_chat_template, on_prediction=stream)
    finally:
        for f in files.values():
            f.close()
    for task in files:
        os.replace(os.path.join(a.out, f"preds_{task}.jsonl.partial"), os.path.join(a.out, f"preds_{task}.jsonl"))
    summary = {k: v for k, v in res.items() if k != "predictions"}
    with atomic_path(os.path.join(a.out, "infinitebench.json")) as tmp, open(tmp, "w") as f:
        json.dump({"model": os.path.abspath(a.hf), "data": os.path.abspath(a.data), **summary}, f, indent=1)
    for t in tasks:
        print(f"{t:<20} {res['scores'][t]:6.1%}  ({res['samples'][t]} samples, {res['truncated'][t]} cut to fit)")
    print(f"average {res['average']:.1%} -> {a.out}/infinitebench.json, preds_<task>.jsonl")
    return below_minimum(res["average"], a.min_score, "--min-score", "average score")


if __name__ == "__main__":
    sys.exit(main())
