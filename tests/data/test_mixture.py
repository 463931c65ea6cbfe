import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_ultralong.data import DataError
from megatron_ultralong.data.indexed import read_document_lengths
from megatron_ultralong.data.mixture import (
    MixtureParams,
    build_mixture,
    length_buckets,
    load_mixture,
    report_table,
    resolve_sources,
    write_mixture,
)
from megatron_ultralong.data.preprocess import preprocess_text
from megatron_ultralong.data.sft import preprocess_chat
from megatron_ultralong.data.synthetic import synthetic_chat_samples, write_jsonl

REPO = Path(__file__).resolve().parents[2]

SOURCES = [("web", "p/web"), ("books", "p/books"), ("code", "p/code")]


def _lengths(seed=0):
    """Per source, documents on both sides of the 4K / 8K thresholds, with different length profiles."""
    rng = np.random.default_rng(seed)
    return [np.maximum(1, rng.lognormal(np.log(m), 1.0, n)).astype(np.int64)
            for m, n in ((2500, 4000), (9000, 1500), (3000, 3000))]


@pytest.mark.parametrize("budget", [None, 150_000_000, 20_000_000])  # ~1x, ~2x, ~0.3x of one weighted pass
def test_sampling_ratios_are_within_2_percent_of_the_configured_weights(budget):
    params = MixtureParams(short_keep_ratio=0.3, long_upsample=3.0, token_budget=budget, seed=7)
    lengths = _lengths()
    mix = build_mixture(SOURCES, params, lengths=lengths)
    rep = mix.report
    for (name, _), x in zip(SOURCES, lengths):
        v = rep["sources"][name]
        assert v["buckets"]["short"]["docs_before"] > 100 and v["buckets"]["long"]["docs_before"] > 100
        for bucket, target in (("short", 0.3), ("mid", 1.0), ("long", 3.0)):
            assert v["buckets"][bucket]["effective_weight"] == pytest.approx(target, rel=0.02), (name, bucket)
        # the draws really hold those copies
        rows = mix.draws[mix.draws[:, 0] == SOURCES.index((name, _))]
        assert int(x[rows[:, 1]].sum()) == v["tokens_after"]
        assert v["share_after"] == pytest.approx(v["share_before"], abs=0.005)  # domain balance kept
    expected_total = budget or sum(float((params.weights()[length_buckets(x, params)] * x).sum()) for x in lengths)
    assert rep["tokens_after"] == pytest.approx(expected_total, rel=0.01)


def test_mixture_is_a_deterministic_function_of_the_seed():
    a, b, c = (build_mixture(SOURCES, MixtureParams(seed=s), lengths=_lengths()) for s in (1, 1, 2))
    assert np.array_equal(a.draws, b.draws) and not np.array_equal(a.draws, c.draws)


def test_bad_parameters_raise():
    with pytest.raises(DataError, match="short_keep_ratio"):
        build_mixture(SOURCES, MixtureParams(short_keep_ratio=0), lengths=_lengths())
    with pytest.raises(DataError, match="need 0 < short <= long"):
        build_mixture(SOURCES, MixtureParams(short_threshold=9000), lengths=_lengths())


def test_mixture_from_preprocessed_sources_writes_manifest_report_and_png(corpus, spm_model, tmp_path):
    preprocess_text([corpus], spm_model, tmp_path / "idx", progress=False)
    sources = resolve_sources([str(tmp_path / "idx")])
    assert [n for n, _ in sources] == ["books", "code", "math", "web"]
    params = MixtureParams(short_threshold=150, long_threshold=600, token_budget=40_000, seed=3)
    mix = build_mixture(sources, params)
    files = write_mixture(mix, tmp_path / "mix" / "cpt.json")
    png = open(files["png"], "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    table = report_table(mix.report)
    assert all(name in table for name, _ in sources) and "<150" in table and ">600" in table
    loaded = load_mixture(tmp_path / "mix" / "cpt.json")
    assert np.array_equal(loaded.draws, mix.draws) and loaded.names == mix.names and loaded.params == params
    assert [read_document_lengths(p).sum() for p in loaded.prefixes] == [read_document_lengths(p).sum()
                                                                          for _, p in sources]
    # a prefix given directly is a source named after its file
    assert resolve_sources([str(tmp_path / "idx" / "web")]) == [("web", str(tmp_path / "idx" / "web"))]


def test_bad_mixture_inputs_raise_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="neither a preprocessing output directory nor a dataset prefix"):
        resolve_sources([str(tmp_path / "nothing")])
    (tmp_path / "m.json").write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="not a mixture manifest"):
        load_mixture(tmp_path / "m.json")
    with pytest.raises(DataError, match="not found"):
        load_mixture(tmp_path / "missing.json")


