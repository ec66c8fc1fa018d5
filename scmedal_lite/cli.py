"""``scmedal-lite run``: all tutorial notebooks on a user's ``.h5ad``, with tables, an AnnData and a report.

Usage::

    scmedal-lite run DATA.h5ad --batch-key donor --labels-key cell_type [--condition-key disease] --out DIR
                     [--quick] [--max-epochs N] [--seed S] [--overwrite]

(``--label-key`` is the old name of ``--labels-key``; it still works, with a deprecation message.)

The file and the keys are checked first (a bad input exits with status 2 and a one-line message). Then the
notebooks run with papermill, sharing one trained model, and ``DIR`` receives::

    notebooks/*.ipynb            the executed notebooks
    results/scores.csv           tidy scores (embedding, metric, label, value)
    results/classification.csv   mixed-effects classification per fold (or "" columns when not run)
    results/...                  every other table and figure the notebooks wrote
    adata.h5ad                   the prepared cells with obsm["X_scMEDAL_FE"] and obsm["X_scMEDAL_RE"]
    report/index.html            the executed notebooks as browsable HTML pages
    model/                       the trained model (``sm.SCMEDAL.load``)
    run.json                     command, parameters, input checksum, timings, versions

``DATA.h5ad`` is only read. ``DIR`` is written whole or not at all (built in a temporary folder beside it,
then renamed); an existing non-empty ``DIR`` is refused unless ``--overwrite``. The flags say everything: the
``SCMEDAL_*`` environment variables that the notebooks otherwise read (:data:`scmedal_lite.tutorial.ENVIRONMENT`)
are ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from . import __version__
from .validate import InputError

NOTEBOOKS = ("00_quickstart", "01_batch_suppression", "02_random_effects", "03_genomap_projection",
             "04_classification")
REQUIRED = ("results/scores.csv", "results/classification.csv", "adata.h5ad", "report/index.html")
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def notebooks_dir() -> Path:
    """Where the tutorial notebooks are: ``scmedal_lite/notebooks`` (a wheel) or ``notebooks/`` of the source
    tree (an editable install or a checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "notebooks", here.parent / "notebooks"):
        if all((candidate / f"{n}.ipynb").exists() for n in NOTEBOOKS):
            return candidate
    raise InputError("The tutorial notebooks were not found next to the package (scmedal_lite/notebooks or "
                     "notebooks/ of the source tree); pass --notebooks-dir.")


