"""Integration baselines on the same input as scMEDAL: PCA, Harmony, Scanorama, and (optional) scVI, scANVI.

Every function returns a dense ``(n_cells, d)`` float array for **all** cells of ``adata`` (train, val and
test), rows in ``adata``'s cell order, and shares one signature::

    fn(adata, *, batch_key, n_comps=50, seed=0, x=None, train_mask=None, **kw) -> np.ndarray

``x`` (cells × genes) replaces ``adata.X`` as the input, e.g. ``model.scale(adata)``, the min–max input the
scMEDAL networks see (the paper fed every baseline that input, method.md §3.2). ``train_mask`` marks the
training cells.

How each method uses the cells (as in the paper, except scVI/scANVI, which the paper fit transductively):

* ``pca``: **inductive**, sklearn PCA fit on the training cells only, then applied to every cell.
* ``harmony``: **transductive**, PCA on all cells, then harmonypy on all cells (``train_mask`` is ignored).
* ``scanorama``: **transductive**, all cells, one data set per batch (``train_mask`` is ignored).
* ``scvi``: fit on the training cells when every batch has some, otherwise on all cells (with a warning).
* ``scanvi``: like ``scvi``; only the training cells' labels are shown to it (the others are "Unknown").

Transductive methods see the test cells while fitting; the paper ran Harmony and Scanorama that way.

Example
-------
>>> import scmedal_lite as sm
>>> from scmedal_lite import baselines
>>> emb = baselines.run_baselines(adata, batch_key="batch", x=model.scale(adata),       # doctest: +SKIP
...                               train_mask=model.train_mask)
>>> emb["harmony"].shape, emb.timings["harmony"]                                          # doctest: +SKIP
((2000, 50), 1.3)
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from sklearn.decomposition import PCA

from .validate import InputError, as_int, as_mask, check_obs_key

log = logging.getLogger(__name__)

__all__ = ["pca", "harmony", "scanorama", "scvi", "scanvi", "run_baselines", "BaselineEmbeddings",
           "METHODS", "DISPLAY_NAMES", "SCVI_INSTALL"]

SCVI_INSTALL = ("scvi-tools is not installed; it is an optional extra of scmedal_lite. Install it with "
                "`pip install scmedal_lite[scvi]`, or, for a small CPU-only build, "
                "`pip install torch==2.13.0 scvi-tools`.")

#: Readable names for tables and plots.
DISPLAY_NAMES = {"pca": "PCA", "harmony": "Harmony", "scanorama": "Scanorama", "scvi": "scVI",
                 "scanvi": "scANVI"}


# ----------------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------------


def _input_matrix(adata: AnnData, x) -> np.ndarray:
    """The cells × genes input as dense float32: ``x`` when given, else ``adata.X``."""
    X = adata.X if x is None else x
    if X is None:
        raise InputError("adata.X is empty; pass x= (cells x genes) or fill adata.X.")
    if not (isinstance(X, np.ndarray) or sparse.issparse(X)):
        X = X[:]                                    # backed AnnData
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    if X.ndim != 2 or X.shape[0] != adata.n_obs:
        raise InputError(f"x must be cells x genes with {adata.n_obs} rows (one per cell of adata); "
                         f"got shape {X.shape}.")
    X = X.astype("float32", copy=False)
    if not np.isfinite(X).all():
        raise InputError("The input holds NaN or infinite values; clean it before running baselines.")
    return X


def _batches(adata: AnnData, batch_key: str) -> np.ndarray:
    check_obs_key(adata, batch_key, role="batch_key")
    return adata.obs[batch_key].astype(str).to_numpy()


def _n_comps(n_comps, n_rows: int, n_cols: int, method: str) -> int:
    """``n_comps`` capped at what the data allow (with a warning)."""
    n_comps = as_int("n_comps", n_comps, minimum=1)
    cap = min(n_rows, n_cols)
    if n_comps > cap:
        warnings.warn(f"{method}: n_comps={n_comps} exceeds min(cells, genes) = {cap}; using {cap}.",
                      UserWarning, stacklevel=3)
        n_comps = cap
    return n_comps


def _pca_fit_transform(X: np.ndarray, fit_rows: np.ndarray, n_comps: int, seed: int) -> np.ndarray:
    n_comps = _n_comps(n_comps, int(fit_rows.sum()), X.shape[1], "PCA")
    model = PCA(n_components=n_comps, random_state=int(seed))
    model.fit(X[fit_rows])
    return model.transform(X).astype("float32")


# ----------------------------------------------------------------------------------------------------------
# PCA, Harmony, Scanorama
# ----------------------------------------------------------------------------------------------------------


def pca(adata: AnnData, *, batch_key: str | None = None, n_comps: int = 50, seed: int = 0, x=None,
        train_mask=None, **kw) -> np.ndarray:
    """The paper's PCA baseline: sklearn ``PCA(n_comps, random_state=seed)`` fit on the training cells.

    Fit on the cells of ``train_mask`` (all cells if None), then applied to every cell, so the embedding of
    the training cells does not depend on the test cells. ``batch_key`` is accepted for the uniform
    signature and not used. Returns ``(n_cells, n_comps)`` float32.
    """
    if kw:
        raise InputError(f"pca() got unexpected options {sorted(kw)}.")
    X = _input_matrix(adata, x)
    return _pca_fit_transform(X, as_mask("train_mask", train_mask, adata.n_obs, all_if_none=True), n_comps, seed)


def harmony(adata: AnnData, *, batch_key: str, n_comps: int = 50, seed: int = 0, x=None, train_mask=None,
            n_jobs: int = 1, **kw) -> np.ndarray:
    """Harmony (Korsunsky et al. 2019): PCA of all cells, then ``harmonypy.run_harmony`` on the batch.

    **Transductive**, as in the paper: PCA (seeded) and Harmony see every cell, test cells included, so
    ``train_mask`` is ignored. harmonypy is called directly (scanpy's ``external.pp.harmony_integrate`` breaks
    with harmonypy 2.x); harmonypy's defaults apply, ``random_state=seed``, ``ncores=n_jobs``; other keyword
    options (``theta``, ``nclust``, ``max_iter_harmony``, ...) go to ``run_harmony``. Returns
    ``(n_cells, n_comps)`` float32, rows in ``adata``'s order.
    """
    import harmonypy

    batch = _batches(adata, batch_key)
    X = _input_matrix(adata, x)
    pcs = _pca_fit_transform(X, np.ones(adata.n_obs, dtype=bool), n_comps, seed).astype("float64")
    meta = pd.DataFrame({"batch": batch})
    hlog = logging.getLogger("harmonypy")
    level = hlog.level
    hlog.setLevel(logging.WARNING)
    try:
        result = harmonypy.run_harmony(pcs, meta, "batch", random_state=int(seed), verbose=False,
                                       ncores=int(n_jobs), **kw)
    finally:
        hlog.setLevel(level)
    Z = np.asarray(result.Z_corr)
    n, d = pcs.shape
    # harmonypy 2.x returns cells x d; 0.0.x returned d x cells.
    if Z.shape == (d, n) and Z.shape != (n, d):
        Z = Z.T
    if Z.shape != (n, d):
        raise RuntimeError(f"Unexpected Harmony output shape {Z.shape} for {n} cells x {d} components.")
    return Z.astype("float32")


def scanorama(adata: AnnData, *, batch_key: str, n_comps: int = 50, seed: int = 0, x=None, train_mask=None,
              knn: int = 20, verbose: bool = False, **kw) -> np.ndarray:
    """Scanorama (Hie et al. 2019): one data set per batch to ``scanorama.integrate(dimred=n_comps)``.

    **Transductive**, as in the paper: every cell takes part (``train_mask`` is ignored). Scanorama
    L2-normalises each cell, reduces all cells jointly to ``n_comps`` dimensions and aligns the batches by
    mutual nearest neighbours. The per-batch results are put back in ``adata``'s cell order. ``knn`` is
    lowered to fit the smallest batch; other keyword options go to ``scanorama.integrate``. (The paper went
    through ``scanpy.external.pp.scanorama_integrate``, which aligns a precomputed PCA-50 instead of letting
    Scanorama reduce the genes itself.) Returns ``(n_cells, n_comps)`` float32.
    """
    import scanorama as _scanorama

    batch = _batches(adata, batch_key)
    X = _input_matrix(adata, x)
    n_comps = _n_comps(n_comps, X.shape[0], X.shape[1], "Scanorama")
    levels = list(pd.unique(batch))
    if len(levels) < 2:
        raise InputError(f"Scanorama needs at least two batches in {batch_key!r}; found {len(levels)}.")
    index = [np.flatnonzero(batch == b) for b in levels]
    smallest = min(len(i) for i in index)
    knn = max(1, min(as_int("knn", knn, minimum=1), smallest - 1))
    genes = [f"feature{j}" for j in range(X.shape[1])]      # positional: x may not match adata.var_names
    datasets = [sparse.csr_matrix(X[i]) for i in index]
    with contextlib.ExitStack() as quiet:
        if not verbose:                              # Scanorama prints progress to stdout and stderr
            sink = quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
            quiet.enter_context(contextlib.redirect_stderr(sink))
        integrated, _ = _scanorama.integrate(datasets, [list(genes) for _ in levels], dimred=n_comps,
                                             seed=int(seed), knn=knn, verbose=int(bool(verbose)), **kw)
    out = np.empty((adata.n_obs, n_comps), dtype="float32")
    for i, emb in zip(index, integrated):
        out[i] = np.asarray(emb, dtype="float32")
    return out


# ----------------------------------------------------------------------------------------------------------
# scVI / scANVI (optional: scvi-tools)
# ----------------------------------------------------------------------------------------------------------


def _import_scvi():
    """Import scvi-tools lazily, with a clear message when it is missing."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")      # torch is 4-6x slower on shared cores otherwise
    try:
        import scvi as _scvi
    except ImportError as err:
        raise ImportError(SCVI_INSTALL) from err
    return _scvi


