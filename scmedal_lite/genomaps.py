"""Genomaps of counterfactual reconstructions (retrospective analysis, method.md section 4).

The step answers "what would these cells look like if they had been measured in batch *b*?" and turns
the answer into images that can be compared across batches:

1. :func:`select_cells` picks a few hundred cells of the cell type(s) of interest, making sure every
   batch that will be shown contributes at least one cell of each type.
2. :func:`counterfactual_stack` stacks, for those cells, the scaled input, the fixed-effects (FE)
   reconstruction and the random-effects (RE) counterfactual reconstruction in every target batch;
   :func:`zscore_stack` z-scores each gene over all rows of that stack.
3. :class:`GenomapLayout` places the genes on a 2-D grid with **one** Gromov-Wasserstein coupling
   computed by the `genomap <https://pypi.org/project/genomap/>`_ package for the whole stack, so a
   pixel means the same gene in every image (input, FE and every counterfactual batch).
4. :func:`plot_cell_panel` / :func:`plot_cell_all_batches` draw the images of one cell;
   :func:`compare_batch_groups` tests, pixel by pixel, for differences between two groups of target
   batches (for example disease versus control donors) and :func:`plot_significant_pixels` maps them.
5. :func:`run_genomap_analysis` runs the whole step and writes every table, array and figure.

Typical use::

    from scmedal_lite import genomaps as gm

    res = gm.run_genomap_analysis(
        model, adata, cell_type_key="cell_type", cell_types=["Mono"],
        groups_key="disease", shown_batches=["donor1", "donor7"], out_dir="outputs/genomaps",
    )
    res.comparison.head()

Notes on the genomap package (1.3.6), checked on small cases (see ``tests/test_genomaps.py``):

* Grid size. With ``n_genes < rows * cols`` the package couples the genes to the **first**
  ``n_genes`` pixels in its column-major (Fortran) pixel order only; the remaining pixels stay empty
  (zero). With ``n_genes > rows * cols`` it fails with a shape error. :func:`grid_shape` therefore
  always returns a grid with at least ``n_genes`` pixels, so no gene is ever dropped (the scMEDAL
  code kept only the first 54 x 54 = 2916 genes).
* Padding with zero-valued dummy genes does **not** work: a constant gene has an undefined (NaN)
  correlation, the optimal-transport solver then reports "Problem unbounded" and the coupling comes
  back all zeros, i.e. every image is blank. :meth:`GenomapLayout.fit` instead replaces constant
  genes, for the coupling only, by seeded standard-normal noise (uncorrelated with everything, so
  they get the neutral distance 1 - r ~ 1), and checks the returned coupling.
* The package scales the projection by ``rows * cols`` (not by ``n_genes``), so with empty pixels
  every pixel value is the gene's value times ``rows * cols / n_genes``; :meth:`GenomapLayout.transform`
  reproduces this so its images equal the package's.
* The package never fills the **last** row's genomap (its loop stops one short; the last image is all
  zeros). :meth:`GenomapLayout.transform` projects every row with the coupling itself and fills it.
* ``import ot`` (POT, used by genomap) imports TensorFlow / PyTorch backends unless
  ``POT_BACKEND_DISABLE_TENSORFLOW=1`` and ``POT_BACKEND_DISABLE_PYTORCH=1`` are set; this module sets
  both (``os.environ.setdefault``) just before it first imports genomap.
* genomap is licensed CC BY-NC-ND: it is only imported and its public functions called.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = [
    "GenomapAnalysisResult",
    "GenomapLayout",
    "benjamini_hochberg",
    "compare_batch_groups",
    "counterfactual_stack",
    "fit_or_load",
    "grid_shape",
    "layout_cache_key",
    "plot_cell_all_batches",
    "plot_cell_panel",
    "plot_significant_pixels",
    "run_genomap_analysis",
    "select_cells",
    "zscore_columns",
    "zscore_stack",
]

#: obs columns that :func:`counterfactual_stack` creates itself.
STACK_COLUMNS = ("cell", "kind", "target_batch", "source_batch")
KINDS = ("input", "fe", "re")
_LAYOUT_FORMAT = 1
#: up to this many target batches in total, Mann-Whitney p-values are exact (no ties) rather than asymptotic
_MWU_EXACT_MAX = 60


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------
def _as_list(x: str | Sequence[str]) -> list[str]:
    return [x] if isinstance(x, str) else [str(v) for v in x]


def _dense(x: Any) -> np.ndarray:
    """A dense 2-D float array from a numpy array, a scipy sparse matrix or an AnnData/DataFrame."""
    if isinstance(x, ad.AnnData):
        x = x.X
    if hasattr(x, "toarray"):
        x = x.toarray()
    return np.asarray(x)


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file atomically: ``write(fh)`` fills a temporary file in the same folder, then
    :func:`os.replace` moves it onto ``path`` (readers never see a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _write_csv(path: str | os.PathLike, df: pd.DataFrame, index: bool = False) -> Path:
    return _atomic_write(path, lambda fh: fh.write(df.to_csv(index=index).encode("utf-8")))


def _write_json(path: str | os.PathLike, obj: Any) -> Path:
    return _atomic_write(path, lambda fh: fh.write(json.dumps(obj, indent=2, default=str).encode("utf-8")))


def _write_npy(path: str | os.PathLike, arr: np.ndarray) -> Path:
    return _atomic_write(path, lambda fh: np.save(fh, arr, allow_pickle=False))


def _write_figure(path: str | os.PathLike, fig: Any, dpi: int = 110) -> Path:
    return _atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))


def _safe_name(s: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("_") or "x"


def _import_genomap():
    """Import genomap lazily (it imports POT, which pulls in deep-learning backends unless disabled)."""
    os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")
    os.environ.setdefault("POT_BACKEND_DISABLE_PYTORCH", "1")
    import genomap

    return genomap


def _genomap_version() -> str:
    try:
        from importlib.metadata import version

        return version("genomap")
    except Exception:  # pragma: no cover - metadata missing
        return "unknown"


# --------------------------------------------------------------------------------------------------
# 1. cell selection
# --------------------------------------------------------------------------------------------------
def _allocate(total: int, capacities: Sequence[int]) -> np.ndarray:
    """Split ``total`` slots proportionally to ``capacities`` (largest-remainder rounding, ties by order).

    Never exceeds a capacity; returns ``capacities`` itself when ``total`` exceeds their sum.
    """
    caps = np.asarray(capacities, dtype=np.int64)
    total = int(min(max(total, 0), caps.sum()))
    if total == 0:
        return np.zeros_like(caps)
    quota = total * caps / caps.sum()  # quota_i <= cap_i because total <= sum(caps)
    alloc = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - alloc), kind="stable")
    alloc[order[: total - alloc.sum()]] += 1
    return alloc


def select_cells(
    adata: ad.AnnData,
    *,
    cell_type_key: str,
    cell_types: str | Sequence[str],
    n_cells: int = 300,
    batch_key: str,
    force_batches: Sequence[str] = (),
    seed: int = 0,
) -> pd.Index:
    """Choose the cells whose counterfactuals will be turned into genomaps.

    1. For every (cell type, forced batch) pair one cell is drawn at random, when the batch has a cell
       of that type (a warning is logged otherwise). These guarantee that every batch shown in the
       per-cell panels has a cell of each type.
    2. The remaining ``n_cells - n_forced`` slots are split across the cell types **in proportion to
       their numbers of remaining candidate cells** (largest-remainder rounding), so the sample keeps
       the cell-type mix of the data, and each type's share is drawn at random without replacement.

    No cell is chosen twice. If fewer than ``n_cells`` candidates exist, all are returned (warning);
    if there are more forced pairs than ``n_cells``, all forced cells are kept (warning).
    Everything is driven by ``numpy.random.default_rng(seed)``: the same inputs and seed give the
    same cells.

    Returns
    -------
    pandas.Index of obs_names, in the order of ``adata.obs``.

    Example
    -------
    >>> cells = select_cells(adata, cell_type_key="cell_type", cell_types=["Mono", "Mono-like"],
    ...                      batch_key="batch", force_batches=["AML420B", "BM5"], n_cells=300)
    """
    obs = adata.obs
    for key, what in ((cell_type_key, "cell_type_key"), (batch_key, "batch_key")):
        if key not in obs.columns:
            raise ValueError(f"{what}={key!r} is not an obs column; available: {list(obs.columns)}")
    if not obs.index.is_unique:
        raise ValueError("adata.obs_names must be unique (call adata.obs_names_make_unique())")
    if int(n_cells) < 1:
        raise ValueError(f"n_cells must be >= 1, got {n_cells}")
    types = _as_list(cell_types)
    if not types:
        raise ValueError("cell_types is empty")
    ct = obs[cell_type_key].astype(str).to_numpy()
    bt = obs[batch_key].astype(str).to_numpy()
    unknown = sorted(set(types) - set(ct))
    if unknown:
        raise ValueError(f"unknown cell type(s) {unknown} in obs[{cell_type_key!r}]; "
                         f"available: {sorted(set(ct))}")
    forced = _as_list(force_batches)
    unknown = sorted(set(forced) - set(bt))
    if unknown:
        raise ValueError(f"unknown batch(es) {unknown} in obs[{batch_key!r}]; available: {sorted(set(bt))}")

    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for t in types:
        for b in forced:
            cand = np.flatnonzero((ct == t) & (bt == b))
            if cand.size == 0:
                logger.warning("select_cells: batch %r has no cell of type %r", b, t)
                continue
            chosen.append(int(rng.choice(cand)))
    if len(chosen) > n_cells:
        logger.warning("select_cells: %d forced cells exceed n_cells=%d; keeping all forced cells",
                       len(chosen), n_cells)

    taken = np.zeros(len(ct), dtype=bool)
    taken[chosen] = True
    remaining_by_type = [np.flatnonzero((ct == t) & ~taken) for t in types]
    n_fill = max(int(n_cells) - len(chosen), 0)
    alloc = _allocate(n_fill, [len(r) for r in remaining_by_type])
    if alloc.sum() < n_fill:
        logger.warning("select_cells: only %d candidate cells for n_cells=%d",
                       len(chosen) + int(alloc.sum()), n_cells)
    for cand, k in zip(remaining_by_type, alloc):
        if k:
            chosen.extend(int(i) for i in rng.choice(cand, size=int(k), replace=False))
    idx = np.sort(np.asarray(chosen, dtype=np.int64))
    logger.info("select_cells: %d cells (%s)", idx.size,
                ", ".join(f"{t}: {int((ct[idx] == t).sum())}" for t in types))
    return obs.index[idx]


# --------------------------------------------------------------------------------------------------
# 2. counterfactual stack and z-scores
# --------------------------------------------------------------------------------------------------
def counterfactual_stack(
    model: Any,
    adata: ad.AnnData,
    cells: Sequence[str] | pd.Index,
    *,
    target_batches: Sequence[str] | None = None,
    mode: str = "full",
) -> ad.AnnData:
    """Stack input, FE reconstruction and RE counterfactuals of ``cells`` into one AnnData.

    Rows, in blocks of ``len(cells)`` (cells in the given order within each block):
    the min-max scaled input (``model.scale``), the FE reconstruction
    (``model.get_reconstruction(kind="fe", scaled=True)``), then one block per target batch with the
    RE reconstruction as if measured in that batch (``model.counterfactual(batch=b, mode=mode,
    scaled=True)``). All values are in the scaled units the networks see.

    obs columns: ``cell`` (source obs_name), ``kind`` ("input", "fe", "re"), ``target_batch``
    (categorical; NaN for input/FE rows), ``source_batch`` (the cell's own batch, from
    ``obs[model.batch_key]``), and every obs column of the source cells under its own name (a column
    that clashes with the four above is kept as ``obs_<name>``). obs_names are ``"<cell>|input"``,
    ``"<cell>|fe"`` and ``"<cell>|re:<batch>"``; var = the model's genes.

    ``target_batches`` defaults to all ``model.batch_categories``.

    Example
    -------
    >>> stack = zscore_stack(counterfactual_stack(model, adata, cells))
    """
    cells = pd.Index(cells).astype(str)
    if cells.empty:
        raise ValueError("no cells given")
    if not cells.is_unique:
        raise ValueError("cells contains duplicates")
    missing = cells.difference(adata.obs_names)
    if len(missing):
        raise ValueError(f"{len(missing)} cell(s) not in adata.obs_names, e.g. {list(missing[:3])}")
    known = [str(b) for b in model.batch_categories]
    batches = known if target_batches is None else _as_list(target_batches)
    if not batches:
        raise ValueError("target_batches is empty")
    unknown = sorted(set(batches) - set(known))
    if unknown:
        raise ValueError(f"unknown target batch(es) {unknown}; the model knows {known}")
    batch_key = model.batch_key
    if batch_key not in adata.obs.columns:
        raise ValueError(f"model.batch_key={batch_key!r} is not an obs column of adata")

    sub = adata[cells].copy()
    genes = pd.Index(np.asarray(model.var_names).astype(str))
    n, g = sub.n_obs, len(genes)

    def checked(x: Any, what: str) -> np.ndarray:
        x = _dense(x).astype(np.float32, copy=False)
        if x.shape != (n, g):
            raise ValueError(f"{what} has shape {x.shape}, expected {(n, g)}")
        return x

    blocks = [checked(model.scale(sub), "model.scale(...)"),
              checked(model.get_reconstruction(sub, kind="fe", scaled=True), "FE reconstruction")]
    for b in tqdm(batches, desc="counterfactuals", leave=False):
        cf = model.counterfactual(sub, batch=b, mode=mode, scaled=True)
        same = np.array_equal(np.asarray(getattr(cf, "obs_names", sub.obs_names)), np.asarray(sub.obs_names))
        if not same:
            raise ValueError(f"counterfactual for batch {b!r} returned cells in a different order")
        blocks.append(checked(cf, f"counterfactual for batch {b!r}"))

    n_blocks = len(blocks)
    kinds = ["input", "fe"] + ["re"] * len(batches)
    targets: list[Any] = [np.nan, np.nan] + batches
    src = sub.obs.copy()
    src.columns = [f"obs_{c}" if c in STACK_COLUMNS else c for c in src.columns]
    src_rep = src.iloc[np.tile(np.arange(n), n_blocks)].reset_index(drop=True)
    obs = pd.DataFrame({
        "cell": np.tile(sub.obs_names.to_numpy(), n_blocks),
        "kind": pd.Categorical(np.repeat(kinds, n), categories=list(KINDS)),
        "target_batch": pd.Categorical(np.repeat(np.asarray(targets, dtype=object), n), categories=batches),
        "source_batch": np.tile(sub.obs[batch_key].astype(str).to_numpy(), n_blocks),
    })
    obs = pd.concat([obs, src_rep], axis=1)
    suffix = ["input", "fe"] + [f"re:{b}" for b in batches]
    obs.index = pd.Index([f"{c}|{s}" for s in suffix for c in sub.obs_names], dtype=str)
    stack = ad.AnnData(X=np.vstack(blocks), obs=obs, var=pd.DataFrame(index=genes))
    stack.uns["genomap_stack"] = {"target_batches": batches, "mode": mode, "batch_key": batch_key,
                                  "n_cells": int(n)}
    logger.info("counterfactual_stack: %d rows (%d cells x %d blocks) x %d genes",
                stack.n_obs, n, n_blocks, g)
    return stack


def zscore_columns(x: np.ndarray) -> np.ndarray:
    """Per-column z-scores (ddof=1); constant columns (and a single row) give 0."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] < 2:
        return np.zeros_like(x)
    mean = x.mean(axis=0)
    std = x.std(axis=0, ddof=1)
    const = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
    z = (x - mean) / np.where(const, 1.0, std)
    z[:, const] = 0.0
    return z


