import shutil
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from megatron_ultralong.config import ConfigError, load_recipe, needs_document_masking
from megatron_ultralong.data import DataError
from megatron_ultralong.data.indexed import open_indexed_dataset
from megatron_ultralong.data.loader import (
    BATCH_KEYS,
    DaliBatchSource,
    RankBatchSampler,
    SampleDataset,
    build_source,
    build_train_iterator,
    dali_available,
)
from megatron_ultralong.data.synthetic import synthetic_chat_samples, write_jsonl
from megatron_ultralong.data.tokenizer import load_tokenizer

SEQ = 64


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("chat") / "sft.jsonl", synthetic_chat_samples(40, seed=2))


def _cfg(*overrides, recipe="toy_cpt"):
    return load_recipe(recipe, [f"data.seq_length={SEQ}", "data.num_workers=0", *overrides])


def _cpt_cfg(indexed, spm_model, *overrides):
    return _cfg("data.synthetic=null", f"data.paths=[{indexed}]", f"data.tokenizer={spm_model}",
                "data.short_threshold=150", "data.long_threshold=600", *overrides)


def _sft_cfg(paths, spm_model, *overrides):
    return _cfg("data.synthetic=null", f"data.paths=[{paths}]", f"data.tokenizer={spm_model}", "train.mode=sft",
                *overrides)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


@pytest.mark.parametrize("mode", ["cpt", "sft"])
def test_copy_task_batches_follow_the_trainer_contract(mode):
    cfg = _cfg(f"train.mode={mode}", "train.micro_batch_size=3")
    batch = next(build_train_iterator(cfg, 0, 1))
    types = {"tokens": torch.int64, "labels": torch.int64, "loss_mask": torch.float32, "position_ids": torch.int64,
             "doc_ids": torch.int32}
    assert {k: (v.dtype, tuple(v.shape)) for k, v in batch.items()} == {k: (t, (3, SEQ)) for k, t in types.items()}
    assert torch.equal(batch["labels"][:, :-1], batch["tokens"][:, 1:])
    assert int(batch["tokens"].max()) < cfg.model.vocab_size
    if mode == "cpt":  # CPT copy task: loss on every token, one attention span, plain positions
        assert batch["loss_mask"].sum() == 3 * SEQ
        assert torch.equal(batch["position_ids"], torch.arange(SEQ).expand(3, SEQ))
    else:  # SFT: loss on the copied half only, positions restart per packed sample
        assert 0.2 < batch["loss_mask"].mean() < 0.6
        starts = torch.cat([torch.ones(3, 1, dtype=torch.bool), batch["doc_ids"][:, 1:] != batch["doc_ids"][:, :-1]], 1)
        assert torch.equal(starts, batch["position_ids"] == 0)


def _sources(indexed, spm_model, chat):
    return {"copy": _cfg("train.micro_batch_size=2"),
            "cpt": _cpt_cfg(indexed, spm_model, "train.micro_batch_size=2"),
            "cpt_masked": _cpt_cfg(indexed, spm_model, "train.micro_batch_size=2", "data.mask_cross_document=true"),
            "sft": _sft_cfg(chat, spm_model, "train.micro_batch_size=2")}


@pytest.mark.parametrize("source", ["copy", "cpt", "cpt_masked", "sft"])
def test_resume_yields_the_same_batches_as_an_uninterrupted_run(source, indexed, spm_model, chat):
    cfg = _sources(indexed, spm_model, chat)[source]
    full = _take(build_train_iterator(cfg, 0, 1), 8)
    resumed = _take(build_train_iterator(cfg, 0, 1, consumed_samples=6), 5)  # 3 micro-batches of 2 done
    assert _same(resumed, full[3:])
    assert not _same(full[:5], full[3:])  # the batches really differ from one another


def test_dp2_ranks_together_see_exactly_the_dp1_global_batches(indexed, spm_model):
    cfg = _cpt_cfg(indexed, spm_model, "train.micro_batch_size=1", "train.global_batch_size=4")
    dp1 = _take(build_train_iterator(cfg, 0, 1), 8)  # 2 global batches of 4 samples
    r0, r1 = (_take(build_train_iterator(cfg, r, 2), 4) for r in (0, 1))
    interleaved = [b for pair in zip(r0, r1) for b in pair]  # rank r takes the r-th sample of each block of 2
    assert _same(interleaved, dp1)
    # and resuming under DP=2 after one global batch trained under DP=1 continues the same sequence
    assert _same(_take(build_train_iterator(cfg, 1, 2, consumed_samples=4), 2), [dp1[5], dp1[7]])


