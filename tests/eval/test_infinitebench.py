"""InfiniteBench hook (eval/infinitebench.py, tools/eval_infinitebench.py): the benchmark's scoring rules, its task
files, middle truncation, and the CLI on a tiny model. Task files are written here in the release's format."""
import json
import os
import subprocess
import sys

import pytest

from megatron_ultralong.eval.infinitebench import (
    TASKS,
    EvalError,
    build_sample,
    load_tasks,
    prompt_ids,
    run_infinitebench,
    truncate_middle,
)
from tests.eval.helpers import TOK, save_tiny_llama3
from tests.extras import llama3_tokenizer_file


@pytest.mark.parametrize("task,pred,label,expected", [
    ("passkey", "The pass key is 71432.", "71432", 1.0),
    ("passkey", "71432 is not it, 7143", "7143", 0.0),  # the first digits count
    ("number_string", "The sequence of digits is 0123456789", "0123456789", 1.0),
    ("kv_retrieval", 'The value is "8a1b-77c2".', "8a1b-77c2", 1.0),
    ("kv_retrieval", "8a1b-77c23", "8a1b-77c2", 0.0),
    ("longbook_choice_eng", "B", ["the red door", "B"], 1.0),
    ("longbook_choice_eng", "C. the blue door", ["the red door", "B"], 0.0),
    ("longbook_choice_eng", "I think the answer is B, because", ["the red door", "B"], 1.0),
    ("longbook_choice_eng", "My answer: the red door", ["the red door", "B"], 1.0),
    ("longbook_choice_eng", "Hmm, maybe D", ["the red door", "B"], 0.0),
    ("longbook_choice_eng", "the red door", ["the red door", "B"], 1.0),  # the option's text
    ("longbook_choice_eng", "  B", ["the red door", "B"], 1.0),  # stripped first
    ("longbook_choice_eng", "", ["the red door", "B"], 0.0),
    ("code_debug", "B. repack", ["repack_carchive", "B"], 1.0),
    ("code_debug", "So the answer is: repack_carchive", ["repack_carchive", "B"], 1.0),
    ("code_debug", "D", ["repack_carchive", "B"], 0.0),
    ("code_debug", "\nB. repack", ["repack_carchive", "B"], 1.0),
    ("code_debug", "The correct option is: B", ["repack_carchive", "B"], 1.0),
    ("math_find", "88", "88", 1.0),
    ("math_find", "It is 3.5", "3.5", 1.0),
    ("math_find", "87", "88", 0.0),
    ("longdialogue_qa_eng", "john.", "JOHN", 1.0),
    ("longbook_qa_eng", "The Eiffel Tower!", ["eiffel tower"], 1.0),
    ("longbook_qa_eng", "a tower", ["Eiffel tower", "nothing"], pytest.approx(2 / 3)),
    ("longbook_qa_chn", "巴黎。", ["巴黎"], 1.0),
    ("math_calc", "[1, 4, 8, 3, 9]", ["1", "4", "8", "5", "9"], 0.6),  # right until the first wrong value
    ("math_calc", "[1, 4, 8, 3, 9]", [[1, 4, 8, 3, 7]], 0.8),  # the release nests the values
    ("code_run", "The return value is: 42", "42", 1.0),
    ("code_run", "", "42", 0.0),
])
def test_scores_follow_the_benchmarks_rules(task, pred, label, expected):
    assert TASKS[task].score(pred, label) == expected


