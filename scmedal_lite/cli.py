"""``scmedal-lite run``: all tutorial notebooks on a user's ``.h5ad``, with tables, an AnnData and a report
(and ``scmedal-lite apply``, a saved model on new cells: :mod:`scmedal_lite.apply`).

Usage::

    scmedal-lite run DATA.h5ad --batch-key donor --labels-key cell_type [--condition-key disease] --out DIR
                     [--quick] [--max-epochs N] [--seed S] [--preset NAME] [--jobs N] [--overwrite]
                     [--resume] [--quiet | --verbose]

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
    run.json                     command, parameters, input checksum, timings, versions of the main packages
    logs/*.log                   what each notebook's kernel printed outside its cells (TensorFlow's and
                                 ipykernel's start-up lines; on the terminal with --verbose)

Notebook 00 trains the shared model; notebook 04, which trains its own model per fold, runs beside it, and the
other notebooks run once the model is saved, two notebooks at a time in all (``--jobs``; each in a kernel of its
own, whose TensorFlow uses its share of the CPUs; notebook 02, the shortest on small data, starts last).
``DATA.h5ad`` is only read. ``DIR`` is written whole or not at all: the run builds everything in
``DIR.partial`` and moves it to ``DIR`` in one step when every notebook has run; an existing non-empty ``DIR`` is
refused unless ``--overwrite``. A run that was killed or failed leaves ``DIR.partial``, with a marker for each
notebook that completed: ``--resume`` (same input and parameters) reuses those notebooks and the trained model
and runs the rest; without ``--resume`` an old ``DIR.partial`` is removed and the run starts afresh.

The flags say everything: the ``SCMEDAL_*`` environment variables that the notebooks otherwise read
(:data:`scmedal_lite.tutorial.ENVIRONMENT`) are ignored. Progress goes to stdout (one line per notebook) and a
progress bar over each notebook's cells to stderr; ``--quiet`` keeps only errors, ``--verbose`` adds the
package's log messages and each cell's output (stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import logging
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
#: Notebooks that do not use the shared model (the cross-validation trains a model per fold). With ``--jobs``
#: above 1 they start beside notebook 00 instead of waiting for its model; they are also the longest.
WITHOUT_MODEL = ("04_classification",)
#: Of the notebooks that load the shared model, these start last. On small data chapter 2 is the shortest of them
#: (1,713 COVID cells: 29-31 s against 43-59 s), so with two at a time a longer one does not end alone; on all
#: 30,534 cells chapters 2 and 3 run one after the other beside chapter 1 in either order, so it changes nothing.
STARTED_LAST = ("02_random_effects",)
#: Seconds a notebook's kernel may take to start (nbclient's default is 60). Two chapters at a time on 2 CPUs,
#: one of them training, have kept a new kernel from answering within a minute; a slow start is not a failure.
KERNEL_START_TIMEOUT = 600
#: Starts of a notebook's kernel before its death at start-up counts as a failure. A kernel binds ports chosen
#: (free) just before it starts; another kernel started at the same moment by another process can take one of
#: them first, and the kernel then dies before it replies (jupyter_client's known start-up race). A new start
#: picks new ports.
KERNEL_START_TRIES = 3
#: What nbclient / jupyter_client raise (a RuntimeError) when a kernel dies while starting.
KERNEL_DIED = "Kernel died before replying to kernel_info"
REQUIRED = ("results/scores.csv", "results/classification.csv", "adata.h5ad", "report/index.html")
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
#: Suffix of the work folder beside ``--out`` (kept after a kill or a failure, for ``--resume``).
PARTIAL = ".partial"
#: Inside the work folder: the run's identity and one marker per completed notebook (removed at the end).
STATE_DIR = ".resume"
#: The folder of the output that keeps each kernel's own standard error (``logs/<notebook>.log``).
KERNEL_LOGS = "logs"


def notebooks_dir() -> Path:
    """Where the tutorial notebooks are: ``scmedal_lite/notebooks`` inside an installed wheel (package data), or
    ``notebooks/`` of the source tree (an editable install or a checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "notebooks", here.parent / "notebooks"):
        if all((candidate / f"{n}.ipynb").exists() for n in NOTEBOOKS):
            return candidate
    raise InputError("The tutorial notebooks were not found next to the package (scmedal_lite/notebooks or "
                     "notebooks/ of the source tree): reinstall scmedal_lite, or pass --notebooks-dir.")


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
    run.add_argument("--preset", default="default",
                     help="the model's settings (default 'default'; 'mixing': an FE that mixes batches as well "
                          "as Harmony, several times slower; 'paper': the authors')")
    run.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    run.add_argument("--resume", action="store_true",
                     help="finish a killed or failed run: reuse the notebooks it completed and its trained model "
                          "(kept in DIR.partial); without it an old DIR.partial is removed")
    loud = run.add_mutually_exclusive_group()
    loud.add_argument("--quiet", "-q", action="store_true", help="print only errors (no progress, no bars)")
    loud.add_argument("--verbose", "-v", action="store_true",
                      help="also the package's log messages and every cell's output (on stderr)")
    run.add_argument("--notebooks", default=None,
                     help=f"comma-separated subset of the notebooks (default all: {','.join(NOTEBOOKS)})")
    run.add_argument("--notebooks-dir", default=None, help=argparse.SUPPRESS)
    run.add_argument("--jobs", "-j", type=int, default=None,
                     help="notebooks run at a time once the model is trained (default: 2, or 1 on one CPU); "
                          "each kernel's TensorFlow then uses CPUs/N threads (TF_NUM_INTRAOP_THREADS, unless set)")
    run.add_argument("--timeout", type=int, default=None,
                     help="seconds allowed per notebook cell (default: no limit)")
    from .apply import add_parser

    add_parser(sub)
    return parser