def _split_on(stream, sep):
    """Documents of a ``d SEP d SEP ...`` stream (SEP: a token sequence), each without its closing separator."""
    k = len(sep)
    hits = np.flatnonzero((np.lib.stride_tricks.sliding_window_view(stream, k) == sep).all(axis=1))
    starts, docs = 0, []
    for h in hits:
        if h >= starts:  # occurrences do not overlap
            docs.append(tuple(stream[starts:h].tolist()))
            starts = h + k
    return docs, starts


@pytest.mark.parametrize("separator", ["default", "null"])
def test_cpt_windows_cover_the_mixture_once_per_epoch_in_a_new_order(indexed, spm_model, separator):
    cfg = _cpt_cfg(indexed, spm_model, *(["data.separator=null"] if separator == "null" else []))
    source = build_source(cfg)
    sep, T = np.array(source.sep_ids), source.epoch_tokens
    assert len(sep) == (3 if separator == "default" else 1)  # "<s>" is three pieces of the toy tokenizer
    n = -(-2 * T // SEQ) + 1  # two epochs
    windows = [source.window(i)[0] for i in range(n)]
    assert all(len(w) == SEQ + 1 for w in windows)
    assert all(a[-1] == b[0] for a, b in zip(windows, windows[1:]))  # overlap by one token, nothing skipped
    stream = np.concatenate([w[:-1] for w in windows])
    datasets = [open_indexed_dataset(p) for p in source.prefixes]
    expected = Counter(tuple(datasets[s][d].tolist()) for s, d in source.draws)
    assert T == sum(len(d) for d in expected.elements()) + len(sep) * len(source.draws)
    epochs = []
    for e in range(2):
        part = stream[e * T:(e + 1) * T]
        assert np.array_equal(part[-len(sep):], sep)
        docs, end = _split_on(part, sep)
        assert end == T  # nothing after the last separator of the epoch
        assert Counter(docs) == expected  # every draw exactly once: upsampled documents several times
        epochs.append(docs)
    assert epochs[0] != epochs[1]  # reshuffled per epoch


def test_cross_document_masking_is_switchable(indexed, spm_model):
    def batches(*extra):  # 64 windows: enough document boundaries at this corpus' lengths
        taken = _take(build_train_iterator(_cpt_cfg(indexed, spm_model, "train.micro_batch_size=4", *extra), 0, 1), 16)
        return {k: torch.cat([b[k] for b in taken]) for k in taken[0]}

    off, on = batches(), batches("data.mask_cross_document=true")
    assert torch.equal(off["tokens"], on["tokens"]) and torch.equal(off["doc_ids"], on["doc_ids"])
    assert off["loss_mask"].sum() == 64 * SEQ and torch.equal(off["position_ids"][5], torch.arange(SEQ))
    sep = build_source(_cpt_cfg(indexed, spm_model)).sep_ids
    assert len(sep) == 3 and sep[-1] not in sep[:-1]
    # the last separator token's label is the next document's first token
    assert torch.equal(on["loss_mask"] == 0, on["tokens"] == sep[-1])
    new_doc = torch.cat([torch.ones(64, 1, dtype=torch.bool), on["doc_ids"][:, 1:] != on["doc_ids"][:, :-1]], 1)
    assert torch.equal(new_doc, on["position_ids"] == 0) and new_doc[:, 1:].sum() >= 2


def test_dataloader_worker_processes_give_the_in_process_batches(indexed, spm_model):
    base = _take(build_train_iterator(_cpt_cfg(indexed, spm_model, "train.micro_batch_size=2"), 0, 1), 6)
    workers = _take(build_train_iterator(_cpt_cfg(indexed, spm_model, "train.micro_batch_size=2",
                                                  "data.num_workers=2"), 0, 1), 6)
    assert _same(base, workers)


def test_sft_from_chat_jsonl_equals_the_preprocessed_dataset_and_masks_only_assistant_labels(chat, spm_model,
                                                                                           tmp_path):
    from megatron_ultralong.data.sft import preprocess_chat

    preprocess_chat([chat], spm_model, str(tmp_path / "sft"))
    from_jsonl = _take(build_train_iterator(_sft_cfg(chat, spm_model, "train.micro_batch_size=2"), 0, 1), 4)
    from_prefix = _take(build_train_iterator(_sft_cfg(tmp_path / "sft", spm_model, "train.micro_batch_size=2"),
                                             0, 1), 4)
    assert _same(from_jsonl, from_prefix)
    tok = load_tokenizer(spm_model)
    for b in from_jsonl:
        for row in range(2):
            toks, ids = b["tokens"][row], b["doc_ids"][row]
            starts = torch.nonzero(torch.cat([torch.tensor([True]), ids[1:] != ids[:-1]])).flatten()
            real = [s for s in starts.tolist() if toks[s] == tok.bos_id]
            assert len(real) >= 1 and real == starts.tolist()[: len(real)]  # whole samples, each from its BOS
            counted = b["labels"][row][b["loss_mask"][row] == 1]
            assert (counted == tok.eot_id).sum() >= 1 and tok.bos_id not in counted.tolist()


def test_sft_decontaminates_chat_jsonl_when_eval_files_are_set(chat, spm_model, tmp_path):
    sample = synthetic_chat_samples(40, seed=2)[0]
    leaked = " ".join(w for m in sample["messages"] for w in m["content"].split())
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{"q": leaked}])
    plain = build_source(_sft_cfg(chat, spm_model))
    clean = build_source(_sft_cfg(chat, spm_model, f"data.eval_files=[{eval_file}]", "data.decontamination_ngram=8"))
    assert plain.num_samples == 40 and clean.num_samples == 39


