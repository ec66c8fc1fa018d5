"""Scores for latent embeddings: cluster separation, batch mixing, and fold summaries.

Two families of hand-written scores are computed by :func:`score_embeddings`, all on the raw embedding (for
example the 50-d latent of a model or PCA-50), never on a UMAP. For the standard scIB benchmark, computed by
the maintained ``scib-metrics`` package, use :func:`scib_benchmark` (the optional extra ``[scib]``).

* **The paper's scores** (method.md section 3.1), each for the batch labels and for the cell-type labels:

  ``asw``
      mean silhouette width, :func:`sklearn.metrics.silhouette_score` (Euclidean), in [-1, 1].
  ``inv_db``
      ``1 / davies_bouldin_score``; higher means tighter, better separated groups.
  ``ch``
      :func:`sklearn.metrics.calinski_harabasz_score`; higher means better separated groups.

  High batch scores mean the batch is visible in the embedding (bad for a corrected latent, the goal for a
  random-effects latent).

* **Mixing and conservation scores**, higher is better for all but the kNN fractions. Two follow scIB's
  definitions (Luecken et al. 2022) exactly and carry ``_scib`` in their names; the others are this
  package's own and are *not* scIB's metrics, whatever they resemble:

  ``batch_asw_scib`` (label ``batch``)
      scIB's batch ASW: within each cell type, silhouette of the cells on their batch labels, ``s -> 1 - |s|``,
      averaged per cell type, then over cell types. 1 means batches are perfectly mixed inside every cell
      type. Cell types seen in a single batch (or with one cell per batch) are skipped, as scIB does. Without
      cell-type labels all cells form one group. Equal to ``scib_metrics.silhouette_batch``; the
      ``scib-metrics`` Benchmarker no longer uses it as its batch silhouette (it uses BRAS since 0.5.x).
  ``celltype_asw_scib`` (label ``celltype``)
      scIB's label silhouette, ``(asw + 1) / 2`` on the cell-type labels (``scib_metrics.silhouette_label``).
  ``knn_inv_simpson`` (label ``batch``)
      scaled inverse Simpson index of the batch labels among each cell's ``n_neighbors`` (15 by default)
      nearest neighbours, **unweighted, the cell itself excluded**: ``1 / sum_b p_b**2`` per cell, the median
      over cells, scaled as ``(median - 1) / (n_batches - 1)``. 0 means every neighbourhood holds a single
      batch. It is *not* scIB's iLISI: iLISI weights 90 neighbours with a Gaussian kernel of perplexity 30.
      The index of k unweighted neighbours cannot exceed ``min(k, n_batches)``, so the score is capped at
      ``(min(k, n_batches) - 1) / (n_batches - 1)``: about 0.23 with 15 neighbours and 63 batches, however
      well the batches mix. Compare with ``knn_batch_fraction`` there. (Called ``ilisi`` in earlier versions.)
  ``knn_batch_fraction`` (label ``batch``)
      mean fraction of a cell's ``n_neighbors`` nearest neighbours (itself excluded) that share its batch.
  ``knn_batch_fraction_expected`` (label ``batch``)
      the value of ``knn_batch_fraction`` under perfect mixing, ``sum_b p_b (n_b - 1) / (n - 1)``.
      Compare the two: a ratio near 1 means mixed, near ``1 / expected`` means fully separated.
  ``nmi``, ``ari`` (label ``celltype``)
      normalized mutual information and adjusted Rand index between the cell-type labels and a KMeans
      clustering of the embedding with as many clusters as cell types (``n_init=10, random_state=seed``).
      scIB clusters with Leiden at the resolution that maximises NMI; the ``scib-metrics`` 0.5 Benchmarker
      also uses KMeans by default (its own implementation), so values are close to, not equal to, its.
  ``lite_overall`` (label ``overall``)
      this package's aggregate of five of the scores above,
      ``0.4 * mean(batch_asw_scib, knn_inv_simpson) + 0.6 * mean(celltype_asw_scib, nmi, ari)``. It borrows
      scIB's 0.4 / 0.6 weighting but **is not scIB's overall score**: scIB averages ten metrics (five for
      batch correction, five for bio conservation; :func:`scib_benchmark` gives them), and
      ``knn_inv_simpson`` is capped well below 1 when there are more batches than neighbours.
      (Called ``scib_overall`` in earlier versions.)

The old names ``ilisi`` and ``scib_overall`` are still accepted in ``metrics=`` (with a ``FutureWarning``);
the rows carry the new names.

All embeddings are scored on the same seeded subsample of cells, so their scores are comparable.

Example
-------
>>> import numpy as np
>>> from scmedal_lite import metrics
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(300, 10))
>>> batch = rng.integers(0, 3, 300)
>>> celltype = rng.integers(0, 4, 300)
>>> df = metrics.score_embeddings({"PCA": X}, batch, celltype, metrics=["asw", "knn_inv_simpson"])
>>> list(df.columns)
['embedding', 'metric', 'label', 'value']
>>> df[["metric", "label"]].values.tolist()
[['asw', 'batch'], ['asw', 'celltype'], ['knn_inv_simpson', 'batch']]
"""

