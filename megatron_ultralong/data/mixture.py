"""The CPT mixture: per-source, length-based document sampling under a token budget, domain balance kept.

    python tools/preprocess_data.py mixture --inputs data/idx --output data/cpt_mix.json --token-budget 1e9

    mix = build_mixture(resolve_sources(["data/idx"]), MixtureParams(token_budget=10**9, seed=1234))
    write_mixture(mix, "data/cpt_mix.json")     # + cpt_mix.draws.npy, cpt_mix.report.json, cpt_mix.png
    print(report_table(mix.report))

The weights, the domain balance, the seeded copy selection and the files: docs/data.md, "The CPT mixture".
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config import DataConfig, TrainConfig, check_mixture_params
from . import DataError, atomic_path

log = logging.getLogger(__name__)

FORMAT = "megatron-ultralong-mixture"
BUCKETS = ("short", "mid", "long")
PLOT_EDGES = [0] + [1 << k for k in range(6, 24)]
"""Length-histogram bucket lower bounds (tokens) of the report and its PNG: [0, 64), [64, 128), ..., [8M, inf)."""


@dataclass
class MixtureParams:
    """Sampling parameters: the data section of a recipe holds the same names, and its defaults are these."""

    short_threshold: int = DataConfig.short_threshold
    """Documents shorter than this (tokens) get short_keep_ratio."""
    long_threshold: int = DataConfig.long_threshold
    """Documents longer than this (tokens) get long_upsample."""
    short_keep_ratio: float = DataConfig.short_keep_ratio
    """Sampling weight of short documents."""
    long_upsample: float = DataConfig.long_upsample
    """Sampling weight of long documents."""
    token_budget: Optional[int] = DataConfig.token_budget
    """Total document tokens of the mixture; None = one pass with the weights."""
    seed: int = TrainConfig.seed
    """Seed of the choice of which documents get a fractional extra copy (a recipe uses train.seed)."""

    @classmethod
    def from_data_config(cls, data, seed: int) -> "MixtureParams":
        """From a recipe's DataConfig and the train seed."""
        return cls(data.short_threshold, data.long_threshold, data.short_keep_ratio, data.long_upsample,
                   data.token_budget, seed)

    def check(self) -> None:
        """DataError on impossible values (the same rule validate() applies to the data section)."""
        check_mixture_params(self, prefix="", error=DataError)

    def weights(self) -> np.ndarray:
        """Sampling weight per bucket (short, mid, long)."""
        return np.array([self.short_keep_ratio, 1.0, self.long_upsample])


@dataclass
class Mixture:
    """A built mixture: which documents of which source, how many times."""

    names: List[str]
    """Source names."""
    prefixes: List[str]
    """Indexed-dataset prefix of each source."""
    draws: np.ndarray
    """int64 [M, 2]: (source index, document index), one row per copy."""
    params: MixtureParams
    """The sampling parameters it was built with."""
    report: Dict[str, object] = field(default_factory=dict)
    """Tokens/docs per source and bucket before and after sampling (see ``report_table``)."""


def resolve_sources(paths: Sequence[str]) -> List[Tuple[str, str]]:
    """(name, prefix) per source: a preprocessing output directory contributes all its sources, a dataset prefix
    (``dir/web`` for ``dir/web.bin``/``.idx``) is one source named after its file."""
    from .indexed import source_prefixes

    out: List[Tuple[str, str]] = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(source_prefixes(p).items())
        elif os.path.isfile(p + ".idx") or os.path.isfile(p + ".bin"):
            check_not_sft_dataset(p)
            out.append((os.path.basename(p), p))
        elif p.endswith(".json") and os.path.isfile(p):
            raise DataError(f"data path {p!r} is a .json file among other data paths; a mixture manifest must be "
                            f"the only entry of data.paths (data.paths=[{p}])")
        elif os.path.isfile(p + ".json"):
            raise DataError(f"data path {p!r} is neither a preprocessing output directory nor a dataset prefix; "
                            f"did you mean {p}.json (a mixture manifest)? give data.paths=[{p}.json]")
        else:
            raise DataError(f"data path {p!r} is neither a preprocessing output directory nor a dataset prefix "
                            f"(no {p}.idx); give prefixes without .bin/.idx or run tools/preprocess_data.py")
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise DataError(f"source names repeat across data paths ({', '.join(sorted(names))}); each source once")
    if not out:
        raise DataError("no data sources given")
    return out


