"""The wheel: built from a copy of the sources, it holds the notebooks and the metadata (one version, the extras,
one TensorFlow); installed into a fresh virtual environment outside the source tree, its ``scmedal-lite run``
works from a folder outside the repository, and a run killed with SIGKILL part-way finishes with ``--resume``.

The fresh environment sees this environment's packages through a ``.pth`` line (installing TensorFlow again
would take minutes): the package itself comes from the wheel, which the test checks, never from the source
tree (no editable finder, no ``PYTHONPATH``, another working folder).
"""

import contextlib
import email.parser
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

import scmedal_lite as sm

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["00_quickstart", "01_batch_suppression", "02_random_effects", "03_genomap_projection",
             "04_classification"]


def _setuptools_supports_pep639() -> bool:
    try:
        from importlib.metadata import version

        return int(version("setuptools").split(".")[0]) >= 77
    except Exception:
        return False


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel --no-deps --no-build-isolation`` (offline, with this environment's setuptools) of a copy
    of the sources: what a clean checkout holds, nothing built in the working tree."""
    if not _setuptools_supports_pep639():
        pytest.skip("setuptools >= 77 is needed to build offline; pip install -r requirements.lock")
    src = tmp_path_factory.mktemp("wheel_src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    shutil.copytree(ROOT / "scmedal_lite", src / "scmedal_lite", ignore=ignore)
    shutil.copytree(ROOT / "notebooks", src / "notebooks", ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(dist), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels = list(dist.glob("scmedal_lite-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_the_notebooks_and_one_version(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = email.parser.Parser().parsestr(z.read(f"scmedal_lite-{sm.__version__}.dist-info/METADATA").decode())
    for name in NOTEBOOKS:
        assert f"scmedal_lite/notebooks/{name}.ipynb" in names, name
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "scmedal_lite").rglob("*.py")}
    assert modules <= names, f"not in the wheel (list new subpackages in pyproject.toml): {modules - names}"
    assert meta["Version"] == sm.__version__ and wheel.name.startswith(f"scmedal_lite-{sm.__version__}-")
    assert {"cli", "book", "test", "scvi", "scib", "gpu"} <= set(meta.get_all("Provides-Extra"))
    requires = meta.get_all("Requires-Dist")
    base = [r for r in requires if "extra ==" not in r]
    assert [r for r in base if r.startswith("tensorflow")] == ["tensorflow>=2.18"], "one TensorFlow distribution"
    gpu = [r for r in requires if 'extra == "gpu"' in r]
    assert gpu and all(r.startswith("tensorflow[and-cuda]") for r in gpu), gpu
    cli = [r.split(";")[0] for r in requires if 'extra == "cli"' in r]
    assert {"papermill", "ipykernel", "nbformat"} <= {r.split(">")[0].split("=")[0] for r in cli}


def _install(wheel: Path, venv: Path) -> Path:
    """A fresh virtual environment with the wheel (no dependencies; this environment's packages are visible
    after its own through a .pth line). Returns its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")   # after the wheel's
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return site


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_wheel_runs_the_cli_outside_the_source_tree_and_resumes_after_kill(wheel, tmp_path):
    """The installed command runs from another folder; killed with SIGKILL once notebook 00 (which trains and
    saves the shared model) has completed, ``--resume`` reuses that notebook and the model and runs notebook
    02; only the output folder is left, and the input is unchanged."""
    from scmedal_lite import cli

    venv = tmp_path / "venv"
    site = _install(wheel, venv)
    python = venv / "bin" / "python"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("SCMEDAL_")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = subprocess.run(
        [str(python), "-c", "import scmedal_lite, scmedal_lite.cli as c; from jupyter_client.kernelspec import "
         "KernelSpecManager as K; print(scmedal_lite.__file__); print(c.notebooks_dir()); "
         "print(K().get_kernel_spec('python3').argv[0])"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert where.returncode == 0, where.stderr
    module, notebooks, kernel = where.stdout.strip().splitlines()[-3:]
    assert Path(module).is_relative_to(site), f"imported from {module}, not from the wheel"
    assert Path(notebooks) == site / "scmedal_lite" / "notebooks"
    assert Path(kernel).parent == python.parent, f"the kernel runs {kernel}, not this environment's Python"

    data = elsewhere / "cells.h5ad"
    small = sm.datasets.synthetic(n_cells=500, n_genes=40, n_batches=4, n_celltypes=3, seed=2)
    del small.uns["planted"]
    small.write_h5ad(data)
    before = _sha256(data)
    command = [str(venv / "bin" / "scmedal-lite"), "run", "cells.h5ad", "--batch-key", "batch", "--labels-key",
               "celltype", "--out", "results", "--quick", "--max-epochs", "2",
               "--notebooks", "00_quickstart,02_random_effects"]
    proc = subprocess.Popen(command, cwd=elsewhere, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    partial = elsewhere / f"results{cli.PARTIAL}"
    marker = partial / cli.STATE_DIR / "00_quickstart.done"
    try:
        deadline = time.time() + 900
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert marker.exists(), f"notebook 00 did not complete (exit status {proc.poll()})"
        proc.send_signal(signal.SIGKILL)                   # the command itself, as `kill -9 PID` would
        proc.wait(timeout=60)
        time.sleep(3)                                      # its kernel notices that its parent is gone
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    out = elsewhere / "results"
    assert not out.exists() and partial.is_dir()
    stamp = (partial / "notebooks" / "00_quickstart.ipynb").stat().st_mtime_ns
    models = sorted(p.name for p in (partial / "model").iterdir() if not p.name.startswith("."))
    assert len(models) == 1, models

    run = subprocess.run([*command, "--resume"], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "00_quickstart: done in an earlier run, reused" in run.stdout
    assert _sha256(data) == before, "the input file must never change"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["cells.h5ad", "results"], "no partial or temporary"
    assert (out / "notebooks" / "00_quickstart.ipynb").stat().st_mtime_ns == stamp, "00 was not run again"
    info = json.loads((out / "run.json").read_text())
    assert info["reused_from_an_earlier_run"] == ["00_quickstart"] and info["versions"]["tensorflow"]
    assert "Loaded the shared model" in (out / "notebooks" / "02_random_effects.ipynb").read_text()
    assert sorted(p.name for p in (out / "model").iterdir()) == models, "the same trained model"
    assert (out / "report" / "index.html").exists()
    import anndata

    result = anndata.read_h5ad(out / "adata.h5ad")
    assert {"X_scMEDAL_FE", "X_scMEDAL_RE"} <= set(result.obsm)
    assert result.uns["scmedal"]["versions"]["scmedal_lite"] == sm.__version__
