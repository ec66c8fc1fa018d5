"""Execute the book's chapters into Jupyter Book's cache, the first alone and the others two at a time.

``jupyter-book build`` executes the notebooks one after another. This script runs before it (``make book`` and
``make demo`` call it) and fills the same cache (``_build/.jupyter_cache``), so the build then only renders:

- the first chapter whose cached outputs are out of date runs first: chapter 00 trains and saves the shared
  model that the others load; chapter 04, which trains its own model per fold and is the longest, runs beside
  it (``--jobs`` above 1);
- the other out-of-date chapters run once that model is saved, ``--jobs`` chapters at a time in all (default
  2), each in a kernel of its own; chapter 02 (the shortest on small data; :data:`scmedal_lite.cli.STARTED_LAST`)
  starts last.
  Much of a chapter is single-threaded (kernel start-up and imports, graph tracing, UMAP, genomap's
  transport, plots), so two kernels keep a 2-CPU machine busier than one (book/performance.md). Each kernel's
  TensorFlow gets its share of the CPUs (:func:`scmedal_lite.cli.threads_per_kernel`).

Each kernel's own standard error (TensorFlow's and ipykernel's start-up lines, not the cells' output) goes to
``_build/logs/<chapter>.log`` (:mod:`scmedal_lite.kernel_log`), not to the terminal.
Chapters already cached with the same code are skipped, as the build itself would. A chapter that fails stops
the script with its traceback and exit status 1 (the build would fail on it anyway). The environment is the
build's (``SCMEDAL_*`` variables included; see the Makefile's ``BOOK_ENV``).

    python book/execute.py [--jobs 2] [--timeout 3600] [--path-output DIR]

``--path-output`` is jupyter-book's option of the same name: the cache is then ``DIR/_build/.jupyter_cache``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import yaml
from jupyter_cache import get_cache
from jupyter_cache.executors.basic import ExecutionWorkerLocalMProc, ProcessData
from jupyter_cache.executors.utils import single_nb_execution

# Shared with `scmedal-lite run`: the chapter that trains its own model per fold (the longest) runs beside chapter
# 00, a kernel may take minutes to start while another chapter trains on both CPUs, and each kernel's TensorFlow
# gets its share of the CPUs.
from scmedal_lite.cli import (
    KERNEL_START_TIMEOUT,
    WITHOUT_MODEL,
    kernels_at_once,
    retry_kernel_start,
    start_order,
    threads_per_kernel,
)
from scmedal_lite.kernel_log import logging_kernel_manager

ROOT = Path(__file__).resolve().parents[1]


class ChapterWorker(ExecutionWorkerLocalMProc):
    """jupyter-cache's worker (each chapter in its own folder) with a kernel start-up timeout of minutes, and a
    new start when the kernel dies while starting (two chapters starting at once, each in its own process, can
    pick the same free port; :func:`scmedal_lite.cli.retry_kernel_start`)."""

    @staticmethod
    def execute(project_nb, data: ProcessData):
        log = kernel_log(project_nb.uri, data.cache)    # the kernel's own start-up lines, not the terminal's
        return retry_kernel_start(
            lambda: single_nb_execution(project_nb.nb, cwd=str(Path(project_nb.uri).parent), timeout=data.timeout,
                                        allow_errors=data.allow_errors, startup_timeout=KERNEL_START_TIMEOUT,
                                        kernel_manager_class=logging_kernel_manager(log)),
            Path(project_nb.uri).name, say=lambda message: print(message, flush=True))


def kernel_log(uri, cache=None) -> Path:
    """Where a chapter's kernel writes its own standard error (:mod:`scmedal_lite.kernel_log`): ``logs/`` beside
    the cache (``_build/logs``, under ``--path-output`` when given)."""
    build = Path(cache.path).parent if cache is not None else ROOT / "_build"
    return build / "logs" / f"{Path(uri).stem}.log"


def chapters() -> list[Path]:
    """The executed notebooks of ``_toc.yml``, in the book's order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").exists()]


def stale(cache, paths: list[Path]) -> list:
    """Project records of the notebooks whose code has no executed copy in the cache."""
    import nbformat

    records = []
    for path in paths:
        record = cache.add_nb_to_project(str(path))
        try:
            cache.match_cache_notebook(nbformat.read(path, as_version=4))
        except KeyError:
            records.append(record)
    return records


def execute(cache, records, jobs: int, timeout: int) -> list[str]:
    """Run ``records`` into the cache, at most ``jobs`` at a time; returns the failed paths. The first (chapter 00:
    the shared model) runs before any chapter that loads its model; with ``jobs`` above 1 the chapters that do
    not use it (:data:`scmedal_lite.cli.WITHOUT_MODEL`) run beside it."""
    worker = ChapterWorker()
    first, rest = records[0], list(records[1:])
    beside = [r for r in rest if Path(r.uri).stem in WITHOUT_MODEL] if jobs > 1 else []
    rest = [r for r in rest if r not in beside]
    rest = start_order(rest, key=lambda r: Path(r.uri).stem) if jobs > 1 else rest
    started = time.perf_counter()

    def run(pool, record):
        return pool.submit(worker, ProcessData(record.pk, record.uri, cache, timeout, False))

    def report(results):
        failed = []
        for code, uri in results:          # as each finishes
            print(f"  {Path(uri).name}: {'ok' if code == 0 else 'FAILED'} (at {time.perf_counter() - started:.0f} s"
                  + ("" if code == 0 else f"; its kernel's own messages: {kernel_log(uri, cache)}") + ")", flush=True)
            failed += [uri] if code != 0 else []
        return failed

    spawn = multiprocessing.get_context("spawn")
    at_once = kernels_at_once(jobs, beside=len(beside), after=len(rest))
    with threads_per_kernel(at_once), ProcessPoolExecutor(max(1, min(jobs, len(records))), mp_context=spawn) as pool:
        print(f"executing {Path(first.uri).name} first (the shared model)"
              + "".join(f", {Path(r.uri).name} beside it (no shared model)" for r in beside), flush=True)
        head, side = run(pool, first), [run(pool, r) for r in beside]
        failed = report([head.result()])
        if rest and not failed:
            print(f"executing {len(rest)} more, {jobs} at a time in all", flush=True)
        later = [] if failed else [run(pool, r) for r in rest]
        return failed + report(f.result() for f in as_completed(side + later))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="chapters run at a time (default 2)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell (as _config.yml)")
    parser.add_argument("--path-output", default=str(ROOT), help="as jupyter-book build's (default: the root)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    os.chdir(ROOT)
    cache = get_cache(str(Path(args.path_output).resolve() / "_build" / ".jupyter_cache"))
    records = stale(cache, chapters())
    if not records:
        print("every chapter is cached: nothing to execute")
        return 0
    failed = execute(cache, records, args.jobs, args.timeout)
    for uri in failed:
        record = cache.get_project_record(uri)
        print(f"\n{Path(uri).name} failed:\n{record.traceback or '(no traceback recorded)'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
