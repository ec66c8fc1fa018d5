"""``scmedal-lite apply``: a saved model on a new file (raw counts, a held-out batch and cells of known ones)
writes every output, leaves the input untouched, and refuses bad input with one clear line (exit status 2)."""

import hashlib
import json
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest

import scmedal_lite as sm
from scmedal_lite import cli


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def saved(trained, synth, tmp_path_factory):
    """The shared small model (conftest), saved; the new file holds raw counts of some of its cells, all
    genes, with the batch in another column: batch3's cells renamed ``new`` (a batch to estimate) and batch0's
    (a known batch)."""
    root = tmp_path_factory.mktemp("apply")
    trained.save(root / "model")
    batch = synth.obs["batch"].astype(str)
    keep = batch.isin(["batch0", "batch3"]).to_numpy() & (synth.obs["split"] != "train").to_numpy()
    obs = pd.DataFrame({"donor": batch[keep].replace("batch3", "new").to_numpy(),
                        "celltype": synth.obs["celltype"][keep].to_numpy()}, index=synth.obs_names[keep])
    new = anndata.AnnData(synth.layers["counts"][keep].copy(), obs=obs, var=pd.DataFrame(index=synth.var_names))
    new.write_h5ad(root / "new.h5ad")
    return root, trained


def apply_args(root, out, *extra):
    return ["apply", str(root / "model"), str(root / "new.h5ad"), "--batch-key", "donor", "--out", str(out),
            "--quiet", *extra]


def test_apply_writes_everything_and_leaves_the_input_alone(saved, tmp_path):
    root, model = saved
    before = sha256(root / "new.h5ad")
    out = tmp_path / "applied"
    assert cli.main(apply_args(root, out, "--labels-key", "celltype", "--counterfactuals", "batch1,new",
                               "--max-epochs", "5")) == 0
    assert sha256(root / "new.h5ad") == before, "the input file must never change"
    new = anndata.read_h5ad(root / "new.h5ad")
    result = anndata.read_h5ad(out / "latents.h5ad")
    assert result.n_obs == new.n_obs and list(result.var_names) == list(new.var_names)
    for key in ("X_scMEDAL_FE", "X_scMEDAL_RE"):
        assert result.obsm[key].shape == (new.n_obs, 8) and np.isfinite(result.obsm[key]).all()
    scores = pd.read_csv(out / "scores.csv")
    assert {"knn_batch_fraction", "asw", "nmi"} <= set(scores["metric"]) and np.isfinite(scores["value"]).all()
    with h5py.File(out / "counterfactuals.h5") as f:
        assert f["counterfactuals"].shape == (2, new.n_obs, len(model.var_names))
        assert [b.decode() for b in f["batches"]] == ["batch1", "new"]
    loaded = sm.SCMEDAL.load(str(out / "model"))
    assert loaded.batch_categories == model.batch_categories + ["new"]
    info = json.loads((out / "apply.json").read_text())
    assert info["new_batches"] == ["new"] and info["known_batches"] == ["batch0"] and info["input_sha256"] == before
    assert info["cells"] == new.n_obs and info["genes_used"] == len(model.var_names)
    report = (out / "report.md").read_text()
    assert "treated as known" in report and "new batches (1): new" in report
    assert info["known_batches_suspicious"] == [], "batch0's cells look like batch0"


def test_only_known_batches_is_not_an_error(saved, tmp_path):
    root, model = saved
    new = anndata.read_h5ad(root / "new.h5ad")
    known = new[new.obs["donor"] == "batch0"].copy()
    known.write_h5ad(tmp_path / "known.h5ad")
    out = tmp_path / "out"
    run_like = tmp_path / "run" / "model"             # `scmedal-lite run` keeps it as model/scmedal-<fingerprint>
    model.save(run_like / "scmedal-0123456789abcdef")
    argv = ["apply", str(run_like), str(tmp_path / "known.h5ad"), "--batch-key", "donor", "--out", str(out),
            "--quiet"]
    assert cli.main(argv) == 0
    info = json.loads((out / "apply.json").read_text())
    assert info["new_batches"] == [] and "add_batches" not in info["seconds"]
    assert "nothing to estimate" in (out / "report.md").read_text()
    assert pd.read_csv(out / "scores.csv").empty                # one batch: no mixing scores


def test_bad_input_exits_2_with_one_line(saved, tmp_path, capsys):
    root, model = saved
    new = anndata.read_h5ad(root / "new.h5ad")
    few = new[:, new.var_names[:40]].copy()
    few.write_h5ad(tmp_path / "few_genes.h5ad")
    argv = ["apply", str(root / "model"), str(tmp_path / "few_genes.h5ad"), "--batch-key", "donor",
            "--out", str(tmp_path / "o1")]
    missing = len(set(model.var_names) - set(few.var_names))
    cases = [(argv, f"{missing} of the model's {len(model.var_names)} genes are missing"),
             (apply_args(root, tmp_path / "o2", "--batch-key", "sample"), "--batch-key 'sample' is not a column"),
             (apply_args(root, tmp_path / "o3", "--counterfactuals", "b9"), "--counterfactuals"),
             (["apply", str(tmp_path), str(root / "new.h5ad"), "--batch-key", "donor", "--out",
               str(tmp_path / "o4")], "not a saved model")]
    for argv, expected in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
    assert not any(p.name.startswith("o") for p in tmp_path.iterdir()), "nothing written on bad input"
