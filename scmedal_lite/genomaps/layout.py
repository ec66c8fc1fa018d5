"""The genomap layout: one gene -> pixel coupling (Gromov-Wasserstein transport) for a whole stack, its
parameters (:class:`LayoutParams`), its projection of rows into images, and its on-disk cache.

Two ways to fit it (``LayoutParams.method``):

- ``"euclidean"`` (default): genes' correlation distances (1 - Pearson r over the rows) against the pixels'
  Euclidean distances on the grid (:func:`grid_distances`), square loss, POT's Gromov-Wasserstein solver.
  Genes that are expressed together land next to each other.
- ``"genomap"``: the published layout, ``genomap.construct_genomap_returnT`` (genomap 1.3.6, as in the paper).
  Its grid "distance" between two pixels is the difference of their distances from the grid's centre
  (``genomap.createMeshDistance``), not the distance between them: pixels on one ring are at distance 0, so
  the layout only orders genes by ring, and co-expressed genes are no nearer to each other than in a random
  layout (``benchmarks/genomap_layout.py``; :func:`layout_locality` measures it).

Example
-------
>>> layout = fit_or_load("outputs/layout_cache", stack.layers["zscore"], genes=stack.var_names, n_iter=200)
>>> images = layout.transform(stack.layers["zscore"])      # (n_rows, rows, cols)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .._settings import settings
from ..io import atomic_dir, write_json, write_npz
from ..validate import InputError
from .stack import dense

log = logging.getLogger(__name__)

_LAYOUT_FORMAT = 1


#: How to install genomap: without its declared dependencies (torch, phate, louvain: several GB it does not use
#: for the layouts).
GENOMAP_INSTALL = "pip install --no-deps genomap==1.3.6"


def _import_genomap():
    """Import genomap lazily. It imports POT, which would import TensorFlow's and PyTorch's backends: the two
    ``POT_BACKEND_DISABLE_*`` variables are set (unless already set) here, just before, and not at import of
    the package. A missing genomap raises :class:`ModuleNotFoundError` with the command that installs it."""
    os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")
    os.environ.setdefault("POT_BACKEND_DISABLE_PYTORCH", "1")
    try:
        import genomap
    except ModuleNotFoundError as err:
        if err.name != "genomap":
            raise
        raise ModuleNotFoundError(
            f"Genomap layouts need the package genomap, which is not installed. Install it without its declared "
            f"dependencies (it does not need them here): `{GENOMAP_INSTALL}`", name="genomap") from None
    return genomap


def _genomap_version() -> str:
    try:
        from importlib.metadata import version

        return version("genomap")
    except Exception:  # pragma: no cover - metadata missing
        return "unknown"


def grid_shape(n_genes: int) -> tuple[int, int]:
    """The smallest near-square grid (``cols - rows`` is 0 or 1) with at least ``n_genes`` pixels.

    Genes are never dropped: surplus pixels stay empty. ``grid_shape(1000) == (32, 32)``,
    ``grid_shape(2916) == (54, 54)``, ``grid_shape(990) == (31, 32)``.
    """
    n = int(n_genes)
    if n < 1:
        raise InputError(f"n_genes must be >= 1, got {n_genes}")
    s = math.isqrt(n - 1) + 1  # ceil(sqrt(n))
    return (s - 1, s) if (s - 1) * s >= n else (s, s)


#: Ways to fit a layout (:class:`LayoutParams` ``method``; see the module's docstring).
LAYOUT_METHODS = ("euclidean", "genomap")


@dataclass(frozen=True)
class LayoutParams:
    """How a layout is fitted: the grid (``None``: :func:`grid_shape` of the genes), the optimiser's iterations
    (at most; the ``"euclidean"`` solver stops earlier once converged), the entropic regularisation ``epsilon``
    (0: a permutation, each gene lights one pixel), the seed of the noise that stands in for constant genes,
    and the ``method`` (:data:`LAYOUT_METHODS`: ``"euclidean"``, the default, or ``"genomap"``, the published
    layout; see the module's docstring). :meth:`GenomapLayout.fit`, :func:`layout_cache_key` and
    :func:`fit_or_load` take these fields as keywords or as one ``params=LayoutParams(...)``."""

    grid: tuple[int, int] | None = None
    n_iter: int = 200
    epsilon: float = 0.0
    seed: int = 0
    method: str = "euclidean"

    def __post_init__(self) -> None:
        if self.method not in LAYOUT_METHODS:
            raise InputError(f"method must be one of {list(LAYOUT_METHODS)}, got {self.method!r}: 'euclidean' "
                             "places co-expressed genes together, 'genomap' reproduces the published layout")

    @classmethod
    def of(cls, params: LayoutParams | None = None, **options) -> LayoutParams:
        """``params`` (default: the defaults) with the fields in ``options`` replaced; unknown names are
        refused."""
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InputError(f"unknown layout parameter(s) {unknown}; valid: grid, n_iter, epsilon, seed, method")
        params = cls() if params is None else params
        return dataclasses.replace(params, **options)

    def grid_for(self, n_genes: int) -> tuple[int, int]:
        """The grid for ``n_genes`` genes; a given grid must hold them all."""
        rows, cols = (int(self.grid[0]), int(self.grid[1])) if self.grid is not None else grid_shape(n_genes)
        if rows * cols < n_genes:
            raise InputError(f"grid {rows}x{cols} has {rows * cols} pixels for {n_genes} genes; "
                             f"genomap cannot drop genes (use grid_shape({n_genes}) = {grid_shape(n_genes)})")
        return rows, cols


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
    x = np.asarray(dense(data), dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"expected a 2-D rows x genes matrix, got shape {x.shape}")
    if genes is not None:
        genes = [str(v) for v in genes]
        if len(genes) != x.shape[1]:
            raise InputError(f"{len(genes)} gene names for {x.shape[1]} columns")
        if names is not None and names != genes:
            raise InputError("the data's gene names differ from the given genes")
        names = genes
    return x, names


def _fill_constant_genes(x: np.ndarray, seed: int) -> np.ndarray:
    """Copy of ``x`` whose constant columns are replaced by seeded N(0, 1) noise (for the coupling only)."""
    const = np.ptp(x, axis=0) <= 1e-12 * np.maximum(1.0, np.abs(x).max(axis=0))
    if not const.any():
        return x
    log.warning("GenomapLayout.fit: %d constant gene(s) (undefined correlation) get random positions",
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


def pixel_coordinates(rows: int, cols: int, n: int | None = None) -> np.ndarray:
    """(row, col) of the first ``n`` (default all) pixels of a ``rows x cols`` grid, in genomap's column-major
    pixel order (pixel ``k`` at row ``k % rows``, column ``k // rows``): array (n, 2).

    >>> pixel_coordinates(2, 3).tolist()
    [[0, 0], [1, 0], [0, 1], [1, 1], [0, 2], [1, 2]]
    """
    k = np.arange(rows * cols if n is None else int(n))
    return np.stack([k % rows, k // rows], axis=1)


def grid_distances(rows: int, cols: int, n: int | None = None) -> np.ndarray:
    """Euclidean distances between the first ``n`` pixels of a ``rows x cols`` grid (:func:`pixel_coordinates`
    order), in pixels: array (n, n). The ``"euclidean"`` layout couples genes to these.

    >>> grid_distances(2, 2).round(3).tolist()[0]
    [0.0, 1.0, 1.0, 1.414]
    """
    return _distances(pixel_coordinates(rows, cols, n))


def _distances(xy: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of ``xy`` (points x 2)."""
    xy = np.asarray(xy, dtype=np.float64)
    return np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(axis=-1))


def gene_distances(x: np.ndarray) -> np.ndarray:
    """1 - Pearson correlation between the columns (genes) of ``x`` (rows x genes, no constant column): the
    genes' distances that both layout methods use."""
    return 1.0 - np.atleast_2d(np.corrcoef(np.asarray(x, dtype=np.float64), rowvar=False))


def _import_pot():
    """Import POT (declared dependency) with its TensorFlow and PyTorch backends off (see :func:`_import_genomap`)."""
    os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")
    os.environ.setdefault("POT_BACKEND_DISABLE_PYTORCH", "1")
    import ot

    return ot


#: The layout's solver stops once an iteration lowers its objective by less than this share (POT's default is
#: 1e-9, which on 2,000 genes spent half the time on gains below 0.01 %; figures in the method chapter, "What
#: the published genomap layout gets wrong").
LAYOUT_TOLERANCE = 1e-4


def emd_iterations(n_genes: int) -> int:
    """The most network-simplex iterations each exact transport inside the Gromov-Wasserstein solver may take:
    POT's 100,000, or ``n_genes ** 2 / 4`` where that is more.

    POT's fixed cap stopped the transports short of their optimum on 2,000 genes (the HVGs
    :func:`scmedal_lite.pp.prepare` keeps), with a warning the user could not act on, and a worse layout (the
    method chapter gives the figures). A transport that reaches its optimum first is not affected, so layouts
    of up to about 1,500 genes do not change.

    >>> emd_iterations(1000), emd_iterations(2000)
    (250000, 1000000)
    """
    return max(100_000, int(n_genes) ** 2 // 4)


def _euclidean_coupling(x: np.ndarray, rows: int, cols: int, params: LayoutParams) -> tuple[np.ndarray, int | None]:
    """Gromov-Wasserstein coupling (square loss, uniform marginals) of the genes' correlation distances to the
    grid's Euclidean distances (both scaled to a maximum of 1) by POT, each exact transport allowed
    :func:`emd_iterations`, until an iteration gains less than :data:`LAYOUT_TOLERANCE`; returns (T, iterations
    run; None with ``epsilon`` > 0, whose solver does not report them)."""
    n = x.shape[1]
    if n == 1:                                   # one gene, one pixel
        return np.ones((1, 1)), 0
    ot = _import_pot()
    genes = gene_distances(x)
    pixels = grid_distances(rows, cols, n)
    genes, pixels = genes / max(genes.max(), 1e-12), pixels / max(pixels.max(), 1e-12)
    p = q = np.full(n, 1.0 / n)
    if params.epsilon > 0:
        T = ot.gromov.entropic_gromov_wasserstein(genes, pixels, p, q, "square_loss", epsilon=float(params.epsilon),
                                                  max_iter=int(params.n_iter))
        return T, None
    T, info = ot.gromov.gromov_wasserstein(genes, pixels, p, q, "square_loss", max_iter=int(params.n_iter),
                                           log=True, numItermaxEmd=emd_iterations(n), tol_rel=LAYOUT_TOLERANCE)
    return T, len(info["loss"]) - 1          # POT logs the starting loss, then one per iteration


def _coupling(x: np.ndarray, rows: int, cols: int, params: LayoutParams) -> tuple[np.ndarray, float, int | None]:
    """The coupling of ``x``'s genes to the grid by ``params.method`` (checked), the seconds it took, and the
    iterations run (``None`` where the solver does not report them)."""
    t0 = time.perf_counter()
    iterations = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if params.method == "euclidean":
            T, iterations = _euclidean_coupling(x, rows, cols, params)
        else:
            genomap = _import_genomap()
            _, T = genomap.construct_genomap_returnT(x, rows, cols, epsilon=params.epsilon,
                                                     num_iter=int(params.n_iter))
    seconds = time.perf_counter() - t0
    for msg in sorted({str(w.message) for w in caught if not issubclass(w.category, PendingDeprecationWarning)}):
        log.warning("%s: %s", params.method, msg)
    T = np.asarray(T, dtype=np.float64)
    n_genes = x.shape[1]
    if not (T.shape == (n_genes, n_genes) and np.isfinite(T).all() and np.isclose(T.sum(), 1.0, atol=1e-6)):
        raise RuntimeError(f"the {params.method} layout returned an invalid coupling (shape {T.shape}, "
                           f"sum {np.nansum(T):.3g}); check the data for degenerate genes")
    return T, seconds, iterations


@dataclass
class GenomapLayout:
    """One genomap layout: a gene -> pixel coupling shared by all rows of a stack.

    ``T`` is the Gromov-Wasserstein coupling returned by ``genomap.construct_genomap_returnT``:
    shape (n_genes, n_genes), genes x the first ``n_genes`` pixels in genomap's column-major pixel
    order (pixel ``k`` is at row ``k % rows``, column ``k // rows``). With ``epsilon=0`` it is a
    permutation divided by ``n_genes``: each gene lights exactly one pixel. ``params`` are the
    :class:`LayoutParams` it was fitted with (also readable as ``n_iter``, ``epsilon``, ``seed``).

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
    params: LayoutParams = field(default_factory=LayoutParams)
    fit_seconds: float = float("nan")
    data_hash: str = ""
    genomap_version: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.T = np.asarray(self.T, dtype=np.float64)
        self.genes = [str(g) for g in self.genes]
        n = len(self.genes)
        if self.T.shape != (n, n):
            raise InputError(f"coupling shape {self.T.shape} does not match {n} genes")
        if self.rows * self.cols < n:
            raise InputError(f"grid {self.rows}x{self.cols} is too small for {n} genes")

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

    @property
    def n_iter(self) -> int:
        return self.params.n_iter

    @property
    def epsilon(self) -> float:
        return self.params.epsilon

    @property
    def seed(self) -> int:
        return self.params.seed

    @property
    def method(self) -> str:
        return self.params.method

    # -- fitting ----------------------------------------------------------------------------------
    @classmethod
    def fit(cls, data: Any, *, genes: Sequence[str] | None = None, layer: str | None = None,
            params: LayoutParams | None = None, **options) -> GenomapLayout:
        """Compute the coupling for ``data`` (rows x genes: array, DataFrame or AnnData [``layer``]).

        ``params`` / ``options``: :class:`LayoutParams` (``grid``, ``n_iter=200``, ``epsilon=0``, ``seed=0``,
        ``method="euclidean"``). Both methods use the gene-gene distance 1 - Pearson r over all rows and
        uniform marginals. ``"euclidean"`` couples it to the pixels' Euclidean distances (square loss, POT's
        ``ot.gromov.gromov_wasserstein``, at most ``n_iter`` iterations; it stops once an iteration gains less
        than :data:`LAYOUT_TOLERANCE`, after 14 on 1,000 genes of real data, 4 s on a 2-core machine, and 12 on
        2,000 genes, 17.5 s). ``"genomap"`` calls
        ``genomap.construct_genomap_returnT(data, rows, cols, epsilon, num_iter=n_iter)``, the published
        layout (its grid distances are differences of distances from the centre; KL loss), which runs all
        ``n_iter`` iterations (24-33 s for 100 on 1,000 genes) and also builds its own genomaps of every row
        (peak memory about 3 x rows x rows*cols x 8 bytes).
        The grid defaults to :func:`grid_shape`; it must hold all genes. Constant genes are replaced
        by noise from ``seed`` for the coupling only (see the package notes); otherwise the result
        is deterministic. Use :func:`fit_or_load` to cache it. ``meta["iterations"]`` holds the iterations
        run where the solver reports them.
        """
        params = LayoutParams.of(params, **options)
        x, names = _matrix_and_genes(data, genes, layer)
        n_rows, n_genes = x.shape
        if n_rows < 3:
            raise InputError(f"need at least 3 rows to correlate genes, got {n_rows}")
        if not np.isfinite(x).all():
            raise InputError("data contains NaN or infinite values")
        rows, cols = params.grid_for(n_genes)
        log.info("GenomapLayout.fit: %d rows x %d genes on a %dx%d grid, %s layout, at most %d iterations",
                 n_rows, n_genes, rows, cols, params.method, params.n_iter)
        T, seconds, iterations = _coupling(_fill_constant_genes(x, params.seed), rows, cols, params)
        log.info("GenomapLayout.fit: coupling done in %.1f s", seconds)
        names = names if names is not None else [f"gene{i}" for i in range(n_genes)]
        return cls(rows=rows, cols=cols, T=T, genes=names,
                   params=dataclasses.replace(params, n_iter=int(params.n_iter), epsilon=float(params.epsilon),
                                              seed=int(params.seed)),
                   fit_seconds=seconds, data_hash=_hash_matrix(x, {}), genomap_version=_genomap_version(),
                   meta={"iterations": iterations})

    # -- projection -------------------------------------------------------------------------------
    def transform(self, data: Any, *, layer: str | None = None, chunk_size: int = 4096) -> np.ndarray:
        """Genomaps of every row of ``data``: array (n_rows, rows, cols), float32.

        Each row ``x`` becomes ``x @ (T * rows * cols)`` padded with zeros to ``rows * cols`` and
        reshaped in genomap's column-major order. This equals the package's own output for every
        row, and also fills the last row, which the package leaves at zero.
        """
        x, names = _matrix_and_genes(data, None, layer)
        if x.shape[1] != self.n_genes:
            raise InputError(f"data has {x.shape[1]} genes, the layout {self.n_genes}")
        if names is not None and names != self.genes:
            raise InputError("the data's genes differ from the layout's genes (order matters)")
        proj = self.T * self.n_pixels
        flat = np.zeros((x.shape[0], self.n_pixels), dtype=np.float32)
        starts = range(0, x.shape[0], chunk_size)
        quiet = len(starts) < 4 or not settings.progress
        for s in tqdm(starts, desc="genomaps", leave=False, disable=quiet):
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
        table = pd.DataFrame({"gene": self.genes, "row": r.astype(int), "col": c.astype(int), "weight": weight})
        n_shared = int(table.duplicated(["row", "col"]).sum())
        if n_shared:
            log.warning("gene_table: %d gene(s) share a pixel with another gene", n_shared)
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
        """Write ``layout.json`` (grid, genes, parameters) and ``coupling.npz`` (T) into ``directory``,
        each atomically (:mod:`scmedal_lite.io`). No pickle is used."""
        d = Path(directory)
        write_npz(d / "coupling.npz", compressed=True, T=self.T)
        info = {"format": _LAYOUT_FORMAT, "rows": self.rows, "cols": self.cols, "genes": self.genes,
                "n_iter": self.n_iter, "epsilon": self.epsilon, "seed": self.seed, "method": self.method,
                "fit_seconds": self.fit_seconds, "data_hash": self.data_hash,
                "genomap_version": self.genomap_version, "meta": self.meta}
        write_json(d / "layout.json", info, indent=2)
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> GenomapLayout:
        """Read a layout written by :meth:`save`."""
        d = Path(directory)
        info = json.loads((d / "layout.json").read_text())
        if info.get("format") != _LAYOUT_FORMAT:
            raise InputError(f"unsupported layout format {info.get('format')!r} in {d}")
        with np.load(d / "coupling.npz", allow_pickle=False) as z:
            T = z["T"]
        # layouts saved before "method" existed were all genomap's
        params = LayoutParams(n_iter=int(info["n_iter"]), epsilon=float(info["epsilon"]), seed=int(info["seed"]),
                              method=str(info.get("method", "genomap")))
        return cls(rows=int(info["rows"]), cols=int(info["cols"]), T=T, genes=info["genes"], params=params,
                   fit_seconds=float("nan") if info["fit_seconds"] is None else float(info["fit_seconds"]),
                   data_hash=info.get("data_hash", ""), genomap_version=info.get("genomap_version", ""),
                   meta=info.get("meta", {}))


def layout_locality(layout: GenomapLayout, data: Any, *, layer: str | None = None, n_pairs: int = 5000) -> dict:
    """Does ``layout`` put co-expressed genes next to each other? Measured on ``data`` (rows x genes in the
    layout's gene order; array, DataFrame or AnnData [``layer``]), with each gene at its pixel (the argmax of
    its row of ``T``, as in :meth:`GenomapLayout.gene_table`).

    Returns a dict: ``top_pairs_distance``, the mean pixel distance between the ``n_pairs`` most correlated
    gene pairs; ``all_pairs_distance``, the mean over all gene pairs, which is also what any random placement
    of the genes on the same pixels gives the top pairs on average; ``ratio``, the first over the second
    (1: no better than random; smaller: co-expressed genes sit closer); ``spearman``, the rank correlation
    between the genes' distances (1 - r) and their pixels' distances over all pairs.

    >>> layout_locality(layout, stack.layers["zscore"])["ratio"]      # doctest: +SKIP
    0.29
    """
    from scipy.stats import spearmanr

    x, _ = _matrix_and_genes(data, None, layer)
    if x.shape[1] != layout.n_genes:
        raise InputError(f"data has {x.shape[1]} genes, the layout {layout.n_genes}")
    if layout.n_genes < 2:
        raise InputError("layout_locality needs at least 2 genes")
    with np.errstate(invalid="ignore", divide="ignore"):
        genes = np.nan_to_num(gene_distances(x), nan=1.0)      # a constant gene: uncorrelated with all
    upper = np.triu_indices(layout.n_genes, 1)
    pixels = _distances(pixel_coordinates(layout.rows, layout.cols)[layout.T.argmax(axis=1)])[upper]
    gene_pairs = genes[upper]
    top = np.argsort(gene_pairs, kind="stable")[:max(1, min(int(n_pairs), gene_pairs.size))]
    mean_all = float(pixels.mean())
    return {"top_pairs_distance": float(pixels[top].mean()), "all_pairs_distance": mean_all,
            "ratio": float(pixels[top].mean()) / mean_all, "spearman": float(spearmanr(gene_pairs, pixels)[0]),
            "n_pairs": int(top.size)}


# ---------------------------------------------------------------------------------------------- cache

def layout_cache_key(data: Any, *, genes: Sequence[str] | None = None, layer: str | None = None,
                     params: LayoutParams | None = None, **options) -> str:
    """SHA-256 over the data (as float64), gene names, grid, :class:`LayoutParams` (method included), genomap
    version, :func:`emd_iterations` and :data:`LAYOUT_TOLERANCE` (a layout cached under other solver settings is
    fitted again)."""
    params = LayoutParams.of(params, **options)
    x, names = _matrix_and_genes(data, genes, layer)
    rows, cols = params.grid if params.grid is not None else grid_shape(x.shape[1])
    extra = {"genes": names, "grid": [int(rows), int(cols)], "n_iter": int(params.n_iter),
             "epsilon": float(params.epsilon), "seed": int(params.seed), "method": params.method,
             "genomap": _genomap_version(), "emd_iterations": emd_iterations(x.shape[1]),
             "tolerance": LAYOUT_TOLERANCE,
             "format": _LAYOUT_FORMAT}
    return _hash_matrix(x, extra)


def fit_or_load(cache_dir: str | os.PathLike, data: Any, *, genes: Sequence[str] | None = None,
                layer: str | None = None, params: LayoutParams | None = None, **options) -> GenomapLayout:
    """:meth:`GenomapLayout.fit`, cached in ``cache_dir/layout-<key>`` where ``key`` hashes the data
    and every parameter (:func:`layout_cache_key`). A second call with the same inputs loads the
    saved coupling instead of recomputing it; an unreadable cache entry is refitted. The entry is
    written to a temporary folder and swapped into place in one step (:func:`scmedal_lite.io.atomic_dir`),
    so a crash never leaves a partial entry and a reader never sees a missing one.
    """
    params = LayoutParams.of(params, **options)
    key = layout_cache_key(data, genes=genes, layer=layer, params=params)
    target = Path(cache_dir) / f"layout-{key[:20]}"
    if target.is_dir():
        try:
            layout = GenomapLayout.load(target)
            log.info("fit_or_load: using cached layout %s", target)
            layout.meta["cache_hit"] = True
            return layout
        except Exception as exc:  # corrupt or old entry: refit
            log.warning("fit_or_load: cache entry %s unreadable (%s); refitting", target, exc)
    layout = GenomapLayout.fit(data, genes=genes, layer=layer, params=params)
    layout.meta["cache_key"] = key
    try:
        with atomic_dir(target, overwrite=True) as tmp:   # replaces a stale entry (or a concurrent writer's)
            layout.save(tmp)
    except OSError as exc:
        log.warning("fit_or_load: could not store the layout in %s (%s)", target, exc)
    layout.meta["cache_hit"] = False
    return layout
