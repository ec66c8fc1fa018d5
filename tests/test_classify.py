"""Tests for scmedal_lite.classify: MEC, leave-batches-out folds, cross-validation on tiny synthetic data."""

import anndata
import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.metrics import accuracy_score

import scmedal_lite as sm
from scmedal_lite import classify
from scmedal_lite.validate import InputError


def masks(n, seed=0, frac=0.6):
    train = np.random.default_rng(seed + 1000).permutation(n) < frac * n    # independent of the data's rng
    return train, ~train


# ------------------------------------------------------------------ mec


def test_mec_perfect_feature_and_chance():
    rng = np.random.default_rng(0)
    n = 600
    y = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
    code = pd.Series(y).map({"a": 0.0, "b": 1.0, "c": 2.0}).to_numpy()
    X = np.column_stack([code + rng.normal(scale=0.05, size=n), rng.normal(size=n)])
    train, test = masks(n)
    df = classify.mec({"signal": X}, y, train, test)
    assert list(df.columns) == ["features", "split", "metric", "value"]
    assert set(df["split"]) == {"test"}
    v = df.set_index(["features", "metric"])["value"]
    assert v["signal", "accuracy"] > 0.99 and v["signal", "balanced_accuracy"] > 0.99
    # chance is the stratified dummy's, near sum p_k^2 = 0.38
    dummy = DummyClassifier(strategy="stratified", random_state=42).fit(np.zeros((train.sum(), 1)), y[train])
    chance = accuracy_score(y[test], dummy.predict(np.zeros((test.sum(), 1))))
    assert v["chance", "accuracy"] == pytest.approx(chance)
    assert 0.28 < v["chance", "accuracy"] < 0.48
    assert 0.23 < v["chance", "balanced_accuracy"] < 0.43


def test_mec_noise_is_near_chance():
    rng = np.random.default_rng(1)
    n = 600
    y = rng.choice(["x", "y"], n)
    train, test = masks(n, seed=1)
    df = classify.mec([("noise", rng.normal(size=(n, 5)))], y, train, test)
    v = df.set_index(["features", "metric"])["value"]
    assert abs(v["noise", "accuracy"] - 0.5) < 0.1
    assert abs(v["noise", "balanced_accuracy"] - 0.5) < 0.1
    assert abs(v["chance", "accuracy"] - 0.5) < 0.1


def test_mec_dict_and_pairs_agree_and_are_seeded():
    rng = np.random.default_rng(2)
    n = 200
    y = rng.choice(["a", "b"], n)
    X = rng.normal(size=(n, 3)) + (y == "a")[:, None]
    train, test = masks(n)
    a = classify.mec({"A": X, "B": X[:, :1]}, y, train, test)
    b = classify.mec([("A", X), ("B", X[:, :1])], y, train, test)
    pd.testing.assert_frame_equal(a, b)
    assert list(a["features"].unique()) == ["A", "B", "chance"]


def test_mec_rejects_bad_input():
    y = np.array(["a", "b"] * 10)
    X = np.zeros((20, 2))
    train, test = masks(20)
    with pytest.raises(InputError, match="both"):
        classify.mec({"X": X}, y, train, train)
    with pytest.raises(InputError, match="rows"):
        classify.mec({"X": X[:5]}, y, train, test)
    with pytest.raises(InputError, match="boolean"):
        classify.mec({"X": X}, y, train.astype(int), test)
    with pytest.raises(InputError, match="reserved"):
        classify.mec({"chance": X}, y, train, test)
    with pytest.raises(InputError, match="missing"):
        classify.mec({"X": X}, np.array([None] + ["a"] * 19, dtype=object), train, test)


class FakeModel:
    """Duck-typed stand-in for a trained SCMEDAL (no training needed)."""

    def __init__(self, adata, fe, re):
        self.adata, self.fe, self.re, self.calls = adata, fe, re, []
        self.networks = {"fe": None, "re": None}

    def get_latent(self, kind, adata=None, *, unseen="mean"):
        self.calls.append((kind, unseen))
        return self.fe if kind == "fe" else self.re