def check_inputs(args) -> dict:
    """Everything that can be checked before the heavy work; raises :class:`InputError`."""
    from .validate import as_int, check_batches, check_obs_key, read_h5ad

    data = os.path.abspath(args.data)
    if args.max_epochs is not None:
        as_int("--max-epochs", args.max_epochs, minimum=1)
    args.jobs = default_jobs() if args.jobs is None else as_int("--jobs", args.jobs, minimum=1)
    as_int("--seed", args.seed, minimum=0)
    from .presets import PRESETS

    if args.preset not in PRESETS:
        raise InputError(f"Unknown --preset {args.preset!r}; choose one of {sorted(PRESETS)}.")
    out = check_out(args, {"input file": (data, args.data)})
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
    _check_installed(names)
    return {"data": data, "out": out, "n_obs": n_obs, "n_vars": n_vars, "notebooks": names, "nb_dir": nb_dir}


def check_out(args, inputs: dict) -> str:
    """``--out`` as an absolute path, checked: absent, an empty folder, or a folder to replace with
    ``--overwrite``; none of ``inputs`` (``{what: (absolute path, as given)}``) inside it."""
    out = os.path.abspath(args.out)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise InputError(f"--out {args.out!r} exists and is not a folder; choose another path.")
        if os.listdir(out) and not args.overwrite:
            raise InputError(f"--out {args.out!r} is not empty; pass --overwrite to replace it, or choose "
                             "another folder.")
    for what, (path, given) in inputs.items():
        if os.path.commonpath([path, out]) == out:
            raise InputError(f"The {what} {given!r} is inside --out {args.out!r}; choose an output folder that "
                             "does not contain it.")
    return out


def _check_installed(names) -> None:
    """What running the notebooks needs, with the command that installs what is missing."""
    missing = [m for m in ("papermill", "ipykernel", "nbformat") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"{', '.join(missing)} not installed: `scmedal-lite run` needs the [cli] extra, "
                         "`pip install \"scmedal_lite[cli]\"`.")
    if "03_genomap_projection" in names and importlib.util.find_spec("genomap") is None:
        from .genomaps.layout import GENOMAP_INSTALL

        raise InputError(f"Notebook 03 needs genomap, which is not installed: `{GENOMAP_INSTALL}` (without "
                         "its dependencies), or leave it out with --notebooks.")


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
    if args.preset != "default":
        parts += ["--preset", args.preset]
    parts += ["--jobs", str(args.jobs)]
    return shlex.join(parts)


def _say(args, message: str) -> None:
    """A progress line on stdout (not with --quiet)."""
    if not args.quiet:
        print(message, flush=True)


