"""Tests for scmedal_lite.baselines (a few hundred synthetic cells; a few seconds in all)."""

import importlib.util

import numpy as np
import pytest

import scmedal_lite as sm
from precision import chain_rtol
from scmedal_lite import baselines as bl
from scmedal_lite.metrics import knn_same_batch_fraction
from scmedal_lite.validate import InputError

N_COMPS = 10


@pytest.fixture(scope="module")
def adata():
    a = sm.datasets.synthetic(300, 50, n_batches=3, n_celltypes=3, batch_effect=2.0, seed=0)
    sm.pp.prepare(a, batch_key="batch")
    return a


def dense(a):
    return a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)


@pytest.mark.parametrize("method", ["pca", "harmony", "scanorama"])
def test_shape_and_deterministic_with_seed(adata, method):
    fn = bl.METHODS[method]
    e1 = fn(adata, batch_key="batch", n_comps=N_COMPS, seed=0)
    e2 = fn(adata, batch_key="batch", n_comps=N_COMPS, seed=0)
    assert isinstance(e1, np.ndarray)
    assert e1.shape == (adata.n_obs, N_COMPS)
    assert np.isfinite(e1).all()
    np.testing.assert_array_equal(e1, e2)


def test_pca_rows_follow_cell_order(adata):
    perm = np.random.default_rng(1).permutation(adata.n_obs)
    e = bl.pca(adata, batch_key="batch", n_comps=N_COMPS)
    ep = bl.pca(adata[perm].copy(), batch_key="batch", n_comps=N_COMPS)
    # Rows in another order: the covariance sums over cells run in another order, an error of about
    # eps * n_cells * |C| (tests/precision.py). A principal axis then turns by at most that over the gap to
    # its neighbouring eigenvalues (Davis-Kahan), so close eigenvalues allow more than round-off in C.
    X = dense(adata).astype("float64")
    lam = np.linalg.eigvalsh(np.cov(X, rowvar=False))[::-1][:N_COMPS + 1]
    gaps = np.abs(np.diff(lam))
    gap = np.minimum(np.r_[np.inf, gaps[:-1]], gaps)              # each axis' nearest neighbour eigenvalue
    turn = chain_rtol(adata.n_obs) * lam[0] / gap
    # Davis-Kahan bounds each run's turn by 2 * turn; two runs may turn opposite ways: 4 * turn per axis
    atol = 4 * turn * np.abs(e).max()
    worst = np.abs(ep - e[perm]).max(axis=0)
    assert (worst <= atol).all(), {"difference per axis": worst, "bound": atol}


def test_scanorama_reassembles_original_order(adata):
    # Grouping cells by batch (stable, batches in order of first appearance) gives Scanorama the very same
    # per-batch data sets, so the result must be the same rows, permuted.
    batch = adata.obs["batch"].astype(str).to_numpy()
    order = {b: i for i, b in enumerate(dict.fromkeys(batch))}
    perm = np.argsort([order[b] for b in batch], kind="stable")
    e = bl.scanorama(adata, batch_key="batch", n_comps=N_COMPS)
    ep = bl.scanorama(adata[perm].copy(), batch_key="batch", n_comps=N_COMPS)
    assert not np.array_equal(perm, np.arange(adata.n_obs))
    np.testing.assert_allclose(ep, e[perm], atol=chain_rtol(adata.n_obs) * np.abs(e).max())


def test_x_overrides_adata_X(adata):
    X = dense(adata)
    np.testing.assert_allclose(bl.pca(adata, x=X, n_comps=N_COMPS), bl.pca(adata, n_comps=N_COMPS), atol=1e-5)
    other = bl.pca(adata, x=np.sqrt(X), n_comps=N_COMPS)
    assert not np.allclose(other, bl.pca(adata, n_comps=N_COMPS))
    with pytest.raises(InputError, match="rows"):
        bl.pca(adata, x=X[:10])