from __future__ import annotations

import contextlib
import logging
import time
import types
import warnings
from collections.abc import Mapping, Sequence
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_samples,
)
from sklearn.neighbors import NearestNeighbors

from .validate import InputError

log = logging.getLogger(__name__)

__all__ = [
    "METRICS",
    "batch_variance_share",
    "format_table",
    "knn_same_batch_fraction",
    "scib_benchmark",
    "score_embeddings",
    "subsample_indices",
    "summarize_folds",
    "within_batch_neighbours_kept",
]

#: Scores computed for both the batch and the cell-type labels.
PAPER_METRICS = ("asw", "inv_db", "ch")
#: Scores about batch mixing (label ``batch``).
BATCH_METRICS = ("batch_asw_scib", "knn_inv_simpson", "knn_batch_fraction", "knn_batch_fraction_expected")
#: Scores that need cell-type labels (label ``celltype``, or ``overall`` for the aggregate).
LABEL_METRICS = ("celltype_asw_scib", "nmi", "ari", "lite_overall")
#: Every metric name :func:`score_embeddings` accepts, in the order it reports them.
METRICS = PAPER_METRICS + BATCH_METRICS + LABEL_METRICS

OVERALL_LABEL = "overall"
#: Old metric names, still accepted by :func:`score_embeddings` (with a FutureWarning): they named scIB's
#: metrics but computed something else (see the module docstring).
RENAMED = {"ilisi": "knn_inv_simpson", "scib_overall": "lite_overall"}


# ----------------------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------------------


def _as_embedding(X, name: str = "embedding") -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"{name} must be a 2-D array (cells x dimensions), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise InputError(f"{name} contains NaN or infinite values ({int((~np.isfinite(X)).sum())} entries)")
    return X


def _codes(values, what: str, n: int) -> np.ndarray:
    """Integer codes 0..K-1 for a label vector, after checking its length and missing values."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise InputError(f"{what} must be one-dimensional, got shape {values.shape}")
    if len(values) != n:
        raise InputError(f"{what} has {len(values)} entries but the embeddings have {n} cells")
    codes, _ = pd.factorize(values)
    if (codes < 0).any():
        raise InputError(f"{what} contains {int((codes < 0).sum())} missing values")
    return codes


def _require_groups(codes: np.ndarray, what: str, where: str = "") -> None:
    k = len(np.unique(codes))
    if k < 2:
        raise InputError(f"{what} needs at least 2 distinct values{where}, found {k}")


def subsample_indices(n: int, sample_size: int | None = 10_000, seed: int = 0) -> np.ndarray:
    """Sorted indices of the cells that :func:`score_embeddings` scores.

    All ``n`` cells when ``sample_size`` is None or ``n <= sample_size``; otherwise ``sample_size`` cells
    drawn without replacement with ``np.random.default_rng(seed)``.

    >>> subsample_indices(5, 10).tolist()
    [0, 1, 2, 3, 4]
    >>> len(subsample_indices(100, 10, seed=1))
    10
    """
    if sample_size is None or n <= sample_size:
        return np.arange(n)
    if sample_size < 2:
        raise InputError(f"sample_size must be at least 2, got {sample_size}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(sample_size), replace=False))


# ----------------------------------------------------------------------------------------------------------
# neighbourhood scores
# ----------------------------------------------------------------------------------------------------------


def _knn_indices(X: np.ndarray, k: int) -> np.ndarray:
    """Indices (n, k) of each cell's k nearest neighbours (Euclidean), the cell itself excluded."""
    n = X.shape[0]
    if not 1 <= k < n:
        raise InputError(f"n_neighbors must be between 1 and n_cells - 1 = {n - 1}, got {k}")
    nn = NearestNeighbors(n_neighbors=k).fit(X)
    # kneighbors() without a query excludes each point from its own neighbours, duplicates included.
    return nn.kneighbors(return_distance=False)


def _same_batch_fraction(indices: np.ndarray, codes: np.ndarray) -> float:
    return float((codes[indices] == codes[:, None]).mean())


def _expected_same_batch_fraction(codes: np.ndarray) -> float:
    n = len(codes)
    n_b = np.bincount(codes).astype(np.float64)
    return float(np.sum(n_b / n * (n_b - 1) / (n - 1)))


def _knn_inv_simpson(indices: np.ndarray, codes: np.ndarray) -> float:
    """Median unweighted inverse Simpson index of the neighbours' batches, scaled to [0, 1] by the batch count."""
    nb = codes[indices]  # (n, k) batch of each neighbour
    k = nb.shape[1]
    # sum_b c_b^2 = number of ordered neighbour pairs (i, j), i == j included, that share a batch.
    simpson = (nb[:, :, None] == nb[:, None, :]).sum(axis=(1, 2)) / k**2
    n_batches = len(np.unique(codes))
    return float((np.median(1.0 / simpson) - 1.0) / (n_batches - 1))


