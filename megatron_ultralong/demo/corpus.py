"""The demo's toy world: English-like prose, facts (numbers) stated and recalled later, short chat tasks.

    rng = random.Random(0)
    short_document(rng)                 # a fact, then recalled 4 times a few sentences apart (base pretraining)
    long_document(rng, 2000)            # facts early, recalled hundreds of tokens later (the CPT mixture)
    chat_sample(rng)                    # {"messages": [...], "source": "lookup" | "add" | "copy"} (SFT)
    short_task(rng)                     # (messages without the answer, expected answer) for the short score

Why this world, and how the passkey templates are kept out of it: docs/demo.md.
"""
from __future__ import annotations

import random
from typing import Dict, List, Tuple

NOUNS = ("tree house river stone road city garden window door table book letter market field bridge tower forest "
         "lake hill village island ship train wall cloud rain wind song story friend teacher doctor farmer king "
         "queen child dog cat bird horse fish apple bread water fire light night morning evening summer winter "
         "grass sky sun moon star flower box bag coat shoe hat chair bed lamp clock map key path boat text info "
         "lot quiz information note word page").split()
ADJECTIVES = ("old new big small green blue yellow red white black dark bright quiet loud warm cold long short "
              "happy sad tall heavy light quick slow soft hard early late young clean rich poor strong calm wild "
              "important hidden irrelevant").split()
VERBS = ("sees finds takes makes keeps holds moves opens closes carries brings follows watches builds paints likes "
         "needs visits leaves reaches crosses remembers memorizes hides passes").split()
ADVERBS = "today again slowly quickly often always never soon later there here together alone inside back".split()
PHRASE_WORDS = ("there is an important info hidden inside a lot of irrelevant text find it and memorize it i will "
                "quiz you about the information here we go back again remember what pass").split()
"""Words of the passkey prompt, used in shuffled word salad so the tokenizer has them (never in its sentences)."""
ATTRIBUTES = ("code", "number", "price", "age", "height", "weight", "score", "count", "year", "size", "rank",
              "level", "value", "room", "ticket", "order", "serial", "phone number", "account number", "door code",
              "batch number", "postal code", "secret number", "lucky number")
NAMES = ("Bram Tiva Orlen Mesa Kado Ruvi Selm Dara Pim Juno Vesk Lira Tobin Neve Arlo Fen Isko Mara Quill Rhea "
         "Soren Talia Ubel Wren Yara Zane Cato Dilo Eska Garo Hale Inez Jarl Kesh Lom Nira Oska Pell Rask Sula "
         "Tarn Vada Wim Xeno Yorr Zia Abel Bex Cyra Doran").split()

STATEMENTS = ("The {x} is {n}.", "The {x} is {n}. Keep it in mind.", "Note that the {x} is {n}.",
              "The {x} is {n}. Do not forget {n}.", "{n} is the {x}.")
RECALLS = ("What is the {x}? The {x} is {n}.", "As said before, the {x} is {n}.", "So the {x} is {n}.",
           "Which number is the {x}? It is {n}.", "The {x} was {n}.")


def passkey_template_lines() -> List[str]:
    """The sentences of eval/niah.py's passkey prompt (lower case): no training text may contain one."""
    from ..eval.niah import ANSWER_PREFIX, ASK, FILLER, INTRO, NEEDLE

    parts = [ASK, ANSWER_PREFIX, "pass key", *INTRO.split("."), *FILLER.split("."),
             *NEEDLE.replace("{key}", "").split(".")]
    return sorted({p.strip().lower() for p in parts if len(p.strip()) > 3})


_BANNED = passkey_template_lines()


def sentence(rng: random.Random) -> str:
    """One sentence of prose (no digits, never a sentence of the passkey prompt)."""
    while True:
        s = _sentence(rng)
        if not any(b in s.lower() for b in _BANNED):
            return s


def _sentence(rng: random.Random) -> str:
    k = rng.random()
    a, n1, n2, v = rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(NOUNS), rng.choice(VERBS)
    if k < 0.3:
        s = f"The {a} {n1} {v} the {n2}"
    elif k < 0.5:
        s = f"The {n1} is {a}"
    elif k < 0.65:
        s = f"A {n1} {v} a {a} {n2} {rng.choice(ADVERBS)}"
    elif k < 0.8:
        s = f"{rng.choice(NAMES)} {v} the {n1}"
    else:
        s = " ".join(rng.choice(PHRASE_WORDS) for _ in range(rng.randint(4, 9))).capitalize()
    return s + "."


