"""Small plots for asset metadata, as markdown with an inline PNG (the Dagster UI renders it)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import dagster as dg

VERSION_EXEMPT = "metadata plots: how results look, not what they are"


def _markdown_png(fig) -> dg.MarkdownMetadataValue:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return dg.MetadataValue.md(f"![plot](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})")


def bar_plot(labels: Sequence[str], values: Sequence[float], title: str, xlabel: str,
             ylabel: str, log_y: bool = False) -> dg.MarkdownMetadataValue:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.bar(range(len(values)), values, color="#3b6ea8")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if log_y:
        ax.set_yscale("symlog")
    return _markdown_png(fig)


def log2_histogram(counts: Sequence[int], title: str, unit: str) -> dg.MarkdownMetadataValue:
    """Counts per power-of-two bin (bin i holds values in [2**i, 2**(i+1)))."""
    last = max((i for i, c in enumerate(counts) if c), default=0)
    first = min((i for i, c in enumerate(counts) if c), default=0)
    labels = [f"{2**i:,}" for i in range(first, last + 1)]
    return bar_plot(labels, counts[first : last + 1], title, f"{unit} (lower bin edge)", "documents")


def score_histogram(counts: Sequence[int], low: float, high: float, threshold: float,
                    title: str) -> dg.MarkdownMetadataValue:
    """Equal-width bins over [low, high] with the keep threshold drawn as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = (high - low) / max(len(counts), 1)
    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.bar([low + i * width for i in range(len(counts))], counts, width=width, align="edge",
           color="#3b6ea8", edgecolor="white")
    ax.axvline(threshold, color="#c0392b", linestyle="--", label=f"keep >= {threshold:g}")
    ax.set(title=title, xlabel="educational score", ylabel="documents", xlim=(low, high))
    ax.legend(fontsize=8)
    return _markdown_png(fig)


def line_plot(series: dict[str, Sequence[float]], title: str, xlabel: str,
              ylabel: str) -> dg.MarkdownMetadataValue:
    """One line per named series (loss curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.8))
    for name, values in series.items():
        ax.plot(range(len(values)), values, label=name, linewidth=1.2)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return _markdown_png(fig)


def scatter_plot(x: Sequence[float], y: Sequence[float], title: str, xlabel: str, ylabel: str,
                 diagonal: bool = False) -> dg.MarkdownMetadataValue:
    """Points, optionally with the y = x line (predicted against observed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3.2))
    ax.scatter(x, y, color="#3b6ea8", s=18)
    if diagonal and len(x):
        lo, hi = min(min(x), min(y)), max(max(x), max(y))
        ax.plot([lo, hi], [lo, hi], color="#c0392b", linestyle="--", linewidth=1)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _markdown_png(fig)


def grouped_bar_plot(labels: Sequence[str], groups: dict[str, Sequence[float]], title: str,
                     ylabel: str, errors: dict[str, Sequence[tuple[float, float]]] | None = None,
                     ylim_from: float | None = None) -> dg.MarkdownMetadataValue:
    """Bars side by side per label, one color per group (requested against capped weights); ``errors``:
    per group, the (low, high) interval of each bar, drawn as error bars; ``ylim_from``: the y axis starts
    there (losses differ in their last digits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.8))
    width = 0.8 / max(len(groups), 1)
    for g, (name, values) in enumerate(groups.items()):
        spans = (errors or {}).get(name)
        yerr = None if spans is None else [[v - lo for v, (lo, _) in zip(values, spans, strict=True)],
                                           [hi - v for v, (_, hi) in zip(values, spans, strict=True)]]
        ax.bar([i + g * width for i in range(len(labels))], values, width=width, label=name, yerr=yerr,
               capsize=3 if yerr else 0)
    if ylim_from is not None:
        ax.set_ylim(bottom=ylim_from)
    ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(labels))], labels, rotation=30,
                  ha="right", fontsize=7)
    ax.set(title=title, ylabel=ylabel)
    ax.legend(fontsize=7)
    return _markdown_png(fig)
