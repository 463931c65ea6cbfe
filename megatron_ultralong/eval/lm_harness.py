"""Short-task retention through lm-evaluation-harness (``lm_eval.simple_evaluate``): the paper's general / math /
code table on an exported model and its base. Needs the ``eval`` extra (lm-eval, accelerate, protobuf).

    tm = task_manager("my_tasks/")                       # the harness's registry + the task YAMLs under a folder
    check_tasks(tm, ["mmlu", "gsm8k"])                   # EvalError: unknown task, data not found, unsafe code
    results = evaluate_hf("hf/llama31-8b-4m", ["mmlu", "gsm8k"], tm, HarnessOptions(limit=100))
    text = retention_table(results, base_results)        # markdown: base, extended, delta, average over tasks
"""
from __future__ import annotations

import difflib
import functools
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from . import EvalError

INSTALL_HINT = "pip install -e '.[eval]' (or: pip install lm-eval accelerate protobuf)"


@dataclass(frozen=True)
class SuiteTask:
    """One benchmark of a suite: the harness task that runs it and the metric its table row shows."""

    benchmark: str
    """the benchmark's name in the paper's table"""
    task: str
    """lm-eval task or group name"""
    metric: str
    """the harness's "<metric>,<filter>" key of the score shown (results.json keeps every metric)"""


@dataclass(frozen=True)
class Suite:
    """Tasks plus the prompt settings they are run with (shots: each task's own default in the harness)."""

    tasks: Tuple[SuiteTask, ...]
    apply_chat_template: bool
    fewshot_as_multiturn: bool


# The paper (Xu et al., 2025, Table "standard benchmarks") reports MMLU, MMLU-Pro, MATH, GSM8K and HumanEval for
# Llama-3.1-8B-Instruct and UltraLong-8B; it does not state shots or prompts. The choices here are ours (docs/eval.md).
PAPER = Suite(tasks=(
    SuiteTask("MMLU", "mmlu", "acc,none"),                                 # 0-shot, letter log-likelihood
    SuiteTask("MMLU-Pro", "mmlu_pro", "exact_match,custom-extract"),      # 5-shot CoT
    SuiteTask("MATH", "minerva_math", "math_verify,none"),                 # 4-shot Minerva prompt
    SuiteTask("GSM8K", "gsm8k_cot_llama", "exact_match,flexible-extract"),  # 8-shot CoT, Llama-3.1 format
    SuiteTask("HumanEval", "humaneval_instruct", "pass@1,create_test"),    # 0-shot, runs the model's code
), apply_chat_template=True, fewshot_as_multiturn=True)  # both models are instruct models

SUITES: Dict[str, Suite] = {"paper": PAPER}

# the row metric of a task a suite names, whichever suite (or none) the run used
_SUITE_METRICS = {t.task: t.metric for s in SUITES.values() for t in s.tasks}


@dataclass(frozen=True)
class HarnessOptions:
    """How simple_evaluate runs (the same for the model and its base)."""

    limit: Optional[int] = None
    """first N documents of each task (None: all)"""
    num_fewshot: Optional[int] = None
    """shots of every task (None: each task's default; a task configured 0-shot stays 0-shot)"""
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = True
    dtype: str = "bf16"
    """'bf16' | 'fp32'"""
    batch_size: Optional[str] = None
    """an int as text, or 'auto' (None: 'auto' on a GPU, 1 on the CPU)"""
    max_length: int = 8192
    """the harness's context window in tokens (prompt + generation): short tasks need a few thousand; the model's
    own 4M would be what batch-size detection probes with"""
    confirm_run_unsafe_code: bool = False