def number(rng: random.Random) -> str:
    """A number to remember: mostly five digits, like the passkeys."""
    return str(rng.randint(10000, 99999)) if rng.random() < 0.8 else str(rng.randint(0, 9999))


def subject(rng: random.Random) -> str:
    """What a number belongs to: 'age of Bram', 'river code', 'old lamp'."""
    k = rng.random()
    if k < 0.5:
        return f"{rng.choice(ATTRIBUTES)} of {rng.choice(NAMES)}"
    if k < 0.8:
        return f"{rng.choice(NOUNS)} {rng.choice(ATTRIBUTES)}"
    return f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"


def _fact(template: str, x: str, n: str) -> str:
    return template.format(x=x, n=n)


def short_document(rng: random.Random, recalls: int = 4) -> str:
    """A number stated once, then recalled ``recalls`` times with up to two sentences between (~60 tokens)."""
    x, n = subject(rng), number(rng)
    out = [_fact(rng.choice(STATEMENTS), x, n)]
    for _ in range(recalls):
        out += [sentence(rng) for _ in range(rng.randint(0, 2))]
        out.append(_fact(rng.choice(RECALLS), x, n))
    return " ".join(out)


def prose_document(rng: random.Random, n_sentences: int) -> str:
    """Prose only."""
    return " ".join(sentence(rng) for _ in range(max(1, n_sentences)))


def long_document(rng: random.Random, n_sentences: int, facts: int = 2, recalls: int = 3) -> str:
    """Prose with ``facts`` numbers stated in the first fifth and recalled (``recalls`` times each) anywhere after:
    the recalls are predictable only by looking back up to the whole document."""
    n_sentences = max(10, n_sentences)
    events: List[Tuple[int, int, str, str]] = []
    seen = set()
    for _ in range(facts):
        x = subject(rng)
        while x in seen:
            x = subject(rng)
        seen.add(x)
        n, at = number(rng), rng.randint(0, n_sentences // 5)
        events.append((at, 0, x, n))
        events += [(rng.randint(at + 1, n_sentences), 1, x, n) for _ in range(recalls)]
    events.sort(key=lambda e: (e[0], e[1]))
    out, i = [], 0
    for s in range(n_sentences + 1):
        while i < len(events) and events[i][0] == s:
            _, kind, x, n = events[i]
            out.append(_fact(rng.choice(RECALLS if kind else STATEMENTS), x, n))
            i += 1
        if s < n_sentences:
            out.append(sentence(rng))
    return " ".join(out)


# ------------------------------------------------------------------------------------------ chat tasks
TASKS = ("lookup", "add", "copy")
"""Short chat tasks with exactly checkable answers: the demo's stand-in for general / math / code benchmarks."""
TASK_WEIGHTS = (2, 1, 1)
"""Their shares of the chat data: half is retrieval inside the window, the skill the passkey test needs."""


def _lookup(rng: random.Random) -> Tuple[str, str]:
    x, n = subject(rng), number(rng)
    context = [sentence(rng) for _ in range(rng.randint(0, 10))]  # up to ~100 tokens: retrieval inside W
    context.insert(rng.randint(0, len(context)), _fact(rng.choice(STATEMENTS[:3]), x, n))
    return f"{' '.join(context)} What is the {x}?", f"The {x} is {n}."


def _add(rng: random.Random) -> Tuple[str, str]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return rng.choice(("What is {a} + {b}?", "Add {a} and {b}.", "Compute {a} + {b}.")).format(a=a, b=b), \
        f"{a} + {b} = {a + b}."


def _copy(rng: random.Random) -> Tuple[str, str]:
    words = " ".join(rng.choice(NOUNS) for _ in range(rng.randint(2, 5)))
    return rng.choice(("Repeat after me: {w}", "Say again: {w}", "Copy this: {w}")).format(w=words), words


_TASK_WRITERS = {"lookup": _lookup, "add": _add, "copy": _copy}


def chat_sample(rng: random.Random, task: str = "") -> Dict[str, object]:
    """One single-turn chat record ``{"messages": [user, assistant], "source": task}`` (task drawn if empty)."""
    task = task or rng.choices(TASKS, TASK_WEIGHTS)[0]
    question, answer = _TASK_WRITERS[task](rng)
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "source": task}


def short_task(rng: random.Random, task: str) -> Tuple[List[Dict[str, str]], str]:
    """(the user turn, the exact expected assistant answer) of one held-out question."""
    rec = chat_sample(rng, task)
    return rec["messages"][:1], rec["messages"][1]["content"]