def _scvi_data(adata, batch, x, counts_layer, train_mask):
    """AnnData for scvi-tools (X = counts or the given input) and the cells to fit on."""
    if counts_layer is not None:
        if counts_layer not in adata.layers:
            raise InputError(f"layer {counts_layer!r} (raw counts) is not in adata.layers "
                             f"({list(adata.layers)}); run sm.pp.prepare on counts, or pass "
                             "counts_layer=None to feed x / adata.X as the paper did.")
        X = adata.layers[counts_layer]
        X = sparse.csr_matrix(X, dtype="float32") if sparse.issparse(X) else np.asarray(X, dtype="float32")
    else:
        X = _input_matrix(adata, x)
    obs = pd.DataFrame({"_batch": pd.Categorical(batch)}, index=adata.obs_names.astype(str))
    data = AnnData(X=X, obs=obs)
    fit = as_mask("train_mask", train_mask, adata.n_obs, all_if_none=True)
    if not fit.all() and not set(batch[~fit]) <= set(batch[fit]):
        warnings.warn("Some cells outside train_mask come from batches without training cells; scVI "
                      "cannot embed unseen batches, so it is fit on all cells (transductive).", UserWarning,
                      stacklevel=3)
        fit = np.ones(adata.n_obs, dtype=bool)
    return data, fit


