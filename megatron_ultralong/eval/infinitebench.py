"""InfiniteBench on an exported HF model: the released task files, prompted and scored the way the benchmark does
(prompt template, truncation and each task's scoring rule: docs/eval.md).

    tasks = load_tasks(data_dir, ["passkey", "kv_retrieval"], limit=None)      # EvalError on bad files
    res = run_infinitebench(generate, tokenizer, tasks, max_length=1048576)
    res["scores"]["passkey"]                                                     # mean of per-sample scores
"""
from __future__ import annotations

import json
import os
import re
import string
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..atomic import publish_file
from . import EvalError
from .hf import read_hf_config
from .progress import Eta
from .prompt import bos_token_id, encode_plain, resolve_bos, with_bos

GenerateFn = Callable[[List[int], int], str]
CHOICES = "ABCD"
_RETRIEVAL_SPLIT = "\n:\"'.,?!{}"


# ------------------------------------------------------------------------------------------------- scoring
def first_digits(text: str) -> str:
    """The first run of ASCII digits in ``text`` ('' when there is none)."""
    m = re.search(r"[0-9]+", text)
    return m.group(0) if m else ""


def _words(text: str, separators: str) -> List[str]:
    for c in separators:
        text = text.replace(c, " ")
    return text.split()


def _squeeze(text: str, separators: Sequence[str]) -> str:
    for c in separators:
        text = text.replace(c, " ")
    return re.sub(" {2,}", " ", text)


def _after_prefix(text: str, prefixes: Sequence[str]) -> Optional[str]:
    """Text after the first listed prefix found (in list order) and one more character; '' when it ends there;
    None when no prefix occurs."""
    for prefix in prefixes:
        idx = text.find(prefix)
        if idx != -1:
            return text[idx + len(prefix) + 1:]
    return None


def score_choice(pred: str, label: List[str]) -> float:
    """longbook_choice_eng: ``label`` = [the right option's text, its letter]."""
    pred = pred.strip()
    if not pred:
        return 0.0
    if pred[0] in CHOICES:
        return float(pred[0] in label)
    if pred in label:  # the option's text, exactly
        return 1.0
    pred = _squeeze(pred, ["\n", '"', "'", ".", ",", "?", "!", "{", "}"])
    rest = _after_prefix(pred, ["answer is:", "answer:", "answer is", "option is"])
    if rest is not None:
        return float(bool(rest) and any(rest.startswith(s) for s in label))
    for word in pred.split():
        if word in CHOICES:
            return float(word in label)
    return 0.0


def score_code_debug(pred: str, label: List[str]) -> float:
    """code_debug: ``label`` = [the buggy function's name, its letter]."""
    name, letter = label[0], label[1]
    pred = pred.strip()
    if pred[:2] in (f"{letter}.", f"{letter}:"):
        return 1.0
    pred = _squeeze(pred, ["\n", "`", "'", '"', "-", "*", "Option", "option"])
    rest = _after_prefix(pred, ["answer is:", "is:", "answer:", "correct option is:"])
    return float(bool(rest) and (rest.startswith(letter) or rest.startswith(name)))


