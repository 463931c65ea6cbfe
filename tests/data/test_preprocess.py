import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_ultralong.data import DataError
from megatron_ultralong.data import preprocess as pre
from megatron_ultralong.data.indexed import open_indexed_dataset, read_summary
from megatron_ultralong.data.preprocess import preprocess_text
from megatron_ultralong.data.tokenizer import load_tokenizer
from tests.data.conftest import CORPUS_DOCS, read_jsonl

REPO = Path(__file__).resolve().parents[2]
SMALL_SHARDS = 16 << 10  # several shards even on the small test corpus


def _files(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).iterdir()) if p.suffix in (".bin", ".idx")}


def test_tokens_round_trip_through_the_indexed_dataset(corpus, spm_model, tmp_path):
    summary = preprocess_text([corpus], spm_model, tmp_path / "idx", shard_bytes=SMALL_SHARDS, progress=False)
    tok = load_tokenizer(spm_model)
    records = read_jsonl(corpus)
    assert summary["shards"] > 1 and set(summary["sources"]) == set(CORPUS_DOCS)
    for src, info in summary["sources"].items():
        expected = [tok.encode(r["text"]) for r in records if r["source"] == src]  # file order within a source
        ds = open_indexed_dataset(tmp_path / "idx" / info["prefix"])
        assert len(ds) == info["docs"] == len(expected) == CORPUS_DOCS[src]
        assert [ds[i].tolist() for i in range(len(ds))] == expected
        assert info["tokens"] == sum(map(len, expected)) and sum(info["length_histogram"]) == info["docs"]
        assert ds[0].dtype == np.uint16  # 512-token vocabulary: the smallest dtype Megatron offers
    assert not any(p.name.startswith(".work") for p in (tmp_path / "idx").iterdir())  # work dir cleaned up


def test_two_workers_write_byte_identical_datasets_to_one_worker(corpus, spm_model, tmp_path):
    one = preprocess_text([corpus], spm_model, tmp_path / "w1", shard_bytes=SMALL_SHARDS, progress=False)
    two = preprocess_text([corpus], spm_model, tmp_path / "w2", workers=2, shard_bytes=SMALL_SHARDS, progress=False)
    assert one["shards"] == two["shards"] > 2
    assert _files(tmp_path / "w1") == _files(tmp_path / "w2")
    assert one["sources"] == two["sources"]


