import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from megatron_ultralong.eval.perplexity import EvalError, hf_nll_fn, long_documents, perplexity_by_length


def _tiny_llama(vocab=512, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_chunked_hf_nll_equals_cross_entropy_of_the_full_logits():
    model = _tiny_llama()
    ids = torch.randint(0, 512, (101,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(input_ids=ids[None, :-1]).logits[0]
    full = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none")
    chunked = hf_nll_fn(model, chunk=7)(ids)  # 100 positions in chunks of 7: a ragged last chunk
    assert chunked.shape == (100,)
    assert torch.allclose(chunked, full, atol=1e-5, rtol=0)


def test_ppl_and_tail_ppl_are_the_exponentiated_mean_nll_over_all_and_last_positions():
    def nll(ids):  # NLL rises with the position
        return torch.arange(1, len(ids), dtype=torch.float64) / 100

    docs = [np.arange(300), np.arange(50), np.arange(200)]
    res = perplexity_by_length(nll, docs, [99, 199], documents=2, tail=10, log=None)
    r99, r199 = res["results"]
    assert r99["documents"] == 2 and r199["documents"] == 2  # the 50-token document is never long enough
    assert math.isclose(r99["ppl"], math.exp(np.mean(np.arange(1, 100) / 100)), rel_tol=1e-12)
    assert math.isclose(r99["tail_ppl"], math.exp(np.mean(np.arange(90, 100) / 100)), rel_tol=1e-12)
    assert math.isclose(r199["tail_ppl"], math.exp(np.mean(np.arange(190, 200) / 100)), rel_tol=1e-12)


def test_windows_are_the_starts_of_documents_long_enough_for_the_length():
    docs = [np.arange(10), np.arange(100, 130), np.arange(200, 221)]
    picked = long_documents(docs, 20, documents=5)
    assert [p.tolist() for p in picked] == [list(range(100, 121)), list(range(200, 221))]


def test_a_length_no_document_reaches_is_refused_with_the_longest_length():
    with pytest.raises(EvalError, match=r"no held-out document has 65 tokens \(the longest has 40\).*<= 39"):
        perplexity_by_length(lambda ids: torch.zeros(len(ids) - 1), [np.arange(40)], [64], log=None)


def test_indexed_documents_read_lazily_give_lengths_from_the_index_and_exact_slices(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_ultralong.eval.perplexity import documents_from_indexed

    rng = np.random.default_rng(0)
    originals = [rng.integers(0, 60000, size=n).astype(np.uint16) for n in (5, 300, 41)]
    builder = IndexedDatasetBuilder(str(tmp_path / "d.bin"), dtype=np.uint16)
    for doc in originals:
        builder.add_document(torch.from_numpy(doc.astype(np.int64)), [len(doc)])
    builder.finalize(str(tmp_path / "d.idx"))

    docs = documents_from_indexed([str(tmp_path / "d"), str(tmp_path / "d")], max_documents=4)
    assert [len(d) for d in docs] == [5, 300, 41, 5]  # capped at 4, across both prefixes
    assert np.array_equal(docs[1][:], originals[1].astype(np.int64)) and docs[1][:].dtype == np.int64
    assert np.array_equal(docs[1][250:400], originals[1][250:].astype(np.int64))  # clipped like a list slice
    assert docs[0][3:3].size == 0
    picked = long_documents(docs, 40, documents=5)
    assert [len(p) for p in picked] == [41, 41] and np.array_equal(picked[1], originals[2].astype(np.int64))
    with pytest.raises(TypeError, match="contiguous slices"):
        docs[1][::2]


def test_cli_scores_indexed_and_jsonl_data_and_refuses_bad_input_in_one_line(tmp_path):
    from megatron_ultralong.data.preprocess import preprocess_text
    from megatron_ultralong.data.synthetic import synthetic_documents, train_sentencepiece, write_synthetic_corpus

    corpus = write_synthetic_corpus(tmp_path / "raw", {"books": 12}, seed=0, length_scale=2.0,
                                    per_source_files=True)
    spm = train_sentencepiece(list(synthetic_documents("books", 30, seed=1)), tmp_path / "tok", vocab_size=512)
    preprocess_text(corpus, spm, str(tmp_path / "idx"), workers=1, progress=False)
    model_dir = tmp_path / "hf"
    _tiny_llama().save_pretrained(model_dir)

    def run(*args):
        return subprocess.run([sys.executable, "tools/eval_perplexity.py", "--hf", str(model_dir), "--dtype",
                               "fp32", *args], capture_output=True, text=True)

    out = tmp_path / "ppl"
    r = run("--data", str(tmp_path / "idx" / "books"), "--lengths", "64,256", "--documents", "3", "--tail", "32",
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "perplexity.json").read_text())
    assert [x["length"] for x in res["results"]] == [64, 256]
    assert all(x["documents"] == 3 and 100 < x["ppl"] < 2000 for x in res["results"])  # random model: ~vocab
    assert (out / "perplexity.png").stat().st_size > 0
    r_jsonl = run("--data", corpus[0], "--tokenizer", spm, "--lengths", "64,256", "--documents", "3", "--tail", "32",
                  "--out", str(tmp_path / "ppl2"))
    assert r_jsonl.returncode == 0, r_jsonl.stderr
    same = json.loads((tmp_path / "ppl2" / "perplexity.json").read_text())["results"]
    assert [x["ppl"] for x in same] == pytest.approx([x["ppl"] for x in res["results"]], rel=1e-6)

    too_long = run("--data", str(tmp_path / "idx" / "books"), "--lengths", "100000", "--out", str(out))
    assert too_long.returncode == 2 and too_long.stderr.count("\n") == 1 and "no held-out document" in too_long.stderr
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    bad = run("--data", str(tmp_path / "bad.jsonl"), "--tokenizer", spm, "--out", str(out))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "bad.jsonl:1" in bad.stderr
    small = tmp_path / "hf_small_vocab"  # a model whose vocabulary the data's token ids overflow
    _tiny_llama(vocab=64).save_pretrained(small)
    r_small = subprocess.run([sys.executable, "tools/eval_perplexity.py", "--hf", str(small), "--data",
                              str(tmp_path / "idx" / "books"), "--lengths", "64", "--out", str(out)],
                             capture_output=True, text=True)
    assert r_small.returncode == 2 and r_small.stderr.count("\n") == 1 and "another tokenizer" in r_small.stderr
