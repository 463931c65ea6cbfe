"""RULER-style synthetic long-context tasks (multi-key/value/query NIAH, variable tracking); tasks, prompts and
scoring: docs/eval.md.

    res = run_ruler(generate, tokenizer, tasks=TASKS, lengths=[131072, 1048576], samples_per_cell=4,
                    fmt=PromptFormat(bos="auto", chat_template=False))      # eval/prompt.py
    res["scores"]["variable_tracking"]["1048576"], res["average"]

``generate(prompt_ids, max_new_tokens) -> str`` is any greedy decoder (``eval.hf.hf_generate`` wraps transformers).
"""
from __future__ import annotations

import random
import string
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import EvalError
from .niah import FILLER
from .progress import Eta
from .prompt import PromptFormat, PromptFrame, encode_plain, prompt_frame

GenerateFn = Callable[[List[int], int], str]

_ADJECTIVES = ("ancient", "bitter", "calm", "daring", "eager", "fragile", "gentle", "hollow", "icy", "jolly",
               "keen", "lively", "mellow", "noble", "odd", "proud", "quiet", "rapid", "silent", "tender", "urban",
               "vivid", "wary", "young", "zealous", "amber", "brisk", "crimson", "dusty", "early")
_NOUNS = ("anchor", "badger", "canyon", "dolphin", "ember", "falcon", "glacier", "harbor", "island", "jungle",
          "kettle", "lantern", "meadow", "needle", "orchard", "pebble", "quarry", "river", "saddle", "thistle",
          "umbrella", "valley", "willow", "yarrow", "zephyr", "beacon", "cobalt", "dune", "fjord", "garnet")

NEEDLES = 4
"""Needles per multi-needle task (RULER's default for multikey / multivalue is 4)."""
CHAIN = 5
"""Variable names per chain in variable_tracking."""


@dataclass(frozen=True)
class Task:
    """One task: how many tokens its answer needs."""

    name: str
    """Task name (the table in the module docstring)."""
    max_new_tokens: int
    """Greedy decoding budget: enough for every answer plus separators."""


TASKS: Dict[str, Task] = {t.name: t for t in (
    Task("niah_single", 24), Task("niah_multikey", 24), Task("niah_multivalue", 64), Task("niah_multiquery", 48),
    Task("variable_tracking", 40))}

_NIAH_INTRO = ("Some special magic numbers are hidden within the following text. Make sure to memorize them. "
               "I will quiz you about the numbers afterwards.\n")
_NIAH_NEEDLE = "One of the special magic numbers for {key} is: {value}. "
_NIAH_ASK = "\nWhat are all the special magic numbers for {keys} mentioned in the provided text?"
_NIAH_ANSWER = " The special magic numbers for {keys} mentioned in the provided text are"
_VT_INTRO = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
_VT_ASK = "\nQuestion: Find all variables that are assigned the value {value} in the text above."
_VT_ANSWER = (" Answer: According to the chain(s) of variable assignment in the text above, {n} variables are "
              "assigned the value {value}, they are:")


class RulerLengthError(EvalError):
    """A context length too short for a task's fixed text; ``needed`` is the shortest that fits."""

    def __init__(self, message: str, needed: int):
        super().__init__(message)
        self.needed = needed


@dataclass
class RulerSample:
    """One prompt and what a correct completion contains."""

    task: str
    """Task name."""
    length: int
    """Prompt length in tokens."""
    answers: List[str]
    """Strings a correct completion contains (all of them)."""
    statement_token_pos: List[int]
    """Index of each hidden statement's first token in prompt_ids, in prompt order."""
    prompt_ids: List[int]
    """Token ids of the whole prompt."""


