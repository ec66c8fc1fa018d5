"""``scmedal-lite run``: a real quick run on a file it has never seen (other column names), the checks that
refuse bad input with exit status 2, and the all-or-nothing output folder (with a fake notebook runner)."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anndata
import nbformat
import numpy as np
import pandas as pd
import pytest

import scmedal_lite as sm
from scmedal_lite import cli

pytest.importorskip("papermill")


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An .h5ad the package has never seen: 7 donors, column names unlike the COVID data's."""
    adata = sm.datasets.synthetic(n_cells=1400, n_genes=120, n_batches=7, n_celltypes=3, seed=11)
    names = {"batch": "patient", "celltype": "annotation", "condition": "status"}
    adata.obs = adata.obs.rename(columns=names)
    adata.obs["patient"] = adata.obs["patient"].astype(str).str.replace("batch", "P").astype("category")
    adata.obs["status"] = adata.obs["status"].map({"A": "sick", "B": "well"}).astype("category")
    del adata.uns["planted"]
    path = tmp_path_factory.mktemp("input") / "never_seen.h5ad"
    adata.write_h5ad(path)
    return path


def args(data, out, *extra):
    return ["run", str(data), "--batch-key", "patient", "--labels-key", "annotation",
            "--condition-key", "status", "--out", str(out), *extra]


@pytest.mark.slow
def test_run_quick_writes_everything(data, tmp_path, capfd):
    before = sha256(data)
    out = tmp_path / "run"
    assert cli.main(args(data, out, "--quick", "--seed", "1")) == 0
    assert sha256(data) == before, "the input file must never change"
    terminal = capfd.readouterr()
    logs = {name: (out / cli.KERNEL_LOGS / f"{name}.log").read_text() for name in cli.NOTEBOOKS}
    assert "[IPKernelApp]" not in terminal.err and "I0000" not in terminal.err, "kernel chatter goes to the logs"
    assert any("[IPKernelApp]" in text or "I0000" in text for text in logs.values()), logs
    assert "[1/5] 00_quickstart" in terminal.out

    for name in cli.NOTEBOOKS:
        nb = nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4)
        assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    scores = pd.read_csv(out / "results" / "scores.csv")
    assert list(scores.columns) == ["embedding", "metric", "label", "value"]
    assert {"PCA", "AE", "scMEDAL-FE", "Harmony", "Scanorama"} <= set(scores["embedding"])
    assert {"asw", "knn_inv_simpson"} <= set(scores["metric"]) and np.isfinite(scores["value"].dropna()).all()
    mec = pd.read_csv(out / "results" / "classification.csv")
    assert {"fold", "scheme", "features", "metric", "value"} <= set(mec.columns)
    assert {"cells", "batches"} <= set(mec["scheme"]) and "chance" in set(mec["features"])

    result = anndata.read_h5ad(out / "adata.h5ad")
    assert result.obsm["X_scMEDAL_FE"].shape == (result.n_obs, 50)
    assert result.obsm["X_scMEDAL_RE"].shape == (result.n_obs, 50)
    assert set(result.obs["patient"].astype(str)) == {f"P{b}" for b in range(7)}

    index = (out / "report" / "index.html").read_text()
    for name in cli.NOTEBOOKS:
        assert f'href="{name}.html"' in index
        page = (out / "report" / f"{name}.html").read_text()
        assert "<img" in page, f"{name} report page has no figure"
    info = json.loads((out / "run.json").read_text())
    assert info["input_sha256"] == before and info["parameters"]["batch_key"] == "patient"
    for package in ("tensorflow", "keras", "scanpy", "anndata", "numpy", "genomap", "scmedal_lite"):
        assert info["versions"][package] != "not installed", package
    assert result.uns["scmedal"]["versions"]["scmedal_lite"] == sm.__version__
    assert (out / "model").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "no temporary or partial folder left"
    assert not (out / cli.STATE_DIR).exists()
    executed = nbformat.read(out / "notebooks" / "00_quickstart.ipynb", as_version=4)
    shown = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert str(tmp_path) not in shown, "the notebooks' outputs show paths relative to the output folder"


