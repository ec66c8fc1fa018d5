"""Planted batch effects on real cells: data whose counterfactual answer is known for every cell.

Real counts are assigned to (pseudo-)batches, and chosen genes of chosen batches are multiplied by known fold
changes by resampling the counts, so the data stay counts with the real cells' noise and structure. Because
each cell's counts *before* planting are kept, the truth of "this cell as if measured in batch b" is known:
the same cell with batch b's planted effect instead of its own (:func:`truth_counts`).

Designs used by ``benchmarks/counterfactual_truth.py`` and the tests:

- :func:`two_batches`: random halves of the cells, one of them with an effect (optionally cell-type specific,
  with a library-size shift, on a subsample: the hard case of few cells and a large shift);
- :func:`many_batches`: 20+ pseudo-batches, a shared effect in a subset (the genomap group test's setting)
  on top of every batch's own smaller effect and library size;
- :func:`within_samples`: the real samples kept as batches, with some samples split in two halves of which
  one carries a planted effect on top of the sample's real effect.

Example
-------
>>> base = sm.datasets.covid_pbmc()                                   # doctest: +SKIP
>>> adata, info = two_batches(base, seed=0)                           # counts; obs["batch"] is "A" or "B"
>>> truth = truth_counts(adata, adata.obs_names[:10], "B")            # those cells as if measured in B
"""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
from scipy import sparse

from .validate import InputError

#: Layer holding every cell's counts before planting (what :func:`truth_counts` starts from).
BASE_LAYER = "base_counts"


def resample_counts(counts, factor, rng: np.random.Generator) -> sparse.csr_matrix:
    """Integer counts whose expectation is ``counts * factor`` (``factor``: per gene, or cells x genes).

    Binomial thinning where the factor is at most 1 (exact: a thinned count is a count), the counts plus
    Poisson(counts * (factor - 1)) where it is above 1. Zeros stay zeros (planting changes expression, not
    detection of unexpressed genes).
    """
    coo = sparse.coo_matrix(counts)
    factor = np.asarray(factor, dtype=np.float64)
    f = factor[coo.col] if factor.ndim == 1 else factor[coo.row, coo.col]
    c = np.rint(coo.data).astype(np.int64)
    up = rng.poisson(c * np.maximum(f - 1.0, 0.0))
    down = rng.binomial(c, np.clip(f, 0.0, 1.0))
    out = np.where(f <= 1.0, down, c + up)
    res = sparse.csr_matrix((out.astype(np.float32), (coo.row, coo.col)), shape=coo.shape)
    res.eliminate_zeros()
    return res


def _log2_fold_changes(adata: anndata.AnnData, batches, rows=None) -> np.ndarray:
    """Cells x genes planted log2 fold changes of ``rows`` (all cells by default) in ``batches`` (one per row)."""
    p = adata.uns["planted"]
    rows = np.arange(adata.n_obs) if rows is None else np.asarray(rows)
    effects = p["effects"].reindex(columns=adata.var_names).fillna(0.0)
    lfc = effects.reindex(np.asarray(batches, dtype=str)).to_numpy()
    if p.get("celltype_mask") is not None:
        mask = p["celltype_mask"].reindex(columns=adata.var_names).fillna(0.0)
        types = adata.obs[p["celltype_key"]].astype(str).to_numpy()[rows]
        lfc = lfc * mask.reindex(types).to_numpy()
    return lfc + p["library"].reindex(np.asarray(batches, dtype=str)).to_numpy()[:, None]