def _write(folder, task, records):
    folder.mkdir(exist_ok=True)
    (folder / f"{task}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _passkey(i, filler=40):
    key = str(10000 + 7 * i)
    return {"id": i, "context": "The grass is green. " * filler + f"The pass key is {key}. Remember it. " +
            "The sky is blue. " * filler, "input": "What is the pass key?", "answer": [key], "options": []}


def test_records_become_prompts_and_labels_like_the_release_defines_them(tmp_path):
    _write(tmp_path, "passkey", [_passkey(0), _passkey(1)])
    _write(tmp_path, "longbook_choice_eng", [{"id": 3, "context": "Book.", "input": "Which door?", "answer": ["red"],
                                              "options": ["blue", "red", "green", "black"]}])
    _write(tmp_path, "math_find", [{"context": "[3, 9, 1]", "input": "What is The largest number in the list?",
                                    "answer": ["9"], "options": []}])
    tasks = load_tasks(str(tmp_path), ["passkey", "longbook_choice_eng", "math_find"], limit=1)
    assert [len(s) for s in tasks.values()] == [1, 1, 1]
    assert tasks["passkey"][0].label == "10000" and tasks["passkey"][0].prompt.endswith("What is the pass key?")
    choice = tasks["longbook_choice_eng"][0]
    assert choice.label == ["red", "B"] and choice.id == 3
    assert "Question: Which door?" in choice.prompt and "\nB. red\nC. green" in choice.prompt
    find = tasks["math_find"][0]
    assert find.prompt.startswith("What is the largest number in the following list?\n\n[3, 9, 1]")
    assert find.id.endswith("math_find.jsonl:1")  # no id in the record: its file and line


def test_math_find_and_code_run_prompts_parse_the_releases_questions():
    find = build_sample("math_find", {"context": "[3, 9, 1]", "input": "The second largest number of the list is:",
                                      "answer": ["3"]}, "f:1")
    assert find.prompt.startswith("What is the second largest number in the following list?\n\n[3, 9, 1]")
    run = build_sample("code_run", {"context": "def func_12(x): ...", "answer": ["-7"], "input":
                                    "Please give me the exact number of the return value of func_12(-3). Your "
                                    "response should end with the sentence 'The return value is:'."}, "f:1")
    assert "a function called named func_12.\n\n" in run.prompt
    assert "the return value of func_12(-3). Be concise." in run.prompt and run.label == "-7"


@pytest.mark.parametrize("files,tasks,message", [
    ({}, ["passkey"], "passkey.jsonl not found"),
    ({"passkey": "{not json\n"}, ["passkey"], "passkey.jsonl:1: not JSON"),
    ({"passkey": '{"context": "x", "answer": ["1"]}\n'}, ["passkey"], "passkey.jsonl:1: not an InfiniteBench"),
    ({"passkey": ""}, ["passkey"], "no records"),
    ({"code_debug": '{"context": "x", "input": "", "answer": ["f"], "options": ["a", "b", "c", "d"]}\n'},
     ["code_debug"], "not one of the options"),
    ({"math_find": '{"context": "x", "input": "The largest number?", "answer": ["many"]}\n'},
     ["math_find"], "math_find.jsonl:1: answer 'many' is not a number"),
    ({}, ["passkey", "longbook_sum_eng"], "unknown ['longbook_sum_eng']"),
    ({"math_find": '{"context": "x", "input": null, "answer": ["1"]}\n'}, ["math_find"],
     "math_find.jsonl:1: malformed InfiniteBench math_find record"),
    ({"code_run": '{"context": "x", "input": "What does it return?", "answer": ["1"]}\n'}, ["code_run"],
     "code_run.jsonl:1: code_run input"),
])
def test_bad_task_files_are_refused_with_the_file_and_line(tmp_path, files, tasks, message):
    for name, text in files.items():
        (tmp_path / f"{name}.jsonl").write_text(text)
    with pytest.raises(EvalError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_tasks(str(tmp_path), tasks)


def test_truncation_keeps_the_head_and_the_tail():
    assert truncate_middle(list(range(10)), 5) == [0, 1, 7, 8, 9]
    assert truncate_middle(list(range(4)), 5) == [0, 1, 2, 3]


def _oracle(answers):
    """A generator that answers right when the question and the pass key both survived in the prompt."""
    def generate(ids, max_new_tokens):
        text = TOK.decode(ids)
        for key in answers:
            if f"The pass key is {key}." in text and text.endswith("What is the pass key?"):
                return f"{key}"[:max_new_tokens * 4]
        return "I do not know"
    return generate


def test_a_right_model_scores_one_and_a_cut_prompt_keeps_the_question(tmp_path):
    records = [_passkey(i) for i in range(3)]
    _write(tmp_path, "passkey", records)
    tasks = load_tasks(str(tmp_path), ["passkey"])
    keys = [r["answer"][0] for r in records]
    full = run_infinitebench(_oracle(keys), TOK, tasks, max_length=10 ** 6, log=None)
    assert full["scores"] == {"passkey": 1.0} and full["truncated"] == {"passkey": 0}
    assert [p["ground_truth"] for p in full["predictions"]["passkey"]] == keys
    # a window shorter than the prompt: the middle (the pass key) goes, the instruction and question stay
    size = len(tasks["passkey"][0].prompt)
    cut = run_infinitebench(_oracle(keys), TOK, tasks, max_length=size // 2, log=None)
    assert cut["scores"] == {"passkey": 0.0} and cut["truncated"] == {"passkey": 3}
    assert all(p["prompt_tokens"] == size // 2 - TASKS["passkey"].max_new_tokens for p in cut["predictions"]["passkey"])
    with pytest.raises(EvalError, match="leaves no room"):
        run_infinitebench(_oracle(keys), TOK, tasks, max_length=6, log=None)


def test_the_prompt_is_one_user_turn_of_the_chat_template_when_the_tokenizer_has_one():
    class ChatTok:
        chat_template = "llama-3"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert tokenize and add_generation_prompt and [m["role"] for m in messages] == ["user"]
            return {"input_ids": [1] + TOK.encode(messages[0]["content"]) + [2]}

        def encode(self, text):
            return TOK.encode(text)

    sample = build_sample("passkey", _passkey(0), "x:1")
    assert prompt_ids(ChatTok(), sample.prompt) == [1, *TOK.encode(sample.prompt), 2]
    assert prompt_ids(ChatTok(), sample.prompt, chat=False) == TOK.encode(sample.prompt)


def test_cli_writes_scores_and_the_benchmarks_prediction_files_and_refuses_bad_input(tmp_path):
    model = save_tiny_llama3(tmp_path / "hf")
    data = tmp_path / "ib"
    _write(data, "passkey", [_passkey(i) for i in range(2)])
    _write(data, "kv_retrieval", [{"id": 0, "context": json.dumps({"k1": "v-1", "k2": "v-2"}),
                                   "input": 'Key: "k2"\nThe value associated with the specified key is:',
                                   "answer": ["v-2"], "options": []}])

    def run(*args):
        return subprocess.run([sys.executable, "tools/eval_infinitebench.py", "--hf", str(model), "--dtype", "fp32",
                               *args], capture_output=True, text=True)

    out = tmp_path / "out"
    r = run("--data", str(data), "--tasks", "passkey,kv_retrieval", "--max-length", "256", "--out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "infinitebench.json").read_text())
    assert res["samples"] == {"passkey": 2, "kv_retrieval": 1} and res["max_length"] == 256
    assert set(res["scores"]) == {"passkey", "kv_retrieval"} and 0 <= res["average"] <= 1  # a random model
    assert res["truncated"]["passkey"] == 2  # ~450-token prompts cut to fit 256
    preds = [json.loads(x) for x in (out / "preds_passkey.jsonl").read_text().splitlines()]
    assert [p["ground_truth"] for p in preds] == ["10000", "10007"] and all("prediction" in p for p in preds)
    assert not list(out.glob("*.partial"))

    missing = run("--data", str(tmp_path / "nowhere"), "--tasks", "passkey", "--out", str(out))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "passkey.jsonl not found" in missing.stderr
    tiny = run("--data", str(data), "--tasks", "kv_retrieval", "--max-length", "50", "--out", str(out))
    assert tiny.returncode == 2 and tiny.stderr.count("\n") == 1 and "leaves no room" in tiny.stderr
    gated = run("--data", str(data), "--tasks", "kv_retrieval", "--max-length", "256", "--min-score", "1.01",
                "--out", str(tmp_path / "gated"))  # no model reaches 1.01: the gate fails the run, after writing
    assert gated.returncode == 1 and "is below --min-score 1.01" in gated.stderr
    assert (tmp_path / "gated" / "infinitebench.json").is_file()
    zero = run("--data", str(data), "--tasks", "kv_retrieval", "--max-length", "0", "--out", str(out))
    assert zero.returncode == 2 and zero.stderr.count("\n") == 1 and "--max-length 0" in zero.stderr
    (tmp_path / "file").write_text("")
    bad_out = run("--data", str(data), "--tasks", "kv_retrieval", "--out", str(tmp_path / "file" / "out"))
    assert bad_out.returncode == 2 and bad_out.stderr.count("\n") == 1 and "cannot create it" in bad_out.stderr


def test_a_real_tokenizers_chat_template_wraps_the_prompt_as_a_user_turn_with_the_generation_prompt():
    import transformers

    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=llama3_tokenizer_file())
    tok.chat_template = ("{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
                         "'<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
                         "{% endif %}")  # the shape of Llama-3's template
    ids = prompt_ids(tok, "What is the pass key?")
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the pass key?"
                               "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_prediction_files_stream_as_partial_and_are_published_only_when_the_run_succeeds(tmp_path, monkeypatch):
    from megatron_ultralong import atomic
    from megatron_ultralong.eval.infinitebench import PredictionFiles

    synced, real = [], atomic.fsync_path
    monkeypatch.setattr(atomic, "fsync_path", lambda p: (synced.append(os.fspath(p)), real(p)))
    with PredictionFiles(str(tmp_path)) as stream:
        stream("passkey", {"id": 0, "prediction": "12345"})
        assert json.loads((tmp_path / "preds_passkey.jsonl.partial").read_text()) == {"id": 0, "prediction": "12345"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds_passkey.jsonl"]
    assert synced == [str(tmp_path / "preds_passkey.jsonl.partial"), str(tmp_path)]  # published with fsyncs

    with pytest.raises(RuntimeError), PredictionFiles(str(tmp_path / "killed")) as stream:
        (tmp_path / "killed").mkdir()
        stream("kv_retrieval", {"id": 1})
        raise RuntimeError("the run died")
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == ["preds_kv_retrieval.jsonl.partial"]