def as_number(value: Any) -> Any:
    """An int or float answer; the release stores answers as strings ("88", "3.5")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        try:
            return float(str(value).strip())
        except ValueError:
            raise EvalError(f"answer {value!r} is not a number") from None


def score_math_find(pred: str, label: Any) -> float:
    label = as_number(label)
    m = re.search(r"\d+\.\d+|\d+", pred)
    if m is None:
        return 0.0
    if isinstance(label, int):
        return float("." not in m.group(0) and int(m.group(0)) == label)
    return float(float(m.group(0)) == label)


def _normalize_en(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_ZH_PUNCT = set(string.punctuation) | set("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀"
                                          "｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕"
                                          "〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")


def _normalize_zh(text: str) -> str:
    return "".join(c for c in "".join(text.lower().split()) if c not in _ZH_PUNCT)


def token_f1(pred_tokens: Sequence[str], gold_tokens: Sequence[str]) -> float:
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def score_qa_en(pred: str, label: List[str]) -> float:
    return max(token_f1(_normalize_en(pred).split(), _normalize_en(g).split()) for g in label)


def score_qa_zh(pred: str, label: List[str]) -> float:
    return max(token_f1(list(_normalize_zh(pred)), list(_normalize_zh(g))) for g in label)


def score_math_calc(pred: str, label: List[Any]) -> float:
    if label and isinstance(label[0], list):  # the release nests the values: [[v1, v2, ...]]
        label = label[0]
    label = [as_number(x) for x in label]
    values = [int(x) for x in re.split("[^0-9]", pred) if x]
    right = 0
    for want, got in zip(label, values):
        if want != got:
            break
        right += 1
    return right / len(label)


def score_code_run(pred: str, label: Any) -> float:
    words = _words(pred.strip(), "\n.`'\":")
    if not words:
        return 0.0
    try:
        return float(int(words[-1]) == as_number(label))
    except ValueError:
        return 0.0


# --------------------------------------------------------------------------------------------- the tasks
@dataclass(frozen=True)
class Task:
    """One InfiniteBench task: how its prompt is written, how long the answer may be, how it is scored."""

    template: str
    """The instruction, with {context}, {input} and, for the choice tasks, {question} and {A}...{D}."""
    max_new_tokens: int
    """Tokens generated per sample (the benchmark's DATA_NAME_TO_MAX_NEW_TOKENS)."""
    score: Callable[[str, Any], float]
    """score(prediction, label) -> 0..1."""
    label: str = "first"
    """How the record's ``answer`` becomes the label: 'first' element, whole 'list', 'choice' ([text, letter])."""


_OPTIONS = "\nA. {A}\nB. {B}\nC. {C}\nD. {D}"
TASKS: Dict[str, Task] = {
    "passkey": Task("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                    "I will quiz you about the important information there.\n\n{context}\n\n{input}", 6,
                    lambda p, y: float(first_digits(p) == str(y))),
    "number_string": Task("There is an important info hidden inside a lot of irrelevant text. Find it. I will quiz you "
                          "about the important information there.\n\n{context}\n\n{input}", 12,
                          lambda p, y: float(first_digits(p) == str(y))),
    "kv_retrieval": Task("Extract the value corresponding to the specified key in the JSON object below.\n\n{context}"
                         "\n\n{input}", 50, lambda p, y: float(str(y) in _words(p, _RETRIEVAL_SPLIT))),
    "longbook_choice_eng": Task("Read the book and answer the question.\n\n{context}\n\nQuestion: {input}\n\nOnly one "
                                "of the following options is correct, tell me the answer using one single letter (A, "
                                "B, C, or D). Don't say anything else." + _OPTIONS, 40, score_choice, "choice"),
    "code_debug": Task("There is ONLY ONE function in the large project that is deliberately made to include an "
                       "obvious error. Please find the function that contains the most obvious errors. I will give "
                       "you four options to narrow your scope. You can inspect the options and think. "
                       "Eventually, tell me the answer using one single letter (A, B, C, or D).\n\n{context}\n\n"
                       "Which funtion has deliberate error?" + _OPTIONS + "\n\nYou should first find the functions in "
                       "the options. Repeat their content, inspect through code, and at last give me your answer for "
                       "the function that has the deliberate and obvious error in A, B, C, or D.", 5,
                       score_code_debug, "choice"),
    "math_find": Task("{prefix}\n\n{context}\n\n{input}", 3, score_math_find),
    "longdialogue_qa_eng": Task("Below is a dialogue script where one random occurrence of a character name is "
                                "replaced with \"$$MASK$$\", and you should try to guess who that character is.\n\n"
                                "The dialogue:\n\n---\n\n{context}\n\n---\n\nEnd of dialogue.\n\nWhich character "
                                "is most likely \"$$MASK$$\"? Just say the name used by the scriptwriter (before the "
                                "colon marks) of one single character and nothing else.", 40,
                                lambda p, y: float(str(y).upper() in [w.upper() for w in _words(p, _RETRIEVAL_SPLIT)])),
    "longbook_qa_eng": Task("Read the book below and answer a question.\n\n{context}\n\nQuestion: {input}\n\n"
                            "Be very concise.", 40, score_qa_en, "list"),
    "longbook_qa_chn": Task("请根据以下书籍回答我的问题。\n\n{context}\n\n问题：{input}\n请尽量简短地回答。", 40,
                            score_qa_zh, "list"),
    "math_calc": Task("Compute the intermediate values in the following long expression.\n\n{context}", 30000,
                      score_math_calc, "list"),
    "code_run": Task("Following is a set of Python functions. There is a function called named {func}.\n\n{context}\n\n"
                     "Please give me the exact number of the return value of {func_call}. Be concise. Your response "
                     "must end with the final returned value.", 5, score_code_run),
}


@dataclass
class Sample:
    """One record of a task file, ready to prompt."""

    id: Any
    """The record's ``id`` (its line number when it has none)."""
    prompt: str
    """The filled-in template (before the chat template and truncation)."""
    label: Any
    """What the task's score compares the prediction with."""


def _label(task: str, rec: Dict[str, Any], where: str) -> Any:
    answer, kind = rec["answer"], TASKS[task].label
    answers = answer if isinstance(answer, list) else [answer]
    if not answers:
        raise EvalError(f"{where}: empty 'answer'")
    if kind == "list":
        return answers
    if kind == "choice":
        options = rec.get("options")
        if not isinstance(options, list) or len(options) != 4:
            raise EvalError(f"{where}: a {task} record needs 'options' with four entries")
        if len(answers) == 2 and answers[1] in CHOICES:
            return [str(answers[0]), answers[1]]
        if answers[0] not in options:
            raise EvalError(f"{where}: answer {answers[0]!r} is not one of the options")
        return [str(answers[0]), CHOICES[options.index(answers[0])]]
    return answers[0]


def build_sample(task: str, rec: Dict[str, Any], where: str) -> Sample:
    """The prompt and label of one record; EvalError naming ``where`` (file:line) when a field is missing or of
    the wrong type."""
    try:
        return _build_sample(task, rec, where)
    except (TypeError, AttributeError, KeyError, IndexError) as e:
        raise EvalError(f"{where}: malformed InfiniteBench {task} record ({type(e).__name__}: {e}); use the task "
                        f"files of the InfiniteBench release") from None


def _build_sample(task: str, rec: Dict[str, Any], where: str) -> Sample:
    if not isinstance(rec, dict) or "context" not in rec or "answer" not in rec or (
            "input" not in rec and task != "math_calc"):
        raise EvalError(f"{where}: not an InfiniteBench {task} record (needs 'context', 'input' and 'answer'); "
                        f"use the task files of the InfiniteBench release")
    fields = {"context": rec["context"], "input": rec.get("input", "")}
    if TASKS[task].label == "choice":
        fields.update(zip(CHOICES, [str(o) for o in rec.get("options") or ["", "", "", ""]]))
    if task == "math_find":  # "The largest number ...", "The second smallest number of the list is:"
        target = re.search(r"The ((?:\w+ )*?number)", rec["input"])
        if not target:
            raise EvalError(f"{where}: math_find input {rec['input'][:60]!r} names no 'The ... number'")
        fields["prefix"] = f"What is the {target.group(1).lower()} in the following list?"
    if task == "code_run":  # "Please give me the exact number of the return value of func_12(3). ..."
        call = re.search(r"func_[0-9]+\(-?[0-9]+\)", rec["input"])
        if not call:
            raise EvalError(f"{where}: code_run input {rec['input'][:60]!r} has no call like func_12(3)")
        fields["func_call"], fields["func"] = call.group(0), call.group(0).split("(")[0]
    label = _label(task, rec, where)
    if task in ("math_find", "code_run", "math_calc"):  # numeric answers: refuse a bad one now, not mid-run
        try:
            values = label if isinstance(label, list) else [label]
            [as_number(x) for x in (values[0] if values and isinstance(values[0], list) else values)]
        except EvalError as e:
            raise EvalError(f"{where}: {e}") from None
    return Sample(rec.get("id", where), TASKS[task].template.format(**fields), label)


def load_tasks(data_dir: str, tasks: Sequence[str], limit: Optional[int] = None) -> Dict[str, List[Sample]]:
    """Read ``<data_dir>/<task>.jsonl`` for each task (the first ``limit`` records); EvalError on any bad input."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise EvalError(f"--tasks {','.join(tasks)}: unknown {unknown}; choose from {', '.join(TASKS)}")
    if limit is not None and limit < 1:
        raise EvalError(f"--limit {limit}: must be >= 1")
    out = {}
    for task in tasks:
        path = os.path.join(data_dir, f"{task}.jsonl")
        if not os.path.isfile(path):
            raise EvalError(f"{path} not found; --data is the folder of the InfiniteBench task files "
                            f"(<task>.jsonl, from the Hugging Face dataset xinrongzhang2022/InfiniteBench)")
        samples = []
        with open(path, encoding="utf8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if limit is not None and len(samples) == limit:
                    break
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise EvalError(f"{path}:{n}: not JSON ({e.msg})") from None
                samples.append(build_sample(task, rec, f"{path}:{n}"))
        if not samples:
            raise EvalError(f"{path}: no records")
        out[task] = samples
    return out


# ---------------------------------------------------------------------------------------------- running
def truncate_middle(ids: List[int], budget: int) -> List[int]:
    """``ids`` when they fit ``budget``, else the first ⌊budget/2⌋ and the last ⌈budget/2⌉ of them."""
    if len(ids) <= budget:
        return ids
    head = budget // 2
    return ids[:head] + ids[len(ids) - (budget - head):]


def prompt_ids(tokenizer, text: str, chat: bool = True, bos: str = "auto") -> List[int]:
    """Token ids of ``text`` as one user turn (with the generation prompt) through the tokenizer's chat template
    when ``chat`` and it has one, else the plain text's ids (no special tokens); then one BOS first under ``bos``
    (eval/prompt.py: 'auto' keeps the template's own BOS, or adds the one the tokenizer's encode adds)."""
    start = bos_token_id(tokenizer)
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                            add_generation_prompt=True)
        ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    else:
        ids = encode_plain(tokenizer, text)
    from_template = bool(ids) and start is not None and ids[0] == start
    return with_bos(ids, resolve_bos(tokenizer, bos, template_has_bos=from_template), start)


def check_max_length(tasks: Sequence[str], max_length: int) -> None:
    """EvalError when ``max_length`` leaves no room for a task's prompt next to its answer tokens."""
    small = {t: TASKS[t].max_new_tokens for t in tasks if max_length <= TASKS[t].max_new_tokens}
    if small:
        raise EvalError(f"--max-length {max_length} leaves no room for the prompt of {sorted(small)} (they generate "
                        f"{sorted(set(small.values()))} tokens); give the model's context length")


def resolve_max_length(hf_dir: str, max_length: Optional[int] = None) -> int:
    """``max_length``, or the model's max_position_embeddings when None; EvalError when it is not >= 1."""
    if max_length is None:
        max_length = int(read_hf_config(hf_dir).get("max_position_embeddings") or 0)
    if max_length < 1:
        raise EvalError(f"--max-length {max_length}: give the model's context length in tokens")
    return max_length


class PredictionFiles:
    """``on_prediction`` for run_infinitebench that writes ``<out>/preds_<task>.jsonl`` as predictions are made
    (``.partial`` while running, so a killed run keeps what it did; renamed when the ``with`` block succeeds).

        with PredictionFiles(out) as stream:
            res = run_infinitebench(..., on_prediction=stream)
    """

    def __init__(self, out_dir: str):
        self.out_dir, self._files = out_dir, {}

    def _path(self, task: str, partial: bool) -> str:
        return os.path.join(self.out_dir, f"preds_{task}.jsonl" + (".partial" if partial else ""))

    def __call__(self, task: str, record: Dict[str, Any]) -> None:
        if task not in self._files:
            self._files[task] = open(self._path(task, True), "w", encoding="utf8")
        self._files[task].write(json.dumps(record, ensure_ascii=False) + "\n")
        self._files[task].flush()

    def __enter__(self) -> "PredictionFiles":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for f in self._files.values():
            f.close()
        if exc_type is None:
            for task in self._files:
                publish_file(self._path(task, True), self._path(task, False))


def run_infinitebench(generate: GenerateFn, tokenizer, tasks: Dict[str, List[Sample]], max_length: int,
                      chat: bool = True, log: Optional[Callable[[str], None]] = print,
                      on_prediction: Optional[Callable[[str, Dict[str, Any]], None]] = None,
                      bos: str = "auto") -> Dict[str, Any]:
    """Prompt, generate and score every sample; returns per-task scores and the predictions.

    ``generate(prompt_ids, max_new_tokens) -> text`` (greedy). ``on_prediction(task, record)`` sees each
    prediction as it is made (to stream them to a file). ``bos``: 'auto' | 'always' | 'never' (``prompt_ids``).
    The log's ETA weighs samples by their characters (a proxy of their tokens, known before they are encoded)."""
    check_max_length(tasks, max_length)
    resolve_bos(tokenizer, bos)  # a bad mode before the first sample
    eta = Eta([len(s.prompt) for samples in tasks.values() for s in samples])
    total, done = len(eta.lengths), 0
    scores, truncated, predictions = {}, {}, {}
    for task, samples in tasks.items():
        spec, task_scores, cut = TASKS[task], [], 0
        predictions[task] = []
        for sample in samples:
            t0 = time.time()
            ids = prompt_ids(tokenizer, sample.prompt, chat, bos)
            budget = max_length - spec.max_new_tokens
            cut += len(ids) > budget
            ids = truncate_middle(ids, budget)
            pred = generate(ids, spec.max_new_tokens)
            score = spec.score(pred, sample.label)
            task_scores.append(score)
            record = {"id": sample.id, "prediction": pred, "ground_truth": sample.label, "score": score,
                      "prompt_tokens": len(ids)}
            predictions[task].append(record)
            if on_prediction:
                on_prediction(task, record)
            done += 1
            eta.done(time.time() - t0)
            if log:
                log(f"infinitebench {task} {len(task_scores)}/{len(samples)} score {score:.2f} "
                    f"(prompt {len(ids):,} tokens) [{done}/{total}, eta {eta.seconds_left():.0f}s]")
        scores[task] = sum(task_scores) / len(task_scores)
        truncated[task] = cut
    return {"max_length": max_length, "chat_template": chat, "bos": bos, "scores": scores,
            "samples": {t: len(s) for t, s in tasks.items()}, "truncated": truncated,
            "average": sum(scores.values()) / len(scores), "predictions": predictions}
