"""Behaviour of the user-facing model on synthetic data with a planted batch effect (known answer)."""

import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

import scmedal_lite as sm
from precision import model_tolerance
from scmedal_lite.metrics import knn_same_batch_fraction
from scmedal_lite.model import gene_moments

SMALL = dict(hidden=[64, 32], latent_dim=8)


def test_shapes_and_history(trained, synth):
    assert trained.get_latent("fe").shape == (synth.n_obs, 8)
    assert trained.get_latent("re").shape == (synth.n_obs, 8)
    assert trained.get_reconstruction("fe").shape == synth.shape
    for kind in ("fe", "re"):
        hist = trained.history[kind]
        assert {"loss", "val_loss", "recon_loss"} <= set(hist.columns)
        assert hist["val_recon_loss"].iloc[-1] < hist["val_recon_loss"].iloc[0]
        monitor = trained.networks[kind].monitor          # the default FE stops on its reconstruction
        assert monitor == ("val_recon_loss" if kind == "fe" else "val_loss")
        assert trained.trained[kind]["best_epoch"] == int(hist[monitor].idxmin())
    assert "mix_loss" in trained.history["fe"].columns


def test_fe_mixes_batches_better_than_pca_and_re_separates_them(trained, synth):
    test = (synth.obs["split"] == "test").to_numpy()
    x = trained.scale(synth)
    pca = PCA(8, random_state=0).fit(x[trained.train_mask]).transform(x[test])
    fe, re = trained.get_latent("fe")[test], trained.get_latent("re")[test]
    batch = synth.obs["batch"].to_numpy()[test]
    knn = {name: knn_same_batch_fraction(e, batch, k=15)[0] for name, e in [("pca", pca), ("fe", fe), ("re", re)]}
    asw = {name: silhouette_score(e, batch) for name, e in [("pca", pca), ("fe", fe), ("re", re)]}
    assert knn["fe"] < knn["pca"] - 0.03, knn
    assert asw["fe"] < asw["pca"], asw
    assert asw["re"] > asw["pca"] + 0.05 and asw["re"] > asw["fe"] + 0.1, asw


def planted_batches(n_cells, n_batches):
    """Synthetic cells with strong planted batch shifts (3 cell types in every batch), prepared and split:
    (adata, test mask, test cells' batches, test cells' cell types)."""
    adata = sm.datasets.synthetic(n_cells=n_cells, n_genes=60, n_batches=n_batches, n_celltypes=3,
                                  batch_genes=20, batch_effect=3.0, seed=1)
    sm.pp.prepare(adata, batch_key="batch", n_top_genes=1000)
    sm.pp.split_cells(adata, batch_key="batch", labels_key="celltype", fold=0)
    test = (adata.obs["split"] == "test").to_numpy()
    batch, cell_type = adata.obs["batch"].to_numpy()[test], adata.obs["celltype"].to_numpy()[test]
    return adata, test, batch, cell_type


def test_local_mixing_term_mixes_planted_batches_and_keeps_cell_types():
    """Known answer: 8 batches with strong planted shifts, which the adversary alone leaves in each cell's
    neighbourhood. The default FE (with its local-mixing term) against the same FE without it (w_mix=0), same
    seed and budget: fewer same-batch neighbours among the test cells, close to the value under perfect
    mixing, and the cell types as well separated. Both without the small-data guard (w_keep=0), to isolate the
    term."""
    adata, test, batch, cell_type = planted_batches(n_cells=1200, n_batches=8)
    knn, same_type = {}, {}
    for name, fe in (("mixing", {"w_keep": 0}), ("plain", {"w_mix": 0, "w_keep": 0})):   # the small-data guard off
        model = sm.SCMEDAL(adata, "batch", "celltype", seed=0, fe=fe, **SMALL)
        model.train(max_epochs=200, which=("fe",), progress=False)
        assert ("mix_loss" in model.history["fe"].columns) == (name == "mixing")
        z = model.get_latent("fe")[test]
        (knn[name], expected), same_type[name] = knn_same_batch_fraction(z, batch), \
            knn_same_batch_fraction(z, cell_type)[0]
    assert knn["mixing"] < knn["plain"] - 0.04, knn              # measured: 0.135 against 0.211
    assert knn["mixing"] < expected + 0.03, (knn, expected)      # perfect mixing: 0.123
    assert same_type["mixing"] > 0.97 and same_type["plain"] > 0.97, same_type


