"""Every figure of the package, in one namespace (``sm.pl``): UMAPs of latents, training curves, random effects,
scores, MEC results, counterfactual means, and the genomap figures (from :mod:`scmedal_lite.genomaps.plots`).

Small functions; each returns a matplotlib ``Figure`` built without pyplot's figure manager (no global state,
safe with any backend; seaborn draws into its axes where that is simpler) and never shows it: display it in a
notebook, or write it with :func:`scmedal_lite.io.write_figure`. Where natural they take the AnnData and its
keys (:func:`umaps`: ``obsm`` keys and ``obs`` columns) or the model (:func:`plot_history`,
:func:`plot_random_effects`, :func:`plot_batch_uncertainty`); the array and table forms still work.
UMAPs follow the paper: a k = 15 nearest-neighbour graph (UMAP's fuzzy graph, as scanpy builds it) on the raw
latent, then ``umap`` with ``min_dist=0.5`` and ``random_state=5``.

Example
-------
>>> import scmedal_lite as sm
>>> sm.tl.latent(model, adata, kind="fe")                                                 # doctest: +SKIP
>>> fig = sm.pl.umaps(adata, "X_scMEDAL_FE", color=["sample_id", "celltype_coarse"])     # doctest: +SKIP
>>> fig = sm.pl.plot_history(model)                                                      # doctest: +SKIP
>>> fig = sm.pl.plot_scores(sm.metrics.score_embeddings(...))                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .genomaps.plots import plot_cell_all_batches, plot_cell_panel, plot_significant_pixels
from .metrics import summarize_folds
from .validate import InputError

log = logging.getLogger(__name__)

__all__ = ["umap", "precompile_umap", "fuzzy_neighbour_graph", "umaps", "plot_umaps", "plot_history",
           "plot_random_effects", "plot_batch_uncertainty", "plot_mec", "plot_scores", "plot_counterfactual_means",
           "counterfactual_means", "category_colors", "plot_cell_panel", "plot_cell_all_batches",
           "plot_significant_pixels"]

#: Categories beyond this number are drawn without a legend (the colours alone show the mixing).
MAX_LEGEND = 20


def umap(X, *, n_neighbors: int = 15, min_dist: float = 0.5, random_state: int = 5) -> np.ndarray:
    """2-D UMAP of an embedding (cells × d), as in the paper: the k = ``n_neighbors`` fuzzy neighbour graph of
    ``X`` itself (no PCA; :func:`fuzzy_neighbour_graph`, the graph scanpy's ``neighbors`` builds), then scanpy's
    ``tl.umap(min_dist, random_state)``. Returns ``(n_cells, 2)`` float32.

    >>> xy = sm.pl.umap(model.get_latent("fe"))                                   # doctest: +SKIP
    """
    import anndata
    import scanpy as sc

    X = np.asarray(X, dtype="float32")
    if X.ndim != 2 or X.shape[0] < 3:
        raise InputError(f"umap needs a cells x dimensions array with at least 3 cells, got shape {X.shape}")
    k = int(min(n_neighbors, X.shape[0] - 1))
    distances, connectivities = fuzzy_neighbour_graph(X, k)
    tmp = anndata.AnnData(X=np.zeros((X.shape[0], 1), dtype="float32"), obsm={"X_emb": X},
                          obsp={"distances": distances, "connectivities": connectivities})
    tmp.uns["neighbors"] = {"connectivities_key": "connectivities", "distances_key": "distances",
                            "params": {"n_neighbors": k, "method": "umap", "metric": "euclidean",
                                       "use_rep": "X_emb", "random_state": 0}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.umap(tmp, min_dist=min_dist, random_state=random_state)
    return np.asarray(tmp.obsm["X_umap"], dtype="float32")


def precompile_umap() -> None:
    """Let numba compile umap-learn's and pynndescent's code once, at install (``make install`` runs this).

    Both packages ask numba to keep their compiled code on disk, but it is only compiled on first use: after a
    fresh install the first ``import umap`` (in :func:`umap`) compiles their code, inside the first chapter:
    its first UMAP took 19.4 s on 2 CPUs, 4.0 s after this had run (``benchmarks/results/umap_precompile.md``).
    This runs one UMAP of 40 random points; the code compiled is the one any UMAP uses
    (``tests/test_tl.py``).

    >>> sm.pl.precompile_umap()                                                   # doctest: +SKIP
    """
    umap(np.random.default_rng(0).normal(size=(40, 4)))


def fuzzy_neighbour_graph(X, n_neighbors: int = 15):
    """UMAP's fuzzy k-nearest-neighbour graph of the rows of ``X`` (exact Euclidean neighbours, the cell itself
    counted as the first); returns sparse ``(distances, connectivities)`` as scanpy's ``pp.neighbors`` stores them.

    The graph is :func:`scmedal_lite.knn_graph.umap_graph`'s (the method of McInnes et al. 2018, in NumPy).
    scanpy computes the same graph with numba, which compiles for about 6 s in every new process (every
    notebook kernel); this takes milliseconds for thousands of cells.

    >>> d, c = fuzzy_neighbour_graph(np.random.default_rng(0).normal(size=(100, 5)), 15)
    >>> d.shape, bool(abs(c - c.T).max() < 1e-6), bool(c.max() <= 1)
    ((100, 100), True, True)
    """
    from scipy import sparse
    from sklearn.neighbors import NearestNeighbors

    from .knn_graph import umap_graph

    X = np.asarray(X, dtype="float32")
    n = X.shape[0]
    k = int(n_neighbors)
    if not 2 <= k <= n:
        raise InputError(f"n_neighbors must be between 2 and the number of cells ({n}), got {k}")
    dist, idx = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X)
    dist = dist.astype("float64")
    own = np.arange(n)
    at = np.where((idx == own[:, None]).any(axis=1), (idx == own[:, None]).argmax(axis=1), 0)
    idx[own, at], dist[own, at] = idx[:, 0], dist[:, 0]          # the cell itself first, even among duplicates
    idx[:, 0], dist[:, 0] = own, 0.0
    connectivities, _, _ = umap_graph(idx, dist)
    rows = np.repeat(own, k - 1)
    distances = sparse.csr_matrix((dist[:, 1:].ravel(), (rows, idx[:, 1:].ravel())), shape=(n, n))
    return distances, connectivities


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
        raise InputError("coords is empty: give {name: umap coordinates}")
    color_keys = [color_keys] if isinstance(color_keys, str) else list(color_keys)
    missing = [k for k in color_keys if k not in obs.columns]
    if missing:
        raise InputError(f"colour key(s) {missing} are not columns of obs ({list(obs.columns)})")
    n = len(obs)
    for name, xy in coords.items():
        if np.asarray(xy).shape != (n, 2):
            raise InputError(f"coords[{name!r}] has shape {np.asarray(xy).shape}; expected ({n}, 2)")
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


def umaps(adata, keys: str | Sequence[str], color: str | Sequence[str], *, names: Sequence[str] | None = None,
          **kwargs):
    """UMAPs of latents stored in ``adata.obsm`` (e.g. by :func:`scmedal_lite.tl.latent`): one row per key in
    ``keys``, one column per ``obs`` column in ``color`` (:func:`umap`, then :func:`plot_umaps`). ``names``
    titles the rows (default: the key without ``X_``, e.g. ``scMEDAL_FE``); ``kwargs`` go to
    :func:`plot_umaps`. Subset the cells first, e.g. ``sm.pl.umaps(adata[test], ...)``."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    missing = [k for k in keys if k not in adata.obsm]
    if missing:
        raise InputError(f"obsm key(s) {missing} not found; adata.obsm has {list(adata.obsm)} "
                         "(sm.tl.latent(model, adata, kind=...) writes X_scMEDAL_FE / X_scMEDAL_RE)")
    names = [k.removeprefix("X_") for k in keys] if names is None else list(names)
    if len(names) != len(keys):
        raise InputError(f"names has {len(names)} entries for {len(keys)} keys")
    coords = {name: umap(np.asarray(adata.obsm[key])) for name, key in zip(names, keys)}
    return plot_umaps(coords, adata.obs, color, **kwargs)


