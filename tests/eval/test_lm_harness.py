"""tools/eval_lm.py and eval/lm_harness.py: lm-evaluation-harness on tiny exported models and toy task YAMLs written
here (one multiple-choice, one generate-until), offline. Needs the eval extra; the table tests do not."""
import json
import re
import sys

import pytest

from megatron_ultralong.eval.lm_harness import PAPER, retention_rows, retention_table, top_level_tasks
from tests.extras import require

from .helpers import save_tiny_llama3

LIMIT = 6
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
                 " + m['content'] + '<|eot_id|>' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def _task_yaml(name, data, body):
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{body}")


TOY_MC = """output_type: multiple_choice
doc_to_text: "{{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
TOY_GEN = """output_type: generate_until
doc_to_text: "{{question}} Answer:"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def _save_model(folder, noise_seed=None):
    """save_tiny_llama3 with what an exported Llama-3.1 folder's tokenizer has: bos / eos tokens, a chat template;
    ``noise_seed`` perturbs the weights (a second, different model)."""
    import torch
    import transformers

    folder.mkdir()
    save_tiny_llama3(folder)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                               bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    if noise_seed is not None:
        model = transformers.LlamaForCausalLM.from_pretrained(folder)
        g = torch.Generator().manual_seed(noise_seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=g))
        model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """No network, and a datasets cache of this module's own (the harness reads it; nothing is cached in it)."""
    datasets = require("datasets", "eval")
    require("lm_eval", "eval")
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            mp.setenv(var, "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache"))
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory, offline):
    """Two tiny models (extended, base) and a folder of toy task YAMLs with their local data."""
    root = tmp_path_factory.mktemp("lm_harness")
    tasks = root / "tasks"
    tasks.mkdir()
    with open(tasks / "mc.jsonl", "w") as f:
        for i in range(8):
            f.write(json.dumps({"question": f"What is {i} plus {i % 3}?", "label": i % 3,
                                "choices": [str(i + 1), str(2 * i), str(i + i % 3)]}) + "\n")
    with open(tasks / "gen.jsonl", "w") as f:
        for i in range(8):
            f.write(json.dumps({"question": f"Repeat the word {'abcdefgh'[i]}.", "answer": "abcdefgh"[i]}) + "\n")
    (tasks / "toy_mc.yaml").write_text(_task_yaml("toy_mc", tasks / "mc.jsonl", TOY_MC))
    (tasks / "toy_gen.yaml").write_text(_task_yaml("toy_gen", tasks / "gen.jsonl", TOY_GEN))
    # in the same folder (one index of the registry for the whole module): tasks the tool must refuse
    (tasks / "toy_missing.yaml").write_text(_task_yaml("toy_missing", tasks / "no_such_file.jsonl", TOY_MC))
    (tasks / "toy_hub.yaml").write_text(
        _task_yaml("toy_hub", tasks / "mc.jsonl", TOY_MC).replace("dataset_path: json\ndataset_kwargs:\n  data_files:"
                                                                   f"\n    test: {tasks / 'mc.jsonl'}\n",
                                                                   "dataset_path: ultralong-tests/not-cached\n"))
    (tasks / "toy_unsafe.yaml").write_text(_task_yaml("toy_unsafe", tasks / "mc.jsonl", "unsafe_code: true\n" + TOY_MC))
    return {"root": root, "tasks": tasks, "ext": _save_model(root / "ext"),
            "base": _save_model(root / "base", noise_seed=2)}  # a seed whose toy_mc accuracy differs


@pytest.fixture(scope="module")
def tool_run(setup):
    """tools/eval_lm.py on both models and both toy tasks (one run shared by the tests below)."""
    from megatron_ultralong.cli.eval_lm import main

    out = setup["root"] / "out"
    argv = ["--hf", str(setup["ext"]), "--hf-base", str(setup["base"]), "--tasks", "toy_mc,toy_gen",
            "--include-path", str(setup["tasks"]), "--limit", str(LIMIT), "--dtype", "fp32", "--out", str(out)]
    assert main(argv) == 0
    return out


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_results_json_has_every_metric_with_its_stderr(tool_run):
    for name in ("results.json", "results_base.json"):
        res = _read(tool_run / name)["results"]
        assert set(res) == {"toy_mc", "toy_gen"}
        assert {k for k in res["toy_mc"] if "," in k} == {"acc,none", "acc_stderr,none", "acc_norm,none",
                                                        "acc_norm_stderr,none"}
        assert {k for k in res["toy_gen"] if "," in k} == {"exact_match,none", "exact_match_stderr,none"}
        assert res["toy_mc"]["sample_len"] == LIMIT and res["toy_gen"]["sample_len"] == LIMIT