def test_neighbour_keeping_term_stops_mixing_from_merging_cell_types():
    """Known answer: planted batch effects, and batches that hold different cell types (type 2 only in batches
    4-7, type 3 only in 0-3), so mixing every neighbourhood fully would merge cell types. Pushed hard to mix
    (w_mix=1000), the FE latent merges them; with the label-free neighbour-keeping term (w_keep) it keeps more
    of each batch's own neighbourhoods (in the PCA of the expression) and far more of the cell types, and
    still mixes the batches (measured: same-type neighbours 0.54 -> 0.83, kept 0.70 -> 0.80)."""
    adata = sm.datasets.synthetic(n_cells=1600, n_genes=60, n_batches=8, n_celltypes=4, batch_genes=20,
                                  batch_effect=3.0, seed=1)
    b, t = adata.obs["batch"].cat.codes.to_numpy(), adata.obs["celltype"].cat.codes.to_numpy()
    adata = adata[~(((b < 4) & (t == 2)) | ((b >= 4) & (t == 3)))].copy()
    sm.pp.prepare(adata, batch_key="batch", n_top_genes=1000)
    sm.pp.split_cells(adata, batch_key="batch", labels_key="celltype", fold=0)
    test = (adata.obs["split"] == "test").to_numpy()
    batch, cell_type = adata.obs["batch"].to_numpy()[test], adata.obs["celltype"].to_numpy()[test]
    kept, knn, same_type = {}, {}, {}
    for name, fe in (("keeping", {"w_mix": 1000, "w_keep": 300}), ("plain", {"w_mix": 1000, "w_keep": 0})):
        model = sm.SCMEDAL(adata, "batch", "celltype", seed=0, fe=fe, **SMALL)
        model.train(max_epochs=200, which=("fe",), progress=False)
        assert ("keep_loss" in model.history["fe"].columns) == (name == "keeping")
        reference = PCA(20, random_state=0).fit_transform(model.scale()[test])
        z = model.get_latent("fe")[test]
        kept[name] = sm.metrics.within_batch_neighbours_kept(z, reference, batch)
        (knn[name], expected), same_type[name] = knn_same_batch_fraction(z, batch), \
            knn_same_batch_fraction(z, cell_type)[0]
    assert same_type["keeping"] > same_type["plain"] + 0.15, same_type
    assert kept["keeping"] > kept["plain"] + 0.05, kept
    assert knn["keeping"] < expected + 0.08, (knn, expected)     # correct mixing here: about 0.17


def test_batch_centring_term_removes_the_linear_batch_effect_and_keeps_cell_types():
    """Known answer: 30 batches with strong planted shifts and the same cell-type make-up, so a correct latent
    keeps no batch means apart. Against the adversary alone (w_mix=0), which leaves some of the shifts, the
    batch-centring term (w_center), same seed and budget, explains a far smaller share of the test cells'
    latent variance by their batch (measured: 0.061 -> 0.012) and separates the cell types as well."""
    adata, test, batch, cell_type = planted_batches(n_cells=3000, n_batches=30)
    share, same_type = {}, {}
    for name, fe in (("centring", {"w_mix": 0, "w_center": 30, "w_keep": 0}), ("plain", {"w_mix": 0, "w_keep": 0})):
        model = sm.SCMEDAL(adata, "batch", "celltype", seed=0, fe=fe, **SMALL)
        model.train(max_epochs=200, which=("fe",), progress=False)
        assert ("center_loss" in model.history["fe"].columns) == (name == "centring")
        z = model.get_latent("fe")[test]
        share[name] = sm.metrics.batch_variance_share(z, batch)
        same_type[name] = knn_same_batch_fraction(z, cell_type)[0]
    assert share["centring"] < 0.5 * share["plain"], share
    assert same_type["centring"] > 0.97 and same_type["plain"] > 0.97, same_type


def span(model):
    """Width of the min-max scaling: outputs in log units are the networks' outputs times this."""
    return float(np.max(model.minmax["max"]) - np.min(model.minmax["min"]))