def check_not_sft_dataset(prefix: str | os.PathLike) -> None:
    """DataError if ``prefix`` is an SFT dataset from ``preprocess_data.py chat`` (its ``<prefix>.summary.json``
    says so, or its index has the SFT layout): its sequences alternate tokens and 0/1 loss targets, which CPT
    would read as documents — training on the target flags as text."""
    from .indexed import open_indexed_dataset
    from .sft import has_sft_layout, sft_summary_path

    marker = sft_summary_path(prefix)
    if not marker:  # the summary may not have been copied along: the index layout says it too
        ds = open_indexed_dataset(prefix)
        sft = has_sft_layout(ds)
        del ds  # its arrays are views of an mmap
        if not sft:
            return
    seen = f"see {marker}" if marker else "each document is a tokens/targets pair"
    raise DataError(f"data path {str(prefix)!r} is an SFT dataset (chat samples with loss targets; {seen}), not "
                    f"CPT text; train on it with train.mode=sft, or give text datasets from "
                    f"tools/preprocess_data.py text")


def length_buckets(lengths: np.ndarray, params: MixtureParams) -> np.ndarray:
    """0 = short (< short_threshold), 1 = mid, 2 = long (> long_threshold), per document."""
    return (lengths >= params.short_threshold).astype(np.int64) + (lengths > params.long_threshold)


