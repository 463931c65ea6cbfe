"""Plots of evaluation results: NIAH heatmap (depth × length), RULER heatmap (task × length), perplexity vs
length. Written atomically."""
from __future__ import annotations

from typing import Dict, Sequence


def _save(fig, path: str) -> None:
    from ..atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")


def _fmt_len(n: int) -> str:
    return f"{n // 1048576}M" if n % 1048576 == 0 else f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _heatmap(values, rows: Sequence[str], lengths: Sequence[int], path: str, title: str, ylabel: str,
             label: str) -> None:
    """[rows × lengths] scores in [0, 1] as a red-to-green heatmap PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths) + 0.06 * max(map(len, rows)), 1.0 + 0.5 * len(rows)))
    im = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(lengths)), [_fmt_len(n) for n in lengths])
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=label)
    _save(fig, path)
    plt.close(fig)


def _niah_matrix(grid: Dict):
    """[depths × lengths] accuracy of a run_grid result."""
    import numpy as np

    lengths, depths = grid["lengths"], grid["depths"]
    acc = np.zeros((len(depths), len(lengths)))
    for c in grid["cells"]:
        acc[depths.index(c["depth"]), lengths.index(c["length"])] = c["accuracy"]
    return acc


def niah_heatmap(grid: Dict, path: str, title: str = "Passkey retrieval") -> None:
    """Accuracy per (depth, length) cell as a red-to-green heatmap PNG."""
    _heatmap(_niah_matrix(grid), [f"{d:.0%}" for d in grid["depths"]], grid["lengths"], path,
             f"{title}: {grid['accuracy']:.1%}", "needle depth", "accuracy")


def niah_heatmaps_side_by_side(panels: Sequence[tuple], path: str, title: str = "Passkey retrieval",
                               window: int = 0) -> None:
    """Several NIAH grids ``[(label, grid), ...]`` (same lengths and depths) as heatmaps in one row of one PNG,
    the paper's figure style: needle depth down, context length across, one shared colour bar; ``window`` draws a
    dashed line after the last length within the model's original window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, depths = panels[0][1]["lengths"], panels[0][1]["depths"]
    fig, axes = plt.subplots(1, len(panels), figsize=(1.6 + 3.4 * len(panels), 1.2 + 0.32 * len(depths)),
                             sharey=True, squeeze=False)
    for ax, (label, grid) in zip(axes[0], panels):
        im = ax.imshow(_niah_matrix(grid), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(lengths)), [_fmt_len(n) for n in lengths])
        ax.set_xlabel("context length (tokens)")
        ax.set_title(f"{label}: {grid['accuracy']:.0%}")
        inside = [i for i, n in enumerate(lengths) if n <= window]
        if inside and len(inside) < len(lengths):
            ax.axvline(inside[-1] + 0.5, color="black", linestyle="--", linewidth=1)
    axes[0][0].set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    axes[0][0].set_ylabel("needle depth")
    fig.suptitle(title)
    fig.colorbar(im, ax=list(axes[0]), label="accuracy", fraction=0.03)
    _save(fig, path)
    plt.close(fig)


def ruler_heatmap(res: Dict, path: str, title: str = "RULER-style tasks") -> None:
    """Score per (task, length) cell as a red-to-green heatmap PNG."""
    import numpy as np

    values = np.array([[res["scores"][t][str(n)] for n in res["lengths"]] for t in res["tasks"]])
    _heatmap(values, res["tasks"], res["lengths"], path, f"{title}: {res['average']:.1%}", "task", "score")


def perplexity_plot(lengths: Sequence[int], ppl: Sequence[float], path: str, title: str = "Perplexity") -> None:
    """Perplexity vs context length (log-x) PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(lengths, ppl, marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(lengths), [_fmt_len(n) for n in lengths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
