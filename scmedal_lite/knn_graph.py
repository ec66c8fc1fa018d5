"""UMAP's fuzzy neighbour graph from a precomputed k-nearest-neighbour table, in NumPy.

umap-learn builds this graph (``umap.umap_.fuzzy_simplicial_set``, which scanpy's ``pp.neighbors`` and
scib-metrics' kBET call) with numba functions that it does not keep on disk, so every new process compiles them
first: 4–7 s on 2 CPUs, in every notebook kernel that needs the graph, for a computation that takes
milliseconds. :func:`umap_graph` computes the same graph without compiling anything: the method of McInnes et
al. (2018), in float32 as umap-learn computes it, with its default local connectivity of 1 and the fuzzy union.
Its weights agree with umap-learn's to within a few 10⁻⁶ (the two sum in different orders) and its non-zero
pattern is the same; ``tests/test_knn_graph.py`` checks both.

>>> import numpy as np
>>> from sklearn.neighbors import NearestNeighbors
>>> x = np.random.default_rng(0).normal(size=(100, 5))
>>> distances, indices = NearestNeighbors(n_neighbors=15).fit(x).kneighbors(x)
>>> graph, sigmas, rhos = umap_graph(indices, distances)
>>> graph.shape, bool(abs(graph - graph.T).max() < 1e-6), bool(graph.max() <= 1)
((100, 100), True, True)
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from .validate import InputError

__all__ = ["umap_graph"]

#: umap-learn's bisection stops once the weights of a cell's neighbours sum to log2(k) within this.
_SUM_TOLERANCE = 1e-5
#: ... or after this many halvings.
_BISECTION_STEPS = 64
#: A cell's bandwidth is at least this fraction of its mean neighbour distance.
_MIN_BANDWIDTH = 1e-3


def _bandwidths(distances: np.ndarray, rho: np.ndarray, k: float) -> np.ndarray:
    """Each cell's σ: the bandwidth at which its neighbours' weights ``exp(−max(0, d − ρ)/σ)`` sum to
    ``log2(k)``, by bisection (its own column, the first, left out), floored as umap-learn floors it."""
    n = distances.shape[0]
    excess = distances[:, 1:] - rho[:, None]
    target = np.float32(np.log2(k))
    lo, hi, sigma = np.zeros(n, np.float32), np.full(n, np.inf, np.float32), np.ones(n, np.float32)
    searching = np.arange(n)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        for _ in range(_BISECTION_STEPS):
            if searching.size == 0:
                break
            e = excess[searching]
            weights = np.where(e > 0, np.exp(-(e / sigma[searching, None])), np.float32(1))
            total = weights.astype(np.float32).sum(axis=1, dtype=np.float32)
            done = np.abs(total - target) < _SUM_TOLERANCE
            wide = searching[~done & (total > target)]           # too wide: σ shrinks
            hi[wide] = sigma[wide]
            sigma[wide] = (lo[wide] + hi[wide]) / np.float32(2)
            narrow = searching[~done & ~(total > target)]
            lo[narrow] = sigma[narrow]
            sigma[narrow] = np.where(np.isinf(hi[narrow]), sigma[narrow] * np.float32(2),
                                     (lo[narrow] + hi[narrow]) / np.float32(2))
            searching = searching[~done]
    mean_row = distances.mean(axis=1, dtype=np.float32)
    floor = np.float32(_MIN_BANDWIDTH) * np.where(rho > 0, mean_row, distances.mean(dtype=np.float32))
    return np.maximum(sigma, floor).astype(np.float32)


def umap_graph(indices, distances, n_neighbors: int | None = None):
    """UMAP's fuzzy graph of a kNN table; returns ``(connectivities, sigmas, rhos)`` like umap-learn's
    ``fuzzy_simplicial_set`` given ``knn_indices`` and ``knn_dists`` (``set_op_mix_ratio=1``,
    ``local_connectivity=1``).

    ``indices`` and ``distances`` are (cells × k): each cell's k nearest neighbours, itself normally first
    (the first column is left out of the bandwidth search, as umap-learn does; an index of −1 marks a missing
    neighbour). For cell i, ρᵢ is the distance to its nearest neighbour at a positive distance and σᵢ solves
    ``Σⱼ exp(−max(0, dᵢⱼ − ρᵢ)/σᵢ) = log2(k)``; the directed weights ``exp(−max(0, d − ρ)/σ)`` (0 on the cell
    itself) are joined by the fuzzy union ``A + Aᵀ − A∘Aᵀ``. ``connectivities`` is a float32 CSR matrix of
    cells × cells.

    >>> indices = np.array([[0, 1], [1, 0], [2, 1]])                # cell 2's nearest other cell is 1
    >>> g, _, _ = umap_graph(indices, np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 2.0]]))
    >>> g.toarray().round(3).tolist()
    [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    """
    idx = np.asarray(indices)
    dist = np.asarray(distances, dtype=np.float32)
    if idx.ndim != 2 or idx.shape != dist.shape or idx.shape[1] < 2:
        raise InputError(f"indices and distances must be cells x k arrays of one shape with k >= 2, got "
                         f"{idx.shape} and {dist.shape}")
    n, k = dist.shape
    positive = dist > 0
    rho = np.where(positive.any(axis=1), dist[np.arange(n), positive.argmax(axis=1)], 0).astype(np.float32)
    sigma = _bandwidths(dist, rho, float(k if n_neighbors is None else n_neighbors))
    excess = dist - rho[:, None]
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        weights = np.where((excess <= 0) | (sigma[:, None] == 0), np.float32(1),
                           np.exp(-(excess / sigma[:, None]))).astype(np.float32)
    weights[idx == np.arange(n)[:, None]] = 0
    present = idx.ravel() != -1
    rows = np.repeat(np.arange(n), k)[present]
    directed = sparse.coo_matrix((weights.ravel()[present], (rows, idx.ravel()[present])), shape=(n, n))
    directed.eliminate_zeros()
    reverse = directed.transpose()
    graph = (directed + reverse - directed.multiply(reverse)).tocsr()
    graph.eliminate_zeros()
    return graph, sigma, rho
