"""The tutorial notebooks: all pass under nbmake in quick mode, and papermill runs them on another file with
other column names (parameters passed as strings, as from ``papermill -p`` or the command line)."""

import ast
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import anndata
import nbformat
import pytest
from papermill.translators import PythonTranslator

import scmedal_lite as sm
from scmedal_lite import tutorial
from scmedal_lite.cli import WITHOUT_MODEL
from scmedal_lite.validate import InputError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def quick_env(tmp_path_factory, name: str) -> dict:
    """Environment of a quick run; the model folder is shared by every test of the session (one training)."""
    base = tmp_path_factory.getbasetemp()
    model_dir = base / "shared_quick_model"
    model_dir.mkdir(exist_ok=True)
    out = base / name
    out.mkdir(exist_ok=True)
    env = dict(os.environ, SCMEDAL_QUICK="1", SCMEDAL_MODEL_DIR=str(model_dir), SCMEDAL_OUTPUT_DIR=str(out),
               TF_CPP_MIN_LOG_LEVEL="2", POT_BACKEND_DISABLE_TENSORFLOW="1", POT_BACKEND_DISABLE_PYTORCH="1",
               OMP_WAIT_POLICY="PASSIVE")
    for key in ("SCMEDAL_DATA_PATH", "SCMEDAL_MAX_EPOCHS"):
        env.pop(key, None)
    return env