def test_counterfactual_to_own_batch_is_the_reconstruction(trained, synth):
    cells = synth[synth.obs["batch"] == "batch2"][:40]
    recon = trained.get_reconstruction("re", cells)
    for mode in ("full", "decoder"):
        cf = trained.counterfactual(cells, batch="batch2", mode=mode)
        # another compiled function (encode then decode, not the whole call): float32 precision, not bitwise
        np.testing.assert_allclose(cf.X, recon, **model_tolerance(trained, span(trained)))
    assert list(cf.var_names) == list(synth.var_names)
    assert (cf.obs["target_batch"] == "batch2").all()


def test_counterfactual_moves_planted_genes_the_right_way(trained, synth):
    planted = synth.uns["planted"]
    source, target = "batch0", "batch3"
    cells = synth[synth.obs["batch"] == source]
    own = trained.get_reconstruction("re", cells)
    cf = trained.counterfactual(cells, batch=target).X
    shift = pd.Series((cf - own).mean(axis=0), index=synth.var_names)
    expected = pd.Series(0.0, index=synth.var_names)
    for b, sign in ((target, 1.0), (source, -1.0)):
        for gene, s in zip(planted[b]["genes"], planted[b]["signs"]):
            expected[gene] += sign * s
    moved = expected[expected != 0]
    agree = np.sign(shift[moved.index]) == np.sign(moved)
    assert agree.mean() >= 0.8, pd.DataFrame({"shift": shift[moved.index], "expected": moved})
    unplanted = shift[expected == 0].abs().mean()
    assert shift[moved.index].abs().mean() > 1.5 * unplanted


def test_counterfactual_modes_differ_and_units_are_log_expression(trained, synth):
    cells = synth[synth.obs["batch"] == "batch0"][:30]
    full = trained.counterfactual(cells, batch="batch1", mode="full").X
    dec = trained.counterfactual(cells, batch="batch1", mode="decoder").X
    default = trained.counterfactual(cells, batch="batch1")
    assert default.uns["scmedal_counterfactual"]["mode"] == "fe"       # the FE latent, target's random effects
    assert not np.allclose(full, dec) and not np.allclose(default.X, full)
    scaled = trained.counterfactual(cells, batch="batch1", mode="full", scaled=True).X
    lo, hi = float(synth.X.min()), float(synth.X.max())
    # one float32 multiply-add (scaled * span + lo) against the same in float64: a few ulps of the span
    np.testing.assert_allclose(full, scaled * (hi - lo) + lo, rtol=0,
                               atol=4 * np.finfo("float32").eps * max(np.abs(full).max(), hi - lo))


def test_counterfactual_several_batches_and_streaming_file(trained, synth, tmp_path):
    cells = synth[:25]
    stacked = trained.counterfactual(cells, batch=["batch0", "batch1"])
    assert stacked.n_obs == 50 and list(stacked.obs["target_batch"].cat.categories) == ["batch0", "batch1"]
    path = trained.write_counterfactuals(str(tmp_path / "cf.h5"), cells, ["batch0", "batch1"], chunk_size=7,
                                         progress=False)
    with h5py.File(path) as f:
        values = f["counterfactuals"][:]
        assert [b.decode() for b in f["batches"][:]] == ["batch0", "batch1"]
    # chunks of 7 cells against one call of 25: matrix products of other shapes are blocked differently (by
    # processor), so the two agree to float32 precision through the network, not bitwise (tests/precision.py)
    np.testing.assert_allclose(values[1], stacked[stacked.obs["target_batch"] == "batch1"].X,
                               **model_tolerance(trained, span(trained)))
    same = trained.write_counterfactuals(str(tmp_path / "cf7.h5"), cells, ["batch0", "batch1"], chunk_size=7,
                                         progress=False)
    with h5py.File(same) as f:                              # the same chunking: bitwise the same
        np.testing.assert_array_equal(f["counterfactuals"][:], values)
    with pytest.raises(sm.InputError, match="unknown to the model"):
        trained.counterfactual(cells, batch="nope")


def test_iter_counterfactuals_memory_is_bounded_by_chunk(trained, synth):
    sizes = {values.shape for _, _, values in trained.iter_counterfactuals(synth, chunk_size=100)}
    assert max(s[0] for s in sizes) <= 100


def test_unseen_batch_rules(trained, synth):
    cells = synth[:20].copy()
    cells.obs["batch"] = pd.Categorical(["new_sample"] * 20)
    with pytest.warns(sm.UnseenBatchWarning, match="never saw"):
        mean = trained.get_latent("re", cells, unseen="mean")
    with pytest.warns(sm.UnseenBatchWarning):
        prior = trained.get_latent("re", cells, unseen="prior")
    assert mean.shape == prior.shape == (20, 8) and np.isfinite(mean).all()
    assert not np.allclose(mean, prior)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trained.get_latent("fe", cells)          # FE needs no batch: no warning


