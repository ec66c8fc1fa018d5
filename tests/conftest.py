"""Shared fixtures: small synthetic data with a planted batch effect, and a tiny trained model."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")
os.environ.setdefault("POT_BACKEND_DISABLE_PYTORCH", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import pytest  # noqa: E402

import scmedal_lite as sm  # noqa: E402

# Same seed, same numbers: the tests compare runs bitwise (resume, XLA, seeds), so they ask for TensorFlow's
# deterministic ops, as the notebooks and the command line do; importing the package does not turn them on.
sm.settings.deterministic = True

SMALL = dict(hidden=[64, 32], latent_dim=8)


@pytest.fixture(scope="session")
def synth():
    """1,200 cells x 60 genes, 4 batches, 3 cell types, planted batch shifts; prepared and split 60/20/20."""
    adata = sm.datasets.synthetic(n_cells=1200, n_genes=60, n_batches=4, n_celltypes=3, batch_genes=8,
                                  batch_effect=1.5, seed=1)
    sm.pp.prepare(adata, batch_key="batch", n_top_genes=1000)
    sm.pp.split_cells(adata, batch_key="batch", labels_key="celltype", fold=0)
    return adata


@pytest.fixture(scope="session")
def trained(synth):
    """A small SCMEDAL (FE + RE) trained on the synthetic data."""
    model = sm.SCMEDAL(synth, "batch", "celltype", seed=0, **SMALL)
    model.train(max_epochs=400, progress=False)
    return model
