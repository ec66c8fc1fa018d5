"""The RE network's minibatch under the step budget on small data (``schedule["re_min_steps_per_epoch"]``)."""

import numpy as np
import pytest
from sklearn.metrics import silhouette_score

import scmedal_lite as sm
from scmedal_lite import tutorial
from scmedal_lite.model import MIN_FITTED_BATCH, fitted_batch_size

SMALL = dict(hidden=[64, 32], latent_dim=8)


def test_fitted_batch_size_gives_at_least_the_asked_steps_per_epoch():
    assert fitted_batch_size(18_320, 512, 8) == 512                   # large data: unchanged
    assert fitted_batch_size(4_096, 512, 8) == 512
    assert fitted_batch_size(4_095, 512, 8) == 256
    assert fitted_batch_size(1_028, 512, 8) == 128
    assert fitted_batch_size(1_028, 512, None) == 512                 # the rule switched off
    assert fitted_batch_size(100, 512, 8) == MIN_FITTED_BATCH         # never below the floor
    for n in (300, 700, 1_028, 2_500, 4_095, 9_000):
        b = fitted_batch_size(n, 512, 8)
        assert b & (b - 1) == 0 and b <= 512                          # a power of two, at most the schedule's
        assert b == MIN_FITTED_BATCH or np.ceil(n / b) >= 8, (n, b)


def _batch(model, kind, max_epochs=None, batch_size=None):
    return model._settings(max_epochs, batch_size, None, True, None, None, kind=kind).batch_size


def test_only_re_under_the_step_budget_gets_the_fitted_minibatch(synth):
    default = sm.SCMEDAL(synth, "batch", seed=0, **SMALL)
    n_train = int(default.train_mask.sum())                          # 720 cells: 64 gives RE 12 steps an epoch
    assert fitted_batch_size(n_train, 512, 8) == 64
    assert _batch(default, "re") == 64
    re = default._settings(None, None, None, True, None, None, kind="re")
    assert re.max_epochs == default.epochs_for(n_train, 64)           # the same step budget, in more epochs
    assert _batch(default, "fe") == _batch(default, "ae") == 512      # FE's mixing term works in minibatches of 512
    # an epoch count, a batch size given to train() or in schedule=, and the paper's presets keep 512
    assert _batch(default, "re", max_epochs=5) == 512
    assert _batch(default, "re", batch_size=512) == 512
    assert _batch(sm.SCMEDAL(synth, "batch", schedule={"batch_size": 256}), "re") == 256
    assert _batch(sm.SCMEDAL(synth, "batch", preset="paper"), "re") == 512
    assert _batch(sm.SCMEDAL(synth, "batch", schedule={"re_min_steps_per_epoch": None}), "re") == 512
    with pytest.raises(sm.InputError, match="re_min_steps_per_epoch"):
        sm.SCMEDAL(synth, "batch", schedule={"re_min_steps_per_epoch": 0})


def test_same_step_budget_in_fitted_minibatches_gives_a_more_batch_specific_re(synth):
    """Known answer: 4 planted batches, 720 training cells. 1,000 optimisation steps in minibatches of 512
    (2 steps an epoch, 500 epochs) against the fitted 64 (12 steps an epoch, 84 epochs)."""
    test = (synth.obs["split"] == "test").to_numpy()
    batch = synth.obs["batch"].to_numpy()[test]
    scores = {}
    for name, sched in (("fitted", {}), ("512", {"re_min_steps_per_epoch": None})):
        model = sm.SCMEDAL(synth, "batch", seed=0, schedule={"max_steps": 1000, **sched}, **SMALL)
        model.train(which=("re",), progress=False)
        assert model.trained["re"]["batch_size"] == (64 if name == "fitted" else 512)
        assert tutorial.training_table(model).loc["RE", "minibatch"] == model.trained["re"]["batch_size"]
        x = model.scale(synth)[test]
        recon = model.get_reconstruction("re", synth, scaled=True)[test]
        scores[name] = {"batch_asw": silhouette_score(model.get_latent("re")[test], batch),
                        "mse": float(np.mean((x - recon) ** 2)), "epochs": model.trained["re"]["epochs_run"]}
    fitted, full = scores["fitted"], scores["512"]
    assert fitted["batch_asw"] > full["batch_asw"] + 0.01, scores     # the latent keeps the batches better
    assert fitted["mse"] <= 1.05 * full["mse"], scores                 # and reconstructs as well
    assert fitted["epochs"] < full["epochs"] / 4, scores               # in far fewer passes over the data


