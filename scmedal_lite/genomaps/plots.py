"""Figures of genomaps: one cell's images across target batches, and a map of a group comparison.

Each function returns a matplotlib ``Figure`` built without pyplot (safe with any backend); they are also
in :mod:`scmedal_lite.pl`.

Example
-------
>>> fig = plot_cell_panel(images, stack, cell, shown_batches=["donor1", "donor7"], layout=layout)
>>> fig = plot_significant_pixels(compare_batch_groups(images, stack.obs, ...), layout)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..validate import InputError, as_names
from .layout import GenomapLayout


def _cell_rows(obs: pd.DataFrame, cell: str) -> tuple[int, int, dict[str, int]]:
    """Row positions of a cell's input, FE and per-target-batch RE rows in the stack."""
    is_cell = (obs["cell"].astype(str) == str(cell)).to_numpy()
    if not is_cell.any():
        raise InputError(f"cell {cell!r} is not in the stack")
    kind = obs["kind"].astype(str).to_numpy()
    pos = np.flatnonzero(is_cell & (kind == "input"))
    fe = np.flatnonzero(is_cell & (kind == "fe"))
    re_pos = np.flatnonzero(is_cell & (kind == "re"))
    targets = obs["target_batch"].astype(object).to_numpy()
    return int(pos[0]), int(fe[0]), {str(targets[i]): int(i) for i in re_pos}


def _cell(images: np.ndarray, stack: ad.AnnData | pd.DataFrame, cell: str):
    """(obs, input row, FE row, {target batch: RE row}, the cell's own batch) of ``cell`` in the stack."""
    obs = stack.obs if isinstance(stack, ad.AnnData) else stack
    if len(obs) != len(images):
        raise InputError(f"{len(images)} images for {len(obs)} stack rows")
    i_in, i_fe, i_re = _cell_rows(obs, cell)
    return obs, i_in, i_fe, i_re, str(obs["source_batch"].iloc[i_in])


def _colour_limits(imgs: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    if vmin is None:
        vmin = float(np.nanpercentile(imgs, 1))
    if vmax is None:
        vmax = float(np.nanpercentile(imgs, 99))
    if vmax <= vmin:
        vmax = vmin + 1e-6
    return vmin, vmax


def _top_pixels(cell_imgs: np.ndarray, layout: GenomapLayout, top_n: int) -> list[tuple[int, int, str]]:
    """The top_n non-empty pixels by std across the given images, with the gene shown there."""
    if top_n <= 0:
        return []
    std = cell_imgs.std(axis=0).ravel()
    ptab = layout.pixel_table()
    std = np.where(ptab["gene"].notna().to_numpy(), std, -np.inf)
    order = np.argsort(-std, kind="stable")[:top_n]
    return [(int(ptab.at[i, "row"]), int(ptab.at[i, "col"]), str(ptab.at[i, "gene"])) for i in order
            if np.isfinite(std[i])]


def _mark(ax: Any, marks: list[tuple[int, int, str]], fontsize: float = 6) -> None:
    for r, c, name in marks:
        ax.scatter([c], [r], s=60, facecolors="none", edgecolors="red", linewidths=1.0)
        ax.annotate(name, (c, r), xytext=(3, 3), textcoords="offset points", color="white", fontsize=fontsize,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "black", "alpha": 0.5, "lw": 0})


def _cell_title(obs: pd.DataFrame, row: int, cell: str, title_keys: Sequence[str]) -> str:
    own = str(obs["source_batch"].iloc[row])
    extra = [f"{k}={obs[k].iloc[row]}" for k in title_keys if k in obs.columns]
    return f"cell {cell} (batch {own}" + ("; " + ", ".join(extra) if extra else "") + ")"


def _draw(axes, images, rows, titles, colours, limits, marks, fontsize, mark_size):
    """One image per axis, shared colour limits, gene marks, no ticks; returns the last image (for a colour
    bar)."""
    im = None
    for ax, i, title, colour in zip(axes, rows, titles, colours):
        im = ax.imshow(images[i], cmap="viridis", vmin=limits[0], vmax=limits[1], interpolation="nearest")
        ax.set_title(title, color=colour, fontsize=fontsize)
        _mark(ax, marks, fontsize=mark_size)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return im