def _execute(checked: dict, parameters: dict, work: str, args) -> tuple[list, dict, dict, list, int | None]:
    """Run the selected notebooks with papermill into ``work/notebooks``, without the ``SCMEDAL_*``
    environment; a notebook with a completion marker (a resumed run) is not run again. Returns (executed
    paths, seconds per notebook, status per path, notebooks reused, TensorFlow threads per kernel). A failure
    raises :class:`_RunFailed`.

    The first notebook to run trains and saves the shared model (notebook 00) or loads it. With ``args.jobs``
    above 1 the notebooks that do not use that model (:data:`WITHOUT_MODEL`) start beside it; the others only
    read the model and write files of their own, so they start once it is saved. At most ``args.jobs`` run at a
    time, each in its own kernel (:func:`default_jobs`) whose TensorFlow gets its share of the CPUs
    (:func:`threads_per_kernel`). After a failure no further notebook starts; those
    already running finish and keep their completion markers, so ``--resume`` reruns only what is left."""
    from concurrent.futures import ThreadPoolExecutor

    names = checked["notebooks"]
    executed, timings, status, reused, pending = {}, {}, {}, [], []
    for i, name in enumerate(names, 1):
        dst = os.path.join(work, "notebooks", f"{name}.ipynb")
        done = _marker(work, name)
        if done is not None and os.path.exists(dst):
            timings[name], status[dst], executed[name] = done, f"ok, {done:.0f} s (an earlier run)", dst
            reused.append(name)
            _say(args, f"[{i}/{len(names)}] {name}: done in an earlier run, reused")
        else:
            pending.append((i, name))
    jobs = min(args.jobs, max(1, len(pending) - 1))          # at a time once the model is saved
    beside = [item for item in pending[1:] if item[1] in WITHOUT_MODEL] if args.jobs > 1 else []
    failures = []

    def one(i, name, bars):
        if failures:                       # after a failure no further notebook starts
            return
        _say(args, f"[{i}/{len(names)}] {name} ...")
        try:
            dst, seconds = _run_notebook(checked, name, parameters, work, args, bars=bars)
        except Exception as err:           # noqa: BLE001 - re-raised below, once the running ones are done
            failures.append(err)
            return
        timings[name], status[dst], executed[name] = seconds, f"ok, {seconds:.0f} s", dst
        _say(args, f"      {name} done in {seconds:.0f} s")

    at_once = kernels_at_once(args.jobs, beside=len(beside), after=len(pending) - 1 - len(beside))
    with (_without_notebook_environment(), _silenced_stderr(args.quiet), threads_per_kernel(at_once) as threads,
          ThreadPoolExecutor(max(1, min(args.jobs, len(pending)))) as pool):
        if pending:
            first = pool.submit(one, *pending[0], True)    # trains (or loads) the shared model; a bar (none beside)
            for i, name in beside:
                _say(args, f"      {name} runs beside it: it trains its own model per fold (--jobs)")
                pool.submit(one, i, name, False)
            first.result()                 # the model is saved: the others can load it
            rest = [item for item in pending[1:] if item not in beside]
            rest = start_order(rest, key=lambda item: item[1]) if jobs > 1 else rest
            if jobs > 1 and rest and not failures:
                _say(args, f"      the other {len(rest)} notebooks run {jobs} at a time (--jobs)")
            for i, name in rest:
                pool.submit(one, i, name, jobs == 1)
    if failures:
        raise failures[0]
    order = [n for n in names if n in executed]
    return [executed[n] for n in order], {n: timings[n] for n in order}, status, reused, threads


