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


# ------------------------------------------------------------------------------- data.separator (issue 13)
def test_the_default_separator_is_the_text_lt_s_gt_as_llama3_encodes_it(llama3_json):
    from megatron_ultralong.config import DataConfig
    from megatron_ultralong.data.tokenizer import DEFAULT_SEPARATOR, resolve_separator

    assert DataConfig().separator == DEFAULT_SEPARATOR == "<s>"
    sep = resolve_separator(load_tokenizer(llama3_json), "<s>", None)
    assert sep.ids == (45147, 29) and sep.pieces == ("<s", ">")  # text, not <|begin_of_text|> (128000)
    assert "45147" in sep.describe() and "'<s'" in sep.describe()


def test_lt_s_gt_is_text_even_where_the_tokenizer_names_bos_so(spm_model, tmp_path):
    import io

    import sentencepiece

    from megatron_ultralong.data.synthetic import synthetic_documents
    from megatron_ultralong.data.tokenizer import resolve_separator

    # the demo's tokenizer: "<s>" in byte pieces, without sentencepiece's dummy-prefix space
    demo = load_tokenizer(spm_model)
    sep = resolve_separator(demo, "<s>", None)
    assert sep.pieces == ("<0x3C>", "s", "<0x3E>") and demo.decode(list(sep.ids)) == "<s>"
    # a sentencepiece model with its default BOS piece "<s>": the text never becomes BOS
    buf = io.BytesIO()
    texts = [t for t in synthetic_documents("web", 40, seed=1)]
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buf, vocab_size=400,
                                             model_type="bpe", byte_fallback=True, minloglevel=2, num_threads=1)
    (tmp_path / "bos.model").write_bytes(buf.getvalue())
    spm_bos = load_tokenizer(tmp_path / "bos.model")
    assert spm_bos.token_to_id("<s>") == spm_bos.bos_id == 1
    ids = resolve_separator(spm_bos, "<s>", None).ids
    assert spm_bos.bos_id not in ids and spm_bos.decode(list(ids)) == "<s>"
    # an HF tokenizer.json whose special BOS is "<s>" (Llama-2 / Mistral style): text pieces, not id 1
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    t = Tokenizer(WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "<": 3, "s": 4, ">": 5}, unk_token="<unk>"))
    t.pre_tokenizer = Whitespace()
    t.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    (tmp_path / "hf").mkdir()
    t.save(str(tmp_path / "hf" / "tokenizer.json"))
    (tmp_path / "hf" / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>"}')
    hf = load_tokenizer(tmp_path / "hf")
    assert hf.bos_id == 1 and resolve_separator(hf, "<s>", None).ids == (3, 4, 5)


def test_separator_id_replaces_the_text_and_null_takes_the_dedicated_token(spm_model):
    from megatron_ultralong.config import ConfigError, load_recipe, validate
    from megatron_ultralong.data.tokenizer import resolve_separator

    tok = load_tokenizer(spm_model, 5)
    assert resolve_separator(tok, "<s>", 5).ids == (5,) and resolve_separator(tok, "<s>", 5).origin == \
        "data.separator_id"
    assert resolve_separator(load_tokenizer(spm_model), None, None).ids == (tok.token_to_id("<|sep|>"),)
    assert resolve_separator(None, "<s>", 7).ids == (7,)  # no tokenizer: the id alone
    with pytest.raises(ConfigError, match="set data.tokenizer, or give one token id as data.separator_id"):
        resolve_separator(None, "<s>", None)
    with pytest.raises(DataError, match="EOS token"):
        resolve_separator(tok, "<s>", 2)
    with pytest.raises(ConfigError, match="both choose the separator; set one of them"):
        validate(load_recipe("toy_cpt", ["data.separator=<sep>", "data.separator_id=5"]))
    with pytest.raises(ConfigError, match="must be a non-empty text"):
        validate(load_recipe("toy_cpt", ["data.separator=''"]))
    validate(load_recipe("toy_cpt", ["data.separator_id=5"]))  # the default text with an id: the id wins
