"""Passkey needle-in-a-haystack over a grid of context lengths × needle depths (docs/eval.md).

    grid = run_grid(generate, tokenizer, lengths=[131072, 1048576], depths=[0, .25, .5, .75, 1],
                    fmt=PromptFormat(bos="auto", chat_template=False))     # eval/prompt.py
    grid["accuracy"]     # overall fraction correct; grid["cells"] holds each (length, depth)

``generate(prompt_ids) -> str`` is any greedy decoder (``eval.hf.hf_generate`` wraps a transformers model).
"""
from __future__ import annotations

import random
import re
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence

from . import EvalError
from .progress import Eta
from .prompt import PromptFormat, PromptFrame, encode_plain, prompt_frame

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
ASK = "\nWhat is the pass key?"
ANSWER_PREFIX = " The pass key is"
QUESTION = ASK + ANSWER_PREFIX


@dataclass
class NiahSample:
    """One haystack prompt."""

    length: int
    """Prompt length in tokens."""
    depth: float
    """Requested needle depth, fraction of the haystack."""
    passkey: str
    """The expected answer."""
    needle_token_pos: int
    """Index of the needle's first token in prompt_ids."""
    prompt_ids: List[int]
    """Token ids of the whole prompt."""


def build_sample(tokenizer, length: int, depth: float, passkey: str, filler: str = FILLER,
                 frame: Optional[PromptFrame] = None) -> NiahSample:
    """A prompt of exactly ``length`` tokens with the pass key at ``depth`` (0 = right after the intro), framed by
    ``frame`` (default: ``prompt_frame(tokenizer)``, one BOS when the tokenizer adds one, no chat template)."""
    if not 0.0 <= depth <= 1.0:
        raise EvalError(f"needle depth {depth} is outside [0, 1]; use fractions such as 0.25")
    frame = frame if frame is not None else prompt_frame(tokenizer)
    intro = frame.head + encode_plain(tokenizer, INTRO)
    needle = encode_plain(tokenizer, NEEDLE.format(key=passkey))
    question = frame.answer(tokenizer, ASK, ANSWER_PREFIX)
    sentence = encode_plain(tokenizer, filler)
    budget = length - len(intro) - len(needle) - len(question)
    if budget < 0 or not sentence:
        raise EvalError(f"context length {length} is shorter than the prompt skeleton "
                        f"({length - budget} tokens); use lengths >= {length - budget + len(sentence)}")
    reps, rest = divmod(budget, len(sentence))
    haystack = sentence * reps + sentence[:rest]
    at = min(round(depth * reps) * len(sentence), len(haystack))  # a sentence boundary
    prompt = intro + haystack[:at] + needle + haystack[at:] + question
    assert len(prompt) == length
    return NiahSample(length, depth, passkey, len(intro) + at, prompt)


def score_answer(generated: str, passkey: str) -> bool:
    """Correct when the first number in the completion is the pass key."""
    m = re.search(r"\d+", generated)
    return bool(m) and m.group(0) == passkey


def check_grid(tokenizer, lengths: Sequence[int], depths: Sequence[float], samples_per_cell: int = 1,
               fmt: PromptFormat = PromptFormat()) -> PromptFrame:
    """The prompt frame of the run; EvalError for a grid that cannot run (empty, a depth outside [0, 1], a length
    shorter than the prompt skeleton, a format the tokenizer cannot give); cheap: call it before loading a model."""
    if not lengths or not depths or samples_per_cell < 1:
        raise EvalError("the NIAH grid is empty: give lengths, depths and samples >= 1 (--lengths / --depths / "
                        "--samples)")
    frame = prompt_frame(tokenizer, fmt)
    for depth in depths:
        build_sample(tokenizer, min(lengths), depth, "12345", frame=frame)
    return frame


def run_grid(generate: Callable[[List[int]], str], tokenizer, lengths: Sequence[int], depths: Sequence[float],
             samples_per_cell: int = 1, seed: int = 0, log: Optional[Callable[[str], None]] = print,
             fmt: PromptFormat = PromptFormat()) -> Dict:
    """Evaluate every (length, depth) cell; returns {"accuracy", "cells": [...], "lengths", "depths", "seed",
    and the prompt settings "bos", "bos_token_id", "chat_template"}. The log's ETA weighs cells by length."""
    frame = check_grid(tokenizer, lengths, depths, samples_per_cell, fmt)
    rng = random.Random(seed)
    eta = Eta([n for n in lengths for _ in depths for _ in range(samples_per_cell)])
    cells, total, done = [], len(lengths) * len(depths) * samples_per_cell, 0
    for length in lengths:
        for depth in depths:
            correct, answers = 0, []
            for _ in range(samples_per_cell):
                t0 = time.time()
                key = str(rng.randint(10000, 99999))
                sample = build_sample(tokenizer, length, depth, key, frame=frame)
                out = generate(sample.prompt_ids)
                ok = score_answer(out, key)
                correct += ok
                answers.append({"passkey": key, "output": out.strip()[:40], "correct": ok})
                done += 1
                eta.done(time.time() - t0)
            cells.append({"length": length, "depth": depth, "accuracy": correct / samples_per_cell,
                          "answers": answers})
            if log:
                log(f"niah length={length} depth={depth:.2f} acc={correct / samples_per_cell:.2f} "
                    f"[{done}/{total}, eta {eta.seconds_left():.0f}s]")
    acc = sum(c["accuracy"] for c in cells) / len(cells)
    return {"accuracy": acc, "lengths": list(lengths), "depths": list(depths), "seed": seed, **frame.record(),
            "cells": cells}


def sample_as_dict(sample: NiahSample) -> Dict:
    """JSON-friendly view (without the prompt ids)."""
    d = asdict(sample)
    d.pop("prompt_ids")
    return d
