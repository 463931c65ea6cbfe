import os
import shutil

import pytest

from megatron_ultralong.data import DataError
from megatron_ultralong.data.tokenizer import load_tokenizer


def test_sentencepiece_separator_is_the_sep_control_symbol_not_bos_or_eos(spm_model):
    tok = load_tokenizer(spm_model)
    assert tok.vocab_size == 512
    assert tok.sep_id == tok.token_to_id("<|sep|>")
    assert tok.sep_id not in (tok.bos_id, tok.eos_id, tok.eot_id)
    assert tok.sep_id not in tok.encode("a <|sep|> b")  # control symbols never come out of text
    text = "Hello brave world"
    assert tok.decode(tok.encode(text)) == text


def test_llama3_separator_is_reserved_special_token_0_and_text_cannot_inject_specials(llama3_json):
    tok = load_tokenizer(llama3_json)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.eot_id) == (128256, 128000, 128001, 128009)
    assert tok.sep_id == 128002 and tok.decode([tok.sep_id]) == "<|reserved_special_token_0|>"
    assert tok.encode("Hello world") == [9906, 1917]
    assert 128009 not in tok.encode("end <|eot_id|>")  # plain document text stays text
    assert tok.encode_with_specials("end<|eot_id|>")[-1] == 128009  # rendered chat text parses them


def test_a_directory_resolves_to_its_tokenizer_json(llama3_json, tmp_path):
    shutil.copy(llama3_json, tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path).sep_id == 128002


def test_separator_override_by_name_or_id_and_refusal_of_tokens_with_a_meaning(spm_model):
    tok = load_tokenizer(spm_model, separator="<|start_header_id|>")  # any free special token, by name
    assert tok.sep_id == tok.token_to_id("<|start_header_id|>")
    with pytest.raises(DataError, match="end-of-turn token"):
        load_tokenizer(spm_model, separator="<|eot_id|>").sep_id
    with pytest.raises(DataError, match="EOS token"):
        load_tokenizer(spm_model, separator=2).sep_id
    with pytest.raises(DataError, match="outside the vocabulary"):
        load_tokenizer(spm_model, separator=512).sep_id
    with pytest.raises(DataError, match="not in the vocabulary"):
        load_tokenizer(spm_model, separator="<|nope|>").sep_id


def test_tokenizer_without_a_separator_asks_for_data_separator_id(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    t = Tokenizer(WordLevel({"<unk>": 0, "hello": 1, "world": 2}, unk_token="<unk>"))
    t.pre_tokenizer = Whitespace()
    t.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.encode("hello world") == [1, 2]
    with pytest.raises(DataError, match="data.separator_id"):
        tok.sep_id


@pytest.mark.parametrize("case", ["missing", "tiktoken", "garbage_dir"])
def test_bad_tokenizer_paths_raise_one_line_errors(case, tmp_path, llama3_json):
    if case == "missing":
        path, pattern = tmp_path / "nope.model", "does not exist"
    elif case == "tiktoken":  # Llama-3's original tokenizer.model is tiktoken, not sentencepiece
        path, pattern = os.path.join(os.path.dirname(llama3_json), "tokenizer.model"), "not a sentencepiece model"
    else:
        (tmp_path / "readme.txt").write_text("hi")
        path, pattern = tmp_path, "neither tokenizer.json nor"
    with pytest.raises(DataError, match=pattern) as e:
        load_tokenizer(path)
    assert "\n" not in str(e.value)