def _scvi_train_kwargs(max_epochs, batch_size, accelerator, train_kwargs):
    out = {"batch_size": int(batch_size), "accelerator": accelerator, "early_stopping": True}
    if max_epochs is not None:
        out["max_epochs"] = as_int("max_epochs", max_epochs, minimum=1)
    out.update(train_kwargs or {})
    return out


def _fit_scvi(scvi_mod, data, fit, n_comps, seed, max_epochs, batch_size, accelerator, model_kwargs,
              train_kwargs):
    scvi_mod.settings.seed = int(seed)
    train_data = data[fit].copy()
    scvi_mod.model.SCVI.setup_anndata(train_data, batch_key="_batch")
    kwargs = dict(n_latent=int(n_comps), n_layers=2, n_hidden=132, gene_likelihood="zinb", dispersion="gene")
    kwargs.update(model_kwargs or {})
    model = scvi_mod.model.SCVI(train_data, **kwargs)
    model.train(**_scvi_train_kwargs(max_epochs, batch_size, accelerator, train_kwargs))
    return model, train_data


def scvi(adata: AnnData, *, batch_key: str, n_comps: int = 50, seed: int = 0, x=None, train_mask=None,
         counts_layer: str | None = "counts", max_epochs: int | None = 400, batch_size: int = 512,
         accelerator: str = "cpu", model_kwargs: dict | None = None, train_kwargs: dict | None = None,
         **kw) -> np.ndarray:
    """scVI (Lopez et al. 2018) latent, with the paper's architecture; needs the optional scvi-tools.

    Fit on **raw counts** (``adata.layers[counts_layer]``), the input scVI's count likelihood is made for.
    The paper instead fed the min–max-scaled log data (method.md §3.2, a weakness of their baseline); pass
    ``counts_layer=None`` to feed ``x`` (or ``adata.X``) and reproduce that. Model: ``n_latent=n_comps,
    n_layers=2, n_hidden=132, gene_likelihood="zinb", dispersion="gene"`` (``model_kwargs`` overrides),
    trained
    with ``max_epochs`` (None: scvi-tools' own heuristic), batch 512, early stopping on scvi-tools' internal
    validation cells (``train_kwargs`` overrides). Fit on the ``train_mask`` cells when every batch has
    training cells, else on all cells (warning). Seeded with ``scvi.settings.seed = seed``.
    Raises ImportError (with the install command) when scvi-tools is not installed.
    """
    if kw:
        raise InputError(f"scvi() got unexpected options {sorted(kw)}.")
    scvi_mod = _import_scvi()
    batch = _batches(adata, batch_key)
    data, fit = _scvi_data(adata, batch, x, counts_layer, train_mask)
    n_comps = _n_comps(n_comps, int(fit.sum()), data.n_vars, "scVI")
    model, _ = _fit_scvi(scvi_mod, data, fit, n_comps, seed, max_epochs, batch_size, accelerator,
                         model_kwargs, train_kwargs)
    return np.asarray(model.get_latent_representation(data), dtype="float32")


