"""The figures the tutorial notebooks show: UMAPs of latents, training curves, random effects, MEC results.

Small functions; each returns a matplotlib ``Figure`` and never calls ``plt.show``. UMAPs follow the paper:
a k = 15 nearest-neighbour graph (scanpy) on the raw latent, then ``umap`` with ``min_dist=0.5`` and
``random_state=5``.

Example
-------
>>> import scmedal_lite as sm
>>> from scmedal_lite import plotting
>>> coords = {"scMEDAL-FE": plotting.umap(model.get_latent("fe"))}                      # doctest: +SKIP
>>> fig = plotting.plot_umaps(coords, adata.obs, ["sample_id", "celltype_coarse"])        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["umap", "plot_umaps", "plot_history", "plot_random_effects", "plot_batch_uncertainty", "plot_mec",
           "category_colors"]

#: Categories beyond this number are drawn without a legend (the colours alone show the mixing).
MAX_LEGEND = 20


def umap(X, *, n_neighbors: int = 15, min_dist: float = 0.5, random_state: int = 5) -> np.ndarray:
    """2-D UMAP of an embedding (cells × d), as in the paper: scanpy ``neighbors(n_neighbors)`` on ``X``
    itself (no PCA), then ``tl.umap(min_dist, random_state)``. Returns ``(n_cells, 2)`` float32."""
    import anndata
    import scanpy as sc

    X = np.asarray(X, dtype="float32")
    if X.ndim != 2 or X.shape[0] < 3:
        raise ValueError(f"umap needs a cells x dimensions array with at least 3 cells, got shape {X.shape}")
    tmp = anndata.AnnData(X=np.zeros((X.shape[0], 1), dtype="float32"), obsm={"X_emb": X})
    k = int(min(n_neighbors, X.shape[0] - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.neighbors(tmp, n_neighbors=k, use_rep="X_emb", random_state=0)
        sc.tl.umap(tmp, min_dist=min_dist, random_state=random_state)
    return np.asarray(tmp.obsm["X_umap"], dtype="float32")


def category_colors(values) -> dict:
    """A stable colour per category (sorted): tab10/tab20 up to 20 categories, a spread of ``hsv`` beyond."""
    import matplotlib

    cats = sorted(pd.unique(pd.Series(values).astype(str)))
    if len(cats) <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return {c: cmap(i) for i, c in enumerate(cats)}
    if len(cats) <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return {c: cmap(i) for i, c in enumerate(cats)}
    cmap = matplotlib.colormaps["hsv"]
    order = np.random.default_rng(0).permutation(len(cats))     # neighbours in name get distant hues
    return {c: cmap(order[i] / len(cats)) for i, c in enumerate(cats)}


def _scatter(ax, xy, values, *, title, point_size, legend):
    values = pd.Series(values).astype(str).to_numpy()
    colors = category_colors(values)
    order = np.random.default_rng(0).permutation(len(values))      # no category drawn on top of all others
    ax.scatter(xy[order, 0], xy[order, 1], c=[colors[v] for v in values[order]], s=point_size,
               linewidths=0, rasterized=True)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    if legend and len(colors) <= MAX_LEGEND:
        handles = [ax.scatter([], [], color=col, s=20, label=c) for c, col in colors.items()]
        ax.legend(handles=handles, fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  markerscale=1.0, handletextpad=0.2)
    elif legend:
        ax.text(1.02, 0.5, f"{len(colors)} categories\n(no legend)", transform=ax.transAxes, fontsize=7,
                va="center")


def plot_umaps(coords: Mapping[str, np.ndarray], obs: pd.DataFrame, color_keys: Sequence[str], *,
               point_size: float | None = None, panel_size: float = 3.2):
    """A grid of UMAPs: one row per embedding in ``coords`` (``{name: (n_cells, 2)}``), one column per
    ``obs`` column in ``color_keys``. Categorical colours; a legend when there are at most 20 categories."""
    from matplotlib.figure import Figure

    if not coords:
        raise ValueError("coords is empty: give {name: umap coordinates}")
    color_keys = [color_keys] if isinstance(color_keys, str) else list(color_keys)
    missing = [k for k in color_keys if k not in obs.columns]
    if missing:
        raise ValueError(f"colour key(s) {missing} are not columns of obs ({list(obs.columns)})")
    n = len(obs)
    for name, xy in coords.items():
        if np.asarray(xy).shape != (n, 2):
            raise ValueError(f"coords[{name!r}] has shape {np.asarray(xy).shape}; expected ({n}, 2)")
    if point_size is None:
        point_size = float(np.clip(3000 / max(n, 1), 0.5, 12))
    nrows, ncols = len(coords), len(color_keys)
    fig = Figure(figsize=(panel_size * ncols + 1.6 * ncols, panel_size * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, (name, xy) in enumerate(coords.items()):
        for j, key in enumerate(color_keys):
            _scatter(axes[i, j], np.asarray(xy), obs[key].to_numpy(), title=f"{name}: {key}",
                     point_size=point_size, legend=True)
    return fig


def plot_history(history: Mapping[str, pd.DataFrame], *, columns: Sequence[str] = ("loss", "val_loss")):
    """Training curves, one panel per network (``model.history``: ``{kind: losses per epoch}``)."""
    from matplotlib.figure import Figure

    items = [(k, h) for k, h in history.items() if h is not None and len(h)]
    if not items:
        raise ValueError("history is empty: train the model first")
    fig = Figure(figsize=(3.6 * len(items), 3.0), layout="constrained")
    axes = fig.subplots(1, len(items), squeeze=False)[0]
    for ax, (kind, h) in zip(axes, items):
        for col in columns:
            if col in h.columns:
                ax.plot(h.index, h[col], label=col)
        ax.set_title(kind.upper(), fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7, frameon=False)
    return fig


def plot_random_effects(table: pd.DataFrame, *, top: int | None = 30):
    """Per-batch random effects from :meth:`scmedal_lite.SCMEDAL.random_effects`.

    Left: mean absolute posterior mean per batch and layer (heatmap, batches sorted by average magnitude);
    right: the posterior s.d. against the magnitude, one dot per batch and layer. ``top`` keeps the batches
    with the largest average magnitude (None: all).
    """
    from matplotlib.figure import Figure

    need = {"layer", "batch", "mean_abs", "mean_sd"}
    if not need <= set(table.columns):
        raise ValueError(f"table needs columns {sorted(need)}; pass model.random_effects()")
    wide = table.pivot_table(index="batch", columns="layer", values="mean_abs")
    order = wide.mean(axis=1).sort_values(ascending=False).index
    if top is not None:
        order = order[:top]
    wide = wide.loc[order]
    fig = Figure(figsize=(11, max(3.0, 0.18 * len(wide) + 1.8)), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.6, 1])
    im = ax1.imshow(wide.to_numpy(), aspect="auto", cmap="magma")
    ax1.set_yticks(range(len(wide)), [str(b) for b in wide.index], fontsize=6)
    ax1.set_xticks(range(wide.shape[1]), [str(c) for c in wide.columns], rotation=60, ha="right", fontsize=7)
    ax1.set_title("mean |posterior mean| per batch and layer", fontsize=10)
    fig.colorbar(im, ax=ax1, shrink=0.8)
    for j, (layer, sub) in enumerate(table.groupby("layer", sort=True)):
        ax2.scatter(sub["mean_abs"], sub["mean_sd"], s=10, label=layer, color=f"C{j % 10}")
    ax2.set_xlabel("mean |posterior mean|")
    ax2.set_ylabel("mean posterior s.d.")
    ax2.set_title("magnitude vs. uncertainty (one dot per batch)", fontsize=10)
    ax2.legend(fontsize=6, frameon=False)
    return fig


def plot_batch_uncertainty(table: pd.DataFrame, cells_per_batch: pd.Series):
    """Posterior s.d. of each batch's random effects (mean over layers and units) against its number of
    training cells (``cells_per_batch``: a Series indexed by batch). One dot per batch, log-scaled x."""
    from matplotlib.figure import Figure

    sd = table.groupby("batch")["mean_sd"].mean()
    size = pd.Series(cells_per_batch).rename(index=str).reindex(sd.index.astype(str))
    fig = Figure(figsize=(4.8, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.scatter(size.to_numpy(dtype=float), sd.to_numpy(), s=14)
    ax.set_xscale("log")
    ax.set_xlabel("training cells in the batch")
    ax.set_ylabel("mean posterior s.d.")
    ax.set_title("uncertainty of the random effects", fontsize=10)
    return fig


def plot_mec(summary: pd.DataFrame, *, metric: str = "balanced_accuracy"):
    """MEC results (:func:`scmedal_lite.classify.summarize_mec`): one panel per scheme, one bar per feature
    set with its 95 % interval over folds; the chance level as a dashed line."""
    from matplotlib.figure import Figure

    sub = summary[summary["metric"] == metric]
    if sub.empty:
        raise ValueError(f"metric {metric!r} not in the summary ({sorted(summary['metric'].unique())})")
    schemes = list(pd.unique(sub["scheme"])) if "scheme" in sub.columns else [None]
    fig = Figure(figsize=(4.6 * len(schemes), 3.6), layout="constrained")
    axes = fig.subplots(1, len(schemes), squeeze=False)[0]
    for ax, scheme in zip(axes, schemes):
        s = sub if scheme is None else sub[sub["scheme"] == scheme]
        chance = s[s["features"] == "chance"]
        s = s[s["features"] != "chance"]
        x = np.arange(len(s))
        err = np.vstack([s["mean"] - s["ci_low"], s["ci_high"] - s["mean"]])
        colors = ["C1" if " + RE" in f else "C0" for f in s["features"]]
        ax.bar(x, s["mean"], yerr=np.nan_to_num(err), capsize=3, color=colors, alpha=0.8)
        if len(chance):
            ax.axhline(float(chance["mean"].iloc[0]), ls="--", color="0.3", lw=1, label="chance")
            ax.legend(fontsize=7, frameon=False, loc="lower right")
        ax.set_xticks(x, list(s["features"]), rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(metric.replace("_", " "))
        names = {"cells": "cell-level folds", "batches": "leave-batches-out folds"}
        ax.set_title(names.get(scheme, str(scheme)), fontsize=10)
    return fig