def test_add_batches_fits_new_re_effects_in_the_fitted_minibatch(synth):
    batches = synth.obs["batch"].astype(str)
    last = sorted(batches.unique())[-1]
    reference = synth[(batches != last).to_numpy()].copy()
    new = synth[(batches == last).to_numpy()].copy()
    new.obs["batch"] = ("new_" + new.obs["batch"].astype(str)).astype("category")
    model = sm.SCMEDAL(reference, "batch", seed=0, **SMALL).train(max_epochs=3, progress=False)
    model.add_batches(new, which=("re",), progress=False)
    added = model.trained["re"]["added_batches"][-1]
    n_fit = new.n_obs - new.n_obs // 10                          # a seeded 10 % of the new batch is held out
    assert added["batch_size"] == fitted_batch_size(n_fit, 512, 8) < 512, (added, n_fit)
    assert added["epochs_run"] <= int(np.ceil(500 / np.ceil(n_fit / added["batch_size"])))   # the 500-step budget
    again = sm.SCMEDAL(reference, "batch", seed=0, **SMALL).train(max_epochs=3, progress=False)
    again.add_batches(new, which=("re",), max_epochs=2, progress=False)          # an epoch count: 512 as before
    assert again.trained["re"]["added_batches"][-1]["batch_size"] == 512


def test_fe_guard_defaults_on_below_the_small_data_line_only(synth):
    """FE's neighbour-keeping guard (``w_keep``) is on by default below SMALL_DATA_CELLS training cells, with
    the schedule's weight; a w_keep the user gives, ``small_data_w_keep=0``, large data and the paper's presets
    leave it off or as given."""
    from scmedal_lite.model import SMALL_DATA_CELLS, small_data_keep

    model = sm.SCMEDAL(synth, "batch", seed=0, **SMALL)              # 720 training cells
    assert model.config["fe"]["w_keep"] == model.config["fec"]["w_keep"] == 100.0
    model.train(which=("fe",), max_epochs=1, progress=False)
    assert model.networks["fe"].w_keep == 100.0 and "keep_loss" in model.history["fe"]
    assert sm.SCMEDAL(synth, "batch", fe={"w_keep": 0}, **SMALL).config["fe"]["w_keep"] == 0.0
    assert sm.SCMEDAL(synth, "batch", fe={"w_keep": 30}, **SMALL).config["fe"]["w_keep"] == 30.0
    assert sm.SCMEDAL(synth, "batch", schedule={"small_data_w_keep": 0}, **SMALL).config["fe"]["w_keep"] == 0.0
    assert "w_keep" not in sm.SCMEDAL(synth, "batch", preset="paper").config["fe"]
    sched = sm.SCMEDAL(synth, "batch").config["schedule"]
    assert small_data_keep(SMALL_DATA_CELLS - 1, sched) == 100.0 and small_data_keep(SMALL_DATA_CELLS, sched) == 0.0
    big = sm.datasets.synthetic(n_cells=7_000, n_genes=30, n_batches=4, n_celltypes=3, seed=1)
    sm.pp.prepare(big, batch_key="batch", n_top_genes=1000)
    sm.pp.split_cells(big, batch_key="batch", labels_key="celltype", fold=0)
    large = sm.SCMEDAL(big, "batch", seed=0, **SMALL)
    assert int(large.train_mask.sum()) >= SMALL_DATA_CELLS and large.config["fe"]["w_keep"] == 0.0
    with pytest.raises(sm.InputError, match="small_data_w_keep"):
        sm.SCMEDAL(synth, "batch", schedule={"small_data_w_keep": -1})