def scanvi(adata: AnnData, *, batch_key: str, labels_key: str, n_comps: int = 50, seed: int = 0, x=None,
           train_mask=None, counts_layer: str | None = "counts", max_epochs: int | None = 400,
           scanvi_epochs: int | None = None, batch_size: int = 512, accelerator: str = "cpu",
           unlabeled_category: str = "Unknown", model_kwargs: dict | None = None,
           train_kwargs: dict | None = None, **kw) -> np.ndarray:
    """scANVI (Xu et al. 2021): an scVI model (see :func:`scvi`) refined with the ``labels_key`` labels.

    Built with ``SCANVI.from_scvi_model(unlabeled_category=...)`` and trained ``scanvi_epochs`` more epochs
    (None: scvi-tools' heuristic). Only the labels of the ``train_mask`` cells are shown to it; every other
    cell is ``unlabeled_category``, so test labels never leak (the paper labelled all cells). Counts and
    fitting cells as in :func:`scvi`. Needs the optional scvi-tools (ImportError with the install command).
    """
    if kw:
        raise InputError(f"scanvi() got unexpected options {sorted(kw)}.")
    scvi_mod = _import_scvi()
    batch = _batches(adata, batch_key)
    check_obs_key(adata, labels_key, role="labels_key")
    data, fit = _scvi_data(adata, batch, x, counts_layer, train_mask)
    labels = adata.obs[labels_key].astype(str).to_numpy().astype(object)
    if unlabeled_category in set(labels):
        raise InputError(f"unlabeled_category {unlabeled_category!r} is a real label of {labels_key!r}; "
                         "choose another.")
    shown = as_mask("train_mask", train_mask, adata.n_obs, all_if_none=True)
    labels[~shown] = unlabeled_category
    data.obs["_label"] = pd.Categorical(labels)
    n_comps = _n_comps(n_comps, int(fit.sum()), data.n_vars, "scANVI")
    model, _ = _fit_scvi(scvi_mod, data, fit, n_comps, seed, max_epochs, batch_size, accelerator,
                         model_kwargs, train_kwargs)
    refined = scvi_mod.model.SCANVI.from_scvi_model(model, unlabeled_category=unlabeled_category,
                                                    labels_key="_label")
    kwargs = {"batch_size": int(batch_size), "accelerator": accelerator}
    if scanvi_epochs is not None:
        kwargs["max_epochs"] = as_int("scanvi_epochs", scanvi_epochs, minimum=1)
    refined.train(**kwargs)
    return np.asarray(refined.get_latent_representation(data), dtype="float32")


