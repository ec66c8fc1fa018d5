"""Tests for scmedal_lite.knn_graph.umap_graph: UMAP's fuzzy graph in NumPy, against umap-learn's own."""

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from sklearn.neighbors import NearestNeighbors

from scmedal_lite import InputError
from scmedal_lite.knn_graph import umap_graph


def clustered(seed=0):
    """Three clusters of unequal spread, and two pairs of duplicated cells (distance 0)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(scale=s, size=(200, 8)) + 5 * i for i, s in enumerate((0.5, 1.0, 2.0))])
    x[1], x[301] = x[0], x[300]
    return x.astype(np.float32)


@pytest.mark.parametrize("k", [15, 50])
def test_umap_graph_is_umap_learns_graph(k):
    from umap.umap_ import fuzzy_simplicial_set

    x = clustered()
    distances, indices = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    ref, ref_sigmas, ref_rhos = fuzzy_simplicial_set(
        coo_matrix(([], ([], [])), shape=(len(x), 1)), n_neighbors=k, random_state=None, metric=None,
        knn_indices=indices, knn_dists=distances, set_op_mix_ratio=1.0, local_connectivity=1.0)
    graph, sigmas, rhos = umap_graph(indices, distances)
    ref = ref.tocsr()
    assert graph.dtype == np.float32 and graph.shape == ref.shape
    assert ((graph != 0) != (ref != 0)).nnz == 0                      # the same edges
    assert abs(graph - ref).max() < 1e-5                               # the same weights, up to summation order
    np.testing.assert_array_equal(rhos, ref_rhos)
    np.testing.assert_allclose(sigmas, ref_sigmas, rtol=1e-4)
    assert graph[0, 1] == pytest.approx(1.0) and graph.diagonal().max() == 0   # duplicates: weight 1; no loops


def test_umap_graph_skips_missing_neighbours_and_checks_shapes():
    indices = np.array([[0, 1, -1], [1, 0, 2], [2, 1, 0]])
    distances = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 2.0, 3.0]])
    graph, _, _ = umap_graph(indices, distances)
    assert graph.shape == (3, 3) and abs(graph - graph.T).max() == 0 and graph.max() <= 1
    with pytest.raises(InputError, match="one shape"):
        umap_graph(indices, distances[:, :2])
    with pytest.raises(InputError, match="k >= 2"):
        umap_graph(indices[:, :1], distances[:, :1])
