"""Scores for latent embeddings: cluster separation, batch mixing, and fold summaries.

Two families of scores are computed by :func:`score_embeddings`, all on the raw embedding (for example the
50-d latent of a model or PCA-50), never on a UMAP:

* **The paper's scores** (method.md section 3.1), each for the batch labels and for the cell-type labels:

  ``asw``
      mean silhouette width, :func:`sklearn.metrics.silhouette_score` (Euclidean), in [-1, 1].
  ``inv_db``
      ``1 / davies_bouldin_score``; higher means tighter, better separated groups.
  ``ch``
      :func:`sklearn.metrics.calinski_harabasz_score`; higher means better separated groups.

  High batch scores mean the batch is visible in the embedding (bad for a corrected latent, the goal for a
  random-effects latent).

* **scIB-style scores** (Luecken et al. 2022), higher is better for all but the kNN fractions:

  ``batch_asw_scib`` (label ``batch``)
      within each cell type, silhouette of the cells on their batch labels, ``s -> 1 - |s|``, averaged
      per cell type, then over cell types. 1 means batches are perfectly mixed inside every cell type. Cell
      types seen in a single batch (or with one cell per batch) are skipped, as scIB does. Without
      cell-type labels all cells form one group.
  ``celltype_asw_scib`` (label ``celltype``)
      ``(asw + 1) / 2`` on the cell-type labels.
  ``ilisi`` (label ``batch``)
      graph iLISI: for each cell, the inverse Simpson index ``1 / sum_b p_b**2`` of the batch labels among
      its ``n_neighbors`` nearest neighbours (**the cell itself excluded**, unweighted), the median over
      cells, scaled as ``(ilisi - 1) / (n_batches - 1)``. 0 means every neighbourhood holds a single batch.
      The inverse Simpson index of k neighbours cannot exceed k, so with more batches than neighbours the
      scaled value stays well below 1 even for perfect mixing; use ``knn_batch_fraction`` there.
      (scIB weights 90 neighbours with a Gaussian kernel of perplexity 30; this is the plain version.)
  ``knn_batch_fraction`` (label ``batch``)
      mean fraction of a cell's ``n_neighbors`` nearest neighbours (itself excluded) that share its batch.
  ``knn_batch_fraction_expected`` (label ``batch``)
      the value of ``knn_batch_fraction`` under perfect mixing, ``sum_b p_b (n_b - 1) / (n - 1)``.
      Compare the two: a ratio near 1 means mixed, near ``1 / expected`` means fully separated.
  ``nmi``, ``ari`` (label ``celltype``)
      normalized mutual information and adjusted Rand index between the cell-type labels and a KMeans
      clustering of the embedding with as many clusters as cell types (``n_init=10, random_state=seed``).
      scIB clusters with Leiden at the resolution that maximises NMI; KMeans keeps this deterministic and free
      of graph-clustering dependencies, and usually gives somewhat lower values.
  ``scib_overall`` (label ``overall``)
      ``0.4 * mean(batch_asw_scib, ilisi) + 0.6 * mean(celltype_asw_scib, nmi, ari)``.

All embeddings are scored on the same seeded subsample of cells, so their scores are comparable.

Example
-------
>>> import numpy as np
>>> from scmedal_lite import metrics
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(300, 10))
>>> batch = rng.integers(0, 3, 300)
>>> celltype = rng.integers(0, 4, 300)
>>> df = metrics.score_embeddings({"PCA": X}, batch, celltype, metrics=["asw", "ilisi"])
>>> list(df.columns)
['embedding', 'metric', 'label', 'value']
>>> df[["metric", "label"]].values.tolist()
[['asw', 'batch'], ['asw', 'celltype'], ['ilisi', 'batch']]
"""

from __future__ import annotations

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

__all__ = [
    "METRICS",
    "score_embeddings",
    "knn_same_batch_fraction",
    "subsample_indices",
    "summarize_folds",
    "format_table",
]

#: Scores computed for both the batch and the cell-type labels.
PAPER_METRICS = ("asw", "inv_db", "ch")
#: Scores about batch mixing (label ``batch``).
BATCH_METRICS = ("batch_asw_scib", "ilisi", "knn_batch_fraction", "knn_batch_fraction_expected")
#: Scores that need cell-type labels (label ``celltype``, or ``overall`` for the aggregate).
LABEL_METRICS = ("celltype_asw_scib", "nmi", "ari", "scib_overall")
#: Every metric name :func:`score_embeddings` accepts, in the order it reports them.
METRICS = PAPER_METRICS + BATCH_METRICS + LABEL_METRICS

OVERALL_LABEL = "overall"


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


def _ilisi(indices: np.ndarray, codes: np.ndarray) -> float:
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

    def scib(self, metric):
        if metric == "batch_asw_scib":
            return _batch_asw_scib(self.X, self.batch, self.labels)
        if metric == "ilisi":
            return _ilisi(self.knn, self.batch)
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
        if metric == "scib_overall":
            batch_score = np.mean([self.scib("batch_asw_scib"), self.scib("ilisi")])
            bio_score = np.mean([self.scib(m) for m in ("celltype_asw_scib", "nmi", "ari")])
            return float(0.4 * batch_score + 0.6 * bio_score)
        raise AssertionError(metric)  # pragma: no cover


def _resolve_metrics(metrics, have_labels: bool) -> list[str]:
    if metrics is None:
        return [m for m in METRICS if have_labels or m not in LABEL_METRICS]
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(dict.fromkeys(metrics))
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
        Neighbourhood size for ``ilisi`` and ``knn_batch_fraction``.
    batch_name, label_name
        Values written in the ``label`` column for scores on the batch and on the cell-type labels.

    Returns
    -------
    pandas.DataFrame
        Tidy table with columns ``embedding, metric, label, value``: one row per embedding, metric and label.
        ``asw``, ``inv_db`` and ``ch`` get a row for each label; ``scib_overall`` has label ``"overall"``.

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
                elif metric == "scib_overall":
                    label = OVERALL_LABEL
                else:
                    label = label_name
                rows.append((name, metric, label, scorer.scib(metric)))
    return pd.DataFrame(rows, columns=["embedding", "metric", "label", "value"])


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