def require_lm_eval():
    """The ``lm_eval`` module; EvalError saying how to install it when it (or what its HF backend needs) is missing."""
    missing = []
    for module, package in (("lm_eval", "lm-eval"), ("accelerate", "accelerate"), ("google.protobuf", "protobuf")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise EvalError(f"{', '.join(missing)} not installed (lm-evaluation-harness runs these tasks): {INSTALL_HINT}")
    import lm_eval

    return lm_eval


@functools.lru_cache(maxsize=4)
def task_manager(include_path: Optional[str] = None):
    """The harness's TaskManager: its registry plus the task YAMLs under ``include_path`` (cached: indexing every
    task file takes seconds)."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path is not None and not os.path.isdir(include_path):
        raise EvalError(f"--include-path {include_path}: no such folder; give the folder of your task YAMLs")
    return TaskManager(include_path=include_path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def _allow_code_eval(confirmed: bool) -> None:
    """The ``code_eval`` metric's own opt-in (HF_ALLOW_CODE_EVAL=1), set when the user confirmed unsafe code."""
    if confirmed:
        os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")


def check_tasks(tm, tasks: Sequence[str], confirm_run_unsafe_code: bool = False) -> None:
    """EvalError unless each name is a task, group or tag of ``tm`` (or a task YAML path), its data loads (offline
    too: the datasets cache or local files), and a task that runs model-written code is confirmed."""
    from lm_eval import __version__

    if not tasks:
        raise EvalError("--tasks is empty; name lm-eval tasks (mmlu,gsm8k,...) or use --suite paper")
    _allow_code_eval(confirm_run_unsafe_code)  # HumanEval's metric checks the variable when its task is built
    where = f" or under --include-path {tm.include_path}" if tm.include_path else ""
    for name in tasks:
        if name not in tm.all_tasks and not (name.endswith((".yaml", ".yml")) and os.path.isfile(name)):
            close = difflib.get_close_matches(name, tm.all_tasks, n=3)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise EvalError(f"--tasks {name}: no such task, group or tag in lm-eval {__version__}{where}{hint}; "
                            f"list them with `lm-eval ls tasks`")
    offline = os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0") \
        or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    for name in tasks:
        try:
            loaded = tm.load([name])  # builds the task: downloads or reads its dataset
        except Exception as e:  # anything a task's YAML, its Python hooks or `datasets` raise: that task is unusable
            if isinstance(e, FileNotFoundError):
                how = "fix the path in the task YAML's dataset_kwargs.data_files"
            elif offline:
                how = ("it is not in the datasets cache and HF_DATASETS_OFFLINE / HF_HUB_OFFLINE forbid a download: "
                       "run once online, or point the task YAML at local files (dataset_path: json, dataset_kwargs: "
                       "{data_files: ...})")
            else:
                how = "check its dataset_path / data_files, the network, or the datasets cache (HF_DATASETS_CACHE)"
            raise EvalError(f"--tasks {name}: the harness cannot load its data ({_first_line(e)}); {how}") from None
        unsafe = sorted(t for t, obj in loaded["tasks"].items() if getattr(obj, "UNSAFE_CODE", False))
        if unsafe and not confirm_run_unsafe_code:
            raise EvalError(f"--tasks {name}: {', '.join(unsafe)} executes the code the model writes; pass "
                            f"--confirm-run-unsafe-code to run it (in a sandbox)")


def model_args(path: str, opts: HarnessOptions) -> dict:
    """The ``hf`` backend's model_args for an exported folder."""
    return {"pretrained": path, "dtype": "bfloat16" if opts.dtype == "bf16" else "float32",
            "max_length": opts.max_length}


def _device_and_batch(opts: HarnessOptions) -> Tuple[str, str]:
    import torch

    gpu = torch.cuda.is_available()
    batch = opts.batch_size if opts.batch_size is not None else ("auto" if gpu else "1")
    return ("cuda" if gpu else "cpu"), batch


def evaluate_hf(path: str, tasks: Sequence[str], tm, opts: HarnessOptions) -> dict:
    """``lm_eval.simple_evaluate`` of the exported folder on ``tasks``: the harness's results dict (per task, per
    metric, with stderr; plus its configs, versions, n-shot), without per-sample logs."""
    lm_eval = require_lm_eval()
    device, batch = _device_and_batch(opts)
    _allow_code_eval(opts.confirm_run_unsafe_code)
    return lm_eval.simple_evaluate(
        model="hf", model_args=model_args(path, opts), tasks=list(tasks), num_fewshot=opts.num_fewshot,
        batch_size=int(batch) if batch.isdigit() else batch, device=device, limit=opts.limit, task_manager=tm,
        log_samples=False, apply_chat_template=opts.apply_chat_template,
        fewshot_as_multiturn=opts.fewshot_as_multiturn, confirm_run_unsafe_code=opts.confirm_run_unsafe_code)


def write_results(path: str, results: dict) -> None:
    """``results`` as JSON, atomically (the harness's dicts hold a few non-JSON values: numpy scalars, sets)."""
    from lm_eval.utils import handle_non_serializable

    from ..atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(results, f, indent=1, default=handle_non_serializable, ensure_ascii=False)


def top_level_tasks(results: dict) -> List[str]:
    """The tasks and groups of a results dict that are not inside a group that was run (the table's rows)."""
    inside = {t for subs in results.get("group_subtasks", {}).values() for t in subs}
    return [t for t in results["results"] if t not in inside]


def metric_keys(task_results: dict) -> List[str]:
    """The "<metric>,<filter>" score keys of one task's results (not its stderrs, name, alias, sample count)."""
    return [k for k in task_results if "," in k and not k.split(",")[0].endswith("_stderr")]


def row_metric(task: str, task_results: dict) -> Optional[str]:
    """The score a table row shows: the suite's choice for a task a suite names, else the task's first metric."""
    keys = metric_keys(task_results)
    chosen = _SUITE_METRICS.get(task)
    return chosen if chosen in keys else (keys[0] if keys else None)


def _score(task_results: dict, key: Optional[str]) -> Tuple[Optional[float], Optional[float]]:
    """(score, stderr) in points (×100); stderr None when the harness gives none ('N/A')."""
    if key is None or not isinstance(task_results.get(key), (int, float)):
        return None, None
    metric, flt = key.split(",", 1)
    err = task_results.get(f"{metric}_stderr,{flt}")
    return 100.0 * task_results[key], (100.0 * err if isinstance(err, (int, float)) else None)


def _fmt(score: Optional[float], err: Optional[float] = None) -> str:
    if score is None:
        return "–"
    return f"{score:.1f}" if err is None else f"{score:.1f} ± {err:.1f}"


def retention_rows(results: dict, base: Optional[dict] = None) -> List[dict]:
    """One row per top-level task of ``results``: task, metric, n-shot, score, stderr (points) and, with ``base``,
    base_score, base_stderr, delta (extended − base, points)."""
    rows = []
    for task in top_level_tasks(results):
        key = row_metric(task, results["results"][task])
        score, err = _score(results["results"][task], key)
        row = {"task": task, "metric": key, "n_shot": results.get("n-shot", {}).get(task), "score": score,
               "stderr": err}
        if base is not None:
            b, b_err = _score(base["results"].get(task, {}), key)
            row.update(base_score=b, base_stderr=b_err,
                       delta=None if b is None or score is None else score - b)
        rows.append(row)
    return rows


def _mean(values: List[Optional[float]]) -> Optional[float]:
    return sum(values) / len(values) if values and all(v is not None for v in values) else None


def retention_table(results: dict, base: Optional[dict] = None, names: Tuple[str, str] = ("extended", "base"),
                    benchmarks: Optional[Dict[str, str]] = None) -> str:
    """Markdown: a row per task (the paper's benchmark name when ``benchmarks`` maps the task to one), scores in
    points ± stderr; with ``base``: base, extended and delta columns. The last line averages the rows over tasks."""
    rows = retention_rows(results, base)
    benchmarks = benchmarks or {}
    ext, base_name = names
    head = ["task", "metric", "shots"] + ([base_name, ext, "delta"] if base is not None else [ext])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        label = f"{benchmarks[r['task']]} (`{r['task']}`)" if r["task"] in benchmarks else f"`{r['task']}`"
        cells = [label, f"`{r['metric']}`", str(r["n_shot"] if r["n_shot"] is not None else "–")]
        if base is not None:
            cells += [_fmt(r["base_score"], r["base_stderr"]), _fmt(r["score"], r["stderr"]),
                      "–" if r["delta"] is None else f"{r['delta']:+.1f}"]
        else:
            cells.append(_fmt(r["score"], r["stderr"]))
        lines.append("| " + " | ".join(cells) + " |")
    avg = _mean([r["score"] for r in rows])
    cells = [f"**average over {len(rows)} tasks**", "", ""]
    if base is not None:
        b_avg = _mean([r["base_score"] for r in rows])
        cells += [_fmt(b_avg), _fmt(avg), "–" if avg is None or b_avg is None else f"{avg - b_avg:+.1f}"]
    else:
        cells.append(_fmt(avg))
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