def sha256(path: str) -> str:
    """SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scmedal-lite", description="scMEDAL (lite): mixed-effects "
                                     "autoencoders for batch-effect analysis of single-cell RNA-seq.")
    parser.add_argument("--version", action="version", version=f"scmedal-lite {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run all tutorial notebooks on an .h5ad file",
                         description="Run all tutorial notebooks on DATA.h5ad and write notebooks, tables, "
                                     "an AnnData with the latents and an HTML report to --out.")
    run.add_argument("data", metavar="DATA.h5ad", help="input AnnData file (only read, never modified)")
    run.add_argument("--batch-key", required=True, help="obs column of the batch (sample, donor, ...)")
    run.add_argument("--labels-key", default=None, help="obs column of the cell type (required)")
    run.add_argument("--label-key", dest="label_key", default=None, help=argparse.SUPPRESS)   # deprecated
    run.add_argument("--condition-key", default=None,
                     help="obs column of a condition constant within each batch (disease, ...); optional")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder (must be empty or absent)")
    run.add_argument("--quick", action="store_true", help="~3,000 cells and a few epochs: a smoke test")
    run.add_argument("--max-epochs", type=int, default=None, help="epochs per network (default: package's)")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    run.add_argument("--notebooks", default=None,
                     help=f"comma-separated subset of the notebooks (default all: {','.join(NOTEBOOKS)})")
    run.add_argument("--notebooks-dir", default=None, help=argparse.SUPPRESS)
    run.add_argument("--timeout", type=int, default=None,
                     help="seconds allowed per notebook cell (default: no limit)")
    return parser


def check_inputs(args) -> dict:
    """Everything that can be checked before the heavy work; raises :class:`InputError`."""
    from .validate import as_int, check_batches, check_obs_key, read_h5ad

    data = os.path.abspath(args.data)
    out = os.path.abspath(args.out)
    if args.max_epochs is not None:
        as_int("--max-epochs", args.max_epochs, minimum=1)
    as_int("--seed", args.seed, minimum=0)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise InputError(f"--out {args.out!r} exists and is not a folder; choose another path.")
        if os.listdir(out) and not args.overwrite:
            raise InputError(f"--out {args.out!r} is not empty; pass --overwrite to replace it, or choose "
                             "another folder.")
    if os.path.commonpath([data, out]) == out:
        raise InputError(f"The input file {args.data!r} is inside --out {args.out!r}; choose an output "
                         "folder that does not contain it.")
    adata = read_h5ad(data, backed="r")
    try:
        check_obs_key(adata, args.labels_key, role="--labels-key")
        if args.condition_key is not None:
            check_obs_key(adata, args.condition_key, role="--condition-key")
        check_batches(adata, args.batch_key)
        if adata.obs[args.labels_key].nunique() < 2:
            raise InputError(f"--labels-key {args.labels_key!r} has a single value; scores and plots need at "
                             "least two cell types.")
        n_obs, n_vars = adata.n_obs, adata.n_vars
    except InputError as err:
        raise InputError(str(err).replace("batch_key", "--batch-key")) from None
    finally:
        if getattr(adata, "file", None) is not None:
            adata.file.close()
    names = list(NOTEBOOKS)
    if args.notebooks is not None:
        names = [n.strip() for n in args.notebooks.split(",") if n.strip()]
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown or not names:
        raise InputError(f"--notebooks: unknown notebook(s) {unknown}; choose from {list(NOTEBOOKS)}.")
    nb_dir = Path(args.notebooks_dir) if args.notebooks_dir else notebooks_dir()
    try:
        import papermill  # noqa: F401
    except ImportError:
        raise InputError("papermill is not installed; install it with `pip install scmedal_lite[book]` "
                         "(or `pip install papermill ipykernel`).") from None
    return {"data": data, "out": out, "n_obs": n_obs, "n_vars": n_vars, "notebooks": names, "nb_dir": nb_dir}


def _error(msg: str, code: int) -> int:
    print(f"scmedal-lite: error: {msg}", file=sys.stderr)
    return code


class _RunFailed(Exception):
    """A notebook failed (or the input changed): nothing is written to the output folder."""


def _command(args) -> str:
    parts = ["scmedal-lite", "run", args.data, "--batch-key", args.batch_key, "--labels-key", args.labels_key]
    if args.condition_key is not None:
        parts += ["--condition-key", args.condition_key]
    parts += ["--out", args.out]
    if args.quick:
        parts.append("--quick")
    if args.max_epochs is not None:
        parts += ["--max-epochs", str(args.max_epochs)]
    parts += ["--seed", str(args.seed)]
    return shlex.join(parts)


def _execute(checked: dict, parameters: dict, nb_out: str, out: str, timeout) -> tuple[list, dict, dict]:
    """Run the selected notebooks with papermill into ``nb_out``, without the ``SCMEDAL_*`` environment;
    returns (executed paths, seconds per notebook, status per path). A failure raises :class:`_RunFailed`."""
    import papermill as pm

    executed, timings, status = [], {}, {}
    with _without_notebook_environment():
        for name in checked["notebooks"]:
            src = str(checked["nb_dir"] / f"{name}.ipynb")
            dst = os.path.join(nb_out, f"{name}.ipynb")
            t0 = time.perf_counter()
            print(f"  running {name} ...", end=" ", flush=True)
            try:
                pm.execute_notebook(src, dst, parameters=parameters, kernel_name="python3", cwd=nb_out,
                                    progress_bar=False, log_output=False, execution_timeout=timeout)
            except pm.PapermillExecutionError as err:
                print("failed", flush=True)
                failed = _keep_failed(dst, out)
                raise _RunFailed(f"notebook {name} failed: {err.ename}: {err.evalue} (the executed "
                                 f"notebook is at {failed}; nothing was written to {out})") from None
            timings[name] = round(time.perf_counter() - t0, 1)
            status[dst] = f"ok, {timings[name]:.0f} s"
            executed.append(dst)
            print(f"done in {timings[name]:.0f} s", flush=True)
    return executed, timings, status


def run(args) -> int:
    """The ``run`` command; returns the exit status."""
    try:
        checked = check_inputs(args)
    except InputError as err:
        return _error(str(err).replace("\n", " "), EXIT_BAD_INPUT)

    from .io import atomic_dir, write_json

    data, out = checked["data"], checked["out"]
    digest = sha256(data)
    started = time.perf_counter()
    params = {"data_path": data, "batch_key": args.batch_key, "labels_key": args.labels_key,
              "condition_key": args.condition_key, "max_epochs": args.max_epochs, "seed": args.seed,
              "quick": bool(args.quick)}
    print(f"scmedal-lite {__version__}: {data} ({checked['n_obs']} cells x {checked['n_vars']} genes) -> {out}",
          flush=True)
    try:
        with atomic_dir(out, overwrite=args.overwrite) as tmp:
            nb_out, results = os.path.join(tmp, "notebooks"), os.path.join(tmp, "results")
            os.makedirs(nb_out)
            os.makedirs(results)
            run_params = dict(params, output_dir=results, model_dir=os.path.join(tmp, "model"))
            executed, timings, status = _execute(checked, run_params, nb_out, out, args.timeout)
            _collect(tmp, results)
            _report(tmp, executed, status, args, digest, data)
            if sha256(data) != digest:                     # belt and braces: the input must never change
                raise _RunFailed(f"the input file {data} changed during the run; results discarded.")
            write_json(os.path.join(tmp, "run.json"), {
                "command": _command(args), "scmedal_lite_version": __version__, "input": data,
                "input_sha256": digest, "parameters": params, "notebooks": checked["notebooks"],
                "seconds_per_notebook": timings, "seconds_total": round(time.perf_counter() - started, 1)})
    except _RunFailed as err:
        return _error(str(err), EXIT_FAILED)
    except InputError as err:
        return _error(str(err), EXIT_BAD_INPUT)
    report = os.path.join(out, "report", "index.html")
    print(f"wrote {out} in {time.perf_counter() - started:.0f} s; report: {report}")
    return 0


def _keep_failed(executed: str, out: str) -> str:
    """Copy a failed executed notebook beside the output folder, for debugging."""
    folder = f"{out}.failed"
    os.makedirs(folder, exist_ok=True)
    dst = os.path.join(folder, os.path.basename(executed))
    if os.path.exists(executed):
        shutil.copy(executed, dst)
    return dst


def _collect(tmp: str, results: str) -> None:
    """Move the AnnData to the top level and make sure every promised file exists."""
    import pandas as pd

    from .io import write_csv

    adata = os.path.join(results, "adata.h5ad")
    if os.path.exists(adata):
        os.replace(adata, os.path.join(tmp, "adata.h5ad"))
    for name, columns in (("scores.csv", ["embedding", "metric", "label", "value"]),
                          ("classification.csv", ["fold", "scheme", "features", "split", "metric", "value"])):
        path = os.path.join(results, name)
        if not os.path.exists(path):                   # its notebook was not selected with --notebooks
            write_csv(path, pd.DataFrame(columns=columns))


def _report(tmp, executed, status, args, digest, data) -> None:
    import pandas as pd

    from .report import write_report

    tables = {}
    scores = os.path.join(tmp, "results", "scores.csv")
    if os.path.exists(scores):
        df = pd.read_csv(scores)
        if len(df):
            wide = df.pivot_table(index="embedding", columns=["label", "metric"], values="value", sort=False)
            tables["Scores (test cells)"] = wide.round(3).to_html()
    summary = os.path.join(tmp, "results", "classification_summary.csv")
    if os.path.exists(summary):
        df = pd.read_csv(summary)
        df = df[df["metric"] == "balanced_accuracy"]
        if len(df):
            tables["Mixed-effects classification (balanced accuracy, mean over folds)"] = (
                df.pivot(index="features", columns="scheme", values="mean").round(3).to_html())
    info = {"input": data, "input sha256": digest, "batch key": args.batch_key, "labels key": args.labels_key,
            "condition key": args.condition_key, "quick": args.quick, "max epochs": args.max_epochs,
            "seed": args.seed, "scmedal_lite": __version__}
    write_report(executed, os.path.join(tmp, "report"), title="scMEDAL report: " + os.path.basename(data),
                 status=status, info=info, tables=tables)


def _labels_key(parser: argparse.ArgumentParser, args) -> None:
    """``--labels-key``, or the deprecated ``--label-key`` (with a message on stderr); one is required."""
    if args.label_key is not None:
        print("scmedal-lite: warning: --label-key is deprecated; use --labels-key.", file=sys.stderr)
        if args.labels_key is not None and args.labels_key != args.label_key:
            parser.error("--labels-key and the deprecated --label-key name different columns; give one.")
        args.labels_key = args.label_key
    if args.labels_key is None:
        parser.error("the following arguments are required: --labels-key")


@contextlib.contextmanager
def _without_notebook_environment():
    """Hide the ``SCMEDAL_*`` variables from the notebooks' kernels (the flags say everything)."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SCMEDAL_")}
    try:
        yield
    finally:
        os.environ.update(saved)


def main(argv=None) -> int:
    """Entry point of the ``scmedal-lite`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        _labels_key(parser, args)
        return run(args)
    return EXIT_BAD_INPUT                                 # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