def _run_notebook(checked, name, parameters, work, args, bars: bool) -> tuple[str, float]:
    """Execute one notebook (papermill, a kernel of its own) and mark it done; returns (path, seconds)."""
    import papermill as pm

    nb_out = os.path.join(work, "notebooks")
    src = str(checked["nb_dir"] / f"{name}.ipynb")
    dst = os.path.join(nb_out, f"{name}.ipynb")
    t0 = time.perf_counter()
    try:
        # The kernel starts in nb_out through nbclient's resources, not papermill's cwd=: that changes the
        # working folder of this whole process for the run, so with --jobs > 1 a notebook that ends puts it back
        # while another is starting its kernel, which then writes its results beside the input instead.
        retry_kernel_start(
            lambda: pm.execute_notebook(src, dst, parameters=parameters, kernel_name="python3",
                                        resources={"metadata": {"path": os.path.abspath(nb_out)}},
                                        progress_bar=bars and not args.quiet, log_output=bool(args.verbose),
                                        execution_timeout=args.timeout, start_timeout=KERNEL_START_TIMEOUT,
                                        **_kernel_log(work, name, args)),
            name, say=lambda message: _say(args, message))
    except pm.PapermillExecutionError as err:
        raise _RunFailed(f"notebook {name} failed: {err.ename}: {err.evalue} (the executed notebook is "
                         f"{dst}; fix the cause and rerun with --resume to continue, or without it to "
                         f"start afresh)") from None
    except RuntimeError as err:
        if KERNEL_DIED not in str(err):
            raise
        raise _RunFailed(f"notebook {name} failed: its kernel died while starting, {KERNEL_START_TRIES} times "
                         f"(check that `{sys.executable} -m ipykernel_launcher --help` runs, and read "
                         f"{os.path.join(work, KERNEL_LOGS, name + '.log')}; then rerun with --resume to "
                         "continue)") from None
    seconds = round(time.perf_counter() - t0, 1)
    _mark_done(work, name, seconds)
    return dst, seconds


def _kernel_log(work: str, name: str, args) -> dict:
    """papermill's arguments that send the kernel's own standard error (TensorFlow's and ipykernel's start-up
    lines, not the cells' output) to ``work/logs/<name>.log`` (:mod:`scmedal_lite.kernel_log`); none with
    --verbose, which shows it, or --quiet, which silences it."""
    if args.verbose or args.quiet:
        return {}
    from .kernel_log import logging_kernel_manager

    return {"kernel_manager_class": logging_kernel_manager(os.path.join(work, KERNEL_LOGS, f"{name}.log"))}


def retry_kernel_start(run, name: str, say=print, tries: int = KERNEL_START_TRIES):
    """``run()`` (which starts a kernel and executes notebook ``name``), started again when the kernel died
    before it replied (:data:`KERNEL_DIED`): at most ``tries`` starts in all; ``say`` reports each new start.
    Any other error, and the last start's, is raised as it is. Returns ``run()``'s result.

    >>> calls = []
    >>> def flaky():
    ...     calls.append(1)
    ...     if len(calls) == 1:
    ...         raise RuntimeError(KERNEL_DIED)
    ...     return "done"
    >>> retry_kernel_start(flaky, "00_quickstart", say=lambda m: None), len(calls)
    ('done', 2)
    """
    for start in range(1, tries + 1):
        try:
            return run()
        except RuntimeError as err:
            if KERNEL_DIED not in str(err) or start == tries:
                raise
            say(f"      {name}: its kernel died while starting (another kernel may have taken its port); "
                f"starting it again ({start + 1} of {tries})")


def start_order(items, key=lambda name: name):
    """``items`` in the order they start once the model is saved: as given, those named in
    :data:`STARTED_LAST` at the end.

    >>> start_order(["01_batch_suppression", "02_random_effects", "03_genomap_projection"])
    ['01_batch_suppression', '03_genomap_projection', '02_random_effects']
    """
    return sorted(items, key=lambda item: key(item) in STARTED_LAST)


def kernels_at_once(jobs: int, beside: int, after: int) -> int:
    """The most kernels that run at once: the first notebook with the ``beside`` ones that start with it, or
    the ``after`` ones that start once its model is saved, at most ``jobs``.

    >>> kernels_at_once(2, beside=1, after=3), kernels_at_once(2, beside=0, after=1), kernels_at_once(1, 1, 3)
    (2, 1, 1)
    """
    return max(1, min(jobs, max(1 + beside, after)))


#: The environment variable that sets TensorFlow's intra-op threads (read once, when TensorFlow starts).
THREADS_VARIABLE = "TF_NUM_INTRAOP_THREADS"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity where the system tells it, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                   # pragma: no cover - macOS and Windows have no affinity call
        return os.cpu_count() or 1