def test_save_load_gives_identical_latents(trained, synth, tmp_path):
    path = trained.save(str(tmp_path / "run"))
    again = sm.SCMEDAL.load(path, synth)
    for kind in ("fe", "re"):
        np.testing.assert_array_equal(again.get_latent(kind), trained.get_latent(kind))
    assert again.batch_categories == trained.batch_categories
    pd.testing.assert_frame_equal(again.history["re"], trained.history["re"], check_dtype=False,
                                  check_index_type=False)
    with pytest.raises(sm.InputError, match="already exists"):
        trained.save(path)


def test_load_checks_genes(trained, synth, tmp_path):
    path = trained.save(str(tmp_path / "run"))
    with pytest.raises(sm.InputError, match="missing"):
        sm.SCMEDAL.load(path, synth[:, :30].copy())


def test_same_seed_same_result_and_different_seed_differs(synth):
    def run(seed):
        m = sm.SCMEDAL(synth, "batch", "celltype", seed=seed, **SMALL)
        m.train(max_epochs=3, progress=False)
        return m.get_latent("fe"), m.get_latent("re")

    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.allclose(a[0], c[0])


def test_faithful_trains_all_epochs_without_early_stopping(synth):
    m = sm.SCMEDAL(synth, "batch", "celltype", **SMALL)
    m.train(max_epochs=4, which=("fe",), faithful=True, patience=1, progress=False)
    assert m.trained["fe"]["epochs_run"] == 4 and m.trained["fe"]["early_stopping"] is False


def test_early_stopping_stops_and_restores_best(synth):
    m = sm.SCMEDAL(synth, "batch", "celltype", **SMALL)
    m.train(max_epochs=400, which=("re",), patience=2, learning_rate=0.05, progress=False)
    info, hist = m.trained["re"], m.history["re"]
    assert info["epochs_run"] < 400
    assert info["epochs_run"] - info["best_epoch"] == 2
    sources = m._inputs("re", synth, m.val_mask)
    val = m.networks["re"].loss_terms(tuple(src[np.arange(src.shape[0])] for src in sources), False)["loss"]
    assert float(val) == pytest.approx(hist["val_loss"].min(), rel=1e-3)


def test_min_improvement_ends_a_plateau_of_tiny_new_bests_and_restores_the_lowest_loss():
    """Known answer: after a real gain, new bests of 0.1 % each. With min_improvement 1 % they do not reset
    the patience, so training stops 3 epochs after the last 1 % gain; the weights restored are still the
    lowest loss's. Without it every new best resets the patience and the same losses never stop."""
    import keras

    from scmedal_lite.training import EarlyStopper

    class Net:
        def __init__(self):
            self.weights = [keras.Variable(np.zeros(2, "float32"))]

    losses = [1.0, 0.9, 0.8991, 0.8982, 0.8973, 0.8964]
    for margin, stops_at in ((0.01, 5), (0.0, None)):
        stopper, net, stopped = EarlyStopper(3, min_improvement=margin), Net(), None
        for epoch, value in enumerate(losses, 1):
            net.weights[0].assign(np.full(2, epoch, "float32"))
            if stopper.update(epoch, {"val_loss": value}, net):
                stopped = epoch
                break
        assert stopped == stops_at
        assert stopper.best_epoch == (stops_at or len(losses))
        stopper.restore_best(net)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(net.weights[0]), np.full(2, stopper.best_epoch))


def test_fe_stop_min_improvement_is_the_default_fe_design_and_checked(synth):
    """The default FE resets its patience only on a 0.3 % gain; the paper's presets count any new best."""
    assert sm.presets.PRESETS["default"]["fe_design"]["stop_min_improvement"] == 0.003
    assert sm.presets.PRESETS["paper"]["fe_design"]["stop_min_improvement"] == 0
    model = sm.SCMEDAL(synth, "batch", "celltype", **SMALL)
    assert model._build("fe").min_improvement == 0.003 and model._build("re").min_improvement == 0
    model = sm.SCMEDAL(synth, "batch", "celltype", fe_design={"stop_min_improvement": "0.05"}, **SMALL)
    assert model._build("fe").min_improvement == 0.05
    for bad, message in ((1.0, "below 1"), (-0.1, "stop_min_improvement"), ("x", "must be a number")):
        with pytest.raises(sm.InputError, match=message):
            sm.SCMEDAL(synth, "batch", "celltype", fe_design={"stop_min_improvement": bad})