def plant(base: anndata.AnnData, batches, effects: pd.DataFrame, *, library: pd.Series | None = None,
          celltype_mask: pd.DataFrame | None = None, celltype_key: str | None = None, batch_key: str = "batch",
          seed: int = 0) -> anndata.AnnData:
    """Cells of ``base`` (raw counts in ``X``) measured in ``batches``, with each batch's effect planted.

    ``effects``: batches x genes log2 fold changes (0: none). ``library``: a log2 library-size factor per batch.
    ``celltype_mask``: cell types x genes of 0/1 (a planted gene changes only in the cell types marked 1; needs
    ``celltype_key``). Returns counts in ``X`` with ``obs[batch_key]``, the counts before planting in
    ``layers["base_counts"]`` and the design in ``uns["planted"]``.
    """
    rng = np.random.default_rng(seed)
    batches = np.asarray(batches, dtype=str)
    unknown = sorted(set(batches) - set(effects.index))
    if unknown:
        raise InputError(f"Batches {unknown[:5]} have no row in effects.")
    library = (pd.Series(0.0, index=effects.index) if library is None
               else library.reindex(effects.index).fillna(0.0))
    X = sparse.csr_matrix(base.X, dtype=np.float32)
    out = anndata.AnnData(X.copy(), obs=base.obs.copy(), var=base.var.copy())
    out.obs[batch_key] = pd.Categorical(batches, categories=list(effects.index))
    out.layers[BASE_LAYER] = X
    out.uns["planted"] = {"effects": effects.astype(float), "library": library.astype(float),
                          "celltype_mask": celltype_mask, "celltype_key": celltype_key, "batch_key": batch_key}
    out.X = resample_counts(X, 2.0 ** _log2_fold_changes(out, batches), rng)
    return out


def truth_counts(adata: anndata.AnnData, cells, target: str, *, seed: int = 0) -> sparse.csr_matrix:
    """Counts of ``cells`` (obs names) as if measured in batch ``target``: their counts before planting with
    ``target``'s planted effect (and none of their own batch's)."""
    if "planted" not in adata.uns or BASE_LAYER not in adata.layers:
        raise InputError("truth_counts needs data made by scmedal_lite.simulate (uns['planted'] and "
                         f"layers[{BASE_LAYER!r}]).")
    rows = adata.obs_names.get_indexer(pd.Index(cells))
    if (rows < 0).any():
        raise InputError("Some cells are not in adata.obs_names.")
    lfc = _log2_fold_changes(adata, np.full(len(rows), str(target)), rows)
    return resample_counts(adata.layers[BASE_LAYER][rows], 2.0 ** lfc, np.random.default_rng(seed))


