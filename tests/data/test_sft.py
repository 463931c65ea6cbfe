import json
import shutil

import numpy as np
import pytest

from megatron_ultralong.data import DataError
from megatron_ultralong.data.decontam import decontaminate
from megatron_ultralong.data.sft import (
    ChatSample,
    encode_chat,
    encode_hf_template,
    encode_llama3,
    load_sft_dataset,
    preprocess_chat,
    read_chat_jsonl,
    tokenize_samples,
)
from megatron_ultralong.data.synthetic import synthetic_chat_samples, write_jsonl
from megatron_ultralong.data.tokenizer import load_tokenizer

# Meta-Llama-3-8B-Instruct's tokenizer_config.json chat_template
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

CHAT = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour. "},
        {"role": "assistant", "content": " Blue, like the sky.\n"},
        {"role": "user", "content": "And 2+2?"},
        {"role": "assistant", "content": "2 + 2 = 4."}]


def _runs(target):
    """[start, stop) of each run of 1s."""
    edges = np.flatnonzero(np.diff(np.r_[0, target, 0]))
    return list(zip(edges[::2], edges[1::2]))


def test_builtin_llama3_format_equals_the_official_template_token_for_token(llama3_json, tmp_path):
    tok = load_tokenizer(llama3_json)
    tokens, target = encode_llama3(CHAT, tok)
    assert tokens[:5].tolist() == [128000, 128006, 9125, 128007, 271]  # <bos><sh>system<eh>\n\n
    shutil.copy(llama3_json, tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": LLAMA3_TEMPLATE,
                                                                "bos_token": "<|begin_of_text|>",
                                                                "eos_token": "<|eot_id|>"}))
    hf = load_tokenizer(tmp_path)
    assert hf.eos_id == 128001 and hf.eot_id == 128009  # instruct configs call <|eot_id|> eos
    hf_tokens, hf_target = encode_hf_template(CHAT, hf)
    assert tokens.tolist() == hf_tokens.tolist() and target.tolist() == hf_target.tolist()
    assert np.array_equal(encode_chat(CHAT, hf)[0], hf_tokens)  # 'auto' picks the tokenizer's own template
    rendered = __import__("jinja2").Template(LLAMA3_TEMPLATE).render(messages=CHAT, bos_token="<|begin_of_text|>")
    assert tokens.tolist() == tok.encode_with_specials(rendered)


@pytest.mark.parametrize("which", ["spm", "llama3"])
def test_loss_mask_covers_exactly_the_assistant_spans(which, spm_model, llama3_json):
    tok = load_tokenizer(spm_model if which == "spm" else llama3_json)
    tokens, target = encode_chat(CHAT, tok, "llama3")
    spans = _runs(target)
    answers = [m["content"].strip() for m in CHAT if m["role"] == "assistant"]
    assert len(spans) == len(answers)
    for (a, b), answer in zip(spans, answers):
        assert tokens[a:b].tolist() == tok.encode(answer) + [tok.eot_id]  # content + the end of turn, no header
    assert target.sum() == sum(len(tok.encode(x)) + 1 for x in answers)


def test_a_template_that_is_not_prefix_stable_is_refused(llama3_json, tmp_path):
    shutil.copy(llama3_json, tmp_path / "tokenizer.json")
    unstable = "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['content'] }}{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": unstable}))
    with pytest.raises(DataError, match="not prefix-stable.*chat_template=llama3"):
        encode_chat(CHAT, load_tokenizer(tmp_path), "hf")