def test_a_variational_fe_latent_trains_reloads_and_repeats(synth, tmp_path):
    """fe_design={"latent": "variational"}: off in every preset; trained, the latent is the posterior mean,
    so it is the same after a reload and for the same seed; a wrong value is refused by name."""
    assert all(p["fe_design"].get("latent", "point") == "point" for p in sm.presets.PRESETS.values())
    runs = []
    for _ in range(2):
        model = sm.SCMEDAL(synth, "batch", "celltype", seed=3, fe_design={"latent": "variational"}, **SMALL)
        model.train(max_epochs=5, which=("fe",), progress=False)
        runs.append(model.get_latent("fe", synth))
    assert "latent_kl" in model.history["fe"] and np.isfinite(model.history["fe"]["latent_kl"]).all()
    np.testing.assert_array_equal(runs[0], runs[1])
    model.save(str(tmp_path / "vae"))
    np.testing.assert_array_equal(sm.SCMEDAL.load(str(tmp_path / "vae"), synth).get_latent("fe", synth), runs[0])
    with pytest.raises(sm.InputError, match="latent"):
        sm.SCMEDAL(synth, "batch", "celltype", fe_design={"latent": "gaussian"})
    warm = sm.SCMEDAL(synth, "batch", "celltype", seed=3, fe_design={"latent": "variational", "kl_warmup": 0.5},
                      **SMALL)
    warm.train(max_epochs=4, which=("fe",), progress=False)
    steps = sm.training.steps_per_epoch(int(warm.train_mask.sum()), 512)
    assert warm.networks["fe"].kl_warmup_steps == round(0.5 * 4 * steps) > 0
    assert not np.array_equal(warm.get_latent("fe", synth), runs[0])
    with pytest.raises(sm.InputError, match="kl_warmup"):
        sm.SCMEDAL(synth, "batch", "celltype", fe_design={"kl_warmup": 0.5})


def test_mix_warmup_is_half_the_budget_by_default_and_checked(synth):
    """The default FE's mixing weight rises over the first half of the run's budget in steps; the paper's presets
    (no mixing term) and ``mix_warmup=0`` apply it from the first step; bad values are refused."""
    assert sm.presets.PRESETS["default"]["fe_design"]["mix_warmup"] == 0.5
    assert all(sm.presets.PRESETS[name]["fe_design"]["mix_warmup"] == 0 for name in ("paper", "AML", "ASD", "HH"))
    model = sm.SCMEDAL(synth, "batch", "celltype", seed=0, **SMALL)
    model.train(max_epochs=6, which=("fe",), progress=False)
    steps = sm.training.steps_per_epoch(int(model.train_mask.sum()), 512)
    assert model.networks["fe"].mix_warmup_steps == round(0.5 * 6 * steps)
    off = sm.SCMEDAL(synth, "batch", "celltype", seed=0, fe_design={"mix_warmup": 0}, **SMALL)
    off.train(max_epochs=2, which=("fe",), progress=False)
    assert off.networks["fe"].mix_warmup_steps == 0
    for bad, message in ((1.0, "below 1"), (-0.1, "mix_warmup"), ("x", "must be a number")):
        with pytest.raises(sm.InputError, match=message):
            sm.SCMEDAL(synth, "batch", "celltype", fe_design={"mix_warmup": bad})


def test_adversary_pass_is_shared_by_default_and_separate_for_the_paper_and_old_models(synth):
    """The default FE runs its encoder once per step; the paper's presets, and models saved before the setting
    existed (their fe_design lacks it), run it twice as the authors' code does."""
    assert sm.presets.PRESETS["default"]["fe_design"]["adversary_pass"] == "shared"
    assert all(sm.presets.PRESETS[name]["fe_design"]["adversary_pass"] == "separate"
               for name in ("paper", "AML", "ASD", "HH"))
    model = sm.SCMEDAL(synth, "batch", "celltype", **SMALL)
    assert model._build("fe").adversary_pass == "shared"
    assert sm.SCMEDAL(synth, "batch", "celltype", preset="paper", **SMALL)._build("fe").adversary_pass == "separate"
    del model.config["fe_design"]["adversary_pass"]              # as saved before the setting
    assert model._build("fe").adversary_pass == "separate"
    with pytest.raises(sm.InputError, match="adversary_pass"):
        sm.SCMEDAL(synth, "batch", "celltype", fe_design={"adversary_pass": "twice"})