def test_mixed_effects_classification_feature_sets():
    rng = np.random.default_rng(3)
    n = 300
    batch = rng.choice([f"b{i}" for i in range(6)], n)
    target = np.where(np.isin(batch, ["b0", "b2", "b4"]), "A", "B")
    split = np.where(rng.random(n) < 0.6, "train", "test")
    obs = pd.DataFrame({"batch": batch, "cond": target, "split": split}, index=[f"c{i}" for i in range(n)])
    a = anndata.AnnData(np.zeros((n, 2), dtype="float32"), obs=obs)
    re = pd.get_dummies(batch).to_numpy(dtype=float)              # RE ~ batch identity
    model = FakeModel(a, rng.normal(size=(n, 4)), re)
    df = classify.mixed_effects_classification(model, a, condition_key="cond", unseen="prior")
    assert ("re", "prior") in model.calls
    assert list(df["features"].unique()) == ["scMEDAL-FE", "scMEDAL-FE + RE", "chance"]
    v = df.set_index(["features", "metric"])["value"]
    assert v["scMEDAL-FE + RE", "accuracy"] > 0.95               # cell-level split: a batch lookup
    assert v["scMEDAL-FE", "accuracy"] < 0.7
    df2 = classify.mixed_effects_classification(model, a, condition_key="cond", re_alone=True,
                                                fe_latents={"PCA": rng.normal(size=(n, 3))})
    assert list(df2["features"].unique()) == ["PCA", "PCA + RE", "RE", "chance"]
    model.networks = {"fe": None}
    with pytest.warns(UserWarning, match="no trained RE"):
        df3 = classify.mixed_effects_classification(model, a, condition_key="cond")
    assert list(df3["features"].unique()) == ["scMEDAL-FE", "chance"]


# ------------------------------------------------------------------ leave-batches-out folds


def obs_only(n_batches=9, cells_per_batch=12, seed=0):
    batches = np.repeat([f"s{i}" for i in range(n_batches)], cells_per_batch)
    cond = np.where(np.arange(n_batches) % 2 == 0, "A", "B")[np.repeat(np.arange(n_batches), cells_per_batch)]
    return anndata.AnnData(np.zeros((len(batches), 1), dtype="float32"),
                           obs=pd.DataFrame({"batch": batches, "cond": cond},
                                            index=[f"c{i}" for i in range(len(batches))]))


@pytest.mark.parametrize("n_batches,n_folds", [(9, 3), (9, 4), (9, 5), (12, 5), (6, 3)])
def test_batch_folds_partition(n_batches, n_folds):
    a = obs_only(n_batches)
    folds = classify.batch_folds(a, "batch", n_folds, "cond", seed=0)
    assert sorted(folds.index) == sorted(a.obs["batch"].unique())           # every batch once ...
    assert set(folds) == set(range(n_folds))                                # ... in one of the groups
    level = a.obs.groupby("batch")["cond"].first()
    for k in range(n_folds):
        split = classify.split_batch_fold(a, batch_key="batch", fold=k, n_folds=n_folds, folds=folds)
        b = a.obs["batch"].to_numpy()
        test_b, val_b, train_b = (set(b[split.to_numpy() == s]) for s in ("test", "val", "train"))
        assert test_b == set(folds.index[folds == k])
        assert not test_b & train_b and not val_b & train_b and not test_b & val_b
        assert set(level[list(train_b)]) == {"A", "B"}          # every level keeps training batches
    # each batch is a test batch exactly once across the folds
    tested = pd.Series(0, index=folds.index)
    for k in range(n_folds):
        tested[folds.index[folds == k]] += 1
    assert (tested == 1).all()


def test_batch_folds_seeded_and_balanced():
    a = obs_only(12)
    f1 = classify.batch_folds(a, "batch", 4, "cond", seed=3)
    pd.testing.assert_series_equal(f1, classify.batch_folds(a, "batch", 4, "cond", seed=3))
    assert f1.value_counts().max() - f1.value_counts().min() <= 1
    f_plain = classify.batch_folds(a, "batch", 4, None, seed=0)
    assert sorted(f_plain.value_counts()) == [3, 3, 3, 3]


def test_batch_folds_errors():
    with pytest.raises(InputError, match=">= 3"):
        classify.batch_folds(obs_only(9), "batch", 2, "cond")
    with pytest.raises(InputError, match="cannot fill"):
        classify.batch_folds(obs_only(4), "batch", 5)
    with pytest.raises(InputError, match="no training batch"):
        classify.batch_folds(obs_only(4), "batch", 3, "cond")                # 2 batches per level, 3 folds