def test_dali_external_source_yields_the_torch_path_batches(indexed, spm_model):
    cfg = _cpt_cfg(indexed, spm_model, "train.micro_batch_size=2")
    torch_batches = _take(build_train_iterator(cfg, 1, 2, consumed_samples=4), 3)
    dataset = SampleDataset(build_source(cfg), needs_document_masking(cfg))
    source = DaliBatchSource(dataset, RankBatchSampler(4, 2, 1, 2))
    for k, expected in enumerate(torch_batches):
        columns = source(SimpleNamespace(iteration=k))
        assert tuple(expected) == BATCH_KEYS and len(columns) == len(BATCH_KEYS)  # one column per batch key
        for key, col in zip(BATCH_KEYS, columns, strict=True):
            assert len(col) == 2  # micro_batch_size samples per column
            assert np.array_equal(np.stack(col), expected[key].numpy())


def _dali_importable():
    import importlib.util

    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


@pytest.mark.skipif(not _dali_importable(), reason="nvidia-dali is not installed (optional, GPU extra)")
def test_dali_cpu_pipeline_yields_the_torch_path_batches(indexed, spm_model):
    from megatron_ultralong.data.loader import _dali_iterator

    cfg = _cpt_cfg(indexed, spm_model, "train.micro_batch_size=2", "data.mask_cross_document=true")
    expected = _take(build_train_iterator(cfg, 1, 2, consumed_samples=4), 4)
    dataset = SampleDataset(build_source(cfg), needs_document_masking(cfg))
    dali = _take(_dali_iterator(dataset, RankBatchSampler(4, 2, 1, 2), threads=1, device_id=None), 4)
    assert _same(expected, dali)


@pytest.mark.gpu
@pytest.mark.skipif(not dali_available(), reason="needs nvidia-dali and a CUDA GPU")
def test_dali_loader_prefetches_the_same_batches_to_the_gpu(indexed, spm_model):
    cpu = _take(build_train_iterator(_cpt_cfg(indexed, spm_model, "train.micro_batch_size=2",
                                              "data.loader=torch"), 0, 1), 3)
    gpu = _take(build_train_iterator(_cpt_cfg(indexed, spm_model, "train.micro_batch_size=2",
                                              "data.loader=dali"), 0, 1), 3)
    assert all(v.is_cuda for b in gpu for v in b.values())
    assert _same(cpu, [{k: v.cpu() for k, v in b.items()} for b in gpu])


def test_bad_loader_inputs_raise_one_line_errors(indexed, spm_model, tmp_path, chat):
    with pytest.raises(ConfigError, match="joins documents with data.separator='<s>', .*: set data.tokenizer"):
        build_train_iterator(_cfg("data.synthetic=null", f"data.paths=[{indexed}]"), 0, 1)
    with pytest.raises(DataError, match="has 512 tokens but model.vocab_size=256"):
        build_train_iterator(_cpt_cfg(indexed, spm_model, "model.vocab_size=256"), 0, 1)
    with pytest.raises(ConfigError, match="needs data.tokenizer"):
        build_train_iterator(_cfg("data.synthetic=null", f"data.paths=[{chat}]", "train.mode=sft"), 0, 1)
    with pytest.raises(DataError, match="not an SFT dataset"):
        build_train_iterator(_sft_cfg(f"{indexed}/web", spm_model), 0, 1)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("web.bin", "web.idx"):
        shutil.copy(f"{indexed}/{name}", broken / name)
    with open(broken / "web.idx", "r+b") as f:
        f.truncate(40)
    with pytest.raises(DataError, match=r"web\.idx: corrupt"):
        build_train_iterator(_cpt_cfg(str(broken / "web"), spm_model), 0, 1)