def plot_history(history, *, columns: Sequence[str] = ("loss", "val_loss")):
    """Training curves, one panel per network: a trained model, or its ``model.history``
    (``{kind: losses per epoch}``)."""
    from matplotlib.figure import Figure

    history = getattr(history, "history", history)
    items = [(k, h) for k, h in history.items() if h is not None and len(h)]
    if not items:
        raise InputError("history is empty: train the model first")
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


def _effects_table(table) -> pd.DataFrame:
    """``model.random_effects()`` of a model, or the table itself (checked)."""
    if hasattr(table, "random_effects"):
        table = table.random_effects()
    need = {"layer", "batch", "mean_abs", "mean_sd"}
    if not isinstance(table, pd.DataFrame) or not need <= set(table.columns):
        raise InputError(f"table needs columns {sorted(need)}; pass the model or model.random_effects()")
    return table


def plot_random_effects(table, *, top: int | None = 30):
    """Per-batch random effects of a model with a trained RE network, or its
    :meth:`scmedal_lite.SCMEDAL.random_effects` table.

    Left: mean absolute posterior mean per batch and layer (heatmap, batches sorted by average magnitude);
    right: the posterior s.d. against the magnitude, one dot per batch and layer. ``top`` keeps the batches
    with the largest average magnitude (None: all).
    """
    import seaborn as sns
    from matplotlib.figure import Figure

    table = _effects_table(table)
    wide = table.pivot_table(index="batch", columns="layer", values="mean_abs")
    order = wide.mean(axis=1).sort_values(ascending=False).index
    if top is not None:
        order = order[:top]
    wide = wide.loc[order]
    fig = Figure(figsize=(11, max(3.0, 0.18 * len(wide) + 1.8)), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.6, 1])
    sns.heatmap(wide, ax=ax1, cmap="magma", yticklabels=True, cbar_kws={"shrink": 0.8})
    ax1.tick_params(axis="y", labelsize=6)
    ax1.tick_params(axis="x", labelsize=7, labelrotation=60)
    ax1.set(xlabel="", ylabel="")
    ax1.set_title("mean |posterior mean| per batch and layer", fontsize=10)
    sns.scatterplot(data=table.sort_values("layer"), x="mean_abs", y="mean_sd", hue="layer", s=12,
                    linewidth=0, ax=ax2)
    ax2.set(xlabel="mean |posterior mean|", ylabel="mean posterior s.d.")
    ax2.set_title("magnitude vs. uncertainty (one dot per batch)", fontsize=10)
    ax2.legend(fontsize=6, frameon=False)
    return fig