def test_scheme_folds_gives_data_with_few_batches_one_fold_per_batch():
    assert classify.scheme_folds("cells", 5, 4) == 5                         # cells: folds as asked
    assert classify.scheme_folds("batches", 5, 63) == 5
    n = classify.scheme_folds("batches", 5, 4)                             # 4 studies, 5 folds asked
    assert n == 4
    a = obs_only(4)
    folds = classify.batch_folds(a, "batch", n, None, seed=0)               # would raise with 5 folds
    assert sorted(folds.value_counts()) == [1, 1, 1, 1]                    # each batch tested once
    with pytest.raises(InputError, match="scheme"):
        classify.scheme_folds("donors", 5, 4)


# ------------------------------------------------------------------ cross-validation, end to end


@pytest.fixture(scope="module")
def tiny():
    a = sm.datasets.synthetic(360, 50, n_batches=6, n_celltypes=3, seed=0)   # condition = batch parity
    sm.pp.prepare(a, batch_key="batch")
    return a


CV = dict(batch_key="batch", labels_key="celltype", condition_key="condition", n_folds=3, folds=[0, 1],
          train_kwargs={"max_epochs": 2}, model_kwargs={"hidden": [32, 16], "latent_dim": 8},
          baselines=("pca",), progress=False)


@pytest.mark.parametrize("scheme", ["cells", "batches"])
def test_cross_validate_mec_end_to_end(tiny, scheme):
    before = tiny.obs.copy()
    table = classify.cross_validate_mec(tiny, scheme=scheme, **CV)
    pd.testing.assert_frame_equal(tiny.obs, before)                          # input not modified
    assert list(table.columns) == ["fold", "scheme", "features", "split", "metric", "value"]
    assert sorted(table["fold"].unique()) == [0, 1]
    assert set(table["scheme"]) == {scheme}
    assert set(table["features"]) == {"scMEDAL-FE", "scMEDAL-FE + RE", "PCA", "PCA + RE", "chance"}
    assert set(table["metric"]) == {"accuracy", "balanced_accuracy"}
    assert len(table) == 2 * 5 * 2
    assert table["value"].between(0, 1).all()
    summary = classify.summarize_mec(table)
    assert {"scheme", "features", "metric", "n", "mean", "ci_low", "ci_high"} <= set(summary.columns)
    assert (summary["n"] == 2).all() and len(summary) == 10


def test_cross_validate_mec_with_estimated_new_batches(tiny):
    table = classify.cross_validate_mec(tiny, scheme="batches", estimate_new_batches={"max_epochs": 3},
                                        **{**CV, "folds": [0]})
    assert set(table["features"]) == {"scMEDAL-FE", "scMEDAL-FE + RE", "PCA", "PCA + RE", "chance",
                                      classify.ESTIMATED}
    assert len(table) == 6 * 2 and table["value"].between(0, 1).all()


def test_leave_batches_out_with_a_cell_level_target_and_few_batches(tiny):
    """No condition: chapter 4 predicts the cell type. Batches are not stratified by their most frequent cell
    type (a cell-level column), so 4 batches give 4 folds instead of an error."""
    four = tiny[tiny.obs["batch"].isin(["batch0", "batch1", "batch3", "batch5"])].copy()   # type1 tops one
    assert classify.is_batch_level(four, "batch", "condition")
    assert not classify.is_batch_level(four, "batch", "celltype")
    n = classify.scheme_folds("batches", 5, four.obs["batch"].nunique())
    with pytest.raises(InputError, match="no training batch"):                # the old stratification
        classify.batch_folds(four, "batch", n, "celltype", seed=0)
    table = classify.cross_validate_mec(four, scheme="batches", **{**CV, "condition_key": "celltype",
                                                                    "n_folds": n, "folds": [0]})
    assert set(table["fold"]) == {0} and table["value"].between(0, 1).all()