def test_gene_moments_match_numpy_over_chunks_and_subsample():
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(1000, 7)).astype("float32")
    mean, std = gene_moments(x, chunk_size=64)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-5)
    pick = np.sort(np.random.default_rng(3).choice(1000, 300, replace=False))
    mean, std = gene_moments(x, max_cells=300, seed=3, chunk_size=64)
    np.testing.assert_allclose(mean, x[pick].mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, x[pick].std(0), rtol=1e-5)


def test_data_output_init_starts_re_at_the_data_scale_and_learns_faster(synth):
    """Known answer: the paper's output BatchNorm starts every gene at unit variance, 10x the spread of the
    min-max scaled data, so early reconstructions are far off; starting it at the data's moments is not."""
    runs = {}
    for init in ("paper", "data"):
        m = sm.SCMEDAL(synth, "batch", "celltype", re_design={"output_init": init}, **SMALL)
        m.train(max_epochs=15, which=("re",), early_stopping=False, progress=False)
        runs[init] = m
    net = runs["data"].networks["re"]
    x = runs["data"].scale(synth[runs["data"].train_mask])
    assert runs["data"].config["re_design"] == {"output_init": "data"}
    assert runs["paper"].config["re_design"] == {"output_init": "paper"}
    for preset in ("default", "AML"):                           # opt-in: the default keeps the authors' start
        assert sm.SCMEDAL(synth, "batch", preset=preset).config["re_design"] == {"output_init": "paper"}
    first = {k: float(m.history["re"]["recon_loss"].iloc[0]) for k, m in runs.items()}
    last = {k: float(m.history["re"]["val_recon_loss"].iloc[-1]) for k, m in runs.items()}
    spread = float(np.mean(x.var(0)))                          # MSE of predicting every gene's mean
    assert first["data"] < 3 * spread < 0.5 < first["paper"]   # ~2x spread (uncorrelated start) vs unit variance
    assert last["data"] < spread < last["paper"]               # after 15 epochs the paper's start is still worse
    assert last["data"] < 0.2 * last["paper"]                  # than predicting the mean
    gamma = net.decoder.csb[-1].norm.gamma.numpy()
    assert np.corrcoef(gamma, x.std(0))[0, 1] > 0.9             # trained from the data's scale, not from 1
    with pytest.raises(sm.InputError, match="output_init"):
        sm.SCMEDAL(synth, "batch", re_design={"output_init": "ones"})
    with pytest.raises(sm.InputError, match="Unknown re_design"):
        sm.SCMEDAL(synth, "batch", re_design={"init": "data"})


def test_step_budget_gives_small_data_more_epochs(synth):
    m = sm.SCMEDAL(synth, "batch", "celltype")
    assert m.epochs_for(600, 512) > m.epochs_for(60_000, 512)
    assert m.epochs_for(60_000, 512) >= m.config["schedule"]["min_epochs"]


def test_fec_head_and_paper_presets(synth):
    m = sm.SCMEDAL(synth, "batch", "celltype", fec=True, preset="AML", **SMALL)
    assert m.config["fec"] == {"w_recon": 2000.0, "w_gen": 0.5, "w_class": 3.0}
    m.train(max_epochs=2, which=("fe",), progress=False)
    assert {"class_loss", "class_acc", "adv_acc"} <= set(m.history["fe"].columns)
    with pytest.raises(sm.InputError, match="Unknown preset"):
        sm.SCMEDAL(synth, "batch", preset="XYZ")


def test_the_fec_heads_loss_weights_can_be_changed_through_fec(synth):
    """The FEC weights were documented as an override but the keyword ``fec`` is the head's switch, so
    ``fec={"w_class": 3}`` failed with "fec must be true or false"."""
    m = sm.SCMEDAL(synth, "batch", "celltype", fec={"w_class": 3}, **SMALL)
    assert m.config["fec_head"] and m.config["fec"]["w_class"] == 3.0
    assert m.config["fec"]["w_recon"] == sm.presets.get_preset("default")["fec"]["w_recon"]
    with pytest.raises(sm.InputError, match="w_clas"):
        sm.SCMEDAL(synth, "batch", "celltype", fec={"w_clas": 3}, **SMALL)
    with pytest.raises(sm.InputError, match="labels_key"):
        sm.SCMEDAL(synth, "batch", fec={"w_class": 3}, **SMALL)


