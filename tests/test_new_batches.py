"""New batches get their own random effects (SCMEDAL.add_batches): frozen weights, a planted effect recovered,
save and load, clear errors."""

import keras
import numpy as np
import pandas as pd
import pytest

import scmedal_lite as sm
from scmedal_lite import simulate

SMALL = dict(hidden=[64, 32], latent_dim=8)


@pytest.fixture(scope="module")
def held_out():
    """Synthetic counts in four batches; batch ``new`` (held out of training) carries a planted effect."""
    base = sm.datasets.synthetic(2000, 60, n_batches=1, n_celltypes=3, seed=3)
    rng = np.random.default_rng(0)
    batches = np.asarray(["b0", "b1", "b2", "new"])[rng.integers(0, 4, base.n_obs)]
    effects = pd.DataFrame(0.0, index=["b0", "b1", "b2", "new"], columns=base.var_names)
    planted = [f"gene{g}" for g in rng.choice(60, 8, replace=False)]
    effects.loc["new", planted] = np.tile([1.5, -1.5], 4)
    adata = simulate.plant(base, batches, effects, seed=0)
    sm.pp.prepare(adata, batch_key="batch")
    adata.obs["split"] = pd.Categorical(np.where(batches == "new", "test",
                                                 np.where(rng.random(base.n_obs) < 0.2, "val", "train")))
    reference = adata[adata.obs["split"] != "test"].copy()
    new = adata[adata.obs["split"] == "test"].copy()
    model = sm.SCMEDAL(reference, "batch", "celltype", seed=0, **SMALL).train(max_epochs=150, progress=False)
    return adata, reference, new, planted, model


@pytest.fixture(scope="module")
def added(held_out):
    adata, reference, new, planted, model = held_out
    weights = {k: [keras.ops.convert_to_numpy(w).copy() for w in model.networks[k].weights] for k in ("fe", "re")}
    with pytest.warns(sm.UnseenBatchWarning):
        before = model.get_reconstruction("fe", new, unseen="mean")
    model.add_batches(new, max_epochs=150, progress=False)
    return weights, before


def test_frozen_weights_stay_bit_identical(held_out, added):
    model = held_out[-1]
    weights, _ = added
    assert model.batch_categories == ["b0", "b1", "b2", "new"]
    for kind in ("fe", "re"):
        after = model.networks[kind].weights
        assert len(after) == len(weights[kind])
        for old, w in zip(weights[kind], after):
            value = keras.ops.convert_to_numpy(w)
            np.testing.assert_array_equal(value[tuple(slice(0, n) for n in old.shape)], old)   # known part


def test_estimated_effect_recovers_a_planted_effect_that_the_mean_rule_misses(held_out, added):
    adata, reference, new, planted, model = held_out
    _, mean_rule = added
    genes = new.var_names.isin(planted)
    observed = new.X.toarray().mean(0)
    estimated = model.get_reconstruction("fe", new).mean(0)            # no warning: the batch is known now
    err_mean = np.abs(mean_rule.mean(0) - observed)[genes].mean()
    err_est = np.abs(estimated - observed)[genes].mean()
    assert err_est < 0.5 * err_mean, (err_est, err_mean)
    # counterfactuals into the new batch follow its planted effect
    cells = reference[reference.obs["batch"] == "b0"]
    table = simulate.evaluate_counterfactuals(
        adata, lambda sub, t: model.counterfactual(sub, t).X, lambda sub: model.get_reconstruction("fe", sub),
        [("b0", "new")], planted)
    assert cells.n_obs > 0
    assert table["r2_planted"].iloc[0] > table["r2_no_change_planted"].iloc[0], table
    assert 0.6 < table["slope_planted"].iloc[0] < 1.4, table


def test_save_and_load_keep_the_added_batches(held_out, added, tmp_path):
    adata, reference, new, planted, model = held_out
    again = sm.SCMEDAL.load(model.save(str(tmp_path / "run")), reference)
    assert again.batch_categories == model.batch_categories
    np.testing.assert_array_equal(again.get_latent("re", new), model.get_latent("re", new))
    assert again.trained["re"]["added_batches"][0]["batches"] == ["new"]


def test_known_batch_names_and_wrong_genes_are_refused(held_out, added):
    adata, reference, new, planted, model = held_out
    with pytest.raises(sm.InputError, match="already known"):
        model.add_batches(reference[:50].copy(), progress=False)
    with pytest.raises(sm.InputError, match="missing"):
        model.add_batches(new[:, :30].copy(), progress=False)


def test_predict_rule_uses_the_batch_head(held_out):
    adata, reference, new, planted, model = held_out
    cells = new[:40].copy()
    cells.obs["batch"] = "unseen_donor"
    with pytest.warns(sm.UnseenBatchWarning):
        predicted = model.get_latent("re", cells, unseen="predict")
    with pytest.warns(sm.UnseenBatchWarning):
        mean = model.get_latent("re", cells, unseen="mean")
    assert predicted.shape == mean.shape and not np.allclose(predicted, mean)


def test_fitting_only_re_gives_the_same_re_and_leaves_fe_at_the_prior(held_out, tmp_path):
    adata, reference, new, planted, model = held_out
    path = model.save(str(tmp_path / "run"))
    cells = new.copy()
    cells.obs["batch"] = pd.Categorical(["later"] * cells.n_obs)
    both = sm.SCMEDAL.load(path, reference).add_batches(cells, max_epochs=40, progress=False)
    re_only = sm.SCMEDAL.load(path, reference).add_batches(cells, max_epochs=40, progress=False, which=("re",))
    np.testing.assert_array_equal(re_only.get_latent("re", cells), both.get_latent("re", cells))
    np.testing.assert_array_equal(re_only.get_latent("fe", cells), both.get_latent("fe", cells))
    assert "later" in re_only.batch_categories
    assert [a["batches"] for a in re_only.trained["fe"].get("added_batches", [])].count(["later"]) == 0
    assert [a["batches"] for a in both.trained["fe"]["added_batches"]].count(["later"]) == 1
    # the FE decoder's effects for the skipped batch stay at the prior mean: its reconstruction is the one
    # without any batch effect, unlike the fitted model's
    new_row = len(re_only.batch_categories) - 1
    locs = [w for w in re_only.networks["fe"].weights if w.path.endswith("/loc")]
    assert locs and all(np.all(keras.ops.convert_to_numpy(w)[new_row] == 0) for w in locs)
    fitted = [w for w in both.networks["fe"].weights if w.path.endswith("/loc")]
    assert any(np.any(keras.ops.convert_to_numpy(w)[new_row] != 0) for w in fitted)
    with pytest.raises(sm.InputError, match="which"):
        sm.SCMEDAL.load(path, reference).add_batches(cells, progress=False, which=("ae",))
