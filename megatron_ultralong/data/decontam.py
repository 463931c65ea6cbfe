"""N-gram decontamination of chat samples against eval sets: a sample sharing a word n-gram with an eval item goes.

    kept, report = decontaminate(samples, ["eval/gsm8k.jsonl", "eval/mmlu.jsonl"], n=13)
    index = NgramIndex(13); index.add_file("eval/gsm8k.jsonl"); index.find(text)   # -> (ngram, 'file:line') | None

Matching rules (words, short items, eval file formats): docs/data.md.
"""
from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple

from . import DataError

if TYPE_CHECKING:  # annotations only: sft.py imports this module
    from .sft import ChatSample

MIN_SHORT_WORDS = 8
"""Eval items with fewer words than the n-gram size are matched whole, if at least this long (shorter ones,
like 'What is 2 + 2?', would match innocent samples)."""
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> List[str]:
    return _WORD.findall(text.lower())


def _strings(node) -> Iterable[str]:
    """Every string inside a JSON value (eval records differ: question/answer/choices/messages...)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


class NgramIndex:
    """Word n-grams of eval items, each remembered with the item it came from."""

    def __init__(self, n: int = 13):
        if n < 1:
            raise DataError(f"decontamination n-gram size {n}: must be >= 1 (13 is the usual choice)")
        self.n = n
        self.grams: Dict[Tuple[str, ...], str] = {}
        self.whole: Dict[int, Dict[Tuple[str, ...], str]] = {}  # shorter items, by word count
        self.files: List[Dict[str, object]] = []

    def add(self, text: str, origin: str) -> str:
        """Index one eval item; returns 'grams', 'whole' or 'too_short'."""
        w = _words(text)
        if len(w) >= self.n:
            for i in range(len(w) - self.n + 1):
                self.grams.setdefault(tuple(w[i: i + self.n]), origin)
            return "grams"
        if len(w) >= MIN_SHORT_WORDS:
            self.whole.setdefault(len(w), {}).setdefault(tuple(w), origin)
            return "whole"
        return "too_short"

    def add_file(self, path: str) -> None:
        """Index an eval file: .jsonl/.json (every string of every record) or text (one item per line)."""
        if not os.path.isfile(path):
            raise DataError(f"eval file {path} not found; check data.eval_files / --eval-files")
        counts = {"grams": 0, "whole": 0, "too_short": 0}
        is_json = path.endswith((".jsonl", ".json"))
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if is_json:
                    try:
                        items = list(_strings(json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{lineno}: invalid JSON in eval file ({e.msg}); fix the line, or "
                                        f"give a .txt file (one item per line)") from None
                else:
                    items = [line]
                for text in items:
                    counts[self.add(text, f"{path}:{lineno}")] += 1
        if sum(counts.values()) == 0:
            raise DataError(f"eval file {path} is empty; remove it from the eval files")
        self.files.append({"path": path, "items_ngrams": counts["grams"], "items_whole": counts["whole"],
                           "items_too_short_unchecked": counts["too_short"]})

    def find(self, text: str) -> Optional[Tuple[str, str]]:
        """(matching n-gram text, eval origin) of the first shared n-gram, or None."""
        w = _words(text)
        for i in range(len(w) - self.n + 1):
            origin = self.grams.get(tuple(w[i: i + self.n]))
            if origin:
                return " ".join(w[i: i + self.n]), origin
        for k, table in self.whole.items():
            for i in range(len(w) - k + 1):
                origin = table.get(tuple(w[i: i + k]))
                if origin:
                    return " ".join(w[i: i + k]), origin
        return None


def decontaminate(samples: Sequence[ChatSample], eval_files: Sequence[str], n: int = 13
                  ) -> Tuple[List[ChatSample], Dict[str, object]]:
    """Drop samples sharing an n-gram with any eval item; returns (kept samples, report of what was removed)."""
    index = NgramIndex(n)
    for path in eval_files:
        index.add_file(path)
    kept, removed = [], []
    for s in samples:
        hit = next((h for h in (index.find(m["content"]) for m in s.messages) if h), None)
        if hit:
            removed.append({"sample": s.where, "eval_item": hit[1], "ngram": hit[0]})
        else:
            kept.append(s)
    report = {"ngram": n, "eval_files": index.files, "eval_ngrams": len(index.grams),
              "samples_checked": len(samples), "samples_removed": len(removed), "removed": removed}
    return kept, report