def test_pca_fits_on_train_cells_only(adata):
    X = dense(adata)
    train = np.zeros(adata.n_obs, dtype=bool)
    train[: adata.n_obs * 2 // 3] = True
    e = bl.pca(adata, x=X, train_mask=train, n_comps=N_COMPS)
    X2 = X.copy()
    X2[~train] = np.random.default_rng(0).random(X2[~train].shape) * 10   # change the held-out cells only
    e2 = bl.pca(adata, x=X2, train_mask=train, n_comps=N_COMPS)
    np.testing.assert_allclose(e2[train], e[train], atol=1e-5)
    assert not np.allclose(e2[~train], e[~train])
    # Fitting on all cells would have moved the training cells too.
    assert not np.allclose(bl.pca(adata, x=X2, n_comps=N_COMPS)[train], e[train], atol=1e-3)


def test_harmony_and_scanorama_mix_batches_better_than_pca(adata):
    batch = adata.obs["batch"].to_numpy()
    frac = {m: knn_same_batch_fraction(bl.METHODS[m](adata, batch_key="batch", n_comps=N_COMPS), batch)[0]
            for m in ("pca", "harmony", "scanorama")}
    expected = knn_same_batch_fraction(np.zeros((adata.n_obs, 1)) + np.arange(adata.n_obs)[:, None], batch)[1]
    assert frac["pca"] > 0.8                       # the planted batch effect dominates PCA's neighbourhoods
    assert frac["harmony"] < frac["pca"] - 0.3
    assert frac["harmony"] < 2 * expected
    assert frac["scanorama"] < frac["pca"] - 0.3


def test_harmony_accepts_either_output_orientation(adata, monkeypatch):
    import harmonypy

    real = harmonypy.run_harmony
    reference = bl.harmony(adata, batch_key="batch", n_comps=N_COMPS)

    class Transposed:
        def __init__(self, result):
            self.Z_corr = np.asarray(result.Z_corr).T     # d x cells, as harmonypy 0.0.x returned it

    monkeypatch.setattr(harmonypy, "run_harmony", lambda *a, **k: Transposed(real(*a, **k)))
    np.testing.assert_array_equal(bl.harmony(adata, batch_key="batch", n_comps=N_COMPS), reference)


def test_n_comps_capped_with_warning(adata):
    with pytest.warns(UserWarning, match="n_comps"):
        e = bl.pca(adata, n_comps=500)
    assert e.shape == (adata.n_obs, adata.n_vars)


def test_bad_masks_and_keys(adata):
    with pytest.raises(InputError, match="boolean"):
        bl.pca(adata, train_mask=np.ones(5, dtype=bool))
    with pytest.raises(InputError, match="no cells"):
        bl.pca(adata, train_mask=np.zeros(adata.n_obs, dtype=bool))
    with pytest.raises(InputError, match="donor"):
        bl.harmony(adata, batch_key="donor")


def test_run_baselines_embeddings_and_timings(adata):
    train = adata.obs["batch"].astype(str).to_numpy() != "batch0"
    out = bl.run_baselines(adata, batch_key="batch", methods=("pca", "harmony"), n_comps=N_COMPS,
                           train_mask=train)
    assert isinstance(out, dict) and isinstance(out, bl.BaselineEmbeddings)
    assert list(out) == ["pca", "harmony"]
    assert all(e.shape == (adata.n_obs, N_COMPS) for e in out.values())
    np.testing.assert_array_equal(out["pca"], bl.pca(adata, train_mask=train, n_comps=N_COMPS))
    assert set(out.timings) == {"pca", "harmony"} and all(t >= 0 for t in out.timings.values())
    assert list(out.timings_frame().columns) == ["method", "seconds"]


def test_run_baselines_rejects_unknown_method(adata):
    with pytest.raises(InputError, match="valid names are.*'pca'.*'harmony'.*'scanorama'"):
        bl.run_baselines(adata, batch_key="batch", methods=("pca", "umap"))
    with pytest.raises(InputError, match="labels_key"):
        bl.run_baselines(adata, batch_key="batch", methods=("scanvi",))


@pytest.mark.skipif(importlib.util.find_spec("scvi") is not None, reason="scvi-tools is installed")
@pytest.mark.parametrize("method", ["scvi", "scanvi"])
def test_scvi_missing_raises_clear_import_error(adata, method):
    kwargs = {"labels_key": "celltype"} if method == "scanvi" else {}
    with pytest.raises(ImportError, match=r"pip install scmedal_lite\[scvi\]") as err:
        bl.METHODS[method](adata, batch_key="batch", n_comps=N_COMPS, **kwargs)
    assert "pip install torch==2.13.0 scvi-tools" in str(err.value)
    with pytest.raises(ImportError, match="scvi-tools is not installed"):
        bl.run_baselines(adata, batch_key="batch", labels_key="celltype", methods=(method,))