def test_the_tools_numbers_equal_a_direct_simple_evaluate_call(setup, tool_run):
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(setup["tasks"]), include_defaults=False)  # the toy tasks only: a fast index
    direct = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={setup['ext']},dtype=float32",
                                     tasks=["toy_mc", "toy_gen"], limit=LIMIT, device="cpu", batch_size=1,
                                     task_manager=tm)
    assert _read(tool_run / "results.json")["results"] == json.loads(json.dumps(direct["results"]))


def test_the_retention_table_compares_the_two_models(tool_run):
    ext, base = _read(tool_run / "results.json")["results"], _read(tool_run / "results_base.json")["results"]
    assert ext["toy_mc"]["acc,none"] != base["toy_mc"]["acc,none"]  # two models that differ, or it says little
    text = (tool_run / "retention.md").read_text()
    rows = {cells[0]: cells for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| "))}
    assert rows["task"] == ["task", "metric", "shots", "base", "ext", "delta"]
    scores = {}
    for task, metric in (("toy_mc", "acc"), ("toy_gen", "exact_match")):  # each task's first metric
        e, b = 100 * ext[task][f"{metric},none"], 100 * base[task][f"{metric},none"]
        err_e, err_b = 100 * ext[task][f"{metric}_stderr,none"], 100 * base[task][f"{metric}_stderr,none"]
        assert rows[f"`{task}`"] == [f"`{task}`", f"`{metric},none`", "0", f"{b:.1f} ± {err_b:.1f}",
                                     f"{e:.1f} ± {err_e:.1f}", f"{e - b:+.1f}"]
        scores[task] = (b, e)
    b_avg, e_avg = (sum(v[i] for v in scores.values()) / 2 for i in (0, 1))
    assert rows["**average over 2 tasks**"][3:] == [f"{b_avg:.1f}", f"{e_avg:.1f}", f"{e_avg - b_avg:+.1f}"]
    assert "limit 6, chat template off, shots task defaults" in text


def _one_line_error(capsys, argv):
    from megatron_ultralong.cli.eval_lm import main

    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("flag", ["--hf", "--hf-base"])
def test_a_missing_model_folder_is_a_one_line_error(setup, tmp_path, capsys, flag):
    models = {"--hf": str(setup["ext"]), "--hf-base": str(setup["base"]), flag: str(tmp_path / "nope")}
    err = _one_line_error(capsys, [*sum(models.items(), ()), "--tasks", "toy_mc", "--include-path",
                                   str(setup["tasks"]), "--out", str(tmp_path / "out")])
    assert err.startswith(f"error: {flag} {tmp_path / 'nope'}: no config.json there")
    assert not (tmp_path / "out").exists()


def test_an_unknown_task_is_a_one_line_error_with_the_close_names(setup, tmp_path, capsys):
    err = _one_line_error(capsys, ["--hf", str(setup["ext"]), "--tasks", "toy_mc,toy_mcc", "--include-path",
                                   str(setup["tasks"]), "--out", str(tmp_path / "out")])
    assert err.startswith("error: --tasks toy_mcc: no such task, group or tag in lm-eval ")
    assert f"or under --include-path {setup['tasks']} (close: toy_mc" in err


@pytest.mark.parametrize("task, what, how", [
    ("toy_missing", "no_such_file.jsonl", "fix the path in the task YAML's dataset_kwargs.data_files"),
    ("toy_hub", "not-cached", "it is not in the datasets cache and HF_DATASETS_OFFLINE / HF_HUB_OFFLINE forbid"),
])
def test_a_task_whose_data_cannot_be_found_offline_is_a_one_line_error(setup, tmp_path, capsys, task, what, how):
    err = _one_line_error(capsys, ["--hf", str(setup["ext"]), "--tasks", task, "--include-path", str(setup["tasks"]),
                                   "--out", str(tmp_path / "out")])
    assert err.startswith(f"error: --tasks {task}: the harness cannot load its data (") and what in err
    assert how in err and not (tmp_path / "out").exists()


def test_a_task_that_runs_model_code_needs_the_confirmation_flag(setup, tmp_path, capsys):
    err = _one_line_error(capsys, ["--hf", str(setup["ext"]), "--tasks", "toy_unsafe", "--include-path",
                                   str(setup["tasks"]), "--out", str(tmp_path / "out")])
    assert err == ("error: --tasks toy_unsafe: toy_unsafe executes the code the model writes; pass "
                   "--confirm-run-unsafe-code to run it (in a sandbox)\n")


def test_the_chat_template_needs_one_in_the_tokenizer(setup, tmp_path, capsys):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(setup["ext"], plain)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    err = _one_line_error(capsys, ["--hf", str(plain), "--tasks", "toy_mc", "--include-path", str(setup["tasks"]),
                                   "--apply-chat-template", "--out", str(tmp_path / "out")])
    assert err.startswith(f"error: --hf {plain}: its tokenizer has no chat template")


def test_the_paper_suite_names_tasks_of_the_installed_harness(setup, tool_run):
    from megatron_ultralong.eval.lm_harness import task_manager

    registry = set(task_manager(str(setup["tasks"])).all_tasks)  # the tool's (cached) registry + the toy tasks
    assert [t.benchmark for t in PAPER.tasks] == ["MMLU", "MMLU-Pro", "MATH", "GSM8K", "HumanEval"]
    assert {t.task for t in PAPER.tasks} <= registry
    assert PAPER.apply_chat_template and PAPER.fewshot_as_multiturn


def test_without_lm_eval_the_tool_says_how_to_install_it(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    err = _one_line_error(capsys, ["--hf", str(setup["ext"]), "--tasks", "mmlu", "--out", str(tmp_path / "out")])
    assert err == ("error: lm-eval not installed (lm-evaluation-harness runs these tasks): pip install -e '.[eval]' "
                   "(or: pip install lm-eval accelerate protobuf)\n")


# ------------------------------------------------------------------------------ the table, from results dicts
def _results(scores, groups=None):
    """A results dict of the harness's shape: task -> {metric,filter: value, metric_stderr,filter: err}."""
    return {"results": {t: {"alias": t, **{k: v for k, v in s.items()}} for t, s in scores.items()},
            "group_subtasks": groups or {}, "n-shot": {t: 5 for t in scores}}


def test_rows_are_the_top_level_tasks_and_groups_with_the_suites_metric():
    ext = _results({"mmlu": {"acc,none": 0.70, "acc_stderr,none": 0.004},
                    "mmlu_stem": {"acc,none": 0.6, "acc_stderr,none": 0.01},
                    "gsm8k_cot_llama": {"exact_match,strict-match": 0.5, "exact_match_stderr,strict-match": 0.01,
                                        "exact_match,flexible-extract": 0.8,
                                        "exact_match_stderr,flexible-extract": 0.011}},
                   groups={"mmlu": ["mmlu_stem"]})
    base = _results({"mmlu": {"acc,none": 0.68, "acc_stderr,none": "N/A"},
                     "mmlu_stem": {"acc,none": 0.6, "acc_stderr,none": 0.01},
                     "gsm8k_cot_llama": {"exact_match,strict-match": 0.4, "exact_match_stderr,strict-match": 0.01,
                                         "exact_match,flexible-extract": 0.85,
                                         "exact_match_stderr,flexible-extract": 0.01}},
                    groups={"mmlu": ["mmlu_stem"]})
    assert top_level_tasks(ext) == ["mmlu", "gsm8k_cot_llama"]
    rows = retention_rows(ext, base)
    assert [(r["task"], r["metric"]) for r in rows] == [("mmlu", "acc,none"),
                                                        ("gsm8k_cot_llama", "exact_match,flexible-extract")]
    assert rows[0]["delta"] == pytest.approx(2.0) and rows[1]["delta"] == pytest.approx(-5.0)
    text = retention_table(ext, base, names=("ul-4m", "instruct"), benchmarks={"mmlu": "MMLU"})
    lines = text.splitlines()
    assert lines[0] == "| task | metric | shots | instruct | ul-4m | delta |"
    assert lines[2] == "| MMLU (`mmlu`) | `acc,none` | 5 | 68.0 | 70.0 ± 0.4 | +2.0 |"  # 'N/A' stderr: none shown
    assert lines[3] == ("| `gsm8k_cot_llama` | `exact_match,flexible-extract` | 5 | 85.0 ± 1.0 | 80.0 ± 1.1 "
                        "| -5.0 |")
    assert lines[4] == "| **average over 2 tasks** |  |  | 76.5 | 75.0 | -1.5 |"


def test_without_a_base_the_table_has_one_score_column():
    text = retention_table(_results({"toy": {"acc,none": 0.25, "acc_stderr,none": 0.1}}))
    assert text.splitlines() == ["| task | metric | shots | extended |", "|---|---|---|---|",
                                 "| `toy` | `acc,none` | 5 | 25.0 ± 10.0 |",
                                 "| **average over 1 tasks** |  |  | 25.0 |"]


def test_a_task_without_metrics_shows_a_dash_and_no_average():
    rows = retention_rows(_results({"a": {"acc,none": 0.5}, "b": {}}))
    assert rows[1]["metric"] is None and rows[1]["score"] is None
    assert re.search(r"average over 2 tasks\*\* \|  \|  \| – \|", retention_table(_results({"a": {"acc,none": 0.5},
                                                                                          "b": {}})))


@pytest.mark.parametrize("args", [[], ["--tasks", "mmlu", "--suite", "paper"]])
def test_tasks_or_suite_one_of_them_is_a_one_line_error(capsys, args):
    from megatron_ultralong.cli.eval_lm import main

    with pytest.raises(SystemExit) as e:
        main(["--hf", "x", "--out", "o", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == "error: give --tasks or --suite (one of them) (see --help)\n"