def knn_same_batch_fraction(X, batch, k: int = 15) -> tuple[float, float]:
    """Observed and expected fraction of nearest neighbours that share a cell's batch.

    ``observed`` is the mean over cells of the fraction of its ``k`` nearest neighbours (Euclidean, the cell
    itself excluded) from its own batch; ``expected`` is that fraction under perfect mixing,
    ``sum_b p_b (n_b - 1) / (n - 1)``. Observed close to expected means well mixed batches; close to 1 means
    the batches sit apart.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 5))
    >>> obs, exp = knn_same_batch_fraction(X, np.repeat([0, 1], 100), k=10)
    >>> round(exp, 3)
    0.497
    """
    X = _as_embedding(X)
    codes = _codes(batch, "batch", X.shape[0])
    _require_groups(codes, "batch")
    idx = _knn_indices(X, int(k))
    return _same_batch_fraction(idx, codes), _expected_same_batch_fraction(codes)


def within_batch_neighbours_kept(X, reference, batch, k: int = 15) -> float:
    """Fraction of each cell's ``k`` nearest neighbours *within its own batch* in ``reference`` (e.g. the PCA of
    the expression) that are still among its ``k`` within-batch neighbours in ``X``, averaged over cells.

    A label-free check against over-correction: a batch effect moves a batch as a whole, so the neighbours a
    cell has inside its own batch reflect its biology. Integration should mix batches while keeping these;
    a method that merges distinct cell types to mix batches loses them. 1 when every batch's neighbourhoods
    are kept; about ``k / n_b`` for an embedding unrelated to the reference.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref, batch = rng.normal(size=(200, 5)), np.repeat([0, 1], 100)
    >>> shifted = ref + 10 * batch[:, None]                          # batches moved, neighbourhoods kept
    >>> within_batch_neighbours_kept(shifted, ref, batch, k=10)
    1.0
    >>> within_batch_neighbours_kept(rng.normal(size=(200, 5)), ref, batch, k=10) < 0.3
    True
    """
    X, reference = _as_embedding(X), _as_embedding(reference)
    if reference.shape[0] != X.shape[0]:
        raise InputError(f"reference has {reference.shape[0]} cells and the embedding {X.shape[0]}; pass both "
                         "for the same cells, in the same order.")
    codes = _codes(batch, "batch", X.shape[0])
    kept, counted = 0.0, 0
    for b in np.unique(codes):
        cells = np.flatnonzero(codes == b)
        if len(cells) < 2:
            continue
        kk = min(int(k), len(cells) - 1)
        ours, theirs = _knn_indices(X[cells], kk), _knn_indices(reference[cells], kk)
        kept += sum(len(set(a) & set(t)) / kk for a, t in zip(ours, theirs))
        counted += len(cells)
    if counted == 0:
        raise InputError("Every batch has a single cell: there are no within-batch neighbours to compare.")
    return float(kept / counted)