def other_h5ad(path: Path) -> Path:
    """Synthetic counts with column names unlike the COVID data's: donor / cell_label / disease."""
    adata = sm.datasets.synthetic(n_cells=1200, n_genes=150, n_batches=6, n_celltypes=4, seed=3)
    adata.obs = adata.obs.rename(columns={"batch": "donor", "celltype": "cell_label", "condition": "disease"})
    del adata.uns["planted"]
    adata.write_h5ad(path)
    return path


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -------------------------------------------------------------------------------------------- structure

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_structure(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    params = tagged[0].source
    for name in ("data_path", "batch_key", "labels_key", "condition_key", "max_epochs", "seed", "preset", "quick",
                 "output_dir", "model_dir"):
        assert f"\n{name} = " in "\n" + params, f"parameter {name} missing"
    for statement in ast.parse(params).body:          # plain values only: the environment is Params.parse's job
        assert isinstance(statement, ast.Assign), ast.dump(statement)
        ast.literal_eval(statement.value)
    # papermill reads the same cell for `papermill --help-notebook` and logs "Unable to parse line" (to the
    # terminal of `scmedal-lite run`) for a line it cannot read, e.g. a comment holding "=": every name must parse
    assigned = [t.id for s in ast.parse(params).body for t in s.targets]
    inspected = [p.name for p in PythonTranslator.inspect(tagged[0])]
    assert inspected == assigned, f"papermill cannot read {sorted(set(assigned) - set(inspected))}"
    setup = nb.cells[nb.cells.index(tagged[0]) + 1].source
    assert "tutorial.setup(" in setup, "the shared setup is one call"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ") and "Question" in first.source
    assert nb.cells[-1].cell_type == "markdown" and "Key takeaways" in nb.cells[-1].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit them without outputs"
    assert len(NOTEBOOKS) == 5


@pytest.mark.parametrize("name", WITHOUT_MODEL)
def test_notebooks_run_beside_chapter_00_never_touch_the_shared_model(name):
    """`scmedal-lite run` and the book start these beside notebook 00, before its model exists: their setup must
    not load or train it (``train=False``), and no cell may use a model it did not build itself."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    calls = [node for node in ast.walk(ast.parse(code.replace("%matplotlib inline", "")))
             if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "setup"]
    assert len(calls) == 1 and any(k.arg == "train" and k.value.value is False for k in calls[0].keywords)
    names = {n.id for n in ast.walk(ast.parse(code.replace("%matplotlib inline", ""))) if isinstance(n, ast.Name)}
    assert "model" not in names and "get_model" not in code and "load_shared" not in code


def test_params_parse_strings(tmp_path):
    p = tutorial.Params.parse(data_path="None", max_epochs="3", seed="2", quick="True", condition_key="",
                              output_dir=str(tmp_path))
    assert p.data_path is None and p.max_epochs == 3 and p.seed == 2 and p.quick is True
    assert p.condition_key is None and p.model_dir == str(tmp_path / "model") and p.epochs == 3
    assert tutorial.Params.parse(quick="0").epochs is None
    assert tutorial.Params.parse(quick=True).epochs == tutorial.QUICK_EPOCHS
    with pytest.raises(InputError, match="max_epochs"):
        tutorial.Params.parse(max_epochs="many")
    with pytest.raises(InputError, match="quick"):
        tutorial.Params.parse(quick="maybe")
    with pytest.raises(InputError, match="batch_key"):
        tutorial.Params.parse(batch_key="")
    assert tutorial.Params.parse(preset="None").preset == "default"
    assert tutorial.Params.parse(preset="mixing").preset == "mixing"
    with pytest.raises(InputError, match="Unknown preset 'mixed'.*'mixing'"):
        tutorial.Params.parse(preset="mixed")


def test_params_fall_back_to_the_environment_only_when_not_given(tmp_path, monkeypatch):
    monkeypatch.setenv("SCMEDAL_QUICK", "1")
    monkeypatch.setenv("SCMEDAL_OUTPUT_DIR", str(tmp_path / "env_out"))
    monkeypatch.setenv("SCMEDAL_MAX_EPOCHS", "4")
    p = tutorial.Params.parse()
    assert p.quick is True and p.max_epochs == 4 and p.output_dir == str(tmp_path / "env_out")
    assert p.model_dir == str(tmp_path / "env_out" / "model")
    given = tutorial.Params.parse(quick=False, max_epochs=2, output_dir=str(tmp_path / "mine"))
    assert given.quick is False and given.max_epochs == 2 and given.output_dir == str(tmp_path / "mine")


def test_genomap_choices_defaults_and_overrides():
    adata = sm.datasets.synthetic(n_cells=600, n_genes=20, n_batches=4, n_celltypes=3, seed=0)
    p = tutorial.Params.parse(batch_key="batch", labels_key="celltype", condition_key="condition")
    choice = tutorial.genomap_choices(adata, p)
    assert choice.labels_key == "celltype" and choice.cell_type == adata.obs["celltype"].value_counts().index[0]
    assert len(choice.shown_batches) == 2 and set(choice.groups) == set(adata.obs["condition"].astype(str))
    groups = {choice.group_of_batch[b] for b in choice.shown_batches}
    assert groups == set(choice.groups), "one shown batch per condition"
    assert len(choice.cells) < tutorial.GENOMAP_CELLS[0], "the default stack is sized to the cells of that type"
    assert (choice.n_cells, choice.n_iter) == (len(choice.cells), tutorial.GENOMAP_ITERATIONS[0])
    assert choice.layout == "euclidean"
    more = tutorial.genomap_choices(anndata.concat([adata] * 2, index_unique="-"), p)
    assert more.n_cells == tutorial.GENOMAP_CELLS[0] < len(more.cells), "the paper's 300 where there are more"
    other = tutorial.genomap_choices(adata, p, cell_type="type2", n_cells=50, n_iter=5, layout="genomap")
    assert other.cell_type == "type2" and (other.n_cells, other.n_iter, other.layout) == (50, 5, "genomap")
    assert (adata.obs.loc[other.cells, "celltype"] == "type2").all()
    with pytest.raises(InputError, match="layout must be one of"):
        tutorial.genomap_choices(adata, p, layout="radial")


def test_quick_subsample_keeps_every_batch():
    adata = sm.datasets.synthetic(n_cells=4000, n_genes=20, n_batches=8, seed=0)
    small = (adata.obs["batch"] == "batch0") & (adata.obs_names.str[-1] != "0")     # batch0 keeps ~10 %
    adata = adata[~small].copy()
    sub = tutorial.quick_subsample(adata, batch_key="batch", n_cells=800, seed=0)
    counts = sub.obs["batch"].value_counts()
    assert set(counts.index) == set(adata.obs["batch"]) and counts.min() >= tutorial.MIN_BATCH_CELLS
    assert abs(sub.n_obs - 800) < 200
    again = tutorial.quick_subsample(adata, batch_key="batch", n_cells=800, seed=0)
    assert list(again.obs_names) == list(sub.obs_names)


def test_load_data_checks_keys(tmp_path):
    path = other_h5ad(tmp_path / "other.h5ad")
    with pytest.raises(InputError, match="labels_key 'celltype_coarse'"):
        tutorial.load_data(tutorial.Params.parse(data_path=str(path), batch_key="donor"))
    p = tutorial.Params.parse(data_path=str(path), batch_key="donor", labels_key="cell_label",
                              condition_key="disease", output_dir=str(tmp_path))
    adata = tutorial.load_data(p)
    assert "counts" in adata.layers and sm.pp.SPLIT_KEY in adata.obs
    fp = tutorial.fingerprint(adata, p)
    assert fp == tutorial.fingerprint(adata, p)
    assert fp != tutorial.fingerprint(adata, tutorial.Params.parse(**{**vars(p), "seed": 1}))
    assert fp != tutorial.fingerprint(adata, tutorial.Params.parse(**{**vars(p), "preset": "mixing"}))


# -------------------------------------------------------------------------------------------- execution

@pytest.mark.slow
def test_notebooks_pass_under_nbmake(tmp_path_factory):
    """``pytest --nbmake`` on every notebook, in quick mode (SCMEDAL_QUICK=1, set for the nbmake run only)."""
    pytest.importorskip("nbmake")
    env = quick_env(tmp_path_factory, "nbmake_outputs")
    cmd = [sys.executable, "-m", "pytest", "--nbmake", "--nbmake-timeout=900", "-q", "-p", "no:cacheprovider",
           "-o", "addopts=", *map(str, NOTEBOOKS)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    out = Path(env["SCMEDAL_OUTPUT_DIR"])
    for name in ("scores.csv", "classification.csv", "random_effects.csv", "adata.h5ad"):
        assert (out / name).exists(), name


@pytest.mark.slow
def test_papermill_on_another_file_with_other_keys(tmp_path):
    """Parameters arrive as strings, the file and its columns are new, and the input file is not modified."""
    pm = pytest.importorskip("papermill")
    data = other_h5ad(tmp_path / "mine.h5ad")
    before = sha256(data)
    out = tmp_path / "out"
    params = {"data_path": str(data), "batch_key": "donor", "labels_key": "cell_label",
              "condition_key": "disease", "quick": "True", "max_epochs": "3", "seed": "1",
              "output_dir": str(out)}
    for name in ("00_quickstart",):
        pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
                            parameters=params, kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
        nb = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4)
        images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert images, f"{name} produced no figure"
    assert sha256(data) == before
    import anndata

    result = anndata.read_h5ad(out / "adata.h5ad")
    assert {"X_scMEDAL_FE", "X_scMEDAL_RE"} <= set(result.obsm) and "donor" in result.obs
    assert set(result.obs["donor"].astype(str)) == {f"batch{b}" for b in range(6)}
    assert len(list((out / "model").iterdir())) == 1, "the model was saved in <output_dir>/model"
