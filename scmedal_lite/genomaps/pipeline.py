"""The whole genomap step on a trained model: choose cells, stack counterfactuals, fit one layout, make the
images, draw the panels, compare two groups of batches, and write it all (:meth:`GenomapAnalysisResult.write`).

Example
-------
>>> res = run_genomap_analysis(model, adata, labels_key="cell_type", cell_types=["Mono"],
...                            condition_key="disease", shown_batches=["donor1", "donor7"],
...                            out_dir="outputs/genomaps")
>>> res.comparison.head()
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..io import write_csv, write_figure, write_json, write_npy
from ..validate import InputError, as_names
from .layout import GenomapLayout, fit_or_load
from .plots import plot_cell_all_batches, plot_cell_panel, plot_significant_pixels
from .stack import counterfactual_stack, select_cells, zscore_stack
from .stats import compare_batch_groups

log = logging.getLogger(__name__)


def _safe_name(s: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("_") or "x"


@dataclass
class PanelSettings:
    """How :meth:`GenomapAnalysisResult.write` draws the per-cell panels (see :func:`plot_cell_panel`)."""

    shown_batches: list[str]
    vmin: float | None = None
    vmax: float | None = None
    top_n: int = 10
    title_keys: Sequence[str] = ()
    all_batches_panels: bool = True


@dataclass
class GenomapAnalysisResult:
    """What :func:`run_genomap_analysis` computed (in memory) and, after :meth:`write`, where it is on disk.

    ``cell_obs`` is the chosen cells' ``obs``; ``panel_cells`` lists ``(cell type, shown batch, cell)``: one
    chosen cell per pair, drawn by :meth:`write`.
    """

    cells: pd.Index
    cell_obs: pd.DataFrame
    stack: ad.AnnData
    layout: GenomapLayout
    images: np.ndarray
    gene_table: pd.DataFrame
    comparison: pd.DataFrame | None
    panel_cells: list[tuple[str, str, str]]
    panels: PanelSettings
    summary: dict
    out_dir: Path | None = None
    paths: dict[str, Path] = field(default_factory=dict)

    def _write_panels(self, out: Path) -> None:
        p = self.panels
        for t, b, cell in tqdm(self.panel_cells, desc="panels", leave=False):
            stem = f"{_safe_name(t)}__{_safe_name(b)}__{_safe_name(cell)}"
            fig = plot_cell_panel(self.images, self.stack, cell, shown_batches=p.shown_batches,
                                  layout=self.layout, vmin=p.vmin, vmax=p.vmax, top_n=p.top_n,
                                  title_keys=p.title_keys)
            self.paths[f"panel:{stem}"] = Path(write_figure(out / "panels" / f"{stem}.png", fig,
                                                            bbox_inches=None))
            if p.all_batches_panels:
                fig = plot_cell_all_batches(self.images, self.stack, cell, layout=self.layout, vmin=p.vmin,
                                            vmax=p.vmax, title_keys=p.title_keys)
                self.paths[f"all_batches:{stem}"] = Path(write_figure(out / "panels" / f"{stem}__all_batches.png",
                                                                      fig, bbox_inches=None))

    def write(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write every table, array and figure under ``out_dir``, each file atomically (:mod:`scmedal_lite.io`):
        ``cells.csv``, ``stack_obs.csv``, ``genes.csv``, ``stack_scaled.npy``, ``stack_zscore.npy``,
        ``genomaps.npy`` (n_rows x rows x cols, float32), ``gene_table.csv``, ``pixel_table.csv``,
        ``panels/*.png``, ``comparison_<test>.csv``, ``significant_pixels_<test>.png``, and last
        ``summary.json`` (which lists them all). Returns the paths by name (also in :attr:`paths`)."""
        out = self.out_dir = Path(out_dir)
        tables = {"cells": self.cell_obs.rename_axis("cell").reset_index(),
                  "stack_obs": self.stack.obs.rename_axis("row_name").reset_index(),
                  "genes": pd.DataFrame({"gene": self.stack.var_names})}
        for name, table in tables.items():
            self.paths[name] = Path(write_csv(out / f"{name}.csv", table))
        arrays = {"stack_scaled": np.asarray(self.stack.X, dtype=np.float32),
                  "stack_zscore": self.stack.layers["zscore"], "genomaps": self.images}
        for name, array in arrays.items():
            self.paths[name] = Path(write_npy(out / f"{name}.npy", array))
        self.paths["gene_table"] = Path(write_csv(out / "gene_table.csv", self.gene_table))
        self.paths["pixel_table"] = Path(write_csv(out / "pixel_table.csv", self.layout.pixel_table()))
        self._write_panels(out)
        if self.comparison is not None:
            test = self.comparison.attrs["test"]
            self.paths["comparison"] = Path(write_csv(out / f"comparison_{test}.csv", self.comparison))
            fig = plot_significant_pixels(self.comparison, self.layout)
            self.paths["significant_pixels"] = Path(write_figure(out / f"significant_pixels_{test}.png", fig,
                                                                 bbox_inches=None))
        summary = {**self.summary, "paths": {k: str(v) for k, v in self.paths.items()}}
        self.paths["summary"] = Path(write_json(out / "summary.json", summary, indent=2))
        log.info("GenomapAnalysisResult.write: wrote %d files under %s", len(self.paths), out)
        return self.paths