# ----------------------------------------------------------------------------------------------------------
# all at once
# ----------------------------------------------------------------------------------------------------------

METHODS = {"pca": pca, "harmony": harmony, "scanorama": scanorama, "scvi": scvi, "scanvi": scanvi}


class BaselineEmbeddings(dict):
    """``{method: embedding}`` (a plain dict) with ``.timings``: ``{method: seconds}`` of fit time."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timings: dict[str, float] = {}

    def timings_frame(self) -> pd.DataFrame:
        """The timings as a table: ``method, seconds``."""
        return pd.DataFrame({"method": list(self.timings), "seconds": list(self.timings.values())})


def run_baselines(adata: AnnData, *, batch_key: str, labels_key: str | None = None,
                  methods: Sequence[str] = ("pca", "harmony", "scanorama"), x=None, train_mask=None,
                  n_comps: int = 50, seed: int = 0, options: dict | None = None) -> BaselineEmbeddings:
    """Run several baselines on the same input; returns :class:`BaselineEmbeddings`.

    The result maps each method name (keys as given, lower case, from :data:`METHODS`) to its
    ``(n_cells, d)`` embedding of all cells, and its ``.timings`` attribute maps each method to the seconds it
    took. ``labels_key`` is needed for ``"scanvi"``. ``options`` gives extra keyword options per method,
    e.g. ``{"scvi": {"max_epochs": 50}}``. An unknown method name raises :class:`InputError`.
    """
    if isinstance(methods, str):
        methods = [methods]
    methods = [str(m).lower() for m in methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"Unknown baseline(s) {unknown}; valid names are {list(METHODS)}.")
    if "scanvi" in methods and labels_key is None:
        raise InputError("The scanvi baseline needs labels_key (the cell-type column).")
    options = dict(options or {})
    bad = sorted(set(options) - set(methods))
    if bad:
        raise InputError(f"options given for methods not being run: {bad}.")
    out = BaselineEmbeddings()
    for name in methods:
        kwargs = dict(batch_key=batch_key, n_comps=n_comps, seed=seed, x=x, train_mask=train_mask,
                      **options.get(name, {}))
        if name == "scanvi":
            kwargs["labels_key"] = labels_key
        start = time.perf_counter()
        out[name] = METHODS[name](adata, **kwargs)
        out.timings[name] = time.perf_counter() - start
        log.info("%s: %s in %.1f s", name, out[name].shape, out.timings[name])
    return out