def test_the_default_fec_head_weighs_the_labels_and_the_paper_keeps_its_weight(synth):
    """Stop 56: at the paper's w_class = 1 the labels lowered the FEC latent's scIB total on the pancreas atlas;
    the default's head weighs them 100 (book/method.md, "scVI and scANVI on the same cells, and the cell-type
    head's weight")."""
    assert sm.SCMEDAL(synth, "batch", "celltype", fec=True, **SMALL).config["fec"]["w_class"] == 100.0
    assert sm.SCMEDAL(synth, "batch", "celltype", fec=True, preset="paper", **SMALL).config["fec"]["w_class"] == 1.0


def test_random_effects_table(trained):
    table = trained.random_effects()
    assert set(table["batch"]) == set(trained.batch_categories)
    assert (table["mean_sd"] > 0).all() and table["layer"].nunique() == 10


def test_xla_training_option(synth):
    """XLA-compiled steps: same seed, identical result; and the same training as graph mode up to rounding."""
    latents = []
    for jit in ("true", True, False):
        m = sm.SCMEDAL(synth, "batch", "celltype", seed=0, **SMALL)
        m.train(max_epochs=3, which=("fe",), jit_compile=jit, progress=False)
        assert m.trained["fe"]["epochs_run"] == 3
        latents.append(m.get_latent("fe"))
    assert np.isfinite(latents[0]).all()
    np.testing.assert_array_equal(latents[0], latents[1])
    # XLA fuses and reorders float32 ops, and three epochs of training amplify those last-digit differences
    # (no a-priori bound through training): the same training up to rounding means nearly equal latents
    assert np.corrcoef(latents[0].ravel(), latents[2].ravel())[0, 1] > 0.999     # 0.99997 seen


def test_load_restores_split_masks_and_can_train_again(trained, synth, tmp_path):
    path = trained.save(str(tmp_path / "run"))
    again = sm.SCMEDAL.load(path, synth)
    np.testing.assert_array_equal(again.train_mask, trained.train_mask)
    np.testing.assert_array_equal(again.val_mask, trained.val_mask)
    again.train(max_epochs=1, which=("fe",), progress=False)
    assert again.trained["fe"]["epochs_run"] == 1
    with pytest.raises(sm.InputError, match="loaded without data"):
        sm.SCMEDAL.load(path).train(max_epochs=1)


def test_baseline_ae_trained_later_on_a_loaded_model_equals_ae_trained_with_fe(synth, tmp_path, monkeypatch):
    """Chapter 1 trains the plain AE on the loaded shared model (tutorial.train_baseline_ae): its budget is
    still the epochs FE trained to the weights it kept (its best epoch, not the patience after it), and its
    weights are those of an AE trained on the model that trained FE."""
    from scmedal_lite import tutorial

    fe = dict(which=("fe",), patience=2, learning_rate=1e-2, progress=False)     # stops early on these cells
    fe_only = sm.SCMEDAL(synth, "batch", "celltype", seed=0, **SMALL).train(20, **fe)
    best = fe_only.trained["fe"]["best_epoch"]
    assert best < fe_only.trained["fe"]["epochs_run"] < 20
    together = sm.SCMEDAL(synth, "batch", "celltype", seed=0, **SMALL).train(20, **fe)
    together.train(which=("ae",), progress=False)
    later = sm.SCMEDAL.load(fe_only.save(str(tmp_path / "shared")), synth)
    assert "ae" not in later.networks
    for name in tutorial.ENVIRONMENT.values():
        monkeypatch.delenv(name, raising=False)
    p = tutorial.Params.parse(notebook="01_batch_suppression", seed=0)
    assert p.epochs is None, "the package's budget, so the AE's is FE's epochs"
    assert tutorial.train_baseline_ae(later, p) is later
    assert later.trained["ae"]["max_epochs"] == together.trained["ae"]["max_epochs"] == best
    np.testing.assert_array_equal(later.get_latent("ae"), together.get_latent("ae"))
    weights = [w.copy() for w in later.networks["ae"].get_weights()]
    tutorial.train_baseline_ae(later, p)                     # has one: not trained again
    assert all(np.array_equal(a, b) for a, b in zip(weights, later.networks["ae"].get_weights()))