def kernel_threads(kernels: int, cpus: int | None = None) -> int | None:
    """TensorFlow threads per kernel when ``kernels`` run at a time: the CPUs shared out, at least 1; None for
    one kernel at a time (TensorFlow's default, every CPU). By default each TensorFlow takes every CPU, so two
    kernels on 2 CPUs would run 4 busy threads taking turns (measured in book/performance.md, "Each kernel's
    TensorFlow on its share of the CPUs"). The count sets the order of floating-point sums: another count
    trains slightly different networks, the same count the same ones.

    >>> kernel_threads(2, cpus=2), kernel_threads(2, cpus=16), kernel_threads(1, cpus=16), kernel_threads(3, cpus=2)
    (1, 8, None, 1)
    """
    cpus = available_cpus() if cpus is None else cpus
    return None if kernels <= 1 else max(1, cpus // kernels)


@contextlib.contextmanager
def threads_per_kernel(kernels: int):
    """Set :data:`THREADS_VARIABLE` to :func:`kernel_threads` for the kernels started inside (kernels inherit this
    process's environment), unless the user set it; yields the count the kernels get (None: TensorFlow's
    default). Used by ``scmedal-lite run`` and ``book/execute.py``."""
    own = os.environ.get(THREADS_VARIABLE)
    threads = kernel_threads(kernels)
    if own is not None or threads is None:
        yield int(own) if own and own.isdigit() else None
        return
    os.environ[THREADS_VARIABLE] = str(threads)
    try:
        yield threads
    finally:
        os.environ.pop(THREADS_VARIABLE, None)


def default_jobs(cpus: int | None = None) -> int:
    """Notebooks run at a time after the first (``--jobs`` default): 2, or 1 on a single CPU.

    Two at a time pays even on 2 CPUs: much of a notebook is single-threaded (kernel start-up and imports,
    graph tracing, UMAP, genomap's transport, plotting), so a second kernel fills the idle CPU
    (benchmarks/results/time_to_result.md). More kernels mostly add memory (one model and one copy of the
    data each).

    >>> default_jobs(1), default_jobs(2), default_jobs(16)
    (1, 2, 2)
    """
    cpus = available_cpus() if cpus is None else cpus
    return 2 if (cpus or 1) >= 2 else 1


# ------------------------------------------------------------------------------ the resumable work folder

def _state_path(work: str, name: str) -> str:
    return os.path.join(work, STATE_DIR, name)


def _marker(work: str, name: str) -> float | None:
    """Seconds the notebook took when a marker says it completed in this work folder, else None."""
    try:
        with open(_state_path(work, f"{name}.done"), encoding="utf-8") as f:
            return float(json.load(f)["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _mark_done(work: str, name: str, seconds: float) -> None:
    from .io import write_json

    write_json(_state_path(work, f"{name}.done"), {"notebook": name, "seconds": seconds})


def _work_folder(out: str, identity: dict, args) -> str:
    """``<out>.partial``: reused with ``--resume`` when it was started with the same input and parameters,
    otherwise removed and made anew. Raises :class:`InputError` when ``--resume`` meets another run's folder."""
    from .io import write_json

    work = out + PARTIAL
    if os.path.isdir(work) and args.resume:
        try:
            with open(_state_path(work, "run.json"), encoding="utf-8") as f:
                before = json.load(f)
        except (OSError, ValueError):
            before = None
        if before == identity:
            done = sorted(n for n in NOTEBOOKS if _marker(work, n) is not None)
            _say(args, f"resuming {work}: {len(done)} notebook(s) done before ({', '.join(done) or 'none'})")
            return work
        raise InputError(f"{work} holds a run of another input or other parameters; to start afresh, run "
                         "without --resume (it removes that folder).")
    if args.resume:
        _say(args, f"nothing to resume at {work}: starting afresh")
    if os.path.lexists(work):
        _say(args, f"removing the unfinished run {work}")
        shutil.rmtree(work)
    for sub in ("notebooks", "results", "model"):
        os.makedirs(os.path.join(work, sub))
    write_json(_state_path(work, "run.json"), identity)
    return work


def _run_parameters(args, data: str) -> dict:
    return {"data_path": data, "batch_key": args.batch_key, "labels_key": args.labels_key,
            "condition_key": args.condition_key, "max_epochs": args.max_epochs, "seed": args.seed,
            "preset": args.preset, "quick": bool(args.quick)}


def run(args) -> int:
    """The ``run`` command; returns the exit status."""
    try:
        checked = check_inputs(args)
    except InputError as err:
        return _error(str(err).replace("\n", " "), EXIT_BAD_INPUT)

    from .io import promote_dir, write_json
    from .provenance import versions

    data, out = checked["data"], checked["out"]
    digest = sha256(data)
    started = time.perf_counter()
    params = _run_parameters(args, data)
    _say(args, f"scmedal-lite {__version__}: {data} ({checked['n_obs']} cells x {checked['n_vars']} genes) "
               f"-> {out}")
    try:
        work = _work_folder(out, {"input_sha256": digest, "parameters": params, "scmedal_lite": __version__},
                            args)
        # relative to the kernels' folder (work/notebooks): the executed notebooks show no absolute path of it
        run_params = dict(params, output_dir=os.path.join("..", "results"), model_dir=os.path.join("..", "model"))
        executed, timings, status, reused, threads = _execute(checked, run_params, work, args)
        _collect(work, os.path.join(work, "results"))
        _report(work, executed, status, args, digest, data)
        if sha256(data) != digest:                     # belt and braces: the input must never change
            raise _RunFailed(f"the input file {data} changed during the run; results discarded.")
        write_json(os.path.join(work, "run.json"), {
            "command": _command(args), "scmedal_lite_version": __version__, "versions": versions(),
            "input": data, "input_sha256": digest, "parameters": params, "notebooks": checked["notebooks"],
            "reused_from_an_earlier_run": reused, "jobs": args.jobs,
            "tensorflow_threads_per_kernel": threads, "seconds_per_notebook": timings,
            "seconds_total": round(time.perf_counter() - started, 1)})
        shutil.rmtree(os.path.join(work, STATE_DIR))
        promote_dir(work, out, overwrite=args.overwrite)
    except _RunFailed as err:
        return _error(str(err), EXIT_FAILED)
    except InputError as err:
        return _error(str(err), EXIT_BAD_INPUT)
    report = os.path.join(out, "report", "index.html")
    _say(args, f"wrote {out} in {time.perf_counter() - started:.0f} s; report: {report}")
    return 0


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
    from .provenance import versions

    info = {"input": data, "input sha256": digest, "batch key": args.batch_key, "labels key": args.labels_key,
            "condition key": args.condition_key, "quick": args.quick, "max epochs": args.max_epochs,
            "seed": args.seed, "preset": args.preset, **versions()}
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
def _silenced_stderr(enabled: bool):
    """With --quiet: file descriptor 2 goes to /dev/null while the notebooks run, so the kernels (which
    inherit it) print no start-up chatter either; errors are printed after it is restored."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def _without_notebook_environment():
    """Hide the ``SCMEDAL_*`` variables from the notebooks' kernels (the flags say everything)."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SCMEDAL_")}
    try:
        yield
    finally:
        os.environ.update(saved)


def _configure(args) -> None:
    """What the command turns on for itself and its notebooks' kernels (importing the package does not):
    Keras on TensorFlow, TensorFlow's C++ start-up messages off (unless --verbose), POT without deep-learning
    backends, the package's verbosity and progress bars (:data:`scmedal_lite.settings`)."""
    from ._settings import settings

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")
    os.environ.setdefault("POT_BACKEND_DISABLE_PYTORCH", "1")
    if not args.verbose:
        settings.quiet_tensorflow()
    settings.configure(verbosity="info" if args.verbose else "error" if args.quiet else "warning",
                       progress=not args.quiet)
    if args.verbose:
        logging.getLogger("papermill").setLevel(logging.INFO)
        if not logging.getLogger().handlers:
            logging.basicConfig(stream=sys.stderr, format="%(name)s: %(message)s")


def main(argv=None) -> int:
    """Entry point of the ``scmedal-lite`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        _labels_key(parser, args)
        _configure(args)
        return run(args)
    if args.command == "apply":
        from .apply import main as apply_main

        _configure(args)
        return apply_main(args)
    return EXIT_BAD_INPUT                                 # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