def _groups_from_obs(adata: ad.AnnData, batch_key: str, condition_key: str) -> dict[str, str]:
    if condition_key not in adata.obs.columns:
        raise InputError(f"condition_key={condition_key!r} is not an obs column")
    pairs = adata.obs[[batch_key, condition_key]].astype(str).drop_duplicates()
    dup = pairs[batch_key][pairs[batch_key].duplicated()]
    if len(dup):
        raise InputError(f"obs[{condition_key!r}] is not constant within batch(es) {sorted(set(dup))[:5]}")
    return dict(zip(pairs[batch_key], pairs[condition_key]))


def _resolve_groups(adata, batch_key, condition_key, group_of_batch, groups):
    """(group of each batch, the two groups compared), from ``condition_key`` or ``group_of_batch``; both
    None without a condition. ``groups`` defaults to the two group labels, sorted, when there are two."""
    if condition_key is not None and group_of_batch is not None:
        raise InputError("give condition_key or group_of_batch, not both")
    if condition_key is not None:
        group_of_batch = _groups_from_obs(adata, batch_key, condition_key)
    if group_of_batch is not None and groups is None:
        labels = sorted({str(v) for v in group_of_batch.values()})
        if len(labels) != 2:
            raise InputError(f"{len(labels)} group labels {labels}: pass groups=(a, b)")
        groups = (labels[0], labels[1])
    return group_of_batch, groups


def _panel_cells(obs: pd.DataFrame, cells: pd.Index, labels_key: str, cell_types: list[str],
                 batch_key: str, shown: list[str], seed: int) -> list[tuple[str, str, str]]:
    """One selected cell per (cell type, shown batch): (cell type, batch, cell)."""
    rng = np.random.default_rng(seed)
    sel = obs.loc[cells]
    out = []
    for t in cell_types:
        for b in shown:
            cand = sel.index[(sel[labels_key].astype(str) == t) & (sel[batch_key].astype(str) == b)]
            if len(cand):
                out.append((t, b, str(cand[int(rng.integers(len(cand)))])))
    return out


