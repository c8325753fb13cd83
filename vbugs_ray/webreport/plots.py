"""The report's figures, drawn with matplotlib (Agg, no display) and inlined as PNG data: URIs:
error rate per axis value per class, flagged slices' effect size against support, and the
diagnosis ensemble's held-out predicted loss against the true one."""

from __future__ import annotations

import base64
import io

import numpy as np

MAX_CLASSES = 40  # heatmap rows: beyond this, the classes with the highest error rates
MAX_VALUES = 30  # heatmap columns: beyond this, the most common values
DPI = 80


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _uri(figure) -> str:
    plt = _pyplot()
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def error_heatmap(axis: str, classes: list[str], values: list[str], errors: np.ndarray, counts: np.ndarray) -> str:
    """Class x value error rates (``errors``/``counts``, both (classes, values)); empty cells grey."""
    plt = _pyplot()
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(counts > 0, errors / np.maximum(counts, 1), np.nan)
    figure, ax = plt.subplots(figsize=(1.2 + 0.55 * len(values), 0.9 + 0.32 * len(classes)))
    cmap = plt.get_cmap("Reds").with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(rates), cmap=cmap, vmin=0.0, vmax=max(0.05, float(np.nanmax(rates, initial=0))),
                      aspect="auto")
    ax.set_xticks(range(len(values)), [str(v)[:18] for v in values], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), [str(c)[:24] for c in classes], fontsize=8)
    ax.set_title(f"error rate by class and {axis}"[:60], fontsize=9)
    if len(values) * len(classes) <= 200:
        for (i, j), rate in np.ndenumerate(rates):
            if np.isfinite(rate):
                ax.text(j, i, f"{rate:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if rate > 0.6 * np.nanmax(rates) else "black")
    figure.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    return _uri(figure)


def effect_vs_support(support: list[int], effect: list[float], labels: list[str]) -> str:
    """Each flagged slice as a point: rows in the slice (log scale) against its effect size; the
    first ``len(labels)`` points are numbered as in the report's table."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.scatter(support, effect, s=18, alpha=0.7, color="#b22222")
    for x, y, label in zip(support, effect, labels):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("support (images in the slice)")
    ax.set_ylabel("effect size (SliceFinder: √2·gap / √(var in + var out))")
    ax.set_title("flagged slices", fontsize=9)
    ax.grid(alpha=0.3)
    return _uri(figure)


def predicted_vs_true(true_loss: list[float], predicted_loss: list[float], r2: float, spearman: float) -> str:
    """The diagnosis ensemble on held-out images: how far its ranking of phrases can be trusted."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.scatter(true_loss, predicted_loss, s=6, alpha=0.4, color="#1f4e8c")
    low = float(min(min(true_loss), min(predicted_loss)))
    high = float(max(max(true_loss), max(predicted_loss)))
    ax.plot([low, high], [low, high], color="grey", lw=1, ls="--")
    ax.set_xlabel("true loss (held out)")
    ax.set_ylabel("predicted loss")
    scores = ", ".join(f"{name} {value:.2f}" for name, value in (("R²", r2), ("Spearman", spearman))
                       if isinstance(value, (int, float)) and np.isfinite(value))
    ax.set_title("diagnosis ensemble" + (f": {scores}" if scores else ""), fontsize=9)
    ax.grid(alpha=0.3)
    return _uri(figure)
