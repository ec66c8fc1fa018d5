"""Preprocessing, splits and scaling."""

import numpy as np
import pytest

import scmedal_lite as sm
from scmedal_lite.pp import apply_minmax, cell_folds, fit_minmax, invert_minmax


@pytest.fixture
def counts():
    return sm.datasets.synthetic(n_cells=600, n_genes=80, n_batches=5, seed=3)


def test_prepare_keeps_counts_and_logs(counts):
    raw = counts.X.copy()
    sm.pp.prepare(counts, batch_key="batch", n_top_genes=50)
    assert counts.n_vars == 50
    assert counts.layers["counts"].max() == raw.max()
    assert counts.X.max() < 15 and counts.uns["scmedal"]["prepare"]["hvg_selected"]


def test_prepare_skips_hvg_when_few_genes(counts):
    sm.pp.prepare(counts, n_top_genes=2000)
    assert counts.n_vars == 80 and not counts.uns["scmedal"]["prepare"]["hvg_selected"]


def test_cell_rotation_is_disjoint_60_20_20(counts):
    folds = cell_folds(counts, batch_key="batch", labels_key="celltype", seed=42)
    assert set(np.unique(folds)) == set(range(5))
    tests = []
    for k in range(5):
        split = sm.pp.split_cells(counts, batch_key="batch", labels_key="celltype", fold=k).to_numpy()
        frac = {s: np.mean(split == s) for s in ("train", "val", "test")}
        assert frac["train"] == pytest.approx(0.6, abs=0.02) and frac["test"] == pytest.approx(0.2, abs=0.02)
        tests.append(set(np.flatnonzero(split == "test")))
        # every batch appears in every part (cell-level split)
        for s in ("train", "val", "test"):
            assert counts.obs["batch"][split == s].nunique() == 5
    assert sum(len(t) for t in tests) == counts.n_obs and len(set.union(*tests)) == counts.n_obs
    again = sm.pp.split_cells(counts, batch_key="batch", labels_key="celltype", fold=4).to_numpy()
    assert (again == split).all()


def test_leave_batches_out(counts):
    split = sm.pp.split_batches(counts, batch_key="batch", test_batches=["batch0"], val_batches=["batch1"])
    b = counts.obs["batch"].astype(str)
    assert set(b[split == "test"]) == {"batch0"} and set(b[split == "val"]) == {"batch1"}
    assert not set(b[split == "train"]) & {"batch0", "batch1"}
    auto = sm.pp.split_batches(counts, batch_key="batch", stratify_key="condition", seed=1)
    train_b, test_b = set(b[auto == "train"]), set(b[auto == "test"])
    assert test_b and not train_b & test_b
    with pytest.raises(ValueError, match="not in adata.obs"):
        sm.pp.split_batches(counts, batch_key="batch", test_batches=["zzz"], val_batches=[])


@pytest.mark.parametrize("mode", ["global", "gene"])
def test_minmax_round_trip(mode):
    x = np.random.default_rng(0).gamma(2, 1, (50, 7)).astype("float32")
    params = fit_minmax(x[:30], mode=mode)
    scaled = apply_minmax(x, params)
    if mode == "global":
        assert scaled[:30].min() == pytest.approx(0) and scaled[:30].max() == pytest.approx(1)
    else:
        np.testing.assert_allclose(scaled[:30].min(0), 0, atol=1e-6)
        np.testing.assert_allclose(scaled[:30].max(0), 1, atol=1e-6)
    # float32 (x - lo) / span * span + lo: a few ulps of the largest value involved, not of each value
    np.testing.assert_allclose(invert_minmax(scaled, params), x, rtol=0,
                               atol=4 * np.finfo(np.float32).eps * float(np.abs(x).max()))


def test_scaling_fit_on_training_cells_only(counts):
    sm.pp.prepare(counts, n_top_genes=2000)
    sm.pp.split_cells(counts, batch_key="batch", fold=0)
    model = sm.SCMEDAL(counts, "batch")
    train = counts[counts.obs["split"] == "train"]
    assert model.minmax["max"][0] == pytest.approx(float(train.X.max()))


def test_split_masks_read_the_split_column_or_hold_out_ten_percent():
    adata = sm.datasets.synthetic(n_cells=500, n_genes=20, n_batches=3, seed=0)
    sm.pp.split_cells(adata, batch_key="batch")
    masks = sm.pp.split_masks(adata, require=("train", "val", "test"))
    assert sorted(masks) == ["test", "train", "val"]
    np.testing.assert_array_equal(masks["test"], (adata.obs[sm.pp.SPLIT_KEY] == "test").to_numpy())
    assert (masks["train"].astype(int) + masks["val"] + masks["test"] == 1).all()
    del adata.obs[sm.pp.SPLIT_KEY]
    held = sm.pp.split_masks(adata, holdout_seed=3)
    assert 0.05 < held["val"].mean() < 0.15 and not held["test"].any() and (held["train"] == ~held["val"]).all()
    np.testing.assert_array_equal(held["val"], sm.pp.split_masks(adata, holdout_seed=3)["val"])
    with pytest.raises(sm.InputError, match="split_key 'split' is not a column"):
        sm.pp.split_masks(adata)
    adata.obs["split"] = "train"
    with pytest.raises(sm.InputError, match="has no 'test' cells; scores are computed on test cells"):
        sm.pp.split_masks(adata, require=("train", "test"))