def plot_batch_uncertainty(table, cells_per_batch: pd.Series | None = None):
    """Posterior s.d. of each batch's random effects (mean over layers and units) against its number of
    training cells. One dot per batch, log-scaled x. ``table``: a model with a trained RE network (the cells
    per batch then come from its training cells) or its ``random_effects()`` table with ``cells_per_batch``
    (a Series indexed by batch)."""
    from matplotlib.figure import Figure

    if cells_per_batch is None:
        if getattr(table, "adata", None) is None or getattr(table, "train_mask", None) is None:
            raise InputError("cells_per_batch is needed unless a model with its data is given")
        cells_per_batch = table.adata.obs.loc[table.train_mask, table.batch_key].astype(str).value_counts()
    table = _effects_table(table)
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
        raise InputError(f"metric {metric!r} not in the summary ({sorted(summary['metric'].unique())})")
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


def counterfactual_means(cf) -> pd.DataFrame:
    """Genes x target batches: the mean expression of each target batch's rows of a counterfactual AnnData
    (:meth:`scmedal_lite.SCMEDAL.counterfactual` with several batches), columns ``"as <batch>"``, sorted by the
    absolute difference of the first two."""
    if "target_batch" not in cf.obs:
        raise InputError("not a counterfactual AnnData: obs has no 'target_batch' (model.counterfactual(...))")
    batches = list(pd.unique(cf.obs["target_batch"].astype(str)))
    X = cf.X.toarray() if hasattr(cf.X, "toarray") else np.asarray(cf.X)
    target = cf.obs["target_batch"].astype(str).to_numpy()
    table = pd.DataFrame({f"as {b}": X[target == b].mean(axis=0) for b in batches}, index=cf.var_names)
    if table.shape[1] >= 2:
        table = table.reindex((table.iloc[:, 0] - table.iloc[:, 1]).abs().sort_values(ascending=False).index)
    return table