def test_interrupted_run_resumes_skipping_finished_shards(corpus, spm_model, tmp_path, monkeypatch):
    reference = preprocess_text([corpus], spm_model, tmp_path / "ref", shard_bytes=SMALL_SHARDS, progress=False)
    real, calls = pre._process_shard, []

    def killed_on_third_shard(shard, *args):
        calls.append(shard.index)
        if len(calls) == 3:
            raise KeyboardInterrupt  # stands for SIGKILL/preemption: not bad input, so the work dir stays
        return real(shard, *args)

    monkeypatch.setattr(pre, "_process_shard", killed_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        preprocess_text([corpus], spm_model, tmp_path / "out", shard_bytes=SMALL_SHARDS, progress=False)
    assert not (tmp_path / "out" / "summary.json").exists() and not _files(tmp_path / "out")
    monkeypatch.setattr(pre, "_process_shard", real)
    resumed = preprocess_text([corpus], spm_model, tmp_path / "out", shard_bytes=SMALL_SHARDS, progress=False)
    assert resumed["shards_reused"] == 2 and resumed["shards"] == reference["shards"]
    assert _files(tmp_path / "out") == _files(tmp_path / "ref")
    # a finished output with the same inputs is left as is
    again = preprocess_text([corpus], spm_model, tmp_path / "out", shard_bytes=SMALL_SHARDS, progress=False)
    assert again["fingerprint"] == resumed["fingerprint"] and again["seconds"] == resumed["seconds"]


def test_a_worker_killed_mid_run_is_an_error_and_the_run_resumes(corpus, spm_model, tmp_path, monkeypatch):
    real = pre._process_shard

    def oom_killed_on_shard_2(shard, *args):  # runs in the forked worker
        if shard.index == 2:
            os._exit(137)
        return real(shard, *args)

    monkeypatch.setattr(pre, "_process_shard", oom_killed_on_shard_2)
    with pytest.raises(RuntimeError, match="re-run the same command to resume"):
        preprocess_text([corpus], spm_model, tmp_path / "out", workers=2, shard_bytes=SMALL_SHARDS, progress=False)
    monkeypatch.setattr(pre, "_process_shard", real)
    resumed = preprocess_text([corpus], spm_model, tmp_path / "out", workers=2, shard_bytes=SMALL_SHARDS,
                              progress=False)
    assert resumed["shards_reused"] >= 1 and resumed["total"]["docs"] == sum(CORPUS_DOCS.values())


def test_dotted_fields_gzip_input_and_file_stem_as_default_source(spm_model, tmp_path):
    recs = [{"meta": {"body": f"document number {i} about rivers"}} for i in range(5)] + [{"meta": {"body": "  "}}]
    with gzip.open(tmp_path / "wiki.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    s = preprocess_text([str(tmp_path / "wiki.jsonl.gz")], spm_model, tmp_path / "out", text_key="meta.body",
                        progress=False)
    assert list(s["sources"]) == ["wiki"]
    assert s["sources"]["wiki"]["docs"] == 5 and s["sources"]["wiki"]["skipped_empty"] == 1
    assert read_summary(tmp_path / "out")["total"]["docs"] == 5


def _write(path, lines):
    Path(path).write_text("".join(line + "\n" for line in lines))
    return str(path)


@pytest.mark.parametrize("case,workers", [("missing_text_field", 1), ("missing_text_field", 2), ("invalid_json", 2),
                                          ("empty_file", 1), ("unknown_tokenizer", 1), ("text_not_string", 1)])
def test_bad_input_raises_one_line_error_and_leaves_nothing(case, workers, spm_model, tmp_path):
    good = [json.dumps({"text": f"fine document {i}", "source": "web"}) for i in range(300)]
    tokenizer, pattern = spm_model, None
    if case == "missing_text_field":  # deep in the file, in another shard than the first
        path = _write(tmp_path / "in.jsonl", good + [json.dumps({"content": "x"})] + good)
        pattern = r"in\.jsonl:301: no 'text' field \(fields: content\); pass --text-key"
    elif case == "invalid_json":
        path = _write(tmp_path / "in.jsonl", good[:10] + ['{"text": "oops"'])
        pattern = r"in\.jsonl:11: invalid JSON"
    elif case == "empty_file":
        path = _write(tmp_path / "in.jsonl", [])
        pattern = r"in\.jsonl: empty file"
    elif case == "text_not_string":
        path = _write(tmp_path / "in.jsonl", [json.dumps({"text": ["a", "b"]})])
        pattern = r"in\.jsonl:1: field 'text' is list, not a string"
    else:
        path, tokenizer = _write(tmp_path / "in.jsonl", good), str(tmp_path / "no_such.model")
        pattern = "tokenizer path .* does not exist"
    out = tmp_path / "out"
    with pytest.raises(DataError, match=pattern) as e:
        preprocess_text([path], tokenizer, out, shard_bytes=1 << 12, workers=workers, progress=False)
    assert "\n" not in str(e.value)
    assert not out.exists()  # no partial output, no work dir


def test_a_different_dataset_in_the_output_dir_is_not_overwritten_silently(corpus, spm_model, tmp_path):
    preprocess_text([corpus], spm_model, tmp_path / "out", progress=False)
    other = _write(tmp_path / "other.jsonl", [json.dumps({"text": "something else"})])
    with pytest.raises(DataError, match="already holds a dataset built from other inputs"):
        preprocess_text([other], spm_model, tmp_path / "out", progress=False)
    assert preprocess_text([other], spm_model, tmp_path / "out", overwrite=True, progress=False)["total"]["docs"] == 1


def test_the_same_run_typed_with_other_paths_reuses_the_output(corpus, spm_model, tmp_path, monkeypatch):
    # first relative to the tokenizer's folder, then with absolute paths from elsewhere: same files, same dataset
    monkeypatch.chdir(Path(spm_model).parent)
    out = os.path.relpath(tmp_path / "out")
    first = preprocess_text([os.path.relpath(corpus)], Path(spm_model).name, out, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    monkeypatch.chdir(tmp_path)
    again = preprocess_text([str(Path(corpus).resolve())], str(Path(spm_model).resolve()), str(tmp_path / "out"),
                            progress=False)
    assert again == first  # returned as is (same timings), not refused as "built from other inputs"
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == stamps  # nothing rewritten


@pytest.mark.parametrize("shard_bytes", [0, -1])
def test_a_non_positive_shard_size_is_refused_before_anything_is_created(shard_bytes, corpus, spm_model, tmp_path):
    with pytest.raises(DataError, match=f"shard size {shard_bytes} bytes: must be positive; pass --shard-mb 1"):
        preprocess_text([corpus], spm_model, tmp_path / "out", shard_bytes=shard_bytes, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated_idx", "bad_header", "short_bin", "missing_bin"])
def test_corrupt_dataset_files_raise_one_line_errors(corpus, spm_model, tmp_path, damage):
    preprocess_text([corpus], spm_model, tmp_path / "idx", progress=False)
    prefix = tmp_path / "idx" / "web"
    idx, bin_ = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    if damage == "truncated_idx":
        idx.write_bytes(idx.read_bytes()[:-9])
    elif damage == "bad_header":
        idx.write_bytes(b"GARBAGE!!" + idx.read_bytes()[9:])
    elif damage == "short_bin":
        bin_.write_bytes(bin_.read_bytes()[:-2])
    else:
        bin_.unlink()
    with pytest.raises(DataError, match=r"web\.(idx|bin)") as e:
        open_indexed_dataset(prefix)
    assert "\n" not in str(e.value)


def test_parquet_input_needs_pyarrow_or_round_trips(spm_model, tmp_path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        (tmp_path / "t.parquet").write_bytes(b"PAR1")
        with pytest.raises(DataError, match="needs pyarrow"):
            preprocess_text([str(tmp_path / "t.parquet")], spm_model, tmp_path / "out", progress=False)
        assert not (tmp_path / "out").exists()
        return
    texts = [f"row {i} says hello" for i in range(50)]
    pq.write_table(pa.table({"text": texts, "source": ["web"] * 50}), tmp_path / "t.parquet", row_group_size=10)
    s = preprocess_text([str(tmp_path / "t.parquet")], spm_model, tmp_path / "out", progress=False)
    ds = open_indexed_dataset(tmp_path / "out" / "web")
    tok = load_tokenizer(spm_model)
    assert s["total"]["docs"] == 50 and [ds[i].tolist() for i in range(50)] == [tok.encode(t) for t in texts]


def test_cli_bad_input_exits_2_with_one_line_on_stderr(tmp_path):
    _write(tmp_path / "in.jsonl", [json.dumps({"text": "x"})])
    r = subprocess.run([sys.executable, "tools/preprocess_data.py", "text", "--input", str(tmp_path / "in.jsonl"),
                        "--tokenizer", str(tmp_path / "missing.model"), "--output-dir", str(tmp_path / "out")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: tokenizer path") and r.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["shard_mb_0", "shard_mb_negative", "output_dir_below_a_file"])
def test_cli_bad_options_exit_2_with_one_line_and_create_nothing(case, corpus, spm_model, tmp_path):
    out, extra = tmp_path / "out", []
    if case == "output_dir_below_a_file":
        (tmp_path / "afile").write_text("not a directory")
        out = tmp_path / "afile" / "out"
        pattern = r"error: --output-dir .*afile/out: cannot create this directory \(.*afile is a file, not a dir"
    else:
        mb = "0" if case == "shard_mb_0" else "-1"
        extra, pattern = ["--shard-mb", mb], rf"error: --shard-mb {mb}: the shard size must be at least 1 \(MiB\)"
    r = subprocess.run([sys.executable, "tools/preprocess_data.py", "text", "--input", corpus, "--tokenizer", spm_model,
                        "--output-dir", str(out), "--quiet", *extra], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert re.match(pattern, r.stderr), r.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) in ([], ["afile"])  # no .work-* left


def test_cli_text_writes_per_source_datasets_with_two_workers(corpus, spm_model, tmp_path):
    r = subprocess.run([sys.executable, "tools/preprocess_data.py", "text", "--input", corpus, "--tokenizer",
                        spm_model, "--output-dir", str(tmp_path / "out"), "--workers", "2", "--quiet"],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "tok/s" in r.stdout and r.stderr == ""
    assert sorted(read_summary(tmp_path / "out")["sources"]) == sorted(CORPUS_DOCS)