def test_weight_average_writes_the_moving_average_into_the_fe_weights_each_epoch(synth):
    """fe_design={"weight_average": m}: the FE autoencoder's optimiser keeps the moving average of its weights
    and writes it into them at every epoch's end, so the trained weights are that average; the adversary's
    optimiser and the default FE are plain Adam; bad momenta are refused with the fix."""
    import math

    def fit(**design):
        model = sm.SCMEDAL(synth, "batch", "celltype", seed=0, fe_design=design, **SMALL)
        return model.train(3, which=("fe",), early_stopping=False, progress=False)

    model = fit(weight_average=0.9)
    net = model.networks["fe"]
    steps = math.ceil(int(model.train_mask.sum()) / 512)
    assert net.optimizer.use_ema and net.optimizer.ema_momentum == 0.9
    assert net.optimizer.ema_overwrite_frequency == net.average_every == steps
    assert int(net.optimizer.iterations) == 3 * steps and not net.adv_optimizer.use_ema
    averages = [np.asarray(v) for v in net.optimizer._model_variables_moving_average]
    for weight, average in zip(net._ae_weights(), averages):
        np.testing.assert_array_equal(np.asarray(weight), average)      # written at the last epoch's end
    np.testing.assert_array_equal(fit(weight_average=0.9).get_latent("fe"), model.get_latent("fe"))
    plain = fit()
    assert not plain.networks["fe"].optimizer.use_ema
    assert not np.allclose(plain.get_latent("fe"), model.get_latent("fe"), atol=1e-3)
    assert sm.presets.PRESETS["paper"]["fe_design"]["weight_average"] == 0
    assert sm.presets.PRESETS["default"]["fe_design"]["weight_average"] == 0
    for bad, message in ((1.0, "below 1"), (-0.5, "weight_average"), ("x", "must be a number")):
        with pytest.raises(sm.InputError, match=message):
            sm.SCMEDAL(synth, "batch", "celltype", fe_design={"weight_average": bad})


def test_minibatch_bounds_cover_every_row_once_and_merge_only_a_small_rest():
    """Keras's rule by default (a last minibatch of whatever is left); with ``small_rest`` a rest below that
    fraction of a minibatch joins the last full one, and nothing else changes."""
    from scmedal_lite.training import minibatch_bounds

    for n in (1, 100, 511, 512, 513, 1028, 1400, 18_320):
        for rest in (0.0, 0.5):
            bounds = minibatch_bounds(n, 512, rest)
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))       # contiguous: every row once
            assert all(b - a == 512 for a, b in bounds[:-1])
    assert minibatch_bounds(1028, 512) == [(0, 512), (512, 1024), (1024, 1028)]
    assert minibatch_bounds(1028, 512, 0.5) == [(0, 512), (512, 1028)]
    assert minibatch_bounds(18_320, 512, 0.5) == minibatch_bounds(18_320, 512)   # a rest of 400: kept
    assert minibatch_bounds(100, 512, 0.5) == [(0, 100)]


def test_the_step_budget_counts_the_minibatches_an_epoch_really_has(synth, monkeypatch):
    """The epoch budget, the patience and the optimiser's step count all come from the same minibatches: with a
    small rest merged, 720 training cells make one step an epoch, not two."""
    from scmedal_lite import training

    model = sm.SCMEDAL(synth, "batch", "celltype", seed=0, **SMALL)
    n_train = int(model.train_mask.sum())
    assert n_train == 720 and training.steps_per_epoch(n_train, 512) == 2
    sched = model.config["schedule"]
    assert model.epochs_for(n_train, 512) == int(np.ceil(sched["max_steps"] / 2))
    monkeypatch.setattr(training, "SMALL_REST", 0.5)
    assert training.steps_per_epoch(n_train, 512) == 1
    settings = model._settings(None, None, None, True, None, None, kind="fe")
    assert settings.max_epochs == min(1000, sched["max_steps"])
    assert settings.patience == max(sched["patience"], sched["patience_steps"])
    model.train(3, which=("fe",), early_stopping=False, progress=False)
    assert int(model.networks["fe"].optimizer.iterations) == 3
