import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_ultralong.data import DataError
from megatron_ultralong.data.synthetic import (
    copy_task_ids,
    copy_task_window,
    synthetic_chat_samples,
    write_synthetic_corpus,
)

REPO = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize("sizes,pattern", [
    ({"web": -3}, r"'web': -3 documents; each count must be a positive integer"),
    ({"web": 0, "code": 5}, r"'web': 0 documents"),
    ({"web": 2.5}, r"'web': 2\.5 documents"),
    ({}, "no sources given"),
])
def test_corpus_with_non_positive_or_no_counts_is_refused_before_writing(sizes, pattern, tmp_path):
    with pytest.raises(DataError, match=pattern):
        write_synthetic_corpus(tmp_path / "out", sizes)
    with pytest.raises(DataError, match="length_scale -1: must be a number > 0"):
        write_synthetic_corpus(tmp_path / "out", {"web": 3}, length_scale=-1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,pattern", [
    (["--docs-per-source", "{web: 3}"], r"--docs-per-source '\{web: 3\}': invalid JSON \(.*\); quote the source names"),
    (["--docs-per-source", "[1,2]"], r"--docs-per-source '\[1,2\]': expected a JSON object .* got list"),
    (["--docs-per-source", '{"web": -3}'], r"--docs-per-source: 'web': -3 documents; each count must be a positive"),
    (["--chat-samples", "-1"], r"--chat-samples -1: must be >= 1"),
    (["--length-scale", "0"], r"--length-scale 0\.0: must be a number > 0"),
    (["NOTADIR"], r"output directory .*afile/x: cannot create this directory \(.*afile is a file, not a directory\)"),
])
def test_cli_synthetic_bad_input_exits_2_with_one_line_and_writes_nothing(args, pattern, tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    out = tmp_path / "afile" / "x" if args == ["NOTADIR"] else tmp_path / "out"
    r = subprocess.run([sys.executable, "tools/preprocess_data.py", "synthetic", "--output-dir", str(out),
                        *(a for a in args if a != "NOTADIR")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert re.match("error: " + pattern, r.stderr), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing written


def test_cli_synthetic_writes_the_requested_sources(tmp_path):
    r = subprocess.run([sys.executable, "tools/preprocess_data.py", "synthetic", "--output-dir", str(tmp_path / "o"),
                        "--docs-per-source", '{"web": 4, "math": 2}', "--chat-samples", "3"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in open(tmp_path / "o" / "corpus.jsonl")]
    assert sorted(r["source"] for r in recs) == ["math"] * 2 + ["web"] * 4
    assert len(open(tmp_path / "o" / "chat.jsonl").readlines()) == 3