def _diffuse(lengths: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of documents taking one extra copy, so that their tokens ≈ frac × total tokens, whatever their
    lengths: each document is drawn with probability ``frac`` (seeded, blind to length), then an exact top-up
    changes documents in seeded random order up to the target (then any later one that still brings the total
    closer), so the total ends within half a document of it."""
    if frac <= 0 or len(lengths) == 0:
        return np.zeros(0, np.int64)
    x = np.asarray(lengths, dtype=np.float64)
    target = frac * float(x.sum())
    take = rng.random(len(x)) < frac
    order = rng.permutation(len(x))
    taken = float(x[take].sum())
    if taken != target:
        adding = taken < target
        cand = order[take[order] != adding]  # the documents whose change moves the total towards the target
        gap = np.cumsum(x[cand])  # tokens moved after changing cand[:i + 1]
        k = int(np.searchsorted(gap, abs(target - taken), side="right"))  # cand[:k] stay short of the target
        take[cand[:k]] = adding
        taken = float(x[take].sum())
        smallest = float(x.min())
        for i in order:  # the last few: add or drop any document that brings the total closer
            gap = target - taken
            if abs(gap) <= smallest / 2:
                break
            if (gap > 0) != bool(take[i]) and x[i] < 2 * abs(gap):
                take[i] = gap > 0
                taken += x[i] if gap > 0 else -x[i]
    return np.flatnonzero(take).astype(np.int64)


def _histogram(lengths: np.ndarray, counts: Optional[np.ndarray] = None) -> List[int]:
    """Tokens per PLOT_EDGES bucket (each document weighted by its copies)."""
    idx = np.searchsorted(np.asarray(PLOT_EDGES), lengths, side="right") - 1
    w = lengths * (1 if counts is None else counts)
    return np.bincount(idx, weights=w, minlength=len(PLOT_EDGES)).astype(np.int64).tolist()


def build_mixture(sources: Sequence[Tuple[str, str]], params: MixtureParams,
                  lengths: Optional[Sequence[np.ndarray]] = None, separator: Optional[dict] = None) -> Mixture:
    """Sample documents of each (name, prefix) source (docs/data.md, "The CPT mixture"). ``lengths`` (document lengths
    per source) skips reading the ``.idx`` files — for tests and callers that have them already. ``separator``
    (``Separator.as_dict()``) goes into the report; None takes the default data.separator's encoding from the
    sources' summary.json, when it is recorded there."""
    params.check()
    if lengths is None:
        from .indexed import read_document_lengths

        lengths = [read_document_lengths(prefix) for _, prefix in sources]
        if separator is None:
            separator = recorded_separator([prefix for _, prefix in sources])
    lengths = [np.asarray(x, dtype=np.int64) for x in lengths]
    totals = np.array([int(x.sum()) for x in lengths], dtype=np.float64)
    if totals.sum() <= 0:
        raise DataError(f"the sources {[n for n, _ in sources]} hold no tokens")
    weights = params.weights()
    weighted = np.array([float((weights[length_buckets(x, params)] * x).sum()) for x in lengths])
    budget = float(params.token_budget) if params.token_budget else float(weighted.sum())
    draws, report_sources = [], {}
    for s, ((name, prefix), x) in enumerate(zip(sources, lengths)):
        scale = budget * totals[s] / totals.sum() / weighted[s] if weighted[s] > 0 else 0.0
        bucket = length_buckets(x, params)
        counts = np.zeros(len(x), np.int64)
        buckets = {}
        for b, bname in enumerate(BUCKETS):
            members = np.flatnonzero(bucket == b)
            rate = scale * weights[b]
            base = int(np.floor(rate))
            counts[members] = base
            rng = np.random.default_rng([params.seed, s, b])
            counts[members[_diffuse(x[members], rate - base, rng)]] += 1
            before, after = int(x[members].sum()), int((x[members] * counts[members]).sum())
            buckets[bname] = {"docs_before": int(len(members)), "tokens_before": before,
                              "docs_after": int(counts[members].sum()), "tokens_after": after,
                              "weight": float(weights[b]), "ratio": after / before if before else None,
                              "effective_weight": after / before / scale if before and scale else None}
        draws.append(np.stack([np.full(int(counts.sum()), s), np.repeat(np.arange(len(x)), counts)], axis=1))
        report_sources[name] = {"prefix": prefix, "scale": scale, "buckets": buckets,
                                "tokens_before": int(totals[s]), "tokens_after": int((x * counts).sum()),
                                "histogram_before": _histogram(x), "histogram_after": _histogram(x, counts)}
    after_total = sum(v["tokens_after"] for v in report_sources.values())
    for name, v in report_sources.items():
        v["share_before"] = v["tokens_before"] / totals.sum()
        v["share_after"] = v["tokens_after"] / after_total if after_total else 0.0
    report = {"params": asdict(params), "budget": budget, "histogram_edges": PLOT_EDGES,
              "tokens_before": int(totals.sum()), "tokens_after": int(after_total), "sources": report_sources}
    if separator is not None:
        report["separator"] = separator
    all_draws = np.concatenate(draws) if draws else np.zeros((0, 2), np.int64)
    if len(all_draws) == 0:
        raise DataError("the mixture is empty (token_budget too small for these sources?); raise the budget")
    return Mixture([n for n, _ in sources], [p for _, p in sources], all_draws.astype(np.int64), params, report)


def report_table(report: Dict[str, object]) -> str:
    """The report as a fixed-width table: tokens and docs per source and length bucket, before → after."""
    p = report["params"]
    labels = {"short": f"<{p['short_threshold']}", "mid": f"{p['short_threshold']}-{p['long_threshold']}",
              "long": f">{p['long_threshold']}"}
    head = (f"{'source':<14}{'bucket':<13}{'docs':>10}{'tokens':>15}{'docs after':>12}{'tokens after':>15}"
            f"{'ratio':>8}{'weight':>8}")
    lines = [head, "-" * len(head)]
    for name, v in report["sources"].items():
        for b in BUCKETS:
            st = v["buckets"][b]
            ratio = f"{st['ratio']:.3f}" if st["ratio"] is not None else "-"
            eff = f"{st['effective_weight']:.3f}" if st["effective_weight"] is not None else "-"
            lines.append(f"{name:<14}{labels[b]:<13}{st['docs_before']:>10,}{st['tokens_before']:>15,}"
                         f"{st['docs_after']:>12,}{st['tokens_after']:>15,}{ratio:>8}{eff:>8}")
        lines.append(f"{name:<14}{'share':<13}{'':>10}{v['share_before']:>15.2%}{'':>12}{v['share_after']:>15.2%}")
    lines.append(f"{'total':<14}{'':<13}{'':>10}{report['tokens_before']:>15,}{'':>12}{report['tokens_after']:>15,}")
    lines.append("ratio = tokens after / before; weight = ratio / the source's scale (the configured bucket weight)")
    sep = report.get("separator")
    if sep:
        lines.append(f"separator between documents ({sep['origin']}): ids {sep['ids']}, pieces "
                     f"{' '.join(map(repr, sep['pieces']))} (+{len(sep['ids'])} tokens per document)")
    return "\n".join(lines)


def recorded_separator(prefixes: Sequence[str]) -> Optional[dict]:
    """The default data.separator as the sources' tokenizer encodes it, from their summary.json (None when a
    summary predates that record, or the sources disagree)."""
    from .indexed import read_summary

    seen = []
    for prefix in prefixes:
        try:
            summary = read_summary(os.path.dirname(prefix) or ".")
        except DataError:
            return None
        sep = (summary.get("tokenizer") or {}).get("separator") if isinstance(summary, dict) else None
        if not sep:
            return None
        seen.append(sep)
    return seen[0] if seen and all(s == seen[0] for s in seen) else None


def plot_report(report: Dict[str, object], path: str | os.PathLike) -> str:
    """PNG: per source, tokens per document-length bucket before and after sampling (log-scaled x buckets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(report["sources"].items())
    fig, axes = plt.subplots(len(sources), 1, figsize=(9, 2.6 * len(sources)), squeeze=False)
    edges = report["histogram_edges"]
    used = [i for i in range(len(edges))
            if any(v["histogram_before"][i] or v["histogram_after"][i] for _, v in sources)]
    lo, hi = (min(used), max(used)) if used else (0, len(edges) - 1)
    labels = [_short(edges[i]) for i in range(lo, hi + 1)]
    xs = np.arange(len(labels))
    p = report["params"]
    for ax, (name, v) in zip(axes[:, 0], sources):
        ax.bar(xs - 0.2, v["histogram_before"][lo: hi + 1], width=0.4, label="before")
        ax.bar(xs + 0.2, v["histogram_after"][lo: hi + 1], width=0.4, label="after")
        for thr, style in ((p["short_threshold"], "--"), (p["long_threshold"], ":")):
            # drawn left of the first bucket starting at or above the threshold
            ax.axvline(np.searchsorted(edges[lo: hi + 1], thr) - 0.5, color="gray", ls=style, lw=1)
        ax.set_title(f"{name}: share {v['share_before']:.1%} → {v['share_after']:.1%}", fontsize=9)
        ax.set_ylabel("tokens")
        ax.set_xticks(xs, labels, fontsize=7)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("document length bucket (tokens, lower bound); dashed/dotted = short/long threshold")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return str(path)


def _short(n: int) -> str:
    for unit, div in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= div:
            return f"{n // div}{unit}"
    return str(n)


def _sidecars(path: Path) -> Tuple[Path, Path, Path]:
    stem = path.with_suffix("")
    return stem.with_suffix(".draws.npy"), stem.with_suffix(".report.json"), stem.with_suffix(".png")


def write_mixture(mixture: Mixture, path: str | os.PathLike, plot: bool = True) -> Dict[str, str]:
    """Write the manifest ``path`` (.json), its draws (.draws.npy), the report (.report.json) and, with ``plot``,
    the histogram (.png). The manifest is written last: its presence means the mixture is complete."""
    path = Path(path)
    if path.suffix != ".json":
        raise DataError(f"mixture output {path}: use a .json file name (sidecars take the same stem)")
    draws_path, report_path, png_path = _sidecars(path)
    with atomic_path(draws_path) as tmp, open(tmp, "wb") as f:
        np.save(f, mixture.draws)
    with atomic_path(report_path) as tmp:
        Path(tmp).write_text(json.dumps(mixture.report, indent=1))
    if plot:
        plot_report(mixture.report, png_path)
    base = path.parent.resolve()

    def rel(prefix: str) -> str:  # relative to the manifest when below it: the folder can move as a whole
        p = Path(prefix).resolve()
        return str(p.relative_to(base)) if p.is_relative_to(base) else str(p)

    manifest = {"format": FORMAT, "version": 1, "params": asdict(mixture.params),
                "sources": [{"name": n, "prefix": rel(p), "tokens_after": mixture.report["sources"][n]["tokens_after"]}
                            for n, p in zip(mixture.names, mixture.prefixes)],
                "draws": draws_path.name, "num_draws": int(len(mixture.draws)),
                "tokens": int(mixture.report["tokens_after"]), "report": report_path.name}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=1))
    out = {"manifest": str(path), "draws": str(draws_path), "report": str(report_path)}
    if plot:
        out["png"] = str(png_path)
    return out


def load_mixture(path: str | os.PathLike) -> Mixture:
    """Read a manifest written by ``write_mixture`` (DataError if it is not one, or its draws are missing)."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"mixture manifest {path} not found; build it with tools/preprocess_data.py mixture") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: corrupt mixture manifest ({e.msg}); rebuild it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a mixture manifest (format {FORMAT!r}); build one with "
                        f"tools/preprocess_data.py mixture")
    base = path.parent
    draws_path = base / manifest["draws"]
    try:
        draws = np.load(draws_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{draws_path}: unreadable mixture draws ({e}); rebuild the mixture") from None
    if draws.ndim != 2 or draws.shape[1] != 2 or len(draws) != manifest["num_draws"]:
        raise DataError(f"{draws_path}: draws do not match the manifest ({draws.shape} vs {manifest['num_draws']} "
                        f"rows); rebuild the mixture")
    prefixes = [str(base / s["prefix"]) if not os.path.isabs(s["prefix"]) else s["prefix"]
                for s in manifest["sources"]]
    report = {}
    if (base / manifest.get("report", "")).is_file():
        report = json.loads((base / manifest["report"]).read_text())
    return Mixture([s["name"] for s in manifest["sources"]], prefixes, draws.astype(np.int64),
                   MixtureParams(**manifest["params"]), report)
