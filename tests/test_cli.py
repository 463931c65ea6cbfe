"""cli.py: the pieces every entry point shares (one-line errors, comma lists, evaluation gates)."""
import argparse

import pytest

from megatron_ultralong.cli import OneLineParser, add_eval_output_args, below_minimum, comma_floats, comma_ints


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