def run_genomap_analysis(model: Any, adata: ad.AnnData, *, labels_key: str, cell_types: str | Sequence[str],
                         shown_batches: Sequence[str], out_dir: str | os.PathLike,
                         condition_key: str | None = None,
                         group_of_batch: Mapping[str, str] | None = None, groups: tuple[str, str] | None = None,
                         n_cells: int = 300, n_iter: int = 200, seed: int = 0, layout_method: str = "euclidean",
                         target_batches: Sequence[str] | None = None, mode: str = "auto", test: str = "mwu",
                         max_pixels: int | None = None, vmin: float | None = None, vmax: float | None = None,
                         top_n: int = 10, title_keys: Sequence[str] = (),
                         all_batches_panels: bool = True) -> GenomapAnalysisResult:
    """Run the whole genomap step and write everything under ``out_dir``.

    1. :func:`select_cells` of ``cell_types`` in ``obs[labels_key]`` (``shown_batches`` forced);
    2. :func:`counterfactual_stack` + :func:`zscore_stack`;
    3. :func:`fit_or_load` on the z-scores (cache in ``out_dir/layout_cache``), by ``layout_method``
       (:data:`~scmedal_lite.genomaps.LAYOUT_METHODS`; ``"genomap"`` for the published layout);
    4. genomaps of every row;
    5. if groups are given (``condition_key``: an obs column constant within each batch, e.g. the donor's
       diagnosis, read from all cells of ``adata``; or an explicit ``group_of_batch``),
       :func:`compare_batch_groups` on the genomaps. ``groups`` defaults to the two group labels (sorted) when
       there are exactly two; the effect is ``groups[0] - groups[1]``, so pass e.g.
       ``groups=("disease", "control")`` for disease - control;
    6. :meth:`GenomapAnalysisResult.write`: the tables and arrays, one panel per (cell type, shown batch) cell
       (:func:`plot_cell_panel`, plus :func:`plot_cell_all_batches` if ``all_batches_panels``), the comparison
       and :func:`plot_significant_pixels`, and ``summary.json``.
    """
    out = Path(out_dir)
    known = [str(b) for b in model.batch_categories]
    shown = as_names(shown_batches)
    bad = sorted(set(shown) - set(known))
    if bad:
        raise InputError(f"unknown shown batch(es) {bad}; the model knows {known}")
    group_of_batch, groups = _resolve_groups(adata, model.batch_key, condition_key, group_of_batch, groups)
    types = as_names(cell_types)
    cells = select_cells(adata, labels_key=labels_key, cell_types=types, n_cells=n_cells,
                         batch_key=model.batch_key, force_batches=shown, seed=seed)
    stack = zscore_stack(counterfactual_stack(model, adata, cells, target_batches=target_batches, mode=mode))
    z = stack.layers["zscore"]
    layout = fit_or_load(out / "layout_cache", z, genes=list(stack.var_names), n_iter=n_iter, seed=seed,
                         method=layout_method)
    images = layout.transform(z)
    comparison = None
    if group_of_batch is not None and groups is not None:
        comparison = compare_batch_groups(images, stack.obs, group_of_batch=group_of_batch, groups=groups,
                                          test=test, layout=layout, max_pixels=max_pixels)
    summary = {"n_cells": int(len(cells)), "cell_types": types, "shown_batches": shown,
               "target_batches": stack.uns["genomap_stack"]["target_batches"], "mode": mode,
               "grid": list(layout.shape), "n_genes": layout.n_genes, "n_iter": n_iter, "seed": seed,
               "layout_method": layout.method, "layout_iterations": layout.meta.get("iterations"),
               "layout_fit_seconds": layout.fit_seconds, "layout_cache_hit": bool(layout.meta.get("cache_hit")),
               "test": test if comparison is not None else None,
               "groups": list(groups) if comparison is not None else None,
               "n_significant": int(comparison["significant"].sum()) if comparison is not None else None}
    result = GenomapAnalysisResult(
        cells=cells, cell_obs=adata.obs.loc[cells], stack=stack, layout=layout, images=images,
        gene_table=layout.gene_table(),
        comparison=comparison, summary=summary,
        panel_cells=_panel_cells(adata.obs, cells, labels_key, types, model.batch_key, shown, seed),
        panels=PanelSettings(shown_batches=shown, vmin=vmin, vmax=vmax, top_n=top_n, title_keys=title_keys,
                             all_batches_panels=all_batches_panels))
    result.write(out)
    return result