def test_cross_validate_mec_checks_before_training(tiny):
    with pytest.raises(InputError, match="n_folds"):
        classify.cross_validate_mec(tiny, **{**CV, "n_folds": 2, "folds": None})
    with pytest.raises(InputError, match="valid names"):
        classify.cross_validate_mec(tiny, **{**CV, "baselines": ("tsne",)})
    with pytest.raises(InputError, match="scheme"):
        classify.cross_validate_mec(tiny, **{**CV, "scheme": "donors"})


def test_summarize_mec_matches_t_interval():
    table = pd.DataFrame({"fold": [0, 1, 2], "scheme": "cells", "features": "PCA", "split": "test",
                          "metric": "accuracy", "value": [0.7, 0.8, 0.9]})
    s = classify.summarize_mec(table).iloc[0]
    assert s["mean"] == pytest.approx(0.8)
    from scipy import stats
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
    assert s["ci_low"] == pytest.approx(0.8 - half) and s["ci_high"] == pytest.approx(0.8 + half)


def test_leave_batches_out_with_three_batches_validates_on_training_cells(tiny):
    """3 batches, 3 folds: a held-out validation batch would leave one training batch, which the networks
    refuse, so the validation cells come from the training batches; test batches stay unseen."""
    three = tiny[tiny.obs["batch"].isin(["batch0", "batch1", "batch3"])].copy()
    groups, validation = classify.batch_fold_plan(three, batch_key="batch", condition_key="celltype", n_folds=3)
    assert validation == "cells"
    assert classify.leave_batches_out_validation(pd.Series(range(4)), 4) == "batches"     # 4 batches: 2 train
    for k in range(3):
        rotation = classify.split_batch_fold(three.copy(), batch_key="batch", fold=k, n_folds=3, folds=groups)
        assert three.obs["batch"][rotation == "train"].nunique() == 1                     # what used to fail
        split = classify.split_batch_fold(three, batch_key="batch", fold=k, n_folds=3, folds=groups,
                                          validation="cells")
        batch = three.obs["batch"].astype(str)
        tested = set(batch[split == "test"])
        assert len(tested) == 1 and tested.isdisjoint(batch[split != "test"])             # never seen
        assert set(batch[split == "val"]) == set(batch[split == "train"]) and len(set(batch[split == "train"])) == 2
        share = (split == "val").sum() / (split != "test").sum()
        assert 0.2 < share < 0.3, share                                                    # a quarter
    table = classify.cross_validate_mec(three, scheme="batches", **{**CV, "condition_key": "celltype",
                                                                     "n_folds": 3, "folds": [0]})
    assert set(table["fold"]) == {0} and table["value"].between(0, 1).all()
    with pytest.raises(InputError, match="validation must be one of"):
        classify.split_batch_fold(three, batch_key="batch", fold=0, n_folds=3, folds=groups, validation="donors")


def test_leave_batches_out_with_two_batches_per_condition_and_three_folds(tiny):
    """Quick mode's 3 folds on 4 donors, 2 per condition: holding out a validation group as well leaves one
    condition without a training batch in some fold (the rotation refuses); validating on training cells
    keeps one of each, so the scheme runs."""
    four = tiny[tiny.obs["batch"].isin(["batch0", "batch1", "batch2", "batch3"])].copy()
    assert classify.is_batch_level(four, "batch", "condition")
    with pytest.raises(InputError, match="no training batch"):
        classify.batch_folds(four, "batch", 3, "condition", seed=0)
    groups, validation = classify.batch_fold_plan(four, batch_key="batch", condition_key="condition", n_folds=3)
    assert validation == "cells"
    pd.testing.assert_series_equal(groups, classify.batch_folds(four, "batch", 3, "condition", seed=0,
                                                                validation="cells"))
    for k in range(3):
        split = classify.split_batch_fold(four, batch_key="batch", fold=k, n_folds=3, folds=groups,
                                          validation=validation)
        trained = four.obs.loc[(split == "train").to_numpy(), "condition"]
        assert set(trained) == set(four.obs["condition"]), "every condition keeps a training batch"
    table = classify.cross_validate_mec(four, scheme="batches", **{**CV, "folds": [0]})
    assert set(table["fold"]) == {0} and table["value"].between(0, 1).all()
    with pytest.raises(InputError, match="no training batch"):              # a condition with one batch
        classify.batch_fold_plan(four[four.obs["batch"] != "batch1"].copy(), batch_key="batch",
                                 condition_key="condition", n_folds=3)