def plot_cell_panel(images: np.ndarray, stack: ad.AnnData | pd.DataFrame, cell: str, *,
                    shown_batches: Sequence[str], layout: GenomapLayout, vmin: float | None = None,
                    vmax: float | None = None, top_n: int = 10, title_keys: Sequence[str] = (), size: float = 3.0):
    """One cell's genomaps: input | FE | its counterfactual in each of ``shown_batches``.

    ``images`` are the genomaps of the rows of ``stack`` (AnnData or its obs), in the same order.
    The column of the cell's own batch has a red title; all panels share the colour limits
    (``vmin``/``vmax``; default the 1st/99th percentiles of the shown images), viridis, one colour
    bar. The ``top_n`` pixels with the largest standard deviation across **all** of the cell's rows
    (input, FE and every target batch, as in scMEDAL) are circled and labelled with their gene.
    ``title_keys``: obs columns added to the title (e.g. "diagnosis"). Returns a matplotlib Figure
    (no pyplot state, safe with the Agg backend).
    """
    from matplotlib.figure import Figure

    obs, i_in, i_fe, i_re, own = _cell(images, stack, cell)
    shown = as_names(shown_batches)
    missing = [b for b in shown if b not in i_re]
    if missing:
        raise InputError(f"no counterfactual for batch(es) {missing} in the stack")
    idx = [i_in, i_fe] + [i_re[b] for b in shown]
    titles = ["input", "FE reconstruction"] + [f"as batch {b}" for b in shown]
    colours = ["red" if b == own else "black" for b in [None, None, *shown]]
    marks = _top_pixels(images[[i_in, i_fe, *i_re.values()]], layout, top_n)
    fig = Figure(figsize=(size * len(idx) + 1.2, size + 0.9), layout="constrained")
    axes = fig.subplots(1, len(idx), squeeze=False)[0]
    im = _draw(axes, images, idx, titles, colours, _colour_limits(images[idx], vmin, vmax), marks, 9, 6)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="z-score")
    fig.suptitle(_cell_title(obs, i_in, cell, title_keys), fontsize=10)
    return fig


def plot_cell_all_batches(images: np.ndarray, stack: ad.AnnData | pd.DataFrame, cell: str, *,
                          layout: GenomapLayout, vmin: float | None = None, vmax: float | None = None,
                          ncols: int = 6, top_n: int = 0, title_keys: Sequence[str] = (), size: float = 2.2):
    """One cell's counterfactual genomaps in every target batch of the stack, in a grid
    (``ncols`` per row; the cell's own batch titled in red; shared colour limits; optional top_n
    gene labels as in :func:`plot_cell_panel`). Returns a matplotlib Figure."""
    from matplotlib.figure import Figure

    obs, i_in, i_fe, i_re, own = _cell(images, stack, cell)
    batches = list(i_re)
    idx = [i_re[b] for b in batches]
    marks = _top_pixels(images[[i_in, i_fe, *idx]], layout, top_n)
    ncols = max(1, min(ncols, len(batches)))
    nrows = math.ceil(len(batches) / ncols)
    fig = Figure(figsize=(size * ncols + 1.2, size * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colours = ["red" if b == own else "black" for b in batches]
    im = _draw(axes, images, idx, batches, colours, _colour_limits(images[idx], vmin, vmax), marks, 8, 5)
    for ax in axes[len(batches):]:
        ax.set_axis_off()
    fig.colorbar(im, ax=list(axes), shrink=0.6, label="z-score")
    fig.suptitle(_cell_title(obs, i_in, cell, title_keys) + ": all target batches", fontsize=10)
    return fig


def plot_significant_pixels(result: pd.DataFrame, layout: GenomapLayout, alpha: float = 0.05,
                            *, max_labels: int = 40, size: float = 6.0):
    """Map of a :func:`~scmedal_lite.genomaps.compare_batch_groups` result on the genomap grid: each tested
    pixel coloured by its effect (diverging, symmetric limits), pixels with padj < ``alpha`` circled and
    labelled with their gene (at most ``max_labels``, the most significant). Returns a matplotlib Figure."""
    from matplotlib.figure import Figure

    grid = np.full(layout.shape, np.nan)
    res = result.dropna(subset=["row", "col"])
    tested = res[np.isfinite(res["pvalue"].to_numpy(dtype=float))]
    grid[tested["row"].astype(int), tested["col"].astype(int)] = tested["effect"].to_numpy(dtype=float)
    sig = res[res["padj"].to_numpy(dtype=float) < alpha].sort_values("padj")
    lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    labels = sig[["row", "col", "gene"]].head(max_labels).to_numpy()
    _mark(ax, [(int(r), int(c), str(g)) for r, c, g in labels], fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    g = result.attrs.get("groups", ["a", "b"])
    fig.colorbar(im, ax=ax, shrink=0.8, label=f"effect ({g[0]} - {g[1]})")
    ax.set_title(f"{result.attrs.get('test', '')}: {len(sig)} pixel(s) with padj < {alpha:g}", fontsize=10)
    return fig