def _sums_by(codes: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows per code and the column sums of ``X``'s rows per code (codes ``0..K-1``)."""
    counts = np.bincount(codes).astype("float64")
    sums = np.zeros((counts.size, X.shape[1]))
    np.add.at(sums, codes, X)
    return counts, sums


def batch_variance_share(X, batch, groups=None) -> float:
    """Share of an embedding's total variance that its batches' means explain (the ``R²`` of every dimension
    regressed on the batch, pooled over dimensions): 0 when every batch has the same mean, 1 when each batch is a
    single point.

    A label-free check of the linear batch effect an embedding keeps, the quantity behind scIB's
    principal-component regression score (which weighs it per principal component). Batches that differ in
    cell-type make-up keep some of it after a correct integration, so compare embeddings of the same cells.
    Under no batch effect it is about ``(batches - 1) / (cells - 1)``.

    ``groups`` (e.g. cell types) gives the share *within* groups instead: each group is centred on its own mean
    and its batches' means are taken within it, so the make-up of the batches no longer counts, only how far
    a batch's cells of one group sit from the other batches' cells of that group.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, batch = rng.normal(size=(1000, 3)), np.repeat([0, 1], 500)
    >>> round(batch_variance_share(x, batch), 2), round(batch_variance_share(x + 4 * batch[:, None], batch), 2)
    (0.0, 0.8)
    >>> kind = np.tile([0, 1], 500)                      # two groups, both in both batches
    >>> round(batch_variance_share(x + 4 * kind[:, None], batch, groups=kind), 2)
    0.0
    """
    X = _as_embedding(X).astype("float64")
    codes = _codes(batch, "batch", X.shape[0])
    if groups is None:
        centred = X - X.mean(axis=0)
    else:
        group_codes = _codes(groups, "groups", X.shape[0])
        counts, sums = _sums_by(group_codes, X)
        centred = X - (sums / np.maximum(counts, 1.0)[:, None])[group_codes]
        codes = group_codes * (codes.max() + 1) + codes          # a batch's cells of one group
    counts, sums = _sums_by(codes, centred)
    between = float(np.sum(sums ** 2 / np.maximum(counts, 1.0)[:, None]))
    total = float(np.sum(centred ** 2))
    if total == 0.0:
        raise InputError("The embedding is constant: it has no variance to attribute to batches.")
    return between / total


# ----------------------------------------------------------------------------------------------------------
# scoring one embedding
# ----------------------------------------------------------------------------------------------------------


def _batch_asw_scib(X: np.ndarray, batch: np.ndarray, labels: np.ndarray | None) -> float:
    groups = np.zeros(len(batch), dtype=int) if labels is None else labels
    per_group = []
    for g in np.unique(groups):
        mask = groups == g
        n_b = len(np.unique(batch[mask]))
        if n_b == 1 or n_b == mask.sum():  # silhouette undefined: scIB skips these cell types
            continue
        s = silhouette_samples(X[mask], batch[mask], metric="euclidean")
        per_group.append(np.mean(1.0 - np.abs(s)))
    if not per_group:
        warnings.warn("batch_asw_scib: no cell type holds cells from 2 or more batches; returning NaN",
                      stacklevel=3)
        return float("nan")
    return float(np.mean(per_group))


class _Scorer:
    """Lazily computed, shared pieces (silhouettes, kNN graph, clustering) for one embedding."""

    def __init__(self, X, batch, labels, n_neighbors, seed):
        self.X, self.batch, self.labels = X, batch, labels
        self.n_neighbors, self.seed = n_neighbors, seed

    def _codes_for(self, which):
        return self.batch if which == "batch" else self.labels

    @cached_property
    def sil_batch(self):
        return silhouette_samples(self.X, self.batch, metric="euclidean")

    @cached_property
    def sil_labels(self):
        return silhouette_samples(self.X, self.labels, metric="euclidean")

    @cached_property
    def knn(self):
        return _knn_indices(self.X, self.n_neighbors)

    @cached_property
    def clusters(self):
        k = len(np.unique(self.labels))
        km = KMeans(n_clusters=k, n_init=10, random_state=self.seed)
        return km.fit_predict(self.X)

    def paper(self, metric, which):
        codes = self._codes_for(which)
        if metric == "asw":
            return float(np.mean(self.sil_batch if which == "batch" else self.sil_labels))
        if metric == "inv_db":
            return float(1.0 / davies_bouldin_score(self.X, codes))
        return float(calinski_harabasz_score(self.X, codes))

    def mixing(self, metric):
        if metric == "batch_asw_scib":
            return _batch_asw_scib(self.X, self.batch, self.labels)
        if metric == "knn_inv_simpson":
            return _knn_inv_simpson(self.knn, self.batch)
        if metric == "knn_batch_fraction":
            return _same_batch_fraction(self.knn, self.batch)
        if metric == "knn_batch_fraction_expected":
            return _expected_same_batch_fraction(self.batch)
        if metric == "celltype_asw_scib":
            return float((np.mean(self.sil_labels) + 1.0) / 2.0)
        if metric == "nmi":
            return float(normalized_mutual_info_score(self.labels, self.clusters))
        if metric == "ari":
            return float(adjusted_rand_score(self.labels, self.clusters))
        if metric == "lite_overall":
            batch_score = np.mean([self.mixing("batch_asw_scib"), self.mixing("knn_inv_simpson")])
            bio_score = np.mean([self.mixing(m) for m in ("celltype_asw_scib", "nmi", "ari")])
            return float(0.4 * batch_score + 0.6 * bio_score)
        raise AssertionError(metric)  # pragma: no cover


def _resolve_metrics(metrics, have_labels: bool) -> list[str]:
    if metrics is None:
        return [m for m in METRICS if have_labels or m not in LABEL_METRICS]
    if isinstance(metrics, str):
        metrics = [metrics]
    old = [m for m in metrics if m in RENAMED]
    if old:
        warnings.warn(f"metric name(s) {old} are deprecated; they are reported as "
                      f"{[RENAMED[m] for m in old]} (they are not scIB's iLISI and overall score).",
                      FutureWarning, stacklevel=3)
    metrics = list(dict.fromkeys(RENAMED.get(m, m) for m in metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {unknown}; valid names are {list(METRICS)}")
    if not have_labels:
        need = [m for m in metrics if m in LABEL_METRICS]
        if need:
            raise InputError(f"metric(s) {need} need cell-type labels, but labels is None")
    return metrics


def score_embeddings(
    embeddings: Mapping[str, np.ndarray],
    batch,
    labels=None,
    *,
    metrics: Sequence[str] | None = None,
    sample_size: int | None = 10_000,
    seed: int = 0,
    n_neighbors: int = 15,
    batch_name: str = "batch",
    label_name: str = "celltype",
) -> pd.DataFrame:
    """Score several embeddings of the same cells on one shared, seeded subsample.

    Parameters
    ----------
    embeddings
        ``{name: array (n_cells, n_dims)}``, all with the same cells in the same order.
    batch, labels
        Per-cell batch and cell-type labels (any hashable values). ``labels=None`` gives the batch scores
        only.
    metrics
        Names from :data:`METRICS` (see the module docstring); None means all (all that apply without labels).
    sample_size, seed
        Score ``sample_size`` cells drawn without replacement with ``np.random.default_rng(seed)`` (all cells
        if there are fewer, or if None). The same cells are used for every embedding and every metric;
        :func:`subsample_indices` returns them.
    n_neighbors
        Neighbourhood size for ``knn_inv_simpson`` and ``knn_batch_fraction``.
    batch_name, label_name
        Values written in the ``label`` column for scores on the batch and on the cell-type labels.

    Returns
    -------
    pandas.DataFrame
        Tidy table with columns ``embedding, metric, label, value``: one row per embedding, metric and label.
        ``asw``, ``inv_db`` and ``ch`` get a row for each label; ``lite_overall`` has label ``"overall"``.

    Example
    -------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 20))
    >>> batch = rng.choice(["s1", "s2", "s3"], 400)
    >>> celltype = rng.choice(["T", "B"], 400)
    >>> df = score_embeddings({"raw": X, "first5": X[:, :5]}, batch, celltype, sample_size=300)
    >>> df.pivot_table(index="embedding", columns=["metric", "label"], values="value").shape
    (2, 14)
    """
    if not isinstance(embeddings, Mapping) or not embeddings:
        raise InputError("embeddings must be a non-empty mapping {name: array}, e.g. {'PCA': X}")
    arrays = {str(name): _as_embedding(X, f"embedding {name!r}") for name, X in embeddings.items()}
    sizes = {name: X.shape[0] for name, X in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise InputError(f"embeddings have different numbers of cells: {sizes}")
    n = next(iter(sizes.values()))

    batch_codes = _codes(batch, "batch", n)
    _require_groups(batch_codes, "batch")
    label_codes = None
    if labels is not None:
        label_codes = _codes(labels, "labels", n)
        _require_groups(label_codes, "labels")
    chosen = _resolve_metrics(metrics, labels is not None)

    idx = subsample_indices(n, sample_size, seed)
    b = pd.factorize(batch_codes[idx])[0]
    _require_groups(b, "batch", " in the subsample")
    lab = None
    if label_codes is not None:
        lab = pd.factorize(label_codes[idx])[0]
        _require_groups(lab, "labels", " in the subsample")

    rows = []
    for name, X in arrays.items():
        scorer = _Scorer(X[idx], b, lab, int(n_neighbors), seed)
        for metric in chosen:
            if metric in PAPER_METRICS:
                for which, label in (("batch", batch_name), ("labels", label_name)):
                    if which == "labels" and lab is None:
                        continue
                    rows.append((name, metric, label, scorer.paper(metric, which)))
            else:
                if metric in BATCH_METRICS:
                    label = batch_name
                elif metric == "lite_overall":
                    label = OVERALL_LABEL
                else:
                    label = label_name
                rows.append((name, metric, label, scorer.mixing(metric)))
    return pd.DataFrame(rows, columns=["embedding", "metric", "label", "value"])


# ----------------------------------------------------------------------------------------------------------
# the standard scIB benchmark (scib-metrics, optional)
# ----------------------------------------------------------------------------------------------------------

#: How to install the optional scib-metrics package (and the jax it needs).
SCIB_INSTALL = 'pip install "scmedal_lite[scib]"'
#: The aggregate columns of :func:`scib_benchmark`, as scib-metrics names them.
SCIB_AGGREGATES = ("Batch correction", "Bio conservation", "Total")
#: Neighbourhood sizes the Benchmarker uses (15: graph connectivity; 50: kBET; 90: iLISI and cLISI).
SCIB_NEIGHBORS = 90


def _import_benchmarker():
    """scib-metrics' ``Benchmarker`` and its neighbour module, imported only now (they import jax at once)."""
    try:
        from scib_metrics import nearest_neighbors
        from scib_metrics.benchmark import Benchmarker
    except ImportError as err:
        raise ImportError(
            f"scib_benchmark needs the optional package scib-metrics (with jax), which could not be imported "
            f"({err}). Install it with `{SCIB_INSTALL}` (scib-metrics 0.5.10 and jax 0.10.2 on Python 3.11); "
            "the package's own scores (sm.metrics.score_embeddings) need neither.") from err
    return Benchmarker, nearest_neighbors


def _exact_neighbors(nearest_neighbors, n_jobs: int):
    """A stand-in for scib-metrics' ``pynndescent(X, n_neighbors, ...)``: exact Euclidean kNN (sklearn), each
    cell its own first neighbour, as a ``NeighborsResults``."""

    def compute(X, n_neighbors, **_):          # pynndescent's random_state and n_jobs do not apply
        nn = NearestNeighbors(n_neighbors=int(n_neighbors), n_jobs=n_jobs).fit(X)
        distances, indices = nn.kneighbors(X)
        return nearest_neighbors.NeighborsResults(indices=indices, distances=distances)

    return compute


@contextlib.contextmanager
def _scib_quiet(quiet: bool):
    """Inside, scib-metrics logs warnings only (not one line per cell type that kBET skips)."""
    logger = logging.getLogger("scib_metrics")
    level = logger.level
    if quiet:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _benchmarker_collections_skipped():
    """Inside, scib-metrics' Benchmarker does not force full garbage collections.

    The Benchmarker calls ``gc.collect()`` before every metric of every embedding (31 times for three
    embeddings). In a process that has imported TensorFlow, scanpy and the data (every chapter's kernel), a
    full collection walks millions of objects: a three-embedding benchmark of 1,000 cells took 40.0 s with them
    and 28.6 s without (15.4 and 4.1 s when repeated in the same process; ``benchmarks/results/scib_gc.md``,
    from ``benchmarks/scib_first_call.py``). Inside, those calls do nothing. Python's automatic collections
    still run, and arrays are still freed as soon as nothing refers to them, so only reference cycles wait for
    the next automatic collection. The scores are unchanged.
    """
    from scib_metrics.benchmark import _core

    original = _core.gc
    _core.gc = types.SimpleNamespace(collect=lambda *args: 0)
    try:
        yield
    finally:
        _core.gc = original


@contextlib.contextmanager
def _umap_graph_in_numpy(nearest_neighbors):
    """Inside, scib-metrics builds UMAP's fuzzy graph (kBET's input) with :func:`knn_graph.umap_graph`.

    Its own call, umap-learn's ``fuzzy_simplicial_set``, compiles numba code in every new process (4–7 s on
    2 CPUs, inside chapter 1's scIB benchmark) for a graph that takes milliseconds. The weights agree to within
    a few 10⁻⁶ and the edges are the same (``tests/test_knn_graph.py``); every score came out the same on 3,000
    and 6,107 COVID cells (``book/performance.md``) and on planted data (``tests/test_scib_benchmark.py``).
    Calls other than from a precomputed kNN with the defaults scib-metrics uses go to umap-learn.
    """
    from . import knn_graph

    module = nearest_neighbors._dataclass
    original = module.fuzzy_simplicial_set

    def fuzzy_simplicial_set(X, n_neighbors, random_state, metric, *args, knn_indices=None, knn_dists=None,
                             set_op_mix_ratio=1.0, local_connectivity=1.0, **kwargs):
        if args or kwargs or knn_indices is None or knn_dists is None or set_op_mix_ratio != 1.0 \
                or local_connectivity != 1.0:
            return original(X, n_neighbors, random_state, metric, *args, knn_indices=knn_indices,
                            knn_dists=knn_dists, set_op_mix_ratio=set_op_mix_ratio,
                            local_connectivity=local_connectivity, **kwargs)
        return knn_graph.umap_graph(knn_indices, knn_dists, n_neighbors)

    module.fuzzy_simplicial_set = fuzzy_simplicial_set
    try:
        yield
    finally:
        module.fuzzy_simplicial_set = original


@contextlib.contextmanager
def _neighbors_used(nearest_neighbors, compute):
    """Inside, scib-metrics' kBET finds its diffusion-map neighbours with ``compute`` (None: unchanged)."""
    if compute is None:
        yield
        return
    original = nearest_neighbors.pynndescent
    nearest_neighbors.pynndescent = compute
    try:
        yield
    finally:
        nearest_neighbors.pynndescent = original


def _obsm_matrix(adata, key: str, rows: np.ndarray) -> np.ndarray:
    if key not in adata.obsm:
        raise InputError(f"{key!r} is not a key of adata.obsm; keys are {list(adata.obsm.keys())}")
    return _as_embedding(np.asarray(adata.obsm[key])[rows], f"adata.obsm[{key!r}]").astype(np.float32)


def _pre_integrated(adata, rows: np.ndarray, seed: int) -> np.ndarray:
    """PCA (50 components, or fewer when the data are smaller) of ``adata.X`` on ``rows``, seeded."""
    import scanpy as sc
    from scipy import sparse

    if adata.X is None:
        raise InputError("adata.X is empty: pass pre_integrated_key (an obsm key of an unintegrated "
                         "embedding, e.g. a PCA) or fill adata.X with normalised expression.")
    X = adata.X[rows]
    X = X.astype(np.float32) if sparse.issparse(X) else np.asarray(X, dtype=np.float32)
    n_comps = min(50, X.shape[0] - 1, X.shape[1] - 1)
    if n_comps < 1:
        raise InputError(f"adata.X of shape {X.shape} is too small for a PCA; pass pre_integrated_key.")
    return sc.pp.pca(X, n_comps=n_comps, svd_solver="arpack", random_state=seed).astype(np.float32)


def _scib_input(adata, obsm_keys, batch_key, labels_key, pre_integrated_key, subsample, seed):
    """The small AnnData the Benchmarker runs on: the chosen cells, two obs columns, the embeddings."""
    import anndata

    from .validate import check_obs_key

    if not isinstance(adata, anndata.AnnData):
        raise InputError(f"adata must be an AnnData, got {type(adata).__name__}")
    keys = [obsm_keys] if isinstance(obsm_keys, str) else [str(k) for k in obsm_keys]
    if not keys or len(set(keys)) != len(keys):
        raise InputError(f"obsm_keys must name one or more distinct adata.obsm keys, got {keys}")
    for key, role in ((batch_key, "batch_key"), (labels_key, "labels_key")):
        check_obs_key(adata, key, role=role)
    rows = subsample_indices(adata.n_obs, subsample, seed)
    if len(rows) <= SCIB_NEIGHBORS:
        raise InputError(f"scib_benchmark needs more than {SCIB_NEIGHBORS} cells (its iLISI and cLISI use "
                         f"{SCIB_NEIGHBORS} neighbours); got {len(rows)}.")
    obs = pd.DataFrame(index=adata.obs_names[rows].astype(str))
    for key, what in ((batch_key, "batch"), (labels_key, "labels")):
        codes = _codes(adata.obs[key].to_numpy()[rows], f"{what} ({key!r})", len(rows))
        _require_groups(codes, f"{what} ({key!r})", " among the cells scored")
        obs[key] = pd.Categorical(adata.obs[key].astype(str).to_numpy()[rows])
    small = anndata.AnnData(obs=obs)
    for key in keys:
        small.obsm[key] = _obsm_matrix(adata, key, rows)
    pre = "_scib_pre_integrated"
    small.obsm[pre] = (_obsm_matrix(adata, pre_integrated_key, rows) if pre_integrated_key is not None
                       else _pre_integrated(adata, rows, seed))
    return small, keys, pre


def scib_benchmark(adata, obsm_keys: Sequence[str] | str, batch_key: str, labels_key: str, *,
                   pre_integrated_key: str | None = None, n_jobs: int = 1, subsample: int | None = None,
                   seed: int = 0, exact_neighbors: bool = True, tidy: bool = False,
                   progress: bool = False) -> pd.DataFrame:
    """The standard scIB benchmark of several embeddings, by the maintained ``scib-metrics`` package.

    Wraps ``scib_metrics.benchmark.Benchmarker`` with its default metrics (scib-metrics 0.5.10): for **batch
    correction** BRAS (the batch silhouette it now uses), iLISI, kBET, graph connectivity and PCR
    comparison; for **bio conservation** isolated labels, KMeans NMI and ARI, silhouette label and cLISI.
    ``Batch correction`` and ``Bio conservation`` are the means of their five metrics and
    ``Total = 0.4 * Batch correction + 0.6 * Bio conservation``, all **unscaled**
    (``get_results(min_max_scale=False)``), so a method's scores do not depend on which others are in the
    table. Needs the optional extra: ``pip install "scmedal_lite[scib]"`` (else :class:`ImportError`).

    When ``pre_integrated_key`` is None the unintegrated reference for PCR comparison is a seeded PCA
    (50 components, ARPACK, ``random_state=seed``) of ``adata.X`` on the scored cells, as the Benchmarker
    computes it (from all of ``adata.X``, not only highly variable genes). scib-metrics sets a negative PCR
    comparison (more batch variance after integration than before) to 0; its warning about it is silenced.
    The first call in a process spends about a minute compiling jax functions (more on a busy machine).

    Parameters
    ----------
    adata
        Cells with the embeddings in ``adata.obsm`` and normalised, unintegrated expression in ``adata.X``
        (used only when ``pre_integrated_key`` is None).
    obsm_keys
        The embeddings to score (``adata.obsm`` keys); they are the rows of the result.
    batch_key, labels_key
        ``adata.obs`` columns of the batch and of the cell type.
    pre_integrated_key
        ``adata.obsm`` key of an unintegrated embedding (e.g. ``"X_pca"``) for PCR comparison.
    n_jobs
        Parallel jobs of the neighbour search.
    exact_neighbors
        True (default): every neighbour search is exact (sklearn, Euclidean), both the embedding's kNN graph
        and the neighbours kBET looks up in its diffusion map. False: pynndescent's approximate neighbours,
        as the Benchmarker does by default; their numba code takes a minute or more to compile in every new
        process, and they are approximate. The two give nearly the same scores.
    subsample, seed
        Score ``subsample`` cells drawn without replacement with ``np.random.default_rng(seed)``
        (:func:`subsample_indices`); None scores every cell. The Benchmarker's cost grows quickly with the
        number of cells (kBET and silhouettes): about 10,000 cells is a good ceiling on a laptop.
    tidy
        False: a wide table, one row per embedding (index ``embedding``), one column per metric then
        :data:`SCIB_AGGREGATES`; ``df.attrs["metric_type"]`` maps each column to its group. True: a tidy
        table with columns ``embedding, metric, label, value`` (the ``label`` is the group: ``"Batch
        correction"``, ``"Bio conservation"`` or ``"Aggregate score"``), like :func:`score_embeddings`'s.
    progress
        Show the Benchmarker's progress bars and its log messages (e.g. the cell types kBET skips).

    Example
    -------
    >>> df = sm.metrics.scib_benchmark(adata, ["X_scMEDAL_FE", "X_pca"], "sample_id",   # doctest: +SKIP
    ...                                "celltype_coarse", subsample=5000)
    >>> df[["Batch correction", "Bio conservation", "Total"]]                           # doctest: +SKIP
    """
    Benchmarker, nearest_neighbors = _import_benchmarker()
    small, keys, pre = _scib_input(adata, obsm_keys, batch_key, labels_key, pre_integrated_key, subsample,
                                   int(seed))
    bench = Benchmarker(small, batch_key=batch_key, label_key=labels_key, embedding_obsm_keys=keys,
                        pre_integrated_embedding_obsm_key=pre, n_jobs=int(n_jobs), progress_bar=bool(progress))
    exact = _exact_neighbors(nearest_neighbors, int(n_jobs)) if exact_neighbors else None
    start = time.perf_counter()
    with warnings.catch_warnings(), _neighbors_used(nearest_neighbors, exact), _scib_quiet(not progress), \
            _benchmarker_collections_skipped(), _umap_graph_in_numpy(nearest_neighbors):
        warnings.filterwarnings("ignore", message=".*PCR comparison score is negative.*")
        bench.prepare(neighbor_computer=exact)
        bench.benchmark()
    log.info("scib-metrics Benchmarker: %d embeddings x %d cells in %.1f s", len(keys), small.n_obs,
             time.perf_counter() - start)
    raw = bench.get_results(min_max_scale=False)
    kinds = raw.loc["Metric Type"].astype(str).to_dict()
    wide = raw.drop(index="Metric Type").astype(np.float64).reindex(keys)
    wide.index.name = "embedding"
    wide.columns.name = None
    if not tidy:
        wide.attrs["metric_type"] = kinds
        return wide
    long = wide.reset_index().melt(id_vars="embedding", var_name="metric", value_name="value")
    long.insert(2, "label", long["metric"].map(kinds))
    return long


# ----------------------------------------------------------------------------------------------------------
# summaries over folds
# ----------------------------------------------------------------------------------------------------------


def summarize_folds(
    df: pd.DataFrame,
    *,
    by: Sequence[str] | str = ("embedding", "metric", "label"),
    value: str = "value",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean, spread and t-based confidence interval of a score over folds (or any repeats).

    For each group of ``by``: ``n`` (non-missing values), ``mean``, ``std`` (ddof=1), ``sem = std / sqrt(n)``
    and ``ci_low, ci_high = mean -/+ t(0.975, n - 1) * sem`` (for ``confidence=0.95``), as the paper reports
    its 5-fold results. A group with a single value gets NaN for std, sem and the interval.

    >>> import pandas as pd
    >>> folds = pd.DataFrame({"embedding": "FE", "metric": "asw", "label": "batch",
    ...                       "value": [0.1, 0.2, 0.3]})
    >>> s = summarize_folds(folds)
    >>> s[["n", "mean", "std"]].round(3).values.tolist()
    [[3.0, 0.2, 0.1]]
    """
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in by + [value] if c not in df.columns]
    if missing:
        raise InputError(f"columns {missing} not found in the table (it has {list(df.columns)})")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    grouped = df.groupby(by, sort=False, dropna=False)[value]
    out = grouped.agg(n="count", mean="mean", std=lambda v: v.std(ddof=1)).reset_index()
    n = out["n"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["sem"] = out["std"] / np.sqrt(n)
        t = stats.t.ppf(0.5 + confidence / 2, np.where(n > 1, n - 1, np.nan))
    half = t * out["sem"].to_numpy()
    out["ci_low"] = out["mean"] - half
    out["ci_high"] = out["mean"] + half
    return out


def format_table(summary: pd.DataFrame, metric: str = "asw", *, decimals: int = 3) -> pd.DataFrame:
    """Paper-style wide table for one metric: rows embeddings, columns labels, cells ``"mean [lo, hi]"``.

    ``summary`` is the output of :func:`summarize_folds`; a tidy table from :func:`score_embeddings` is
    summarised first. Groups without an interval (a single fold) show the mean alone.

    >>> import pandas as pd
    >>> folds = pd.DataFrame({"embedding": ["FE"] * 2, "metric": "asw", "label": "batch",
    ...                       "value": [0.1, 0.2]})
    >>> format_table(summarize_folds(folds)).loc["FE", "batch"]
    '0.150 [-0.485, 0.785]'
    """
    if "mean" not in summary.columns and "value" in summary.columns:
        summary = summarize_folds(summary)
    missing = [c for c in ("embedding", "metric", "label", "mean", "ci_low", "ci_high") if c not in summary]
    if missing:
        raise InputError(f"summary lacks columns {missing}; pass the output of summarize_folds")
    sub = summary[summary["metric"] == metric]
    if sub.empty:
        raise InputError(f"metric {metric!r} not in the summary; it has {list(summary['metric'].unique())}")

    def cell(row):
        mean = f"{row['mean']:.{decimals}f}"
        if np.isnan(row["ci_low"]) or np.isnan(row["ci_high"]):
            return mean
        return f"{mean} [{row['ci_low']:.{decimals}f}, {row['ci_high']:.{decimals}f}]"

    sub = sub.assign(text=sub.apply(cell, axis=1))
    table = sub.pivot(index="embedding", columns="label", values="text")
    table = table.reindex(index=sub["embedding"].unique(), columns=sub["label"].unique())
    table.index.name, table.columns.name = "embedding", None
    return table
