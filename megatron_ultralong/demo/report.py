"""The demo's report: report.json (the issue's keys, every number measured), REPORT.md and its console table.

    write_report(out, result)      # result: the dict run_demo builds; returns the console text
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from ..atomic import atomic_path

REPORT_KEYS = ("wall_time_s", "window", "target_length", "niah_before", "niah_after", "short_score_before",
               "short_score_after")
"""report.json's keys, exactly."""


def by_length(grid: dict) -> Dict[str, float]:
    """{str(length): accuracy over all depths (and samples)} of a run_grid result."""
    out: Dict[str, List[float]] = {}
    for c in grid["cells"]:
        out.setdefault(str(c["length"]), []).append(c["accuracy"])
    return {n: sum(v) / len(v) for n, v in out.items()}


def report_json(result: dict) -> dict:
    """The issue's report.json from the run's result."""
    return {"wall_time_s": round(result["wall_time_s"], 1), "window": result["window"],
            "target_length": result["target_length"], "niah_before": by_length(result["niah_before"]),
            "niah_after": by_length(result["niah_after"]),
            "short_score_before": result["short_before"]["score"], "short_score_after": result["short_after"]["score"]}


def _table(rows: List[List[str]]) -> List[str]:
    """A Markdown table (also readable as console text)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return [fmt(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows[1:]]


def _fmt_len(n: int, window: int) -> str:
    return f"{n} ({n // window}W)"


def markdown(result: dict) -> str:
    """REPORT.md: stages, NIAH by length before/after, the short score, the paths."""
    rep = report_json(result)
    w = result["window"]
    lines = [f"# megatron-ultralong demo: {w} -> {result['target_length']} tokens", "",
             f"Wall time {rep['wall_time_s']:.0f} s on {result['cpus']} CPU cores; variant `{result['variant']}`; "
             f"seed {result['seed']}.", "", "## Stages", ""]
    rows = [["stage", "wall s", "steps", "tokens", "tokens/s", "loss first -> last"]]
    for s in result["stages"]:
        rows.append([s["name"], f"{s['seconds']:.0f}", str(s.get("steps", "")), f"{s.get('tokens', 0):,}",
                     f"{s['tokens_per_s']:,.0f}" if s.get("tokens_per_s") else "",
                     f"{s['loss_first']:.3f} -> {s['loss_last']:.3f}" if "loss_first" in s else ""])
    lines += _table(rows) + ["", "## Passkey retrieval (accuracy over 11 depths per length)", ""]
    lengths = sorted(int(n) for n in rep["niah_before"])
    rows = [["model"] + [_fmt_len(n, w) for n in lengths]]
    for key, label in (("niah_before", "before (aligned base, no YaRN)"), ("niah_after", "after (YaRN CPT + SFT)")):
        rows.append([label] + [f"{rep[key][str(n)]:.0%}" for n in lengths])
    lines += _table(rows) + ["", f"Heatmaps side by side: `{result['paths']['heatmap']}`", "",
                             "## Short tasks (held-out chat questions, exact match)", ""]
    tasks = sorted(result["short_before"]["by_task"])
    rows = [["model", "score"] + tasks]
    for key, label in (("short_before", "before"), ("short_after", "after")):
        rows.append([label, f"{result[key]['score']:.3f}"] + [f"{result[key]['by_task'][t]:.2f}" for t in tasks])
    lines += _table(rows)
    ratio = rep["short_score_after"] / rep["short_score_before"] if rep["short_score_before"] else float("nan")
    lines += ["", f"after / before = {ratio:.3f}", ""]
    if result.get("recheck"):
        rc = result["recheck"]
        lines += ["## Re-check through transformers", "",
                  f"{rc['cells']} cells re-run on `{rc['hf_dir']}` reloaded: {rc['same']} of {rc['cells']} give the "
                  f"same answers.", ""]
    if result.get("ablation"):
        lines += ablation_markdown(result["ablation"], result["target_length"]) + [""]
    lines += ["## Paths", ""] + [f"- {k}: `{v}`" for k, v in result["paths"].items()] + [""]
    return "\n".join(lines)


def ablation_markdown(rows: List[dict], target: int) -> List[str]:
    """One table: NIAH at the target length by depth, its mean, and the short score, per RoPE variant."""
    depths = [c["depth"] for c in rows[0]["niah"]["cells"] if c["length"] == target]
    table = [["CPT rope"] + [f"{d:.0%}" for d in depths] + [f"NIAH@{target}", "short score"]]
    for r in rows:
        cells = {c["depth"]: c["accuracy"] for c in r["niah"]["cells"] if c["length"] == target}
        table.append([r["name"]] + [f"{cells[d]:.1f}" for d in depths] +
                     [f"{by_length(r['niah'])[str(target)]:.0%}", f"{r['short']['score']:.3f}"])
    return [f"## Ablation: how CPT scales RoPE (same data and budget), NIAH at {target} by depth", ""] + _table(table)


def write_report(out: Path, result: dict) -> str:
    """Write report.json, REPORT.md and result.json (everything, with every answer) under ``out``; returns the
    Markdown (the console prints it)."""
    text = markdown(result)
    for name, content in (("report.json", json.dumps(report_json(result), indent=2)),
                          ("result.json", json.dumps(result, indent=1)), ("REPORT.md", text)):
        with atomic_path(out / name) as tmp:
            Path(tmp).write_text(content + "\n")
    return text
