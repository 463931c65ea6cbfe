"""The demo's toy world: deterministic, facts recallable, chat tasks exact, no passkey template anywhere."""
import random

import pytest

from megatron_ultralong.demo import corpus
from megatron_ultralong.demo.data import check_no_passkey_template
from megatron_ultralong.eval.niah import FILLER, INTRO, NEEDLE


def test_documents_are_a_pure_function_of_the_seed():
    a, b = random.Random(3), random.Random(3)
    assert [corpus.long_document(a, 50) for _ in range(3)] == [corpus.long_document(b, 50) for _ in range(3)]


def test_a_short_document_states_its_number_then_recalls_it():
    doc = corpus.short_document(random.Random(1), recalls=4)
    numbers = [w.strip(".?") for w in doc.split() if w.strip(".?").isdigit()]
    assert len(numbers) >= 5 and len(set(numbers)) == 1, doc


def test_a_long_document_states_each_number_early_and_recalls_it_as_often_as_asked():
    rng = random.Random(4)
    for _ in range(20):
        doc = corpus.long_document(rng, 400, facts=3, recalls=10)
        words = [w.strip(".?") for w in doc.split()]
        positions = {}
        for i, w in enumerate(words):
            if w.isdigit():
                positions.setdefault(w, []).append(i / len(words))
        # stated once in the first fifth (some statements name the number twice), then recalled 10 times
        assert len(positions) == 3 and all(len(p) in (11, 12) for p in positions.values()), doc
        assert all(p[0] < 0.25 for p in positions.values()), doc


def test_every_chat_answer_is_exact_for_its_task():
    rng = random.Random(2)
    for _ in range(50):
        rec = corpus.chat_sample(rng, "add")
        q, a = rec["messages"][0]["content"], rec["messages"][1]["content"]
        x, y = [int(t.strip("?.")) for t in q.split() if t.strip("?.").isdigit()]
        assert a == f"{x} + {y} = {x + y}."
        messages, expected = corpus.short_task(rng, "lookup")
        number = expected.split()[-1].rstrip(".")
        assert number in messages[0]["content"] and expected.endswith(f" is {number}.")


def test_no_generated_text_contains_a_sentence_of_the_passkey_prompt():
    rng = random.Random(0)
    texts = [corpus.long_document(rng, 300) for _ in range(30)] + [corpus.short_document(rng) for _ in range(3000)]
    assert check_no_passkey_template(texts, "generated") == len(texts)


@pytest.mark.parametrize("line", [FILLER.split(".")[0] + ".", INTRO.split(".")[1], NEEDLE.format(key=12345)])
def test_the_template_check_finds_each_kind_of_passkey_sentence(line):
    with pytest.raises(RuntimeError, match="passkey prompt"):
        check_no_passkey_template(["The old tree sees the lake. " + line], "planted")
