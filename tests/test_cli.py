"""cli/: the pieces every entry point shares (one-line errors, comma lists, evaluation gates), and the entry
points themselves (console scripts and tools/*.py shims)."""
import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_ultralong.cli import EXIT_BAD_INPUT, OneLineParser, bad_input, comma_floats, comma_ints, comma_strs
from megatron_ultralong.cli.evaluation import add_eval_output_args, below_minimum

REPO = Path(__file__).resolve().parents[1]


def test_comma_lists_parse_and_a_bad_item_is_a_one_line_exit_2(capsys):
    p = OneLineParser(prog="tools/x.py")
    p.add_argument("--lengths", type=comma_ints)
    p.add_argument("--depths", type=comma_floats)
    a = p.parse_args(["--lengths", "4096,8192,", "--depths", "0,0.5,1"])
    assert a.lengths == [4096, 8192] and a.depths == [0.0, 0.5, 1.0]
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--lengths", "4096,8k"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--lengths" in err and "'4096,8k'" in err


def test_eval_output_args_require_out_and_default_to_bf16():
    p = argparse.ArgumentParser()
    add_eval_output_args(p)
    assert vars(p.parse_args(["--out", "o"])) == {"dtype": "bf16", "out": "o"}


def test_a_gate_fails_only_when_set_and_the_value_is_below_it(capsys):
    assert below_minimum(0.5, None, "--min-score", "average score") == 0
    assert below_minimum(0.5, 0.5, "--min-score", "average score") == 0
    assert capsys.readouterr().err == ""
    assert below_minimum(0.25, 0.5, "--min-accuracy", "accuracy") == 1
    assert capsys.readouterr().err == "error: accuracy 0.250 is below --min-accuracy 0.5\n"


def test_bad_input_prints_one_error_line_and_returns_exit_2(capsys):
    assert bad_input(ValueError("--hf x: no config.json there")) == EXIT_BAD_INPUT == 2
    assert capsys.readouterr().err == "error: --hf x: no config.json there\n"
    assert comma_strs("passkey,,kv_retrieval,") == ["passkey", "kv_retrieval"]


def test_exit_bad_input_has_one_definition():
    import megatron_ultralong.train as train

    assert train.EXIT_BAD_INPUT is EXIT_BAD_INPUT
    defined = [str(p.relative_to(REPO)) for p in [*REPO.glob("megatron_ultralong/**/*.py"), *REPO.glob("tools/*.py"),
                                                   *REPO.glob("launch/*.py")]
               if re.search(r"^EXIT_BAD_INPUT\s*=", p.read_text(), re.M)]
    assert defined == ["megatron_ultralong/cli/__init__.py"]


def console_scripts(text: str) -> dict:
    """pyproject.toml's [project.scripts]: tomllib (Python 3.11+), else (3.10, no tomllib) the table's
    ``name = "module:function"`` lines, so the test runs on every supported Python."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        table = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
        assert table, "pyproject.toml has no [project.scripts] table"
        return dict(re.findall(r'^([\w.-]+)\s*=\s*"([^"]+)"', table.group(1), re.M))
    return tomllib.loads(text)["project"]["scripts"]


SCRIPTS = console_scripts((REPO / "pyproject.toml").read_text())


def test_console_scripts_are_read_the_same_without_tomllib(monkeypatch):
    monkeypatch.setitem(sys.modules, "tomllib", None)  # import tomllib now fails, as on Python 3.10
    assert console_scripts((REPO / "pyproject.toml").read_text()) == SCRIPTS and len(SCRIPTS) > 5


def test_every_tool_is_a_console_script_whose_main_its_shim_runs():
    tools = sorted(p.stem for p in (REPO / "tools").glob("*.py"))
    assert sorted(SCRIPTS) == sorted(["ultralong-train"] + ["ultralong-" + t.replace("_", "-") for t in tools])
    for tool in tools:
        target = SCRIPTS["ultralong-" + tool.replace("_", "-")]
        assert target == f"megatron_ultralong.cli.{tool}:main"
        text = (REPO / "tools" / f"{tool}.py").read_text()
        assert f"from megatron_ultralong.cli.{tool} import main" in text and "sys.path" not in text
        assert text.splitlines()[3].strip().startswith(f"python tools/{tool}.py")  # the command, in the first lines
        module = importlib.import_module(f"megatron_ultralong.cli.{tool}")
        assert callable(module.main) and f"python tools/{tool}.py" in module.__doc__.split("\n\n")[1]
    module, func = SCRIPTS["ultralong-train"].split(":")
    assert callable(getattr(importlib.import_module(module), func))


@pytest.mark.parametrize("tool", sorted(p.stem for p in (REPO / "tools").glob("*.py")))
def test_a_tool_without_its_required_flags_is_a_one_line_exit_2(tool):
    r = subprocess.run([sys.executable, f"tools/{tool}.py"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
