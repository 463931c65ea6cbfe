import json

import numpy as np

from megatron_ultralong.data.synthetic import (copy_task_ids, copy_task_window, synthetic_chat_samples,
                                               write_synthetic_corpus)


def test_corpus_is_deterministic_multi_source_and_spans_short_and_long_documents(tmp_path):
    a = write_synthetic_corpus(tmp_path / "a", {"web": 80, "books": 30, "code": 40}, seed=5)[0]
    b = write_synthetic_corpus(tmp_path / "b", {"web": 80, "books": 30, "code": 40}, seed=5)[0]
    c = write_synthetic_corpus(tmp_path / "c", {"web": 80, "books": 30, "code": 40}, seed=6)[0]
    assert open(a, "rb").read() == open(b, "rb").read() != open(c, "rb").read()
    recs = [json.loads(line) for line in open(a)]
    by_source = {s: [len(r["text"].split()) for r in recs if r["source"] == s] for s in ("web", "books", "code")}
    assert {s: len(v) for s, v in by_source.items()} == {"web": 80, "books": 30, "code": 40}
    assert [r["source"] for r in recs[:10]] != ["web"] * 10  # interleaved, so byte-range shards mix sources
    for words in by_source.values():  # log-normal lengths: a wide spread within every source
        assert max(words) > 2.5 * np.median(words) and min(words) < np.median(words) / 2.5
    assert np.median(by_source["books"]) > np.median(by_source["web"])
    split = write_synthetic_corpus(tmp_path / "d", {"web": 3, "math": 2}, per_source_files=True)
    assert [p.rsplit("/", 1)[1] for p in split] == ["web.jsonl", "math.jsonl"]


def test_chat_samples_cover_the_three_sources_and_always_end_with_the_assistant():
    samples = synthetic_chat_samples(30, seed=1)
    assert {s["source"] for s in samples} == {"general", "math", "code"}
    assert all(s["messages"][-1]["role"] == "assistant" for s in samples)
    assert samples == synthetic_chat_samples(30, seed=1) != synthetic_chat_samples(30, seed=2)


def test_copy_task_windows_are_pure_functions_of_seed_and_index():
    sep, marker, alphabet = copy_task_ids(512)
    assert (sep, marker) == (511, 510) and len(alphabet) == 64 and sep not in alphabet
    t1, s1, g1 = copy_task_window(512, 64, seed=3, index=9, sft=False)
    t2, _, _ = copy_task_window(512, 64, seed=3, index=9, sft=False)
    t3, _, _ = copy_task_window(512, 64, seed=3, index=10, sft=False)
    assert np.array_equal(t1, t2) and not np.array_equal(t1, t3) and len(t1) == 65 and g1.all()
    first = t1[: np.flatnonzero(t1 == sep)[0]]  # first document: prefix MARKER prefix
    k = (len(first) - 1) // 2
    assert first[k] == marker and np.array_equal(first[:k], first[k + 1:])
    tokens, seg, target = copy_task_window(512, 64, seed=3, index=9, sft=True)
    for s in np.unique(seg)[:-1]:  # SFT samples are whole: each ends with its separator, targets = copy + SEP
        part, flags = tokens[seg == s], target[seg == s]
        k = (len(part) - 2) // 2
        assert part[-1] == sep and part[k] == marker and flags.tolist() == [0] * (k + 1) + [1] * (k + 1)