def plot_counterfactual_means(table, *, n_labels: int = 8, title: str | None = None,
                              size: tuple[float, float] = (4.5, 4.2)):
    """Each gene's mean counterfactual expression in two target batches: the first column of ``table``
    (x, e.g. ``"as donor1"``) against the second (y), one dot per gene (the index), the diagonal, and the first
    ``n_labels`` genes of ``table`` labelled (sort it by the difference first to label the genes that differ
    most). ``table`` may also be the counterfactual AnnData itself (:func:`counterfactual_means`)."""
    from anndata import AnnData
    from matplotlib.figure import Figure

    if isinstance(table, AnnData):
        table = counterfactual_means(table)
    if table.shape[1] < 2:
        raise InputError(f"table needs two columns of means (x, y); it has {list(table.columns)}")
    x, y = table.iloc[:, 0], table.iloc[:, 1]
    fig = Figure(figsize=size, layout="tight")
    ax = fig.subplots()
    ax.scatter(x, y, s=6, alpha=0.6)
    for gene in table.index[:n_labels]:
        ax.annotate(gene, (x.loc[gene], y.loc[gene]), fontsize=7)
    lim = [float(table.iloc[:, :2].min().min()), float(table.iloc[:, :2].max().max())]
    ax.plot(lim, lim, color="0.6", lw=0.8)
    ax.set_xlabel(f"mean counterfactual {table.columns[0]}")
    ax.set_ylabel(f"mean counterfactual {table.columns[1]}")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_scores(df: pd.DataFrame, *, metrics: Sequence[str] | str | None = None, ax=None):
    """Grouped bar plot of a tidy score table: one panel per metric, embeddings on x, one bar per label.

    ``df`` has columns ``embedding, metric, label, value`` (the output of
    :func:`scmedal_lite.metrics.score_embeddings`, one or many folds concatenated). Bars show the mean over the
    rows of each group, error bars the t-based 95% interval of :func:`scmedal_lite.metrics.summarize_folds`
    (absent with a single fold), and dots the single values.

    Parameters
    ----------
    metrics
        Metric names to draw, in this order; None draws every metric in ``df``.
    ax
        A matplotlib Axes (exactly one metric) or a sequence of Axes (one per metric) to draw into; None
        creates a new figure with one panel per metric (at most three per row).

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the panels. Nothing is shown; display it in a notebook or write it with
        :func:`scmedal_lite.io.write_figure`.

    Example
    -------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"embedding": ["PCA", "FE"] * 2, "metric": ["asw"] * 2 + ["ilisi"] * 2,
    ...                    "label": "batch", "value": [0.1, -0.1, 0.2, 0.8]})
    >>> fig = plot_scores(df, metrics=["ilisi", "asw"])
    >>> [a.get_title() for a in fig.axes]
    ['ilisi', 'asw']
    """
    metrics = _score_metrics(df, metrics)
    fig, axes = _score_axes(metrics, ax)
    summary = summarize_folds(df)
    embeddings = list(pd.unique(df["embedding"]))
    labels = list(pd.unique(df["label"]))
    colors = {lab: f"C{i}" for i, lab in enumerate(labels)}
    for a, metric in zip(axes, metrics):
        _score_panel(a, summary[summary["metric"] == metric], df[df["metric"] == metric], embeddings, labels,
                     colors)
        a.set_title(str(metric))
    if ax is not None:
        fig.tight_layout()
    return fig


def _score_metrics(df: pd.DataFrame, metrics) -> list:
    missing = [c for c in ("embedding", "metric", "label", "value") if c not in df.columns]
    if missing:
        raise InputError(f"df lacks columns {missing}; pass the output of score_embeddings")
    available = list(pd.unique(df["metric"]))
    metrics = available if metrics is None else [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise InputError(f"metric(s) {unknown} not in df; it has {available}")
    if not metrics:
        raise InputError("nothing to plot: df holds no scores")
    return metrics


def _score_axes(metrics: list, ax):
    """(figure, one Axes per metric): a new figure of panels, or the given Axes and their figure."""
    if ax is None:
        from matplotlib.figure import Figure

        ncols = min(len(metrics), 3)
        nrows = int(np.ceil(len(metrics) / ncols))
        fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="tight")
        axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
        for extra in axes[len(metrics):]:
            extra.remove()
        return fig, axes[: len(metrics)]
    axes = list(ax) if isinstance(ax, (Sequence, np.ndarray)) else [ax]
    if len(axes) != len(metrics):
        raise InputError(f"got {len(axes)} Axes for {len(metrics)} metrics {list(metrics)}")
    return axes[0].figure, axes


def _score_panel(a, s: pd.DataFrame, raw: pd.DataFrame, embeddings: list, labels: list, colors: dict) -> None:
    """One metric's bars (mean, 95 % interval) per embedding and label, with the single values as dots."""
    x0 = np.arange(len(embeddings))
    present = [lab for lab in labels if lab in set(s["label"])]
    width = 0.8 / len(present)
    for j, lab in enumerate(present):
        sl = s[s["label"] == lab].set_index("embedding").reindex(embeddings)
        x = x0 + (j - (len(present) - 1) / 2) * width
        mean = sl["mean"].to_numpy(dtype=float)
        err = np.vstack([mean - sl["ci_low"].to_numpy(float), sl["ci_high"].to_numpy(float) - mean])
        a.bar(x, np.nan_to_num(mean), width=width * 0.9, color=colors[lab], alpha=0.75, label=str(lab),
              yerr=np.nan_to_num(err, nan=0.0), capsize=3, error_kw={"elinewidth": 1})
        pts = raw[raw["label"] == lab]
        a.scatter(x[[embeddings.index(e) for e in pts["embedding"]]], pts["value"], s=10, color="k", zorder=3)
    a.axhline(0, color="0.5", lw=0.8)
    a.set_xticks(x0, [str(e) for e in embeddings], rotation=30, ha="right")
    a.set_ylabel("value")
    a.legend(fontsize="small", frameon=False)