def _planted(tmp_path):
    samples = [ChatSample(s["messages"], f"sft.jsonl:{i + 1}", s["source"])
               for i, s in enumerate(synthetic_chat_samples(60, seed=4))]
    long_answers = [s for s in samples if s.source == "general" and len(s.messages[-1]["content"].split()) >= 14]
    victim, other = long_answers[:2]
    leaked = " ".join(victim.messages[-1]["content"].split()[:14])  # 14 words of an answer leak into a benchmark
    near_miss = " ".join(other.messages[-1]["content"].split()[:12])  # 12 shared words: below the 13-gram
    items = [{"question": f"Read this passage: {leaked.upper()} What is the main idea?", "answer": "A"},
             {"question": f"Consider: {near_miss} ... and then?", "choices": ["x", "y"]},
             {"question": "What is 2 + 2?"}]  # too short to check: would hit every arithmetic sample
    path = write_jsonl(tmp_path / "eval.jsonl", items)
    return samples, victim, path


def test_decontamination_removes_the_planted_sample_and_nothing_else(tmp_path):
    samples, victim, eval_path = _planted(tmp_path)
    kept, report = decontaminate(samples, [eval_path], n=13)
    assert [s.where for s in samples if s not in kept] == [victim.where]
    assert len(kept) == len(samples) - 1
    assert report["samples_removed"] == 1 and report["removed"][0]["sample"] == victim.where
    assert report["removed"][0]["eval_item"] == f"{eval_path}:1" and len(report["removed"][0]["ngram"].split()) == 13
    assert report["eval_files"][0]["items_too_short_unchecked"] >= 1


def test_preprocess_chat_writes_a_decontaminated_sft_dataset_and_report(spm_model, tmp_path):
    samples, victim, eval_path = _planted(tmp_path)
    chat = write_jsonl(tmp_path / "sft.jsonl", [{"messages": s.messages, "source": s.source} for s in samples])
    summary = preprocess_chat([chat], spm_model, str(tmp_path / "out" / "sft"), eval_files=[eval_path])
    assert summary["samples_read"] == 60 and summary["removed_by_decontamination"] == 1 and summary["samples"] == 59
    report = json.loads((tmp_path / "out" / "sft.decontam.json").read_text())
    assert report["removed"][0]["sample"] == f"{chat}:{victim.where.split(':')[1]}"
    stored = load_sft_dataset(str(tmp_path / "out" / "sft"))
    expected, _ = tokenize_samples([s for s in read_chat_jsonl([chat]) if s.where != report["removed"][0]["sample"]],
                                   load_tokenizer(spm_model))
    assert len(stored) == len(expected) == 59
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(stored, expected))
    assert summary["target_tokens"] == sum(int(t.sum()) for _, t in stored)


@pytest.mark.parametrize("line,pattern", [
    ('{"messages": [{"role": "user"}]}', r"bad\.jsonl:2: message 0 needs string 'role' and 'content'"),
    ('{"text": "not chat"}', r"bad\.jsonl:2: no 'messages' list"),
    ('{"messages": [', r"bad\.jsonl:2: invalid JSON"),
])
def test_bad_chat_records_name_file_and_line(tmp_path, line, pattern):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    (tmp_path / "bad.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError, match=pattern):
        read_chat_jsonl([str(tmp_path / "bad.jsonl")])


def test_empty_chat_file_and_missing_eval_file_raise(tmp_path, spm_model):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty chat file"):
        read_chat_jsonl([str(tmp_path / "empty.jsonl")])
    chat = write_jsonl(tmp_path / "c.jsonl", synthetic_chat_samples(3))
    with pytest.raises(DataError, match="eval file .* not found"):
        preprocess_chat([chat], spm_model, str(tmp_path / "out" / "sft"), eval_files=[str(tmp_path / "nope.jsonl")])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_output_prefix_below_a_file_is_a_one_line_error(tmp_path, spm_model):
    chat = write_jsonl(tmp_path / "c.jsonl", synthetic_chat_samples(3))
    (tmp_path / "afile").write_text("not a directory")
    with pytest.raises(DataError, match=r"--output-prefix folder .*afile/sub: cannot create this directory "
                                        r"\(.*afile is a file, not a directory\)") as e:
        preprocess_chat([chat], spm_model, str(tmp_path / "afile" / "sub" / "sft"))
    assert "\n" not in str(e.value)
