import numpy as np
import pytest

from megatron_ultralong.data import DataError
from megatron_ultralong.data.mixture import (MixtureParams, build_mixture, length_buckets, load_mixture,
                                             report_table, resolve_sources, write_mixture)
from megatron_ultralong.data.preprocess import preprocess_text, read_document_lengths

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
