"""Preprocessing and splits: the paper's recipe on AnnData, scanpy-style (``adata`` first, options keyword-only).

The split lives in one ``obs`` column, :data:`SPLIT_KEY` (``"split"``), with values train / val / test;
:func:`split_masks` reads it back as boolean masks for the model, the classifier and the notebooks.

Example
-------
>>> import scmedal_lite as sm
>>> adata = sm.datasets.covid_pbmc()
>>> sm.pp.prepare(adata, batch_key="sample_id")                 # counts kept in adata.layers["counts"]
>>> sm.pp.split_cells(adata, batch_key="sample_id", labels_key="celltype_coarse", fold=0)
>>> adata.obs["split"].value_counts()                             # train / val / test, 60/20/20
>>> masks = sm.pp.split_masks(adata)                              # {"train": bool array, "val": ..., "test": ...}
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scipy import sparse
from sklearn.model_selection import StratifiedKFold

from .validate import InputError, check_adata, check_obs_key

log = logging.getLogger(__name__)

#: The ``obs`` column of the train / val / test split, everywhere (model, classifier, notebooks).
SPLIT_KEY = "split"
#: The values of the split column.
SPLITS = ("train", "val", "test")
#: Counts per cell after ``normalize_total`` (:func:`prepare`'s default; ``scmedal-lite apply`` uses it too).
TARGET_SUM = 1e4
#: Share of the cells :func:`split_masks` holds out for validation when there is no split column.
HOLDOUT_FRACTION = 0.1
_WHY = {"val": "; early stopping needs validation cells.",
        "test": "; scores are computed on test cells. Make a split with sm.pp.split_cells or "
                "sm.classify.split_batch_fold."}


def prepare(adata: AnnData, *, batch_key: str | None = None, n_top_genes: int = 2000, min_genes: int = 10,
            min_cells: int = 3, target_sum: float = TARGET_SUM, counts_layer: str = "counts") -> AnnData:
    """The paper's preprocessing, in place: QC filters, ``normalize_total``, ``log1p``, and HVG selection.

    Steps (method.md §2.2): ``filter_cells(min_genes)``, ``filter_genes(min_cells)``, raw counts copied to
    ``adata.layers[counts_layer]``, ``normalize_total(target_sum)``, ``log1p``, then
    ``highly_variable_genes(flavor="seurat", n_top_genes)`` with the data subset to those genes, **only when**
    there are more genes than ``n_top_genes`` (the paper used 2916 or 3000). Min–max scaling is not done
    here: the model fits it on its training cells (see :class:`scmedal_lite.SCMEDAL`).
    Settings are recorded in ``adata.uns["scmedal"]["prepare"]``. Returns ``adata``.
    """
    check_adata(adata, expect="counts", in_memory=True)
    if batch_key is not None:
        check_obs_key(adata, batch_key, role="batch_key")
    sc.pp.filter_cells(adata, min_genes=min_genes)
    sc.pp.filter_genes(adata, min_cells=min_cells)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"No cells or genes left after QC (min_genes={min_genes}, min_cells={min_cells}); "
                         "lower these thresholds.")
    adata.layers[counts_layer] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    selected_hvg = adata.n_vars > n_top_genes
    if selected_hvg:
        sc.pp.highly_variable_genes(adata, n_top_genes=n_top_genes, flavor="seurat", subset=True)
    adata.uns.setdefault("scmedal", {})["prepare"] = dict(
        min_genes=min_genes, min_cells=min_cells, target_sum=target_sum, log1p=True,
        n_top_genes=int(n_top_genes), hvg_selected=bool(selected_hvg), counts_layer=counts_layer)
    log.info("prepared %d cells x %d genes", adata.n_obs, adata.n_vars)
    return adata


def split_cells(adata: AnnData, *, batch_key: str, labels_key: str | None = None, fold: int = 0,
                n_folds: int = 5, seed: int = 42, key_added: str = SPLIT_KEY) -> pd.Series:
    """The paper's cell-level stratified k-fold rotation, written to ``adata.obs[key_added]``.

    Cells are shuffled (seeded) and cut into ``n_folds`` folds stratified on ``batch + "_" + label``;
    fold ``k`` uses test = F_k, validation = F_{k+1 mod n}, train = the rest (60/20/20 for 5 folds).
    Strata with fewer members than ``n_folds`` are merged into their batch's stratum.
    """
    folds = cell_folds(adata, batch_key=batch_key, labels_key=labels_key, n_folds=n_folds, seed=seed)
    if not 0 <= fold < n_folds:
        raise InputError(f"fold must be in 0..{n_folds - 1}, got {fold}")
    split = np.full(adata.n_obs, "train", dtype=object)
    split[folds == fold] = "test"
    split[folds == (fold + 1) % n_folds] = "val"
    adata.obs[key_added] = pd.Categorical(split, categories=["train", "val", "test"])
    return adata.obs[key_added]


def cell_folds(adata: AnnData, *, batch_key: str, labels_key: str | None = None, n_folds: int = 5,
               seed: int = 42) -> np.ndarray:
    """Fold index (0..n_folds-1) of every cell for the stratified cell-level rotation."""
    check_obs_key(adata, batch_key, role="batch_key")
    strata = adata.obs[batch_key].astype(str).to_numpy()
    if labels_key is not None:
        check_obs_key(adata, labels_key, role="labels_key")
        fine = strata + "_" + adata.obs[labels_key].astype(str).to_numpy()
        counts = pd.Series(fine).value_counts()
        strata = np.where(pd.Series(fine).map(counts).to_numpy() >= n_folds, fine, strata)
    counts = pd.Series(strata).value_counts()
    rare = pd.Series(strata).map(counts).to_numpy() < n_folds
    strata = np.where(rare, "__rare__", strata)
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.empty(adata.n_obs, dtype=int)
    for k, (_, test_idx) in enumerate(skf.split(np.zeros(adata.n_obs), strata)):
        folds[test_idx] = k
    return folds


def split_batches(adata: AnnData, *, batch_key: str, test_batches=None, val_batches=None,
                  test_fraction: float = 0.2, val_fraction: float = 0.2, stratify_key: str | None = None,
                  seed: int = 0, key_added: str = SPLIT_KEY) -> pd.Series:
    """Leave-batches-out split: whole batches go to validation and test, never seen in training.

    Give the batches explicitly, or let a seeded draw pick about ``test_fraction`` / ``val_fraction`` of the
    batches. With ``stratify_key`` (e.g. the condition), batches are drawn per level of that column so every
    level keeps training batches.
    """
    check_obs_key(adata, batch_key, role="batch_key")
    batches = pd.Index(pd.unique(adata.obs[batch_key].astype(str)))
    if len(batches) < 3:
        raise InputError(f"A leave-batches-out split needs at least 3 batches in '{batch_key}'; "
                         f"found {len(batches)}.")
    rng = np.random.default_rng(seed)
    if test_batches is None or val_batches is None:
        if stratify_key is not None:
            check_obs_key(adata, stratify_key, role="stratify_key")
            level = adata.obs.groupby(adata.obs[batch_key].astype(str), observed=True)[stratify_key].first()
            groups = [list(level.index[level == v]) for v in pd.unique(level)]
        else:
            groups = [list(batches)]
        auto_test, auto_val = [], []
        for g in groups:
            g = list(rng.permutation(sorted(g)))
            n_test = max(1, round(test_fraction * len(g))) if len(g) >= 3 else 0
            n_val = max(1, round(val_fraction * len(g))) if len(g) >= 3 else 0
            auto_test += g[:n_test]
            auto_val += g[n_test:n_test + n_val]
        test_batches = auto_test if test_batches is None else test_batches
        val_batches = [b for b in auto_val if b not in set(map(str, test_batches))] \
            if val_batches is None else val_batches
    test_batches, val_batches = [str(b) for b in test_batches], [str(b) for b in val_batches]
    unknown = sorted(set(test_batches + val_batches) - set(batches))
    if unknown:
        raise InputError(f"Batches {unknown} are not in adata.obs['{batch_key}'].")
    if set(test_batches) & set(val_batches):
        raise InputError("A batch cannot be both in test_batches and val_batches.")
    b = adata.obs[batch_key].astype(str).to_numpy()
    split = np.where(np.isin(b, test_batches), "test", np.where(np.isin(b, val_batches), "val", "train"))
    if not (split == "train").any():
        raise InputError("No training batches left; put fewer batches in test and validation.")
    adata.obs[key_added] = pd.Categorical(split, categories=["train", "val", "test"])
    return adata.obs[key_added]


def split_masks(adata: AnnData, *, split_key: str = SPLIT_KEY, require=("train",),
                holdout_seed: int | None = None) -> dict[str, np.ndarray]:
    """Boolean masks ``{"train", "val", "test"}`` over the cells, read from ``adata.obs[split_key]``.

    The column must hold only train / val / test; each split named in ``require`` must have cells. When the
    column is absent and ``holdout_seed`` is given, a seeded :data:`HOLDOUT_FRACTION` (10 %) of the cells is
    held out for validation and the rest is training (no test cells), as :class:`scmedal_lite.SCMEDAL` does;
    without ``holdout_seed`` a missing column is an error.
    """
    if split_key not in adata.obs.columns and holdout_seed is not None:
        val = np.random.default_rng(holdout_seed).random(adata.n_obs) < HOLDOUT_FRACTION
        return {"train": ~val, "val": val, "test": np.zeros(adata.n_obs, dtype=bool)}
    check_obs_key(adata, split_key, role="split_key")
    split = adata.obs[split_key].astype(str).to_numpy()
    bad = sorted(set(split) - set(SPLITS))
    if bad:
        raise InputError(f"obs[{split_key!r}] must hold train / val / test, found {bad}.")
    masks = {name: split == name for name in SPLITS}
    for name in require:
        if not masks[name].any():
            raise InputError(f"obs[{split_key!r}] has no {name!r} cells{_WHY.get(name, '.')}")
    return masks


# ---------------------------------------------------------------- scaling (fit on training cells only)

def fit_minmax(X, *, mode: str = "global") -> dict:
    """Min–max parameters of ``X`` (cells × genes): ``"global"`` (one min and max over the whole matrix, the
    paper's) or ``"gene"`` (per gene). Returns a JSON-friendly dict for :func:`apply_minmax`."""
    if mode not in ("global", "gene"):
        raise InputError(f"scaling must be 'global' or 'gene', got {mode!r}")
    if sparse.issparse(X):
        lo = X.min(axis=None if mode == "global" else 0)
        hi = X.max(axis=None if mode == "global" else 0)
        lo, hi = np.asarray(lo.todense() if sparse.issparse(lo) else lo, dtype="float64").ravel(), \
            np.asarray(hi.todense() if sparse.issparse(hi) else hi, dtype="float64").ravel()
    else:
        X = np.asarray(X)
        lo = np.atleast_1d(X.min(axis=None if mode == "global" else 0)).astype("float64")
        hi = np.atleast_1d(X.max(axis=None if mode == "global" else 0)).astype("float64")
    return {"mode": mode, "min": lo.tolist(), "max": hi.tolist()}


def _range(params):
    lo, hi = np.asarray(params["min"], "float32"), np.asarray(params["max"], "float32")
    span = hi - lo
    return lo, np.where(span > 0, span, 1.0).astype("float32")


def apply_minmax(X, params: dict) -> np.ndarray:
    """Scale ``X`` with parameters from :func:`fit_minmax`; returns dense float32."""
    lo, span = _range(params)
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    return ((X.astype("float32") - lo) / span).astype("float32")


def invert_minmax(X, params: dict) -> np.ndarray:
    """Back from the scaled space to the units the scaling was fit on (log-normalised expression)."""
    lo, span = _range(params)
    return (np.asarray(X, "float32") * span + lo).astype("float32")
