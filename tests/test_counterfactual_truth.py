"""Counterfactuals against a known answer: real COVID PBMC cells with a planted effect (scmedal_lite.simulate).

A few CPU minutes: 2,400 real cells of the 200 most often detected genes, split at random into batches A and B;
B carries log2 fold changes of 1 to 2.5 on 10 % of the genes, each only in half of the cell types. Predicting
A's cells as if measured in B must move the planted genes by their planted shift. The paper's swap of the batch
in the RE network (``mode="full"``) fails this test; the default (``mode="fe"``) passes it.
"""

import numpy as np
import pandas as pd
import pytest

import scmedal_lite as sm
from scmedal_lite import simulate


@pytest.fixture(scope="module")
def planted():
    base = sm.datasets.covid_pbmc()
    detected = np.asarray((base.X > 0).mean(axis=0)).ravel()
    genes = np.sort(np.argsort(-detected)[:200])
    rng = np.random.default_rng(0)
    base = base[np.sort(rng.choice(base.n_obs, 2400, replace=False))][:, genes].copy()
    adata, info = simulate.two_batches(base, fraction=0.1, lfc_range=(1.0, 2.5), celltype_key="celltype_coarse",
                                       seed=0)
    sm.pp.prepare(adata, batch_key="batch")
    sm.pp.split_cells(adata, batch_key="batch", labels_key="celltype_coarse")
    model = sm.SCMEDAL(adata, "batch", "celltype_coarse", hidden=[128, 64], latent_dim=16, seed=0)
    model.train(progress=False)
    return adata, info, model


def _scores(adata, info, model, mode):
    kind = "fe" if mode == "fe" else "re"
    return simulate.evaluate_counterfactuals(
        adata, lambda sub, t: model.counterfactual(sub, t, mode=mode).X,
        lambda sub: model.get_reconstruction(kind, sub), info["pairs"], info["planted_genes"])


def test_truth_counts_are_the_cell_with_the_target_effect():
    base = sm.datasets.synthetic(300, 20, n_batches=2, seed=0)
    effects = pd.DataFrame(0.0, index=["A", "B"], columns=base.var_names)
    effects.loc["B", "gene3"] = 2.0                             # x4 in B
    adata = simulate.plant(base, np.repeat(["A", "B"], 150), effects, seed=0)
    base_counts = adata.layers[simulate.BASE_LAYER].toarray()
    a_cells = adata.obs_names[:150]
    np.testing.assert_array_equal(adata.X[:150].toarray(), base_counts[:150])          # A: nothing planted
    in_a = simulate.truth_counts(adata, a_cells, "A").toarray()
    np.testing.assert_array_equal(in_a, base_counts[:150])                             # own batch: itself
    in_b = simulate.truth_counts(adata, a_cells, "B").toarray()
    others = [g for g in range(20) if g != 3]
    np.testing.assert_array_equal(in_b[:, others], base_counts[:150, others])
    assert in_b[:, 3].sum() == pytest.approx(4 * base_counts[:150, 3].sum(), rel=0.1)
    thinned = simulate.resample_counts(base_counts, np.full(20, 0.25), np.random.default_rng(0)).toarray()
    assert (thinned <= base_counts).all() and thinned.sum() == pytest.approx(0.25 * base_counts.sum(), rel=0.05)


def test_default_counterfactual_recovers_the_planted_shift(planted):
    adata, info, model = planted
    fe = _scores(adata, info, model, "fe")
    assert (fe["r2_planted"] > fe["r2_no_change_planted"]).all(), fe
    assert (fe["r2_planted"] >= 0.9).all(), fe
    assert fe["slope_planted"].between(0.7, 1.3).all(), fe


def test_the_papers_swap_misses_it(planted):
    adata, info, model = planted
    full = _scores(adata, info, model, "full")
    assert not ((full["r2_planted"] >= 0.9) & full["slope_planted"].between(0.7, 1.3)).all(), full