def log_normalise(counts, *, target_sum: float = 1e4) -> np.ndarray:
    """``log1p`` of counts scaled to ``target_sum`` per cell (what :func:`scmedal_lite.pp.prepare` does), dense."""
    X = sparse.csr_matrix(counts, dtype=np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    X = sparse.diags(target_sum / np.maximum(totals, 1.0)) @ X
    X.data = np.log1p(X.data)
    return X.toarray().astype(np.float32)


# ---------------------------------------------------------------------------------------------- designs

def measurable_genes(counts, min_fraction: float = 0.1) -> np.ndarray:
    """Positions of the genes detected in at least ``min_fraction`` of the cells (a fold change on a gene
    that is almost never detected would be invisible in any data)."""
    detected = np.asarray((sparse.csr_matrix(counts) > 0).mean(axis=0)).ravel()
    return np.flatnonzero(detected >= min_fraction)


def random_log2_effect(n_genes: int, genes, rng, lfc_range=(0.5, 2.0)) -> np.ndarray:
    """Log2 fold changes for ``genes``: magnitudes uniform in ``lfc_range``, half up and half down."""
    lfc = np.zeros(n_genes)
    signs = rng.permutation(np.where(np.arange(len(genes)) % 2 == 0, 1.0, -1.0))
    lfc[np.asarray(genes)] = rng.uniform(*lfc_range, len(genes)) * signs
    return lfc


def _pick_genes(base, fraction, rng):
    pool = measurable_genes(base.X)
    return np.sort(rng.choice(pool, min(len(pool), max(2, round(fraction * base.n_vars))), replace=False))


def two_batches(base: anndata.AnnData, *, fraction: float = 0.05, lfc_range=(0.5, 2.0),
                library_log2: float = 0.0, n_cells: int | None = None, celltype_key: str | None = None,
                seed: int = 0) -> tuple[anndata.AnnData, dict]:
    """Two pseudo-batches ``A`` and ``B`` of random cells; ``B`` carries an effect on ``fraction`` of the genes
    (and a library-size factor ``2**library_log2``). ``n_cells`` subsamples first. With ``celltype_key`` each
    planted gene changes only in a random half of the cell types. Returns ``(adata, info)``; ``info`` names the
    planted genes and the (source, target) pairs to evaluate."""
    rng = np.random.default_rng(seed)
    if n_cells is not None and n_cells < base.n_obs:
        base = base[np.sort(rng.choice(base.n_obs, n_cells, replace=False))].copy()
    genes = _pick_genes(base, fraction, rng)
    effects = pd.DataFrame(0.0, index=["A", "B"], columns=base.var_names)
    effects.loc["B"] = random_log2_effect(base.n_vars, genes, rng, lfc_range)
    mask = None
    if celltype_key is not None:
        types = sorted(base.obs[celltype_key].astype(str).unique())
        mask = pd.DataFrame((rng.random((len(types), base.n_vars)) < 0.5).astype(float), index=types,
                            columns=base.var_names)
    batches = np.where(rng.random(base.n_obs) < 0.5, "A", "B")
    adata = plant(base, batches, effects, library=pd.Series([0.0, library_log2], index=["A", "B"]),
                  celltype_mask=mask, celltype_key=celltype_key, seed=seed)
    return adata, {"planted_genes": base.var_names[genes].tolist(), "pairs": [("A", "B"), ("B", "A")]}


def many_batches(base: anndata.AnnData, *, n_batches: int = 24, n_group: int = 12, fraction: float = 0.05,
                 own_fraction: float = 0.05, own_sd: float = 0.5, library_sd: float = 0.25,
                 seed: int = 0) -> tuple[anndata.AnnData, dict]:
    """``n_batches`` pseudo-batches of random cells. The first ``n_group`` ("planted" group) share an effect on
    ``fraction`` of the genes (each batch's magnitude jittered by U(0.8, 1.2)); every batch also has its own
    effect on ``own_fraction`` of the genes (log2 fold change ~ N(0, own_sd)) and a library-size factor (log2 ~
    N(0, library_sd)). ``obs["group"]`` is "planted" or "control"; the group effect's genes are the ones a
    group test should find, and only them."""
    rng = np.random.default_rng(seed)
    names = [f"b{i:02d}" for i in range(n_batches)]
    group_genes = _pick_genes(base, fraction, rng)
    group = random_log2_effect(base.n_vars, group_genes, rng)
    effects = pd.DataFrame(0.0, index=names, columns=base.var_names)
    for i, b in enumerate(names):
        row = np.zeros(base.n_vars)
        own = rng.choice(base.n_vars, round(own_fraction * base.n_vars), replace=False)
        row[own] = rng.normal(0.0, own_sd, len(own))
        if i < n_group:
            row = row + group * rng.uniform(0.8, 1.2)
        effects.loc[b] = row
    library = pd.Series(rng.normal(0.0, library_sd, n_batches), index=names)
    batches = np.asarray(names)[rng.integers(0, n_batches, base.n_obs)]
    adata = plant(base, batches, effects, library=library, seed=seed)
    adata.obs["group"] = pd.Categorical(np.where(np.isin(batches, names[:n_group]), "planted", "control"))
    pairs = [(names[i], names[(i + n_group) % n_batches]) for i in range(0, n_batches, 3)]
    return adata, {"planted_genes": base.var_names[group_genes].tolist(), "group": names[:n_group],
                   "pairs": pairs}


def within_samples(base: anndata.AnnData, *, sample_key: str = "sample_id", n_samples: int = 10,
                   fraction: float = 0.05, seed: int = 0) -> tuple[anndata.AnnData, dict]:
    """The real samples kept as batches; the ``n_samples`` largest are split in two random halves, and the half
    named ``<sample>+planted`` carries an effect on ``fraction`` of the genes on top of the sample's own real
    effect. Truths are known within a split sample: the same real effect with or without the planted one."""
    rng = np.random.default_rng(seed)
    samples = base.obs[sample_key].astype(str).to_numpy()
    chosen = pd.Series(samples).value_counts().index[:n_samples].tolist()
    batches = samples.astype(object).copy()
    for s in chosen:
        idx = np.flatnonzero(samples == s)
        batches[rng.permutation(idx)[: len(idx) // 2]] = s + "+planted"
    names = sorted(set(batches))
    effect = random_log2_effect(base.n_vars, genes := _pick_genes(base, fraction, rng), rng)
    effects = pd.DataFrame(0.0, index=names, columns=base.var_names)
    for s in chosen:
        effects.loc[s + "+planted"] = effect
    adata = plant(base, batches.astype(str), effects, seed=seed)
    pairs = [(s, s + "+planted") for s in chosen] + [(s + "+planted", s) for s in chosen]
    return adata, {"planted_genes": base.var_names[genes].tolist(), "pairs": pairs}


# ---------------------------------------------------------------------------------------------- scoring

def _r2(pred, truth) -> float:
    ss = float(np.sum((truth - truth.mean()) ** 2))
    return float(1.0 - np.sum((pred - truth) ** 2) / ss) if ss > 0 else float("nan")


def _slope(x, y) -> float:
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x * x).sum()) if (x * x).sum() > 0 else float("nan")


def score_counterfactual(observed, own, predicted, truth, planted) -> dict:
    """How well ``predicted`` (cells x genes, log-normalised) matches ``truth`` for one source -> target pair.

    ``observed``: the source cells as measured; ``own``: the model's reconstruction of them in their own batch;
    ``truth``: the same cells as if measured in the target (:func:`truth_counts`, log-normalised); ``planted``:
    boolean mask of the planted genes. Returns R² of predicted against true per-gene means over all genes and
    over the planted ones, the same for "no change" (the observed means), the slope of the predicted shift
    (predicted minus own means) on the true shift (true minus observed means), and the median over cells of the
    per-cell correlation of predicted and true shifts over the planted genes.
    """
    planted = np.asarray(planted, bool)
    m_obs, m_own, m_pred, m_true = (np.asarray(a, np.float64).mean(0) for a in (observed, own, predicted, truth))
    out = {}
    for name, sel in (("all", slice(None)), ("planted", planted)):
        out[f"r2_{name}"] = _r2(m_pred[sel], m_true[sel])
        out[f"r2_no_change_{name}"] = _r2(m_obs[sel], m_true[sel])
    out["slope_planted"] = _slope((m_true - m_obs)[planted], (m_pred - m_own)[planted])
    out["slope_all"] = _slope(m_true - m_obs, m_pred - m_own)
    ps = (np.asarray(predicted) - own)[:, planted]
    ts = (np.asarray(truth) - observed)[:, planted]
    ps, ts = ps - ps.mean(1, keepdims=True), ts - ts.mean(1, keepdims=True)
    den = np.sqrt((ps ** 2).sum(1) * (ts ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out["cell_corr_planted"] = float(np.nanmedian((ps * ts).sum(1) / np.where(den > 0, den, np.nan)))
    return out


def evaluate_counterfactuals(adata: anndata.AnnData, predict, own, pairs, planted_genes, *, cells=None,
                             max_cells: int = 1500, seed: int = 0) -> pd.DataFrame:
    """:func:`score_counterfactual` for every (source, target) batch pair, on the source's cells (``cells``: a
    boolean mask restricting them, e.g. the test split; at most ``max_cells``, drawn with ``seed``).

    ``adata``: prepared (log-normalised ``X``) data made by this module; ``predict(sub, target)`` and
    ``own(sub)`` return log-normalised cells x genes for an AnnData ``sub`` of source cells. One row per pair.
    """
    key = adata.uns["planted"]["batch_key"]
    planted = adata.var_names.isin(planted_genes)
    rng = np.random.default_rng(seed)
    rows = []
    for source, target in pairs:
        mask = (adata.obs[key].astype(str) == str(source)).to_numpy()
        if cells is not None:
            mask &= np.asarray(cells, bool)
        idx = np.flatnonzero(mask)
        if len(idx) > max_cells:
            idx = np.sort(rng.choice(idx, max_cells, replace=False))
        sub = adata[idx]
        observed = sub.X.toarray() if sparse.issparse(sub.X) else np.asarray(sub.X)
        truth = log_normalise(truth_counts(adata, sub.obs_names, target, seed=seed))
        row = {"source": str(source), "target": str(target), "cells": len(idx)}
        row.update(score_counterfactual(observed, own(sub), predict(sub, target), truth, planted))
        rows.append(row)
    return pd.DataFrame(rows)