def test_a_mixture_path_without_json_points_at_the_manifest(tmp_path):
    (tmp_path / "mix").mkdir()
    (tmp_path / "mix" / "cpt_mix.json").write_text("{}")
    stem = str(tmp_path / "mix" / "cpt_mix")
    with pytest.raises(DataError, match=rf"did you mean {re.escape(stem)}\.json \(a mixture manifest\)\?") as e:
        resolve_sources([stem])
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="a mixture manifest must be the only entry of data.paths"):
        resolve_sources([stem + ".json", str(tmp_path / "other")])


def test_an_sft_dataset_is_refused_as_cpt_text_with_a_hint_to_train_mode_sft(spm_model, tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", synthetic_chat_samples(12, seed=1))
    prefix = str(tmp_path / "sft" / "train")
    preprocess_chat([chat], spm_model, prefix)
    with pytest.raises(DataError, match=r"is an SFT dataset \(.*train\.summary\.json\), not CPT text; train on it "
                                        r"with train\.mode=sft") as e:
        resolve_sources([prefix])
    assert "\n" not in str(e.value)
    os.unlink(prefix + ".summary.json")  # the marker lost (only .bin/.idx copied): the index layout still tells
    with pytest.raises(DataError, match="is an SFT dataset .*tokens/targets pair.*train.mode=sft"):
        resolve_sources([prefix])


def test_cli_token_budget_0_is_an_error_not_one_pass(corpus, spm_model, tmp_path):
    preprocess_text([corpus], spm_model, tmp_path / "idx", progress=False)
    with pytest.raises(DataError, match="token_budget=0: must be > 0 tokens; leave it unset"):
        MixtureParams(token_budget=0).check()
    for budget in ("0", "-5"):
        r = subprocess.run([sys.executable, "tools/preprocess_data.py", "mixture", "--inputs", str(tmp_path / "idx"),
                            "--output", str(tmp_path / "mix" / "m.json"), "--token-budget", budget, "--no-plot"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"error: --token-budget {budget}: the budget must be at least 1 token") and \
            "omit the flag for one pass" in r.stderr
        assert not (tmp_path / "mix").exists()


def test_mixture_defaults_are_the_recipe_defaults_and_both_use_one_range_check():
    import dataclasses

    from megatron_ultralong.config import ConfigError, DataConfig, TrainConfig, load_recipe, validate

    data, params = DataConfig(), MixtureParams()
    for f in dataclasses.fields(MixtureParams):
        expected = TrainConfig().seed if f.name == "seed" else getattr(data, f.name)
        assert getattr(params, f.name) == expected, f.name
    with pytest.raises(DataError, match=r"^short_keep_ratio=1.5: must be in \(0, 1\]"):
        MixtureParams(short_keep_ratio=1.5).check()
    with pytest.raises(ConfigError, match=r"^data.short_keep_ratio=1.5: must be in \(0, 1\]"):
        validate(load_recipe("toy_cpt", ["data.short_keep_ratio=1.5"]))


@pytest.mark.parametrize("frac", [0.08, 0.3, 0.7, 1.4])  # fractional rates, below and above one copy
def test_the_fractional_copy_is_blind_to_length_within_a_bucket(frac):
    """Issue 19: one source of 9-16K and 32-64K documents (one bucket), budget = frac of its tokens, 12 seeds."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(9 << 10, 16 << 10, 4000), rng.integers(32 << 10, 64 << 10, 1500)])
    short, long_ = x < 16 << 10, x >= 32 << 10
    mean_short, mean_long = [], []
    for seed in range(12):
        params = MixtureParams(token_budget=int(frac * x.sum()), seed=seed)
        mix = build_mixture([("one", "p/one")], params, lengths=[x])
        copies = np.bincount(mix.draws[:, 1], minlength=len(x))
        mean_short.append(copies[short].mean())
        mean_long.append(copies[long_].mean())
        # the token total still matches the target to within half of the shortest document
        assert abs(int((x * copies).sum()) - params.token_budget) <= x.min() / 2 + 1
    assert np.mean(mean_long) == pytest.approx(np.mean(mean_short), rel=0.10), (mean_short, mean_long)
    assert np.mean(mean_short) == pytest.approx(frac, rel=0.05)


def test_the_report_shows_the_separator_tokens(corpus, spm_model, tmp_path):
    preprocess_text([corpus], spm_model, tmp_path / "idx", progress=False)
    mix = build_mixture(resolve_sources([str(tmp_path / "idx")]), MixtureParams(short_threshold=150,
                                                                                 long_threshold=600))
    sep = mix.report["separator"]  # the default data.separator as the sources' tokenizer encodes it
    assert sep["origin"] == "data.separator='<s>'" and sep["pieces"] == ["<0x3C>", "s", "<0x3E>"]
    table = report_table(mix.report)
    assert f"ids {sep['ids']}, pieces '<0x3C>' 's' '<0x3E>' (+3 tokens per document)" in table
    given = {"origin": "data.separator_id", "ids": [5], "pieces": ["x"]}
    assert "separator between documents (data.separator_id): ids [5]" in report_table(
        build_mixture(SOURCES, MixtureParams(), lengths=_lengths(), separator=given).report)
