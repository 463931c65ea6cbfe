"""The demo's two measurements of an exported model: the passkey grid (eval/niah.py, unchanged) and the short-task
score (held-out chat questions, exact match), both greedy through transformers.

    scorer = Scorer(hf_dir, tokenizer_path)
    grid = scorer.niah(lengths, depths, samples=2, seed=0)      # run_grid's result
    short = scorer.short_tasks(questions)                        # {"score", "by_task", "answers"}
"""
from __future__ import annotations

import random
from typing import Callable, Dict, List, Sequence, Tuple

from . import corpus

Question = Tuple[str, List[Dict[str, str]], str]
"""(task, the user turn, the expected answer)."""


def held_out_questions(n_per_task: int, seed: int) -> List[Question]:
    """``n_per_task`` questions per short task, from a seed no training set uses."""
    rng = random.Random(f"held-out-{seed}")
    return [(task, *corpus.short_task(rng, task)) for task in corpus.TASKS for _ in range(n_per_task)]


class Scorer:
    """One exported model, loaded once."""

    def __init__(self, hf_dir: str, tokenizer_path: str):
        from ..data.tokenizer import load_tokenizer
        from ..eval.hf import hf_generate, load_hf_model

        self.hf_dir = hf_dir
        self.tok = load_tokenizer(tokenizer_path)
        self.model = load_hf_model(hf_dir, "fp32")
        self.generate = hf_generate(self.model, self.tok)

    def niah(self, lengths: Sequence[int], depths: Sequence[float], samples: int, seed: int,
             log: Callable[[str], None] = print) -> dict:
        """The passkey grid (plain prompts, eval/niah.py's templates)."""
        from ..eval.niah import run_grid

        return run_grid(self.generate, self.tok, lengths, depths, samples_per_cell=samples, seed=seed, log=log)

    def chat_prompt(self, messages: List[Dict[str, str]]) -> List[int]:
        """The Llama-3 chat rendering of ``messages`` followed by the assistant header (what SFT trained)."""
        from ..data.sft import encode_llama3

        tokens, _ = encode_llama3(messages, self.tok)
        head = [self.tok.token_to_id("<|start_header_id|>")] + self.tok.encode("assistant") + \
            [self.tok.token_to_id("<|end_header_id|>")] + self.tok.encode("\n\n")
        return tokens.tolist() + head

    def answer(self, messages: List[Dict[str, str]], max_new_tokens: int = 24) -> str:
        """The greedy reply, up to its end-of-turn token (decoded without it)."""
        import torch

        ids = torch.tensor([self.chat_prompt(messages)])
        eot = self.tok.token_to_id("<|eot_id|>")
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      do_sample=False, eos_token_id=eot, pad_token_id=eot)
        new = out[0, ids.shape[1]:].tolist()
        return self.tok.decode(new[:new.index(eot)] if eot in new else new).strip()

    def short_tasks(self, questions: Sequence[Question]) -> dict:
        """Exact-match accuracy over ``questions``, overall and per task."""
        answers, by_task = [], {}
        for task, messages, expected in questions:
            got = self.answer(messages)
            ok = got == expected
            by_task.setdefault(task, []).append(ok)
            answers.append({"task": task, "question": messages[-1]["content"], "expected": expected, "got": got,
                            "correct": ok})
        return {"score": sum(a["correct"] for a in answers) / max(len(answers), 1),
                "by_task": {t: sum(v) / len(v) for t, v in by_task.items()}, "answers": answers}