def zscore_stack(stack: ad.AnnData, *, layer: str = "zscore") -> ad.AnnData:
    """Z-score every gene over all rows of ``stack`` (ddof=1; zero-variance genes become 0).

    The result is stored as ``stack.layers[layer]`` (float32); ``stack.X`` keeps the scaled values.
    Returns ``stack`` (modified in place) for chaining.
    """
    stack.layers[layer] = zscore_columns(_dense(stack.X)).astype(np.float32)
    return stack


# --------------------------------------------------------------------------------------------------
# 3. grid and layout
# --------------------------------------------------------------------------------------------------
def grid_shape(n_genes: int) -> tuple[int, int]:
    """The smallest near-square grid (``cols - rows`` is 0 or 1) with at least ``n_genes`` pixels.

    Genes are never dropped: surplus pixels stay empty. ``grid_shape(1000) == (32, 32)``,
    ``grid_shape(2916) == (54, 54)``, ``grid_shape(990) == (31, 32)``.
    """
    n = int(n_genes)
    if n < 1:
        raise ValueError(f"n_genes must be >= 1, got {n_genes}")
    s = math.isqrt(n - 1) + 1  # ceil(sqrt(n))
    return (s - 1, s) if (s - 1) * s >= n else (s, s)


def _matrix_and_genes(data: Any, genes: Sequence[str] | None, layer: str | None = None
                      ) -> tuple[np.ndarray, list[str] | None]:
    """(rows x genes float64 matrix, gene names or None) from an array, DataFrame or AnnData."""
    names: list[str] | None = None
    if isinstance(data, ad.AnnData):
        names = [str(v) for v in data.var_names]
        data = data.layers[layer] if layer is not None else data.X
    elif isinstance(data, pd.DataFrame):
        names = [str(v) for v in data.columns]
        data = data.to_numpy()
    x = np.asarray(_dense(data), dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D rows x genes matrix, got shape {x.shape}")
    if genes is not None:
        genes = [str(v) for v in genes]
        if len(genes) != x.shape[1]:
            raise ValueError(f"{len(genes)} gene names for {x.shape[1]} columns")
        if names is not None and names != genes:
            raise ValueError("the data's gene names differ from the given genes")
        names = genes
    return x, names


def _fill_constant_genes(x: np.ndarray, seed: int) -> np.ndarray:
    """Copy of ``x`` whose constant columns are replaced by seeded N(0, 1) noise (for the coupling only)."""
    const = np.ptp(x, axis=0) <= 1e-12 * np.maximum(1.0, np.abs(x).max(axis=0))
    if not const.any():
        return x
    logger.warning("GenomapLayout.fit: %d constant gene(s) (undefined correlation) get random positions",
                   int(const.sum()))
    x = x.copy()
    x[:, const] = np.random.default_rng(seed).standard_normal((x.shape[0], int(const.sum())))
    return x


def _hash_matrix(x: np.ndarray, extra: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(dict(extra), sort_keys=True, default=str).encode())
    h.update(str(x.shape).encode())
    x = np.asarray(x, dtype=np.float64)
    step = max(1, (1 << 24) // max(1, x.shape[1] * 8))  # ~16 MB chunks
    for i in range(0, x.shape[0], step):
        h.update(np.ascontiguousarray(x[i:i + step]).tobytes())
    return h.hexdigest()


@dataclass
class GenomapLayout:
    """One genomap layout: a gene -> pixel coupling shared by all rows of a stack.

    ``T`` is the Gromov-Wasserstein coupling returned by ``genomap.construct_genomap_returnT``:
    shape (n_genes, n_genes), genes x the first ``n_genes`` pixels in genomap's column-major pixel
    order (pixel ``k`` is at row ``k % rows``, column ``k // rows``). With ``epsilon=0`` it is a
    permutation divided by ``n_genes``: each gene lights exactly one pixel.

    Example
    -------
    >>> layout = GenomapLayout.fit(stack.layers["zscore"], genes=stack.var_names, n_iter=200)
    >>> images = layout.transform(stack.layers["zscore"])      # (n_rows, rows, cols)
    >>> layout.gene_table().head()                               # gene, row, col, weight
    >>> layout.save("outputs/layout"); same = GenomapLayout.load("outputs/layout")
    """

    rows: int
    cols: int
    T: np.ndarray
    genes: list[str]
    n_iter: int = 200
    epsilon: float = 0.0
    seed: int = 0
    fit_seconds: float = float("nan")
    data_hash: str = ""
    genomap_version: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.T = np.asarray(self.T, dtype=np.float64)
        self.genes = [str(g) for g in self.genes]
        n = len(self.genes)
        if self.T.shape != (n, n):
            raise ValueError(f"coupling shape {self.T.shape} does not match {n} genes")
        if self.rows * self.cols < n:
            raise ValueError(f"grid {self.rows}x{self.cols} is too small for {n} genes")

    # -- properties -------------------------------------------------------------------------------
    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def n_pixels(self) -> int:
        return self.rows * self.cols

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    # -- fitting ----------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        data: Any,
        *,
        genes: Sequence[str] | None = None,
        grid: tuple[int, int] | None = None,
        n_iter: int = 200,
        epsilon: float = 0.0,
        seed: int = 0,
        layer: str | None = None,
    ) -> GenomapLayout:
        """Compute the coupling for ``data`` (rows x genes: array, DataFrame or AnnData [``layer``]).

        Calls ``genomap.construct_genomap_returnT(data, rows, cols, epsilon, num_iter=n_iter)``
        (gene-gene distance 1 - Pearson r over all rows, grid distances, KL loss, uniform marginals).
        ``grid`` defaults to :func:`grid_shape`; it must hold all genes. Constant genes are replaced
        by noise from ``seed`` for the coupling only (see the module notes); otherwise the result
        is deterministic. Cost grows with genes^2 x iterations (45-60 s for 300 rows x 1000 genes
        x 200 iterations on a shared 2-core machine); use :func:`fit_or_load` to cache it. The
        package also builds its own genomaps of every row, so peak memory is about
        3 x rows x rows*cols x 8 bytes.
        """
        x, names = _matrix_and_genes(data, genes, layer)
        n_rows, n_genes = x.shape
        if n_rows < 3:
            raise ValueError(f"need at least 3 rows to correlate genes, got {n_rows}")
        if not np.isfinite(x).all():
            raise ValueError("data contains NaN or infinite values")
        rows, cols = (int(grid[0]), int(grid[1])) if grid is not None else grid_shape(n_genes)
        if rows * cols < n_genes:
            raise ValueError(f"grid {rows}x{cols} has {rows * cols} pixels for {n_genes} genes; "
                             f"genomap cannot drop genes (use grid_shape({n_genes}) = {grid_shape(n_genes)})")
        names = names if names is not None else [f"gene{i}" for i in range(n_genes)]
        x_fit = _fill_constant_genes(x, seed)
        genomap = _import_genomap()
        logger.info("GenomapLayout.fit: %d rows x %d genes on a %dx%d grid, %d iterations",
                    n_rows, n_genes, rows, cols, n_iter)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, T = genomap.construct_genomap_returnT(x_fit, rows, cols, epsilon=epsilon, num_iter=int(n_iter))
        seconds = time.perf_counter() - t0
        shown = {str(w.message) for w in caught if not issubclass(w.category, PendingDeprecationWarning)}
        for msg in sorted(shown):
            logger.warning("genomap: %s", msg)
        T = np.asarray(T, dtype=np.float64)
        valid = T.shape == (n_genes, n_genes) and np.isfinite(T).all() and np.isclose(T.sum(), 1.0, atol=1e-6)
        if not valid:
            raise RuntimeError(f"genomap returned an invalid coupling (shape {T.shape}, "
                               f"sum {np.nansum(T):.3g}); check the data for degenerate genes")
        logger.info("GenomapLayout.fit: coupling done in %.1f s", seconds)
        return cls(rows=rows, cols=cols, T=T, genes=names, n_iter=int(n_iter), epsilon=float(epsilon),
                   seed=int(seed), fit_seconds=seconds,
                   data_hash=_hash_matrix(x, {}), genomap_version=_genomap_version())

    # -- projection -------------------------------------------------------------------------------
    def transform(self, data: Any, *, layer: str | None = None, chunk_size: int = 4096) -> np.ndarray:
        """Genomaps of every row of ``data``: array (n_rows, rows, cols), float32.

        Each row ``x`` becomes ``x @ (T * rows * cols)`` padded with zeros to ``rows * cols`` and
        reshaped in genomap's column-major order. This equals the package's own output for every
        row, and also fills the last row, which the package leaves at zero.
        """
        x, names = _matrix_and_genes(data, None, layer)
        if x.shape[1] != self.n_genes:
            raise ValueError(f"data has {x.shape[1]} genes, the layout {self.n_genes}")
        if names is not None and names != self.genes:
            raise ValueError("the data's genes differ from the layout's genes (order matters)")
        proj = self.T * self.n_pixels
        flat = np.zeros((x.shape[0], self.n_pixels), dtype=np.float32)
        starts = range(0, x.shape[0], chunk_size)
        for s in tqdm(starts, desc="genomaps", leave=False, disable=len(starts) < 4):
            flat[s:s + chunk_size, : self.n_genes] = x[s:s + chunk_size] @ proj
        # column-major (Fortran) order: pixel k -> (k % rows, k // rows)
        return np.ascontiguousarray(flat.reshape(-1, self.cols, self.rows).transpose(0, 2, 1))

    def pixel_of(self, k: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of genomap pixel index ``k`` (column-major)."""
        k = np.asarray(k)
        return k % self.rows, k // self.rows

    def gene_table(self) -> pd.DataFrame:
        """Each gene's pixel: columns gene, row, col, weight.

        The pixel is the argmax of the gene's row of ``T``, i.e. where the image lights up when only
        that gene is expressed (a one-hot row); ``weight`` is the share of the gene's mass there
        (1.0 for the permutation couplings that ``epsilon=0`` gives).
        """
        k = self.T.argmax(axis=1)
        r, c = self.pixel_of(k)
        mass = self.T.sum(axis=1)
        weight = self.T[np.arange(self.n_genes), k] / np.where(mass > 0, mass, 1.0)
        table = pd.DataFrame({"gene": self.genes, "row": r.astype(int), "col": c.astype(int),
                              "weight": weight})
        n_shared = int(table.duplicated(["row", "col"]).sum())
        if n_shared:
            logger.warning("gene_table: %d gene(s) share a pixel with another gene", n_shared)
        return table

    def pixel_table(self) -> pd.DataFrame:
        """Every pixel, row-major: columns row, col, gene (the gene with most mass there; None if the
        pixel is empty), weight (that gene's share of the pixel's mass)."""
        rr, cc = np.meshgrid(np.arange(self.rows), np.arange(self.cols), indexing="ij")
        rr, cc = rr.ravel(), cc.ravel()
        k = cc * self.rows + rr  # column-major index of each row-major pixel
        gene = np.full(rr.size, None, dtype=object)
        weight = np.zeros(rr.size)
        used = k < self.n_genes
        col_mass = self.T.sum(axis=0)
        g = self.T[:, k[used]].argmax(axis=0)
        has = col_mass[k[used]] > 0
        idx = np.flatnonzero(used)
        gene[idx[has]] = np.asarray(self.genes, dtype=object)[g[has]]
        weight[idx[has]] = self.T[g[has], k[used][has]] / col_mass[k[used]][has]
        return pd.DataFrame({"row": rr, "col": cc, "gene": gene, "weight": weight})

    # -- persistence ------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``layout.json`` (grid, genes, parameters) and ``coupling.npz`` (T) into ``directory``
        atomically. No pickle is used."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _atomic_write(d / "coupling.npz", lambda fh: np.savez_compressed(fh, T=self.T))
        info = {"format": _LAYOUT_FORMAT, "rows": self.rows, "cols": self.cols, "genes": self.genes,
                "n_iter": self.n_iter, "epsilon": self.epsilon, "seed": self.seed,
                "fit_seconds": self.fit_seconds, "data_hash": self.data_hash,
                "genomap_version": self.genomap_version, "meta": self.meta}
        _write_json(d / "layout.json", info)
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> GenomapLayout:
        """Read a layout written by :meth:`save`."""
        d = Path(directory)
        info = json.loads((d / "layout.json").read_text())
        if info.get("format") != _LAYOUT_FORMAT:
            raise ValueError(f"unsupported layout format {info.get('format')!r} in {d}")
        with np.load(d / "coupling.npz", allow_pickle=False) as z:
            T = z["T"]
        return cls(rows=int(info["rows"]), cols=int(info["cols"]), T=T, genes=info["genes"],
                   n_iter=int(info["n_iter"]), epsilon=float(info["epsilon"]), seed=int(info["seed"]),
                   fit_seconds=float("nan") if info["fit_seconds"] is None else float(info["fit_seconds"]),
                   data_hash=info.get("data_hash", ""), genomap_version=info.get("genomap_version", ""),
                   meta=info.get("meta", {}))


def layout_cache_key(data: Any, *, genes: Sequence[str] | None = None, grid: tuple[int, int] | None = None,
                     n_iter: int = 200, epsilon: float = 0.0, seed: int = 0, layer: str | None = None) -> str:
    """SHA-256 over the data (as float64), gene names, grid, parameters and genomap version."""
    x, names = _matrix_and_genes(data, genes, layer)
    rows, cols = grid if grid is not None else grid_shape(x.shape[1])
    params = {"genes": names, "grid": [int(rows), int(cols)], "n_iter": int(n_iter),
              "epsilon": float(epsilon), "seed": int(seed), "genomap": _genomap_version(),
              "format": _LAYOUT_FORMAT}
    return _hash_matrix(x, params)


def fit_or_load(
    cache_dir: str | os.PathLike,
    data: Any,
    *,
    genes: Sequence[str] | None = None,
    grid: tuple[int, int] | None = None,
    n_iter: int = 200,
    epsilon: float = 0.0,
    seed: int = 0,
    layer: str | None = None,
) -> GenomapLayout:
    """:meth:`GenomapLayout.fit`, cached in ``cache_dir/layout-<key>`` where ``key`` hashes the data
    and every parameter (:func:`layout_cache_key`). A second call with the same inputs loads the
    saved coupling instead of recomputing it; an unreadable cache entry is refitted. The entry is
    written to a temporary folder and renamed into place, so a crash never leaves a partial entry.
    """
    cache_dir = Path(cache_dir)
    params = dict(genes=genes, grid=grid, n_iter=n_iter, epsilon=epsilon, seed=seed, layer=layer)
    key = layout_cache_key(data, **params)
    target = cache_dir / f"layout-{key[:20]}"
    if target.is_dir():
        try:
            layout = GenomapLayout.load(target)
            logger.info("fit_or_load: using cached layout %s", target)
            layout.meta["cache_hit"] = True
            return layout
        except Exception as exc:  # corrupt or old entry: refit
            logger.warning("fit_or_load: cache entry %s unreadable (%s); refitting", target, exc)
    layout = GenomapLayout.fit(data, **params)
    layout.meta["cache_key"] = key
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
    try:
        layout.save(tmp)
        if target.exists():  # stale/corrupt entry or a concurrent writer
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except OSError as exc:
        logger.warning("fit_or_load: could not store the layout in %s (%s)", target, exc)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    layout.meta["cache_hit"] = False
    return layout


# --------------------------------------------------------------------------------------------------
# 5. plots
# --------------------------------------------------------------------------------------------------
def _obs_of(stack: ad.AnnData | pd.DataFrame) -> pd.DataFrame:
    return stack.obs if isinstance(stack, ad.AnnData) else stack


def _cell_rows(obs: pd.DataFrame, cell: str) -> tuple[int, int, dict[str, int]]:
    """Row positions of a cell's input, FE and per-target-batch RE rows in the stack."""
    is_cell = (obs["cell"].astype(str) == str(cell)).to_numpy()
    if not is_cell.any():
        raise ValueError(f"cell {cell!r} is not in the stack")
    kind = obs["kind"].astype(str).to_numpy()
    pos = np.flatnonzero(is_cell & (kind == "input"))
    fe = np.flatnonzero(is_cell & (kind == "fe"))
    re_pos = np.flatnonzero(is_cell & (kind == "re"))
    targets = obs["target_batch"].astype(object).to_numpy()
    return int(pos[0]), int(fe[0]), {str(targets[i]): int(i) for i in re_pos}


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


def plot_cell_panel(
    images: np.ndarray,
    stack: ad.AnnData | pd.DataFrame,
    cell: str,
    *,
    shown_batches: Sequence[str],
    layout: GenomapLayout,
    vmin: float | None = None,
    vmax: float | None = None,
    top_n: int = 10,
    title_keys: Sequence[str] = (),
    size: float = 3.0,
):
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

    obs = _obs_of(stack)
    if len(obs) != len(images):
        raise ValueError(f"{len(images)} images for {len(obs)} stack rows")
    i_in, i_fe, i_re = _cell_rows(obs, cell)
    shown = _as_list(shown_batches)
    missing = [b for b in shown if b not in i_re]
    if missing:
        raise ValueError(f"no counterfactual for batch(es) {missing} in the stack")
    own = str(obs["source_batch"].iloc[i_in])
    idx = [i_in, i_fe] + [i_re[b] for b in shown]
    titles = ["input", "FE reconstruction"] + [f"as batch {b}" for b in shown]
    vmin, vmax = _colour_limits(images[idx], vmin, vmax)
    marks = _top_pixels(images[[i_in, i_fe, *i_re.values()]], layout, top_n)

    fig = Figure(figsize=(size * len(idx) + 1.2, size + 0.9), layout="constrained")
    axes = fig.subplots(1, len(idx), squeeze=False)[0]
    im = None
    for ax, i, title, b in zip(axes, idx, titles, [None, None, *shown]):
        im = ax.imshow(images[i], cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(title, color="red" if b == own else "black", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        _mark(ax, marks)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="z-score")
    fig.suptitle(_cell_title(obs, i_in, cell, title_keys), fontsize=10)
    return fig


def plot_cell_all_batches(
    images: np.ndarray,
    stack: ad.AnnData | pd.DataFrame,
    cell: str,
    *,
    layout: GenomapLayout,
    vmin: float | None = None,
    vmax: float | None = None,
    ncols: int = 6,
    top_n: int = 0,
    title_keys: Sequence[str] = (),
    size: float = 2.2,
):
    """One cell's counterfactual genomaps in every target batch of the stack, in a grid
    (``ncols`` per row; the cell's own batch titled in red; shared colour limits; optional top_n
    gene labels as in :func:`plot_cell_panel`). Returns a matplotlib Figure."""
    from matplotlib.figure import Figure

    obs = _obs_of(stack)
    if len(obs) != len(images):
        raise ValueError(f"{len(images)} images for {len(obs)} stack rows")
    i_in, i_fe, i_re = _cell_rows(obs, cell)
    own = str(obs["source_batch"].iloc[i_in])
    batches = list(i_re)
    idx = [i_re[b] for b in batches]
    vmin, vmax = _colour_limits(images[idx], vmin, vmax)
    marks = _top_pixels(images[[i_in, i_fe, *idx]], layout, top_n)
    ncols = max(1, min(ncols, len(batches)))
    nrows = math.ceil(len(batches) / ncols)
    fig = Figure(figsize=(size * ncols + 1.2, size * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    im = None
    for ax, b, i in zip(axes, batches, idx):
        im = ax.imshow(images[i], cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(b, color="red" if b == own else "black", fontsize=8)
        _mark(ax, marks, fontsize=5)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(batches):]:
        ax.set_axis_off()
    fig.colorbar(im, ax=list(axes), shrink=0.6, label="z-score")
    fig.suptitle(_cell_title(obs, i_in, cell, title_keys) + ": all target batches", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------------
# 6. group comparison
# --------------------------------------------------------------------------------------------------
def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (step-up, monotone, capped at 1). NaNs stay NaN and do
    not count as tests."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    scaled = pv[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(scaled[::-1])[::-1]
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def _features(values_src: Any, layout: GenomapLayout | None, layer: str | None
              ) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame | None]:
    """(rows x features matrix, feature table [gene,row,col], obs or None) for images or a stack."""
    if isinstance(values_src, ad.AnnData):
        vals = _dense(values_src.layers[layer] if layer is not None else values_src.X).astype(np.float64)
        ftab = pd.DataFrame({"gene": values_src.var_names.astype(str), "row": np.nan, "col": np.nan})
        if layout is not None:
            gt = layout.gene_table().set_index("gene")
            ftab["row"] = ftab["gene"].map(gt["row"])
            ftab["col"] = ftab["gene"].map(gt["col"])
        return vals, ftab, values_src.obs
    imgs = np.asarray(values_src)
    if imgs.ndim != 3:
        raise ValueError(f"images must be (n, rows, cols), got shape {imgs.shape}")
    n, rows, cols = imgs.shape
    vals = imgs.reshape(n, rows * cols).astype(np.float64)
    if layout is not None:
        if layout.shape != (rows, cols):
            raise ValueError(f"layout grid {layout.shape} does not match images {(rows, cols)}")
        ptab = layout.pixel_table()
        ftab = ptab[["gene", "row", "col"]].copy()
        keep = ftab["gene"].notna().to_numpy()
    else:
        rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        ftab = pd.DataFrame({"gene": None, "row": rr.ravel(), "col": cc.ravel()})
        keep = np.any(vals != 0, axis=0)
    return vals[:, keep], ftab.loc[keep].reset_index(drop=True), None


def _mixed_one(values: np.ndarray, in_a: np.ndarray, cells: np.ndarray) -> tuple[float, float]:
    """(z statistic, p-value) of the group coefficient in value ~ group + (1 | cell)."""
    import statsmodels.api as sm

    exog = np.column_stack([np.ones_like(values), in_a.astype(np.float64)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit = sm.MixedLM(values, exog, groups=cells).fit(reml=True)
            return float(fit.tvalues[1]), float(fit.pvalues[1])
        except Exception as exc:  # singular fits etc.
            logger.debug("mixedlm failed: %s", exc)
            return float("nan"), float("nan")


def compare_batch_groups(
    images_or_stack: np.ndarray | ad.AnnData,
    stack_obs: pd.DataFrame | None = None,
    *,
    group_of_batch: Mapping[str, str],
    groups: tuple[str, str],
    test: str = "mwu",
    fdr: bool = True,
    alpha: float = 0.05,
    layout: GenomapLayout | None = None,
    layer: str | None = "zscore",
    max_pixels: int | None = None,
) -> pd.DataFrame:
    """Pixel-wise (or gene-wise) differences between two groups of **target** batches.

    Input: either genomap images (n_rows, rows, cols) with ``stack_obs`` (the stack's obs, same row
    order) and preferably ``layout`` (to name each pixel's gene and skip empty pixels), or the
    stack AnnData itself (tests genes directly, on ``layer``, default the z-scores). Only the RE
    counterfactual rows are used; each row's group is ``group_of_batch[target_batch]`` and only
    ``groups = (a, b)`` enter (other batches/groups are ignored).

    ``effect`` = mean over rows of group ``a`` minus mean over rows of group ``b`` (z-score units).

    Tests
    -----
    ``"mwu"`` (scMEDAL's AML analysis): average each target batch's values over the cells, then a
    two-sided Mann-Whitney U per pixel between the batch means of the two groups (exact p-values
    when a pixel's batch means have no ties and there are at most 60 target batches, otherwise the
    tie-corrected normal approximation). The replicates are the target batches, which is the honest
    unit here. ``statistic`` = U of group ``a``. With ``k`` batches per group the smallest possible
    p-value is ``2 / C(2k, k)`` (e.g. 0.0022 for 6 vs 6), so with many pixels and few batches
    nothing may survive the FDR correction.

    ``"mixed"``: per pixel a statsmodels ``MixedLM`` fit of value ~ group with a random intercept
    per **cell** (``groups=cell``). scMEDAL's ASD analysis used ``groups=batch``; but the same cells
    are decoded into every target batch, so the observations are paired by cell, and the cell is
    the natural grouping factor (the group indicator varies within each cell). Caveat: cells within
    a target batch still share that batch's decoder effect, so with few target batches the p-values
    remain optimistic (pseudo-replication at the batch level); treat "mixed" as a sensitivity
    analysis and "mwu" as the primary test. It is slow (one fit per pixel): ``max_pixels`` keeps the
    ``max_pixels`` features with the largest variance of their per-target-batch means (unsupervised:
    group labels are not used); the others get NaN. ``statistic`` = z of the group coefficient.

    ``padj``: Benjamini-Hochberg over the tested features (``fdr=False``: padj = pvalue);
    ``significant`` = padj < ``alpha``.

    Returns a DataFrame sorted by (padj, pvalue) with columns gene, row, col, effect, mean_a,
    mean_b, statistic, pvalue, padj, significant; ``df.attrs`` records the test and the batches in
    each group.
    """
    if test not in ("mwu", "mixed"):
        raise ValueError(f"test must be 'mwu' or 'mixed', got {test!r}")
    if len(groups) != 2 or groups[0] == groups[1]:
        raise ValueError(f"groups must be two different labels, got {groups!r}")
    a, b = (str(g) for g in groups)
    vals, ftab, obs_from_stack = _features(images_or_stack, layout, layer)
    obs = stack_obs if stack_obs is not None else obs_from_stack
    if obs is None:
        raise ValueError("stack_obs is required with images")
    if len(obs) != vals.shape[0]:
        raise ValueError(f"stack_obs has {len(obs)} rows for {vals.shape[0]} images")
    gmap = {str(k): str(v) for k, v in group_of_batch.items()}
    kind = obs["kind"].astype(str).to_numpy()
    target = obs["target_batch"].astype(object).to_numpy()
    grp = np.array([gmap.get(str(t)) if k == "re" else None for k, t in zip(kind, target)], dtype=object)
    use = np.array([g in (a, b) for g in grp], dtype=bool)
    ignored = sorted({str(t) for k, t in zip(kind, target) if k == "re" and str(t) not in gmap})
    if ignored:
        logger.info("compare_batch_groups: target batches without a group are ignored: %s", ignored)
    batches_a = sorted({str(t) for t, g in zip(target[use], grp[use]) if g == a})
    batches_b = sorted({str(t) for t, g in zip(target[use], grp[use]) if g == b})
    if not batches_a or not batches_b:
        raise ValueError(f"each group needs at least one target batch in the stack: "
                         f"{a}: {batches_a}, {b}: {batches_b}")
    if min(len(batches_a), len(batches_b)) < 3:
        logger.warning("compare_batch_groups: few target batches (%d vs %d); tests have little power",
                       len(batches_a), len(batches_b))

    v = vals[use]
    in_a = grp[use] == a
    tb = target[use].astype(str)
    mean_a, mean_b = v[in_a].mean(axis=0), v[~in_a].mean(axis=0)
    n_feat = v.shape[1]
    stat = np.full(n_feat, np.nan)
    pval = np.full(n_feat, np.nan)

    batch_list = batches_a + batches_b
    bmeans = np.vstack([v[tb == bb].mean(axis=0) for bb in batch_list])
    if test == "mwu":
        from scipy.stats import mannwhitneyu

        # exact null distribution where a pixel's batch means have no ties (and the groups are small),
        # the normal approximation with tie correction otherwise
        srt = np.sort(bmeans, axis=0)
        tied = np.any(np.diff(srt, axis=0) == 0, axis=0)
        small = len(batch_list) <= _MWU_EXACT_MAX
        for cols, method in ((~tied & small, "exact"), (tied | (not small), "asymptotic")):
            if not cols.any():
                continue
            ba, bb_ = bmeans[: len(batches_a)][:, cols], bmeans[len(batches_a):][:, cols]
            with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
                warnings.simplefilter("ignore")
                res = mannwhitneyu(ba, bb_, axis=0, alternative="two-sided", method=method)
            stat[cols], pval[cols] = np.asarray(res.statistic, float), np.asarray(res.pvalue, float)
        const = np.ptp(bmeans, axis=0) == 0  # all batch means tied: no information
        stat[const], pval[const] = np.nan, np.nan
    else:
        order = np.arange(n_feat)
        if max_pixels is not None and max_pixels < n_feat:
            order = np.argsort(-bmeans.var(axis=0), kind="stable")[: int(max_pixels)]
        cells = obs["cell"].astype(str).to_numpy()[use]
        for j in tqdm(order, desc="mixedlm", leave=False):
            if np.ptp(v[:, j]) == 0:
                continue
            stat[j], pval[j] = _mixed_one(v[:, j], in_a, cells)

    padj = benjamini_hochberg(pval) if fdr else pval.copy()
    out = ftab.copy()
    out["effect"] = mean_a - mean_b
    out["mean_a"] = mean_a
    out["mean_b"] = mean_b
    out["statistic"] = stat
    out["pvalue"] = pval
    out["padj"] = padj
    out["significant"] = np.nan_to_num(padj, nan=1.0) < alpha
    out = out.sort_values(["padj", "pvalue"], kind="stable", na_position="last").reset_index(drop=True)
    out.attrs.update({"test": test, "groups": [a, b], "batches": {a: batches_a, b: batches_b},
                      "fdr": bool(fdr), "alpha": float(alpha)})
    logger.info("compare_batch_groups (%s): %d of %d tested features significant "
                "(%s vs %s, %d vs %d batches)",
                test, int(out["significant"].sum()), int(np.isfinite(pval).sum()), a, b,
                len(batches_a), len(batches_b))
    return out


def plot_significant_pixels(result: pd.DataFrame, layout: GenomapLayout, alpha: float = 0.05,
                            *, max_labels: int = 40, size: float = 6.0):
    """Map of a :func:`compare_batch_groups` result on the genomap grid: each tested pixel coloured by
    its effect (diverging, symmetric limits), pixels with padj < ``alpha`` circled and labelled with
    their gene (at most ``max_labels``, the most significant). Returns a matplotlib Figure."""
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


# --------------------------------------------------------------------------------------------------
# 7. the whole step
# --------------------------------------------------------------------------------------------------
@dataclass
class GenomapAnalysisResult:
    """What :func:`run_genomap_analysis` produced (tables in memory, everything also on disk)."""

    out_dir: Path
    cells: pd.Index
    stack: ad.AnnData
    layout: GenomapLayout
    images: np.ndarray
    gene_table: pd.DataFrame
    comparison: pd.DataFrame | None
    paths: dict[str, Path]


def _groups_from_obs(adata: ad.AnnData, batch_key: str, groups_key: str) -> dict[str, str]:
    if groups_key not in adata.obs.columns:
        raise ValueError(f"groups_key={groups_key!r} is not an obs column")
    pairs = adata.obs[[batch_key, groups_key]].astype(str).drop_duplicates()
    dup = pairs[batch_key][pairs[batch_key].duplicated()]
    if len(dup):
        raise ValueError(f"obs[{groups_key!r}] is not constant within batch(es) {sorted(set(dup))[:5]}")
    return dict(zip(pairs[batch_key], pairs[groups_key]))


def _panel_cells(obs: pd.DataFrame, cells: pd.Index, cell_type_key: str, cell_types: list[str],
                 batch_key: str, shown: list[str], seed: int) -> list[tuple[str, str, str]]:
    """One selected cell per (cell type, shown batch): (cell type, batch, cell)."""
    rng = np.random.default_rng(seed)
    sel = obs.loc[cells]
    out = []
    for t in cell_types:
        for b in shown:
            cand = sel.index[(sel[cell_type_key].astype(str) == t) & (sel[batch_key].astype(str) == b)]
            if len(cand):
                out.append((t, b, str(cand[int(rng.integers(len(cand)))])))
    return out


def run_genomap_analysis(
    model: Any,
    adata: ad.AnnData,
    *,
    cell_type_key: str,
    cell_types: str | Sequence[str],
    shown_batches: Sequence[str],
    out_dir: str | os.PathLike,
    groups_key: str | None = None,
    group_of_batch: Mapping[str, str] | None = None,
    groups: tuple[str, str] | None = None,
    n_cells: int = 300,
    n_iter: int = 200,
    seed: int = 0,
    target_batches: Sequence[str] | None = None,
    mode: str = "full",
    test: str = "mwu",
    max_pixels: int | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    top_n: int = 10,
    title_keys: Sequence[str] = (),
    all_batches_panels: bool = True,
) -> GenomapAnalysisResult:
    """Run the whole genomap step and write everything under ``out_dir``.

    1. :func:`select_cells` (``shown_batches`` forced), 2. :func:`counterfactual_stack` +
    :func:`zscore_stack`, 3. :func:`fit_or_load` on the z-scores (cache in ``out_dir/layout_cache``),
    4. genomaps of every row, 5. one panel per (cell type, shown batch) cell
    (:func:`plot_cell_panel`, plus :func:`plot_cell_all_batches` if ``all_batches_panels``),
    6. if groups are given (``groups_key``: an obs column constant within each batch, e.g. the
    donor's diagnosis, read from all cells of ``adata``; or an explicit ``group_of_batch``),
    :func:`compare_batch_groups` on the genomaps and :func:`plot_significant_pixels`.
    ``groups`` defaults to the two group labels (sorted) when there are exactly two; the effect is
    ``groups[0] - groups[1]``, so pass e.g. ``groups=("disease", "control")`` for disease - control.

    Files (each written atomically): ``cells.csv``, ``stack_obs.csv``, ``genes.csv``,
    ``stack_scaled.npy``, ``stack_zscore.npy``, ``genomaps.npy`` (n_rows x rows x cols, float32),
    ``gene_table.csv``, ``pixel_table.csv``, ``panels/*.png``, ``comparison_<test>.csv``,
    ``significant_pixels_<test>.png``, ``summary.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    batch_key = model.batch_key
    known = [str(b) for b in model.batch_categories]
    shown = _as_list(shown_batches)
    bad = sorted(set(shown) - set(known))
    if bad:
        raise ValueError(f"unknown shown batch(es) {bad}; the model knows {known}")
    if groups_key is not None and group_of_batch is not None:
        raise ValueError("give groups_key or group_of_batch, not both")
    types = _as_list(cell_types)
    if groups_key is not None:
        group_of_batch = _groups_from_obs(adata, batch_key, groups_key)
    if group_of_batch is not None and groups is None:
        labels = sorted({str(v) for v in group_of_batch.values()})
        if len(labels) != 2:
            raise ValueError(f"{len(labels)} group labels {labels}: pass groups=(a, b)")
        groups = (labels[0], labels[1])
    paths: dict[str, Path] = {}

    cells = select_cells(adata, cell_type_key=cell_type_key, cell_types=types, n_cells=n_cells,
                         batch_key=batch_key, force_batches=shown, seed=seed)
    stack = zscore_stack(counterfactual_stack(model, adata, cells, target_batches=target_batches, mode=mode))
    z = stack.layers["zscore"]
    layout = fit_or_load(out / "layout_cache", z, genes=list(stack.var_names), n_iter=n_iter, seed=seed)
    images = layout.transform(z)
    gene_table = layout.gene_table()

    paths["cells"] = _write_csv(out / "cells.csv", adata.obs.loc[cells].rename_axis("cell").reset_index())
    paths["stack_obs"] = _write_csv(out / "stack_obs.csv", stack.obs.rename_axis("row_name").reset_index())
    paths["genes"] = _write_csv(out / "genes.csv", pd.DataFrame({"gene": stack.var_names}))
    paths["stack_scaled"] = _write_npy(out / "stack_scaled.npy", np.asarray(stack.X, dtype=np.float32))
    paths["stack_zscore"] = _write_npy(out / "stack_zscore.npy", z)
    paths["genomaps"] = _write_npy(out / "genomaps.npy", images)
    paths["gene_table"] = _write_csv(out / "gene_table.csv", gene_table)
    paths["pixel_table"] = _write_csv(out / "pixel_table.csv", layout.pixel_table())

    panel_dir = out / "panels"
    for t, b, cell in tqdm(_panel_cells(adata.obs, cells, cell_type_key, types, batch_key, shown, seed),
                           desc="panels", leave=False):
        stem = f"{_safe_name(t)}__{_safe_name(b)}__{_safe_name(cell)}"
        fig = plot_cell_panel(images, stack, cell, shown_batches=shown, layout=layout, vmin=vmin, vmax=vmax,
                              top_n=top_n, title_keys=title_keys)
        paths[f"panel:{stem}"] = _write_figure(panel_dir / f"{stem}.png", fig)
        if all_batches_panels:
            fig = plot_cell_all_batches(images, stack, cell, layout=layout, vmin=vmin, vmax=vmax,
                                        title_keys=title_keys)
            paths[f"all_batches:{stem}"] = _write_figure(panel_dir / f"{stem}__all_batches.png", fig)

    comparison = None
    if group_of_batch is not None and groups is not None:
        comparison = compare_batch_groups(images, stack.obs, group_of_batch=group_of_batch, groups=groups,
                                          test=test, layout=layout, max_pixels=max_pixels)
        paths["comparison"] = _write_csv(out / f"comparison_{test}.csv", comparison)
        paths["significant_pixels"] = _write_figure(out / f"significant_pixels_{test}.png",
                                                    plot_significant_pixels(comparison, layout))

    summary = {"n_cells": int(len(cells)), "cell_types": types, "shown_batches": shown,
               "target_batches": stack.uns["genomap_stack"]["target_batches"], "mode": mode,
               "grid": list(layout.shape), "n_genes": layout.n_genes, "n_iter": n_iter, "seed": seed,
               "layout_fit_seconds": layout.fit_seconds,
               "layout_cache_hit": bool(layout.meta.get("cache_hit")),
               "test": test if comparison is not None else None,
               "groups": list(groups) if comparison is not None else None,
               "n_significant": int(comparison["significant"].sum()) if comparison is not None else None,
               "paths": {k: str(v) for k, v in paths.items()}}
    paths["summary"] = _write_json(out / "summary.json", summary)
    logger.info("run_genomap_analysis: wrote %d files under %s", len(paths), out)
    return GenomapAnalysisResult(out_dir=out, cells=cells, stack=stack, layout=layout, images=images,
                                 gene_table=gene_table, comparison=comparison, paths=paths)