def test_a_dataset_of_the_other_mode_is_refused_with_a_hint_to_the_right_train_mode(indexed, spm_model, chat,
                                                                                     tmp_path):
    from megatron_ultralong.data.mixture import MixtureParams, build_mixture, write_mixture
    from megatron_ultralong.data.sft import preprocess_chat

    sft = str(tmp_path / "sft" / "train")
    preprocess_chat([chat], spm_model, sft)
    with pytest.raises(DataError, match=r"is an SFT dataset .* not CPT text; train on it with train\.mode=sft") as e:
        build_train_iterator(_cpt_cfg(sft, spm_model), 0, 1)
    assert "\n" not in str(e.value)
    # an SFT prefix beside a text preprocessing output is still SFT data
    shutil.copytree(indexed, tmp_path / "both")
    preprocess_chat([chat], spm_model, str(tmp_path / "both" / "sft"))
    assert build_source(_sft_cfg(tmp_path / "both" / "sft", spm_model)).num_samples == 40
    for text in (f"{indexed}/web", indexed):
        with pytest.raises(DataError, match=r"is CPT text from tools/preprocess_data\.py text, not an SFT dataset; "
                                            r"train on it with train\.mode=cpt"):
            build_train_iterator(_sft_cfg(text, spm_model), 0, 1)
    # a manifest that names an SFT dataset (written before resolve_sources refused them) is refused as well
    mix = build_mixture([("web", f"{indexed}/web")], MixtureParams(short_threshold=150, long_threshold=600))
    mix.prefixes = [sft]
    write_mixture(mix, tmp_path / "bad_mix.json", plot=False)
    with pytest.raises(DataError, match="is an SFT dataset"):
        build_train_iterator(_cpt_cfg(tmp_path / "bad_mix.json", spm_model), 0, 1)


def test_a_mixture_manifest_given_without_json_is_pointed_at(indexed, spm_model, tmp_path):
    from megatron_ultralong.data.mixture import MixtureParams, build_mixture, resolve_sources, write_mixture

    mix = build_mixture(resolve_sources([indexed]), MixtureParams(short_threshold=150, long_threshold=600))
    write_mixture(mix, tmp_path / "mix" / "cpt_mix.json", plot=False)
    stem = str(tmp_path / "mix" / "cpt_mix")
    with pytest.raises(DataError, match=rf"did you mean {stem}\.json \(a mixture manifest\)\?"):
        build_train_iterator(_cpt_cfg(stem, spm_model), 0, 1)
    assert next(build_train_iterator(_cpt_cfg(stem + ".json", spm_model), 0, 1))["tokens"].shape[1] == SEQ


def test_each_stage_reads_the_mixture_in_its_own_order_and_a_stage_always_in_the_same(indexed, spm_model,
                                                                                      tmp_path):
    """Issue 13 item 7: the data order comes from the stage (train.seed, train.mode, data.seq_length)."""
    from megatron_ultralong.data.loader import stage_seed

    def order(*extra):
        source = build_source(_cpt_cfg(indexed, spm_model, *extra))
        return source._epoch(0)[0], source

    same_a, src = order()
    same_b, _ = order(f"train.run_dir={tmp_path}/elsewhere", "parallel.tp=2")  # run dir, layout: same stage
    assert np.array_equal(same_a, same_b) and src.seed == stage_seed(_cpt_cfg(indexed, spm_model))
    other_length, _ = order("data.seq_length=32")  # the next stage on the same mixture
    assert sorted(other_length.tolist()) == sorted(same_a.tolist()) and not np.array_equal(other_length, same_a)
    assert stage_seed(_cpt_cfg(indexed, spm_model, "train.seed=7")) != src.seed
    assert stage_seed(_cpt_cfg(indexed, spm_model)) != stage_seed(_cpt_cfg(indexed, spm_model, "train.mode=sft"))
    # the packaged stages differ from one another
    from megatron_ultralong.config import load_recipe as recipe

    seeds = {name: stage_seed(recipe(name)) for name in ("cpt_1m", "cpt_2m", "cpt_4m", "sft")}
    assert len(set(seeds.values())) == 4, seeds