@pytest.mark.parametrize("change, message", [
    (lambda a, d: a.__setitem__(1, str(d) + ".missing"), "File not found"),
    (lambda a, d: a.__setitem__(3, "donor"), "--batch-key 'donor' is not a column"),
    (lambda a, d: a.__setitem__(5, "cell_type"), "--labels-key 'cell_type' is not a column"),
    (lambda a, d: a.__setitem__(7, "disease"), "--condition-key 'disease' is not a column"),
])
def test_bad_input_exit_2(data, tmp_path, capsys, change, message):
    argv = args(data, tmp_path / "out")
    change(argv, data)
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scmedal-lite: error:") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_unknown_preset_exits_2_and_names_the_presets(data, tmp_path, capsys):
    assert cli.main(args(data, tmp_path / "out", "--preset", "mixed")) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert "Unknown --preset 'mixed'" in err and "'mixing'" in err and not (tmp_path / "out").exists()


def test_old_label_key_flag_still_works_with_a_deprecation_message(data, tmp_path, capsys):
    argv = args(data, tmp_path / "out")
    argv[4] = "--label-key"                                   # the old name of --labels-key
    argv[5] = "cell_type"
    assert cli.main(argv) == cli.EXIT_BAD_INPUT               # it is read: the column is checked
    err = capsys.readouterr().err.strip().splitlines()
    assert "--label-key is deprecated; use --labels-key" in err[0]
    assert err[-1].startswith("scmedal-lite: error:") and "--labels-key 'cell_type' is not a column" in err[-1]
    with pytest.raises(SystemExit) as exit_info:               # neither flag: argparse's usage error
        cli.main([a for a in argv if a not in ("--label-key", "cell_type")])
    assert exit_info.value.code == 2 and "--labels-key" in capsys.readouterr().err