def _value(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _keys(rng: random.Random, n: int) -> List[str]:
    pairs = rng.sample([(a, b) for a in _ADJECTIVES for b in _NOUNS], n)
    return [f"{a}-{b}" for a, b in pairs]


def _var_names(rng: random.Random, n: int) -> List[str]:
    names: List[str] = []
    while len(names) < n:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in names:
            names.append(name)
    return names


def task_content(task: str, rng: random.Random) -> Tuple[str, List[str], str, List[str]]:
    """(intro, hidden statements in haystack order, question with its answer prefix, answers) of one sample."""
    intro, statements, ask, answer_prefix, answers = _content(task, rng)
    return intro, statements, ask + answer_prefix, answers


def _content(task: str, rng: random.Random) -> Tuple[str, List[str], str, str, List[str]]:
    """(intro, hidden statements, question, answer prefix, answers) of one sample of ``task``."""
    if task == "variable_tracking":
        value, other = _value(rng), _value(rng)
        names = _var_names(rng, 2 * CHAIN)
        chain, decoy = names[:CHAIN], names[CHAIN:]

        def statements(vars_, v):
            return [f"VAR {vars_[0]} = {v}. "] + [f"VAR {b} = VAR {a}. " for a, b in zip(vars_, vars_[1:])]

        mine, theirs = statements(chain, value), statements(decoy, other)
        merged = [s for pair in zip(mine, theirs) for s in pair]  # interleaved; each chain keeps its order
        return (_VT_INTRO, merged, _VT_ASK.format(value=value), _VT_ANSWER.format(value=value, n=CHAIN), chain)
    if task not in TASKS:
        raise EvalError(f"unknown RULER task {task!r}; choose from {', '.join(TASKS)}")
    n = 1 if task == "niah_single" else NEEDLES
    keys = _keys(rng, n)
    if task == "niah_multivalue":
        keys = [keys[0]] * n
    values = [_value(rng) for _ in range(n)]
    needles = [_NIAH_NEEDLE.format(key=k, value=v) for k, v in zip(keys, values)]
    if task in ("niah_single", "niah_multikey"):
        target = rng.randrange(n)
        asked, answers = [keys[target]], [values[target]]
    elif task == "niah_multivalue":
        asked, answers = [keys[0]], values
    else:  # niah_multiquery
        picked = sorted(rng.sample(range(n), 2))
        asked, answers = [keys[i] for i in picked], [values[i] for i in picked]
    keys_text = ", ".join(asked)
    return _NIAH_INTRO, needles, _NIAH_ASK.format(keys=keys_text), _NIAH_ANSWER.format(keys=keys_text), answers


@dataclass
class _Drawn:
    """One sample's random content, tokenized: everything but the filler (small, unlike a prompt of L tokens)."""

    task: str
    """Task name."""
    answers: List[str]
    """Strings a correct completion contains."""
    intro_ids: List[int]
    """Tokens before the haystack: the prompt frame's head (BOS, chat template), then the instructions."""
    statement_ids: List[List[int]]
    """Tokens of each hidden statement, in haystack order."""
    question_ids: List[int]
    """Tokens of the question and its answer prefix (with the chat template's end of turn between them)."""

    def fixed_tokens(self) -> int:
        return len(self.intro_ids) + sum(map(len, self.statement_ids)) + len(self.question_ids)


def _draw(task: str, tokenizer, rng: random.Random, frame: PromptFrame) -> _Drawn:
    intro, statements, ask, answer_prefix, answers = _content(task, rng)
    return _Drawn(task, answers, frame.head + encode_plain(tokenizer, intro),
                  [encode_plain(tokenizer, s) for s in statements], frame.answer(tokenizer, ask, answer_prefix))


def _check_fits(drawn: _Drawn, length: int, sentence: List[int]) -> None:
    fixed = drawn.fixed_tokens()
    if length < fixed or not sentence:
        raise RulerLengthError(f"{drawn.task}: context length {length} is shorter than the task's fixed text "
                               f"({fixed} tokens); use lengths >= {fixed + len(sentence)}", fixed + len(sentence))


def _assemble(drawn: _Drawn, length: int, sentence: List[int]) -> RulerSample:
    """The prompt of exactly ``length`` tokens: statements at evenly spread filler-sentence boundaries."""
    _check_fits(drawn, length, sentence)
    reps, rest = divmod(length - drawn.fixed_tokens(), len(sentence))
    haystack = sentence * reps + sentence[:rest]
    k = len(drawn.statement_ids)
    cuts = [min(round(reps * (i + 1) / (k + 1)) * len(sentence), len(haystack)) for i in range(k)]
    prompt, positions, prev = list(drawn.intro_ids), [], 0
    for cut, ids in zip(cuts, drawn.statement_ids):
        prompt += haystack[prev:cut]
        positions.append(len(prompt))
        prompt += ids
        prev = cut
    prompt += haystack[prev:] + drawn.question_ids
    assert len(prompt) == length
    return RulerSample(drawn.task, length, drawn.answers, positions, prompt)


def build_sample(task: str, tokenizer, length: int, rng: random.Random, filler: str = FILLER,
                 frame: Optional[PromptFrame] = None) -> RulerSample:
    """A prompt of exactly ``length`` tokens: intro, haystack with the task's statements at evenly spread depths
    (filler-sentence boundaries), question with its answer prefix; framed by ``frame`` (default:
    ``prompt_frame(tokenizer)``)."""
    frame = frame if frame is not None else prompt_frame(tokenizer)
    return _assemble(_draw(task, tokenizer, rng, frame), length, encode_plain(tokenizer, filler))


def score(generated: str, answers: Sequence[str]) -> float:
    """Fraction of ``answers`` found verbatim in ``generated`` (RULER's string_match_all)."""
    return sum(a in generated for a in answers) / len(answers)


@dataclass
class Plan:
    """A RULER run before any prompt is assembled: its frame and every (task, length, drawn samples) cell."""

    frame: PromptFrame
    """How every prompt is framed (BOS, chat template)."""
    cells: List[Tuple[str, int, List[_Drawn]]]
    """(task, length, samples) in run order."""

    def __len__(self) -> int:
        return len(self.cells)

    def __iter__(self):
        return iter(self.cells)


def plan_ruler(tokenizer, tasks: Sequence[str], lengths: Sequence[int], samples_per_cell: int = 1,
               seed: int = 0, fmt: PromptFormat = PromptFormat()) -> Plan:
    """Every sample of the run drawn, tokenized and checked against its length (cheap: call it before loading a
    model). Prompts themselves are assembled one at a time by ``run_ruler``: a plan of many 1M-token prompts
    would hold gigabytes."""
    if not tasks or not lengths or samples_per_cell < 1:
        raise EvalError("RULER: give tasks, lengths and samples_per_cell >= 1")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise EvalError(f"unknown RULER task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    frame = prompt_frame(tokenizer, fmt)
    rng, sentence = random.Random(seed), encode_plain(tokenizer, FILLER)
    plan, short = [], {}
    for t in tasks:
        for n in lengths:
            drawn = [_draw(t, tokenizer, rng, frame) for _ in range(samples_per_cell)]
            for d in drawn:
                try:
                    _check_fits(d, n, sentence)
                except RulerLengthError as e:  # keep going: the message names every task and the length all need
                    short[t] = max(short.get(t, 0), e.needed)
            plan.append((t, n, drawn))
    if short:
        raise EvalError(f"context length {min(lengths)} is shorter than the fixed text of {', '.join(short)}: use "
                        f"lengths >= {max(short.values())} (or leave those tasks out with --tasks)")
    return Plan(frame, plan)


def run_ruler(generate: GenerateFn, tokenizer, tasks: Sequence[str], lengths: Sequence[int],
              samples_per_cell: int = 1, seed: int = 0, log: Optional[Callable[[str], None]] = print,
              plan: Optional[Plan] = None, fmt: PromptFormat = PromptFormat()) -> Dict:
    """Score every (task, length) cell; returns {"average", "scores": {task: {str(length): score}}, "cells",
    "seed", and the prompt settings "bos", "bos_token_id", "chat_template"}. ``plan``: ``plan_ruler`` with the
    same arguments (made here when None). The log's ETA weighs samples by length."""
    plan = plan if plan is not None else plan_ruler(tokenizer, tasks, lengths, samples_per_cell, seed, fmt)
    sentence = encode_plain(tokenizer, FILLER)
    eta = Eta([length for _, length, drawn in plan for _ in drawn])
    total, done = len(eta.lengths), 0
    cells, scores = [], {t: {} for t in tasks}
    for task, length, drawn in plan:
        outputs = []
        for d in drawn:
            t0 = time.time()
            s = _assemble(d, length, sentence)
            out = generate(s.prompt_ids, TASKS[task].max_new_tokens)
            outputs.append({"answers": s.answers, "output": out.strip()[:200], "score": score(out, s.answers)})
            done += 1
            eta.done(time.time() - t0)
        cell = sum(o["score"] for o in outputs) / len(outputs)
        scores[task][str(length)] = cell
        cells.append({"task": task, "length": length, "score": cell, "samples": outputs})
        if log:
            log(f"ruler {task} length={length} score={cell:.2f} [{done}/{total}, eta {eta.seconds_left():.0f}s]")
    average = sum(c["score"] for c in cells) / len(cells)
    return {"average": average, "tasks": list(tasks), "lengths": [int(n) for n in lengths], "seed": seed,
            **plan.frame.record(), "scores": scores, "cells": cells}
