"""Figure of the scores from :func:`scmedal_lite.metrics.score_embeddings`.

Example
-------
>>> import matplotlib
>>> matplotlib.use("Agg")
>>> import numpy as np, pandas as pd
>>> from scmedal_lite.plotting_scores import plot_scores
>>> df = pd.DataFrame({"embedding": ["PCA", "PCA", "FE", "FE"], "metric": "asw",
...                    "label": ["batch", "celltype"] * 2, "value": [0.1, 0.3, -0.1, 0.2]})
>>> fig = plot_scores(df)
>>> len(fig.axes)
1
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .metrics import summarize_folds

__all__ = ["plot_scores"]


def plot_scores(df: pd.DataFrame, *, metrics: Sequence[str] | str | None = None, ax=None):
    """Grouped bar plot of a tidy score table: one panel per metric, embeddings on x, one bar per label.

    ``df`` has columns ``embedding, metric, label, value`` (the output of ``score_embeddings``, one or many
    folds concatenated). Bars show the mean over the rows of each group, error bars the t-based 95% interval
    of :func:`scmedal_lite.metrics.summarize_folds` (absent with a single fold), and dots the single values.

    Parameters
    ----------
    metrics
        Metric names to draw, in this order; None draws every metric in ``df``.
    ax
        A matplotlib Axes (exactly one metric) or a sequence of Axes (one per metric) to draw into; None
        creates a new figure with one panel per metric.

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the panels. Nothing is shown; call ``fig.savefig`` or display it in a notebook.

    Example
    -------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import pandas as pd
    >>> df = pd.DataFrame({"embedding": ["PCA", "FE"] * 2, "metric": ["asw"] * 2 + ["ilisi"] * 2,
    ...                    "label": "batch", "value": [0.1, -0.1, 0.2, 0.8]})
    >>> fig = plot_scores(df, metrics=["ilisi", "asw"])
    >>> [a.get_title() for a in fig.axes]
    ['ilisi', 'asw']
    """
    import matplotlib.pyplot as plt

    missing = [c for c in ("embedding", "metric", "label", "value") if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing}; pass the output of score_embeddings")
    available = list(pd.unique(df["metric"]))
    if metrics is None:
        metrics = available
    elif isinstance(metrics, str):
        metrics = [metrics]
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise ValueError(f"metric(s) {unknown} not in df; it has {available}")
    if not metrics:
        raise ValueError("nothing to plot: df holds no scores")

    if ax is None:
        ncols = min(len(metrics), 3)
        nrows = int(np.ceil(len(metrics) / ncols))
        fig, grid = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
        axes = list(grid.ravel())
        for extra in axes[len(metrics):]:
            extra.remove()
        axes = axes[: len(metrics)]
    else:
        axes = list(ax) if isinstance(ax, (Sequence, np.ndarray)) else [ax]
        if len(axes) != len(metrics):
            raise ValueError(f"got {len(axes)} Axes for {len(metrics)} metrics {list(metrics)}")
        fig = axes[0].figure

    summary = summarize_folds(df)
    embeddings = list(pd.unique(df["embedding"]))
    labels = list(pd.unique(df["label"]))
    colors = {lab: f"C{i}" for i, lab in enumerate(labels)}
    x0 = np.arange(len(embeddings))

    for a, metric in zip(axes, metrics):
        s = summary[summary["metric"] == metric]
        raw = df[df["metric"] == metric]
        present = [lab for lab in labels if lab in set(s["label"])]
        width = 0.8 / len(present)
        for j, lab in enumerate(present):
            sl = s[s["label"] == lab].set_index("embedding").reindex(embeddings)
            x = x0 + (j - (len(present) - 1) / 2) * width
            mean = sl["mean"].to_numpy(dtype=float)
            err = np.vstack([mean - sl["ci_low"].to_numpy(float), sl["ci_high"].to_numpy(float) - mean])
            err = np.nan_to_num(err, nan=0.0)
            a.bar(x, np.nan_to_num(mean), width=width * 0.9, color=colors[lab], alpha=0.75, label=str(lab),
                  yerr=err, capsize=3, error_kw={"elinewidth": 1})
            pts = raw[raw["label"] == lab]
            px = x[[embeddings.index(e) for e in pts["embedding"]]]
            a.scatter(px, pts["value"], s=10, color="k", zorder=3)
        a.axhline(0, color="0.5", lw=0.8)
        a.set_xticks(x0, [str(e) for e in embeddings], rotation=30, ha="right")
        a.set_title(str(metric))
        a.set_ylabel("value")
        a.legend(fontsize="small", frameon=False)
    fig.tight_layout()
    return fig