def test_single_batch_and_not_h5ad(tmp_path, capsys):
    one = sm.datasets.synthetic(n_cells=200, n_genes=30, n_batches=1, seed=0)
    one.write_h5ad(tmp_path / "one.h5ad")
    argv = ["run", str(tmp_path / "one.h5ad"), "--batch-key", "batch", "--labels-key", "celltype",
            "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    assert "single batch" in capsys.readouterr().err
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    argv[1] = str(tmp_path / "table.csv")
    assert cli.main(argv) == 2
    assert "is not an .h5ad file" in capsys.readouterr().err


def test_refuses_non_empty_out(data, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(args(data, out, "--quick")) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "mine" and sorted(os.listdir(out)) == ["keep.txt"]


def test_refuses_out_containing_the_input(data, tmp_path, capsys):
    folder = tmp_path / "here"
    folder.mkdir()
    inside = folder / "data.h5ad"
    shutil.copy(data, inside)
    assert cli.main(args(inside, folder, "--overwrite")) == 2
    assert "inside --out" in capsys.readouterr().err and inside.exists()


def test_console_script_exit_code_and_one_line(tmp_path):
    script = Path(sys.executable).with_name("scmedal-lite")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "scmedal_lite.cli"]
    proc = subprocess.run(cmd + ["run", str(tmp_path / "nope.h5ad"), "--batch-key", "b", "--labels-key", "c",
                                 "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("scmedal-lite: error: File not found")


# ------------------------------------------------------------- all-or-nothing, with a fake notebook runner

def fake_runner(fail_on=None, ran=None):
    """Stands in for papermill.execute_notebook: writes what the notebooks would write, or fails; appends the
    names it runs to ``ran``."""
    import papermill

    def execute(src, dst, parameters, **kw):
        name = Path(src).stem
        assert kw["start_timeout"] == cli.KERNEL_START_TIMEOUT >= 300, "a kernel may start slowly beside training"
        if ran is not None:
            ran.append(name)
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {name}\n**Question:** ...")])
        nbformat.write(nb, dst)
        if name == fail_on:
            raise papermill.PapermillExecutionError(0, 1, "boom", "RuntimeError", "boom", [])
        assert "cwd" not in kw, "papermill's cwd= changes the whole process's folder: racy with --jobs > 1"
        kernel = Path(kw["resources"]["metadata"]["path"])
        assert kernel.is_absolute()
        results = kernel / parameters["output_dir"]          # relative to the kernel's folder
        if name == "00_quickstart":
            anndata.AnnData(np.zeros((3, 2), "float32")).write_h5ad(results / "adata.h5ad")
            (kernel / parameters["model_dir"] / "trained.txt").write_text("weights")
        if name == "01_batch_suppression":
            pd.DataFrame({"embedding": ["FE"], "metric": ["asw"], "label": ["batch"], "value": [0.1]}).to_csv(
                results / "scores.csv", index=False)
        return nb
    return execute


def test_failed_notebook_writes_nothing_and_keeps_the_partial_run(data, tmp_path, monkeypatch, capsys):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", fake_runner(fail_on="02_random_effects"))
    out = tmp_path / "run"
    assert cli.main(args(data, out)) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "02_random_effects failed" in err and "--resume" in err
    assert not out.exists()
    partial = tmp_path / f"run{cli.PARTIAL}"
    assert (partial / "notebooks" / "02_random_effects.ipynb").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [partial.name], "nothing else beside it"

    ran = []                                            # without --resume: the partial run is removed
    monkeypatch.setattr(papermill, "execute_notebook", fake_runner(ran=ran))
    assert cli.main(args(data, out)) == 0
    assert ran[0] == "00_quickstart" and sorted(ran) == sorted(cli.NOTEBOOKS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_resume_reuses_the_notebooks_done_and_the_model(data, tmp_path, monkeypatch, capsys):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", fake_runner(fail_on="03_genomap_projection"))
    out = tmp_path / "run"
    assert cli.main(args(data, out, "--quiet", "--jobs", "1")) == cli.EXIT_FAILED   # one at a time: 04 never starts
    assert capsys.readouterr().out == "", "--quiet prints nothing but errors"
    ran = []
    monkeypatch.setattr(papermill, "execute_notebook", fake_runner(ran=ran))
    assert cli.main(args(data, out, "--resume", "--seed", "1")) == cli.EXIT_BAD_INPUT     # other parameters
    assert "another input or other parameters" in capsys.readouterr().err and ran == []
    assert cli.main(args(data, out, "--resume")) == 0
    assert ran == ["03_genomap_projection", "04_classification"]
    assert "00_quickstart: done in an earlier run, reused" in capsys.readouterr().out
    info = json.loads((out / "run.json").read_text())
    assert info["reused_from_an_earlier_run"] == ["00_quickstart", "01_batch_suppression", "02_random_effects"]
    assert (out / "model" / "trained.txt").read_text() == "weights"
    assert (out / "adata.h5ad").exists() and not (out / cli.STATE_DIR).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "no partial or temporary folder left"


def test_resume_without_a_partial_run_starts_afresh(data, tmp_path, monkeypatch, capsys):
    import papermill

    ran = []
    monkeypatch.setattr(papermill, "execute_notebook", fake_runner(ran=ran))
    out = tmp_path / "run"
    assert cli.main(args(data, out, "--resume", "--notebooks", "00_quickstart")) == 0
    assert "nothing to resume" in capsys.readouterr().out and ran == ["00_quickstart"]


def test_overwrite_replaces_whole_folder(data, tmp_path, monkeypatch):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", fake_runner())
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert cli.main(args(data, out, "--overwrite", "--notebooks", "00_quickstart,01_batch_suppression")) == 0
    assert not (out / "old.txt").exists()
    assert (out / "adata.h5ad").exists() and (out / "report" / "index.html").exists()
    assert list(pd.read_csv(out / "results" / "classification.csv").columns) == [
        "fold", "scheme", "features", "split", "metric", "value"]
    assert re.search(r"01_batch_suppression\.html", (out / "report" / "index.html").read_text())


def test_missing_cli_extra_or_genomap_names_the_command(data, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    for module, needle in (("papermill", 'pip install "scmedal_lite[cli]"'),
                           ("genomap", "pip install --no-deps genomap==1.3.6")):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, m=module: None if name == m
                            else real(name, *a))
        assert cli.main(args(data, tmp_path / "out")) == cli.EXIT_BAD_INPUT
        assert needle in capsys.readouterr().err
    monkeypatch.setattr(importlib.util, "find_spec", real)


# A real run killed with SIGKILL and resumed: tests/test_wheel.py (with the installed wheel's command).


def test_jobs_run_the_model_free_notebook_beside_the_first_and_the_others_after_it(data, tmp_path, monkeypatch,
                                                                                   capsys):
    """--jobs 2: notebook 04 (a model per fold, no shared model) starts beside notebook 00 (which trains the
    shared model); no notebook that loads the model starts before 00 has finished, and of those the shortest
    on small data (cli.STARTED_LAST) starts last; two run at once, never more; run.json records the setting and every
    notebook's seconds in the notebooks' order. --jobs 1 keeps the book's order."""
    import threading
    import time

    import papermill

    lock, state = threading.Lock(), {"running": 0, "most": 0, "order": []}
    inner = fake_runner()

    def slow(src, dst, parameters, **kw):
        name = Path(src).stem
        with lock:
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
            state["order"].append(("start", name))
        time.sleep(1.0)                    # long enough for the notebook beside 00 to start under load
        try:
            return inner(src, dst, parameters, **kw)
        finally:
            with lock:
                state["running"] -= 1
                state["order"].append(("end", name))

    monkeypatch.setattr(papermill, "execute_notebook", slow)
    out = tmp_path / "run"
    assert cli.main(args(data, out, "--jobs", "2")) == 0
    first_end = state["order"].index(("end", "00_quickstart"))
    assert state["order"][0] == ("start", "00_quickstart")
    assert {n for e, n in state["order"][:first_end] if e == "start"} == {"00_quickstart", *cli.WITHOUT_MODEL}, \
        "only the notebooks without the shared model start before it is saved"
    assert state["most"] == 2, "two notebooks at a time"
    starts = [n for e, n in state["order"] if e == "start"]
    assert starts[2:] == ["01_batch_suppression", "03_genomap_projection", "02_random_effects"]
    info = json.loads((out / "run.json").read_text())
    assert info["jobs"] == 2 and list(info["seconds_per_notebook"]) == list(cli.NOTEBOOKS)
    assert "--jobs 2" in info["command"]
    assert "run 2 at a time" in capsys.readouterr().out

    state.update(running=0, most=0, order=[])
    assert cli.main(args(data, tmp_path / "serial", "--jobs", "1")) == 0
    assert state["most"] == 1 and [n for e, n in state["order"] if e == "start"] == list(cli.NOTEBOOKS)
    assert cli.main(args(data, tmp_path / "bad", "--jobs", "0")) == cli.EXIT_BAD_INPUT
    assert "--jobs" in capsys.readouterr().err


def test_kernels_share_the_cpus_between_them(data, tmp_path, monkeypatch):
    """With two notebooks at a time each kernel's TensorFlow gets half the CPUs (TF_NUM_INTRAOP_THREADS, which
    the kernels inherit), recorded in run.json; one at a time (--jobs 1, or notebooks that cannot overlap) keeps
    TensorFlow's default; a value the user set is kept; the variable is gone from this process afterwards."""
    import papermill

    seen = {}
    inner = fake_runner()

    def recording(src, dst, parameters, **kw):
        seen[Path(src).stem] = os.environ.get(cli.THREADS_VARIABLE)
        return inner(src, dst, parameters, **kw)

    monkeypatch.setattr(papermill, "execute_notebook", recording)
    monkeypatch.delenv(cli.THREADS_VARIABLE, raising=False)
    monkeypatch.setattr(cli, "available_cpus", lambda: 4)
    assert cli.main(args(data, tmp_path / "two", "--jobs", "2")) == 0
    assert set(seen.values()) == {"2"} and len(seen) == len(cli.NOTEBOOKS)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["tensorflow_threads_per_kernel"] == 2
    assert cli.THREADS_VARIABLE not in os.environ, "the setting is for the kernels only"

    seen.clear()
    assert cli.main(args(data, tmp_path / "one", "--jobs", "1")) == 0
    assert set(seen.values()) == {None}
    assert json.loads((tmp_path / "one" / "run.json").read_text())["tensorflow_threads_per_kernel"] is None

    seen.clear()                           # two notebooks, the second needs the first's model: one at a time
    assert cli.main(args(data, tmp_path / "pair", "--jobs", "2", "--notebooks",
                         "00_quickstart,01_batch_suppression")) == 0
    assert seen == {"00_quickstart": None, "01_batch_suppression": None}

    seen.clear()
    monkeypatch.setenv(cli.THREADS_VARIABLE, "3")
    assert cli.main(args(data, tmp_path / "own", "--jobs", "2")) == 0
    assert set(seen.values()) == {"3"}
    assert json.loads((tmp_path / "own" / "run.json").read_text())["tensorflow_threads_per_kernel"] == 3
    assert os.environ[cli.THREADS_VARIABLE] == "3"


def test_after_a_failure_no_further_notebook_starts(data, tmp_path, monkeypatch, capsys):
    import papermill

    ran = []
    monkeypatch.setattr(papermill, "execute_notebook", fake_runner(fail_on="00_quickstart", ran=ran))
    assert cli.main(args(data, tmp_path / "run", "--jobs", "2")) == cli.EXIT_FAILED
    assert "00_quickstart" in ran and set(ran) <= {"00_quickstart", *cli.WITHOUT_MODEL}, \
        "the others need the model the first notebook makes (the one beside it may have started first)"
    assert "00_quickstart failed" in capsys.readouterr().err


def test_a_kernel_that_dies_while_starting_is_started_again(data, tmp_path, monkeypatch, capsys):
    """Two kernels started at once can pick the same free port, and one then dies before it replies
    (jupyter_client's start-up race): the notebook is started again, up to KERNEL_START_TRIES times in all; a
    kernel that dies every time fails the run with a message that says so; other errors are not retried."""
    import papermill

    starts, ran = [], []
    runner = fake_runner(ran=ran)

    def dies_once(src, dst, parameters, **kw):
        starts.append(Path(src).stem)
        if Path(src).stem == "02_random_effects" and starts.count("02_random_effects") == 1:
            raise RuntimeError(cli.KERNEL_DIED)
        return runner(src, dst, parameters, **kw)

    monkeypatch.setattr(papermill, "execute_notebook", dies_once)
    assert cli.main(args(data, tmp_path / "run")) == 0
    assert starts.count("02_random_effects") == 2 and sorted(ran) == sorted(cli.NOTEBOOKS)
    assert "02_random_effects: its kernel died while starting" in capsys.readouterr().out

    starts.clear()
    monkeypatch.setattr(papermill, "execute_notebook",
                        lambda src, *a, **kw: starts.append(Path(src).stem) or _raise(RuntimeError(cli.KERNEL_DIED)))
    assert cli.main(args(data, tmp_path / "again")) == cli.EXIT_FAILED
    assert starts == ["00_quickstart"] * cli.KERNEL_START_TRIES
    assert f"its kernel died while starting, {cli.KERNEL_START_TRIES} times" in capsys.readouterr().err

    calls = []
    with pytest.raises(RuntimeError, match="something else"):
        cli.retry_kernel_start(lambda: calls.append(1) or _raise(RuntimeError("something else")), "x")
    assert calls == [1]


def _raise(err):
    raise err


def test_default_jobs():
    assert cli.default_jobs(1) == 1 and cli.default_jobs(2) == 2 and cli.default_jobs(64) == 2


def test_quiet_verbose_and_version(data, tmp_path, monkeypatch, capsys):
    import papermill

    with pytest.raises(SystemExit) as exit_info:
        cli.main(args(data, tmp_path / "o", "--quiet", "--verbose"))
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"scmedal-lite {sm.__version__}"
    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **kw: calls.append(kw) or fake_runner()(*a, **kw))
    saved = sm.settings.verbosity
    try:
        assert cli.main(args(data, tmp_path / "run", "--verbose", "--notebooks", "00_quickstart")) == 0
        assert sm.settings.verbosity == "info" and calls[0]["log_output"] is True
        assert calls[0]["progress_bar"] is True
    finally:
        sm.settings.verbosity = saved


def test_a_running_notebook_leaves_the_process_folder_alone(tmp_path, monkeypatch):
    """Regression: papermill's ``cwd=`` moved the whole process into the kernels' folder while a notebook ran,
    and back when it ended; with two notebooks at a time (--jobs 2) a kernel could start in the wrong folder and
    write its results beside the input (a CI run lost classification.csv that way). The kernel must start in
    ``work/notebooks`` while this process stays where it is."""
    import threading
    import time
    from types import SimpleNamespace

    nb_dir, work = tmp_path / "source", tmp_path / "work"
    nb_dir.mkdir()
    for sub in ("notebooks", "results", cli.STATE_DIR):
        (work / sub).mkdir(parents=True)
    params = nbformat.v4.new_code_cell("output_dir = None")
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell("import os, time\n"
                                     "open(os.path.join(output_dir, 'cwd.txt'), 'w').write(os.getcwd())\n"
                                     "time.sleep(2)")
    kernel = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
              "language_info": {"name": "python"}}
    nbformat.write(nbformat.v4.new_notebook(cells=[params, body], metadata=kernel), nb_dir / "probe.ipynb")
    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    args = SimpleNamespace(quiet=True, verbose=False, timeout=300)
    errors = []

    def run():
        try:
            cli._run_notebook({"nb_dir": nb_dir}, "probe", {"output_dir": "../results"}, str(work), args, False)
        except Exception as err:       # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    seen = set()
    while thread.is_alive():
        seen.add(os.getcwd())
        time.sleep(0.05)
    assert not errors, errors
    assert seen == {str(here)}, f"the process moved to {seen - {str(here)}} while the notebook ran"
    assert (work / "results" / "cwd.txt").read_text() == str(work / "notebooks")
    assert cli._marker(str(work), "probe") is not None
