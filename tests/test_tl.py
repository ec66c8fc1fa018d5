"""AnnData in and out (sm.tl), the settings (nothing happens at import), provenance, the model's summary, and
sm.pl on AnnData and models."""

import json
import os
import subprocess
import sys

import anndata
import numpy as np
import pytest
from matplotlib.figure import Figure

import scmedal_lite as sm
from scmedal_lite import tutorial


def test_import_changes_nothing_outside_the_package():
    """A fresh interpreter: importing scmedal_lite sets no environment variable, no logger level, and does not
    start TensorFlow (so nor its op determinism)."""
    code = """
import json, logging, os, sys
env = dict(os.environ)
levels = {n: logging.getLogger(n).level for n in ("tensorflow", "absl", "scmedal_lite", "")}
import scmedal_lite as sm
sm.settings, sm.versions()
print(json.dumps({"env": dict(os.environ) == env, "tf": "tensorflow" in sys.modules,
                  "levels": {n: logging.getLogger(n).level for n in levels} == levels,
                  "handlers": logging.getLogger("scmedal_lite").handlers == []}))
"""
    env = {k: v for k, v in os.environ.items()
           if k not in ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL") and not k.startswith("POT_BACKEND")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"env": True, "tf": False, "levels": True,
                                                                 "handlers": True}


def test_settings_apply_only_when_set():
    import logging

    s = sm.settings
    saved = (s.verbosity, s.progress)
    try:
        s.verbosity = "info"
        assert logging.getLogger("scmedal_lite").level == logging.INFO
        s.verbosity = 0
        assert s.verbosity == "error" and logging.getLogger("tensorflow").level == logging.ERROR
        s.configure(progress=False)
        assert s.progress is False
        with pytest.raises(ValueError):
            s.verbosity = "loud"
        with pytest.raises(TypeError):
            s.progress = "yes"
    finally:
        s.configure(verbosity=saved[0], progress=saved[1])


