"""data.checks: bad data inputs fail before the model is built; datasets must match the run's tokenizer."""
import io
import json
import re
import time

import pytest

from megatron_ultralong.config import load_recipe
from megatron_ultralong.data import DataError
from megatron_ultralong.data.checks import check_data
from megatron_ultralong.data.preprocess import preprocess_text
from megatron_ultralong.data.synthetic import synthetic_chat_samples, synthetic_documents, write_jsonl
from tests.dist import run_ranks


@pytest.fixture(scope="module")
def other_spm(tmp_path_factory):
    """A different 512-piece sentencepiece model: same vocabulary size, other pieces and ids."""
    import sentencepiece

    buf = io.BytesIO()
    texts = list(synthetic_documents("books", 60, seed=5))
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buf, vocab_size=512,
                                             model_type="bpe", byte_fallback=True, minloglevel=2, num_threads=1,
                                             control_symbols=["<|sep|>"], bos_id=-1, eos_id=-1, unk_id=0)
    path = tmp_path_factory.mktemp("spm_other") / "other.model"
    path.write_bytes(buf.getvalue())
    return str(path)


def _cfg(tmp, *overrides):
    return load_recipe("toy_cpt", ["data.synthetic=null", "data.seq_length=64", "data.num_workers=0",
                                   f"train.run_dir={tmp}/run", "train.tensorboard=false", *overrides])


def _trainer_error(rank, world, cfg):
    import torch.distributed as dist

    from megatron_ultralong.train.trainer import Trainer

    t0 = time.perf_counter()
    try:
        Trainer(cfg).close()
    except DataError as e:  # ConfigError included
        return type(e).__name__, str(e), dist.is_initialized(), time.perf_counter() - t0
    return None, "", dist.is_initialized(), time.perf_counter() - t0


def test_bad_data_paths_tokenizer_and_sft_schema_fail_before_any_process_group(indexed, spm_model, tmp_path):
    bad_chat = tmp_path / "chat.jsonl"
    bad_chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"
                        + json.dumps({"text": "no messages here"}) + "\n")
    cases = {
        "missing data path": (_cfg(tmp_path, f"data.paths=[{tmp_path}/nothing]", f"data.tokenizer={spm_model}"),
                              "neither a preprocessing output directory nor a dataset prefix"),
        "missing tokenizer": (_cfg(tmp_path, f"data.paths=[{indexed}]", f"data.tokenizer={tmp_path}/no.model"),
                              "does not exist"),
        "bad SFT record": (_cfg(tmp_path, f"data.paths=[{bad_chat}]", f"data.tokenizer={spm_model}",
                                "train.mode=sft"), r"chat.jsonl:2: no 'messages' list"),
        "text given to SFT": (_cfg(tmp_path, f"data.paths=[{indexed}/web]", f"data.tokenizer={spm_model}",
                                   "train.mode=sft"), "is CPT text"),
    }
    for name, (cfg, pattern) in cases.items():
        kind, msg, dist_started, seconds = run_ranks(_trainer_error, 1, args=(cfg,))[0]
        assert kind is not None and msg, name
        assert re.search(pattern, msg), (name, msg)
        assert "\n" not in msg and not dist_started, name  # refused before init_distributed, so before the model
        assert seconds < 5, (name, seconds)


def test_a_dataset_of_another_tokenizer_is_refused_unless_allowed(indexed, spm_model, other_spm, llama3_json,
                                                                  tmp_path, corpus):
    check_data(_cfg(tmp_path, f"data.paths=[{indexed}]", f"data.tokenizer={spm_model}"))  # its own: fine
    cfg = _cfg(tmp_path, f"data.paths=[{indexed}]", f"data.tokenizer={other_spm}")
    with pytest.raises(DataError, match=r"was tokenized with .*tiny\.model, not data\.tokenizer=.*other\.model "
                                        r"\(.*separator '<s>' = ids .*\); .*data\.allow_tokenizer_mismatch=true") as e:
        check_data(cfg)
    assert "\n" not in str(e.value)
    check_data(_cfg(tmp_path, f"data.paths=[{indexed}]", f"data.tokenizer={other_spm}",
                    "data.allow_tokenizer_mismatch=true"))
    # a manifest's sources are checked too
    from megatron_ultralong.data.mixture import MixtureParams, build_mixture, resolve_sources, write_mixture

    write_mixture(build_mixture(resolve_sources([indexed]), MixtureParams(short_threshold=150, long_threshold=600)),
                  tmp_path / "mix.json", plot=False)
    with pytest.raises(DataError, match="was tokenized with"):
        check_data(_cfg(tmp_path, f"data.paths=[{tmp_path}/mix.json]", f"data.tokenizer={other_spm}"))
    # ids beyond the model's embedding: refused even when mismatches are allowed
    big = tmp_path / "idx_llama3"
    preprocess_text([corpus], llama3_json, big, progress=False)
    for extra in ([], ["data.allow_tokenizer_mismatch=true"]):
        with pytest.raises(DataError, match=r"\(128256 ids\) but model.vocab_size=512: its ids do not fit"):
            check_data(_cfg(tmp_path, f"data.paths=[{big}]", "data.separator_id=5", *extra))


def test_an_sft_dataset_of_another_tokenizer_is_refused(spm_model, other_spm, tmp_path):
    from megatron_ultralong.data.sft import preprocess_chat

    chat = write_jsonl(tmp_path / "chat.jsonl", synthetic_chat_samples(12, seed=1))
    preprocess_chat([chat], spm_model, str(tmp_path / "sft"))
    check_data(_cfg(tmp_path, f"data.paths=[{tmp_path}/sft]", f"data.tokenizer={spm_model}", "train.mode=sft"))
    with pytest.raises(DataError, match=r"sft was tokenized with .*, not data\.tokenizer="):
        check_data(_cfg(tmp_path, f"data.paths=[{tmp_path}/sft]", f"data.tokenizer={other_spm}", "train.mode=sft"))
