"""The integration benchmark's report (benchmarks/integration.py): what its tables say about the code version."""

import importlib.util
import os

import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))


def _integration():
    spec = importlib.util.spec_from_file_location(
        "integration_benchmark", os.path.join(HERE, "..", "benchmarks", "integration.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_commit_that_looks_like_a_number_is_written_as_it_is(tmp_path):
    """Commit 4227e83 came out of the table as 4.227e+86 (tabulate read it as a float), and --merge read it
    back from the csv as a float too."""
    integration = _integration()
    df = pd.DataFrame({"dataset": "d", "method": ["fe", "pca"], "metric": "knn_batch_fraction",
                       "label": "batch", "value": [0.05, 0.2], "commit": ["4227e83", "21157ae"]})
    markdown = integration.dataset_table(df).to_markdown(index=False)
    assert "`4227e83`" in markdown and "e+86" not in markdown
    df.to_csv(tmp_path / "old.csv", index=False)
    assert integration.read_results(str(tmp_path / "old.csv")).commit.tolist() == ["4227e83", "21157ae"]


def test_the_reported_command_can_be_pasted_back_with_its_json_overrides():
    """A report wrote `--overrides {"schedule": {"batch_size": 2048}}` unquoted, which a shell splits apart."""
    import shlex

    argv = ["--datasets", "covid", "--overrides", '{"schedule": {"batch_size": 2048}}']
    command = _integration().command_line(argv)
    assert shlex.split(command)[2:] == argv


def test_scvi_on_the_networks_input_is_fit_on_the_scaled_matrix_with_a_gaussian_likelihood(monkeypatch):
    """`scvi_scaled` must see what the networks see (not the counts) and model it with a normal likelihood;
    with run_baselines' defaults it would be plain scVI on the counts, and the comparison would mean nothing."""
    import anndata
    import numpy as np

    from scmedal_lite import baselines

    integration = _integration()
    seen = {}

    def fake_scvi(adata, **kwargs):
        seen.update(kwargs)
        return np.zeros((adata.n_obs, 2), dtype="float32")

    monkeypatch.setattr(baselines, "scvi", fake_scvi)
    monkeypatch.setitem(integration.BASELINE_MODULES, "scvi_scaled", "numpy")   # scvi-tools need not be here
    scaled = np.random.default_rng(0).random((6, 3)).astype("float32")
    adata = anndata.AnnData(X=scaled * 10, layers={"scaled": scaled, "counts": scaled * 100},
                            obs=pd.DataFrame({"split": ["train"] * 4 + ["test"] * 2, "b": list("aabbab")},
                                             index=[f"c{i}" for i in range(6)]))
    emb, _, _ = integration._run_baseline(adata, "scvi_scaled", {"batch_key": "b", "labels_key": "b"}, seed=3)
    assert emb.shape == (6, 2)
    assert seen["counts_layer"] is None and seen["model_kwargs"] == {"gene_likelihood": "normal"}
    np.testing.assert_array_equal(seen["x"], scaled)
    np.testing.assert_array_equal(seen["train_mask"], [True] * 4 + [False] * 2)
    assert seen["batch_key"] == "b" and seen["seed"] == 3


def test_the_pearson_input_comes_from_the_counts_and_is_non_negative():
    """`--input pearson` replaces the log expression with residuals of the counts layer; the package refuses
    negative input, so they are shifted by the clip, and a shift is all that separates them from scanpy's."""
    import anndata
    import numpy as np
    import scanpy as sc

    integration = _integration()
    counts = np.random.default_rng(1).poisson(lam=np.linspace(0.2, 30, 8), size=(40, 8)).astype("float32")
    counts[0, 0] = 500                                        # a residual above the clip, to be cut
    adata = anndata.AnnData(X=np.log1p(counts), layers={"counts": counts})
    out = integration.pearson_input(adata)
    reference = anndata.AnnData(X=counts.copy())
    sc.experimental.pp.normalize_pearson_residuals(reference, theta=100, clip=np.inf)
    clip = integration.PEARSON_CLIP
    assert out.shape == counts.shape and out.min() >= 0 and out.max() <= 2 * clip
    np.testing.assert_allclose(out, np.clip(reference.X, -clip, clip) + clip, rtol=1e-5, atol=1e-5)
    assert np.abs(reference.X).max() > clip                   # the clip was exercised