def test_training_is_deterministic_by_default_and_can_opt_out():
    """Importing does not turn op determinism on; seeding a training does, unless the user opted out."""
    code = """
import json
import scmedal_lite as sm
from tensorflow.python.framework import config
from scmedal_lite.training import seed_everything
seen = [config.is_op_determinism_enabled()]
seed_everything(0)
seen.append(config.is_op_determinism_enabled())
sm.settings.deterministic = False
seed_everything(0)
seen.append(config.is_op_determinism_enabled())
print(json.dumps(seen))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [False, True, False]


def test_versions_name_the_main_dependencies():
    v = sm.versions()
    assert v["scmedal_lite"] == sm.__version__
    for name in ("tensorflow", "keras", "scanpy", "anndata", "numpy", "genomap"):
        assert v[name] not in ("", None), name


def test_latent_writes_obsm_and_uns_and_saves(synth, trained, tmp_path):
    adata = synth.copy()
    assert sm.tl.latent(trained, adata, kind="fe") is None
    trained.add_latent("re", adata, key_added="my_re")
    np.testing.assert_array_equal(adata.obsm["X_scMEDAL_FE"], trained.get_latent("fe", adata))
    assert adata.obsm["my_re"].shape == (adata.n_obs, trained.config["latent_dim"])
    info = adata.uns["scmedal"]
    assert set(info["latents"]) == {"X_scMEDAL_FE", "my_re"} and info["latents"]["my_re"]["kind"] == "re"
    assert info["model"]["batch_key"] == "batch" and info["versions"]["tensorflow"]
    assert "prepare" in info, "pp.prepare's record is kept"
    adata.write_h5ad(tmp_path / "a.h5ad")                 # everything under uns["scmedal"] can be saved
    back = anndata.read_h5ad(tmp_path / "a.h5ad")
    assert back.uns["scmedal"]["versions"]["scmedal_lite"] == sm.__version__
    copy = sm.tl.latent(trained, synth, kind="re", copy=True)
    assert "X_scMEDAL_RE" in copy.obsm and "X_scMEDAL_RE" not in synth.obsm
    with pytest.raises(sm.InputError):
        sm.tl.latent(trained, adata, kind="xx")


def test_view_setup_and_repr(trained, capsys):
    trained.view_setup()
    text = capsys.readouterr().out
    for needle in ("60 genes" if len(trained.var_names) == 60 else "genes", "'batch'", "4 training batches",
                   "'celltype'", "train", "FE:", "RE:"):
        assert needle in text, needle
    r = repr(trained)
    assert "cells" in r and "batches of 'batch'" in r and "labels of 'celltype'" in r and "FE" in r


def test_pl_takes_adata_and_the_model(synth, trained):
    adata = synth[:300].copy()
    sm.tl.latent(trained, adata, kind="fe")
    fig = sm.pl.umaps(adata, "X_scMEDAL_FE", color=["batch", "celltype"])
    assert isinstance(fig, Figure) and fig.axes[0].get_title() == "scMEDAL_FE: batch"
    with pytest.raises(sm.InputError, match="obsm key"):
        sm.pl.umaps(adata, "X_missing", color="batch")
    for fig in (sm.pl.plot_history(trained), sm.pl.plot_random_effects(trained),
                sm.pl.plot_random_effects(trained.random_effects()), sm.pl.plot_batch_uncertainty(trained)):
        assert isinstance(fig, Figure)
    cf = trained.counterfactual(adata[:20], batch=trained.batch_categories[:2])
    table = sm.pl.counterfactual_means(cf)
    assert list(table.columns) == [f"as {b}" for b in trained.batch_categories[:2]]
    assert isinstance(sm.pl.plot_counterfactual_means(cf), Figure)


def test_quickstart_calls_give_the_shared_model_fingerprint(tmp_path):
    """Notebook 00 makes load_data's calls in the open; both must give the same cells, genes and split, so
    the chapters share one model."""
    from test_notebooks import other_h5ad

    path = other_h5ad(tmp_path / "other.h5ad")
    p = tutorial.Params.parse(data_path=str(path), batch_key="donor", labels_key="cell_label",
                              condition_key="disease", output_dir=str(tmp_path / "out"), quick=True)
    adata = tutorial.read_input(p)                        # notebook 00's cell
    if sm.validate.looks_like_counts(adata):
        sm.pp.prepare(adata, batch_key=p.batch_key)
    else:
        tutorial.select_genes(adata)
    sm.pp.split_cells(adata, batch_key=p.batch_key, labels_key=p.labels_key)
    assert tutorial.fingerprint(adata, p) == tutorial.fingerprint(tutorial.load_data(p), p)
    assert p.describe().loc["data_path", "value"] == os.path.join("..", "other.h5ad")
    assert str(tmp_path) not in p.describe().to_string()


def test_precompile_umap_leaves_the_compiled_code_a_first_umap_would_compile(tmp_path):
    """make install runs sm.pl.precompile_umap: in a fresh numba cache it writes umap-learn's and pynndescent's
    compiled code, which a chapter's first UMAP then loads; after it a UMAP compiles nothing of theirs again."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}

    def cached():
        return sorted(p.name for p in (tmp_path / "numba").rglob("*.nb[ic]")     # index and code per signature
                      if p.parent.name.split("_")[0] in ("umap", "pynndescent"))

    subprocess.run([sys.executable, "-c", "import scmedal_lite as sm; sm.pl.precompile_umap()"], env=env,
                   check=True, capture_output=True)
    after_install = cached()
    assert any(n.startswith("layouts.") for n in after_install) and len(after_install) > 40
    code = ("import numpy as np, scmedal_lite as sm; "
            "sm.pl.umap(np.random.default_rng(3).normal(size=(300, 10)).astype('float32'))")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    assert cached() == after_install, "a chapter's first UMAP compiled and cached more code"


def test_fuzzy_neighbour_graph_is_scanpys_umap_graph():
    """sm.pl.umap builds UMAP's neighbour graph in NumPy (scanpy's numba version compiles for ~8 s in every
    kernel): on data without duplicate cells it equals scanpy's pp.neighbors graph; duplicates get weight 1."""
    import warnings

    import anndata
    import scanpy as sc

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=(150, 10)), rng.normal(loc=2.0, size=(150, 10))]).astype("float32")
    ref = anndata.AnnData(np.zeros((300, 1), "float32"), obsm={"X_emb": x})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.neighbors(ref, n_neighbors=15, use_rep="X_emb", random_state=0)
    distances, connectivities = sm.pl.fuzzy_neighbour_graph(x, 15)
    assert connectivities.nnz == ref.obsp["connectivities"].nnz
    assert abs(connectivities - ref.obsp["connectivities"]).max() < 1e-5
    assert abs(distances - ref.obsp["distances"]).max() < 1e-5

    x[1] = x[0]                                           # a duplicated cell: its twin is its nearest neighbour
    _, c = sm.pl.fuzzy_neighbour_graph(x, 15)
    assert c[0, 1] == pytest.approx(1.0) and c[0, 0] == 0 and c[1, 1] == 0
    assert abs(c - c.T).max() < 1e-6 and c.max() <= 1.0
    with pytest.raises(sm.InputError, match="n_neighbors"):
        sm.pl.fuzzy_neighbour_graph(x[:5], 15)
    xy = sm.pl.umap(x)
    assert xy.shape == (300, 2) and np.isfinite(xy).all()
    np.testing.assert_array_equal(xy, sm.pl.umap(x))     # same input, same layout
