"""Tests for scmedal_lite.metrics.scib_benchmark, the wrapper of scib-metrics' Benchmarker (optional extra).

The missing-package message is always tested; the rest runs only where scib-metrics is importable (it is not
in the default environment: ``pip install "scmedal_lite[scib]"``). With it, a run takes about a minute on
2 cores, mostly jax compiling its functions once per process.
"""

import sys

import anndata
import numpy as np
import pandas as pd
import pytest

from scmedal_lite import metrics


def planted(n_per=60, n_types=3, n_batches=3, dim=10, seed=0):
    """Cell types as clusters; one embedding mixes the batches, the other moves each batch far away."""
    rng = np.random.default_rng(seed)
    ct = np.repeat(np.arange(n_types), n_per * n_batches)
    batch = np.tile(np.arange(n_batches), n_per * n_types)
    centers = rng.normal(scale=6.0, size=(n_types, dim))
    mixed = centers[ct] + rng.normal(size=(len(ct), dim))
    shift = np.zeros((n_batches, dim))
    shift[:, 0] = 40.0 * np.arange(n_batches)
    separated = mixed + shift[batch]
    expr = np.abs(separated @ rng.normal(size=(dim, 40)))            # "unintegrated expression"
    obs = pd.DataFrame({"donor": pd.Categorical([f"d{b}" for b in batch]),
                        "cell_type": pd.Categorical([f"t{c}" for c in ct])},
                       index=[f"c{i}" for i in range(len(ct))])
    adata = anndata.AnnData(expr.astype(np.float32), obs=obs)
    adata.obsm["X_mixed"], adata.obsm["X_separated"] = mixed, separated
    return adata


def test_missing_scib_metrics_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "scib_metrics", None)           # import scib_metrics -> ImportError
    with pytest.raises(ImportError, match=r'pip install "scmedal_lite\[scib\]"'):
        metrics.scib_benchmark(planted(n_per=10), ["X_mixed"], "donor", "cell_type")


def test_mixed_embedding_beats_separated_one_on_batch_correction():
    pytest.importorskip("scib_metrics")
    adata = planted()
    df = metrics.scib_benchmark(adata, ["X_mixed", "X_separated"], "donor", "cell_type")
    assert list(df.index) == ["X_mixed", "X_separated"] and df.index.name == "embedding"
    assert list(df.columns[-3:]) == list(metrics.SCIB_AGGREGATES)
    assert {"BRAS", "iLISI", "KBET", "Graph connectivity", "PCR comparison", "Isolated labels",
            "Silhouette label", "cLISI"} <= set(df.columns)
    assert df.attrs["metric_type"]["iLISI"] == "Batch correction"
    assert np.isfinite(df[list(metrics.SCIB_AGGREGATES)].to_numpy()).all()
    mixed, separated = df.loc["X_mixed"], df.loc["X_separated"]
    assert mixed["Batch correction"] > separated["Batch correction"] + 0.3
    assert mixed["iLISI"] > 0.8
    assert separated["iLISI"] < 0.2
    assert mixed["Bio conservation"] > 0.7
    assert mixed["Total"] > separated["Total"]
    # unscaled: Total is 0.4 / 0.6 of the two group means, each the mean of its five metrics
    kinds = pd.Series(df.attrs["metric_type"])
    for group in ("Batch correction", "Bio conservation"):
        assert mixed[group] == pytest.approx(mixed[kinds[kinds == group].index].mean())
    assert mixed["Total"] == pytest.approx(0.4 * mixed["Batch correction"] + 0.6 * mixed["Bio conservation"])

    tidy = metrics.scib_benchmark(adata, ["X_mixed"], "donor", "cell_type", pre_integrated_key="X_separated",
                                  subsample=150, seed=1, tidy=True)
    assert list(tidy.columns) == ["embedding", "metric", "label", "value"]
    assert set(tidy["label"]) == {"Batch correction", "Bio conservation", "Aggregate score"}
    assert len(tidy) == len(df.columns)


def test_hand_written_scib_scores_equal_scib_metrics():
    """batch_asw_scib and celltype_asw_scib earn their names: they equal scib-metrics' silhouettes."""
    scib_metrics = pytest.importorskip("scib_metrics")
    adata = planted(n_per=20, seed=3)
    X = adata.obsm["X_mixed"] + 2.0 * (adata.obs["donor"].cat.codes.to_numpy()[:, None] == 1)
    batch, ct = adata.obs["donor"].to_numpy(), adata.obs["cell_type"].to_numpy()
    ours = metrics.score_embeddings({"X": X}, batch, ct, metrics=["batch_asw_scib", "celltype_asw_scib"])
    v = dict(zip(ours["metric"], ours["value"]))
    assert v["batch_asw_scib"] == pytest.approx(float(scib_metrics.silhouette_batch(X, ct, batch)), abs=1e-5)
    assert v["celltype_asw_scib"] == pytest.approx(float(scib_metrics.silhouette_label(X, ct)), abs=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"obsm_keys": ["X_nope"]}, "'X_nope' is not a key of adata.obsm"),
    ({"obsm_keys": ["X_mixed", "X_mixed"]}, "distinct"),
    ({"batch_key": "nope"}, "batch_key 'nope'"),
    ({"subsample": 50}, "more than 90 cells"),
])
def test_bad_input_is_named(kwargs, match):
    pytest.importorskip("scib_metrics")
    args = {"obsm_keys": ["X_mixed"], "batch_key": "donor", "labels_key": "cell_type"} | kwargs
    with pytest.raises(ValueError, match=match):
        metrics.scib_benchmark(planted(n_per=20), **args)



def test_benchmarker_forces_no_full_collections_and_scores_are_unchanged(monkeypatch):
    """scib-metrics' gc.collect() before every metric must not walk the whole heap of a notebook's process."""
    pytest.importorskip("scib_metrics")
    import gc

    from scib_metrics.benchmark import _core

    adata = planted(n_per=20)
    keys = ["X_mixed", "X_separated"]
    with monkeypatch.context() as m:
        m.setattr(metrics, "_benchmarker_collections_skipped", __import__("contextlib").nullcontext)
        forced = metrics.scib_benchmark(adata, keys, "donor", "cell_type")
    calls = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(a) or collect(*a))
    skipped = metrics.scib_benchmark(adata, keys, "donor", "cell_type")
    assert calls == []
    assert _core.gc is gc                                  # restored afterwards
    pd.testing.assert_frame_equal(skipped, forced)


def test_umap_graph_in_numpy_gives_the_scores_of_umap_learns(monkeypatch):
    """kBET's fuzzy graph built by knn_graph.umap_graph (no numba compiling) must not move any score."""
    pytest.importorskip("scib_metrics")
    from scib_metrics.nearest_neighbors import _dataclass

    original = _dataclass.fuzzy_simplicial_set
    adata = planted(n_per=20)
    keys = ["X_mixed", "X_separated"]
    numpy_graph = metrics.scib_benchmark(adata, keys, "donor", "cell_type")
    assert _dataclass.fuzzy_simplicial_set is original                 # restored afterwards
    monkeypatch.setattr(metrics, "_umap_graph_in_numpy", lambda *a: __import__("contextlib").nullcontext())
    umap_learn = metrics.scib_benchmark(adata, keys, "donor", "cell_type")
    pd.testing.assert_frame_equal(numpy_graph, umap_learn)
