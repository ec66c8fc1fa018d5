"""Execute the book's chapters into Jupyter Book's cache, the first alone and the others two at a time.

``jupyter-book build`` executes the notebooks one after another. This script runs before it (``make book`` and
``make demo`` call it) and fills the same cache (``_build/.jupyter_cache``), so the build then only renders:

- the first chapter whose cached outputs are out of date runs alone: chapter 00 trains and saves the shared
  model that the others load;
- the other out-of-date chapters then run ``--jobs`` at a time (default 2), each in a kernel of its own,
  chapter 04 (the longest) first.
  Much of a chapter is single-threaded (kernel start-up and imports, graph tracing, UMAP, genomap's
  transport, plots), so two kernels keep a 2-CPU machine busier than one (book/performance.md).

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
from pathlib import Path

import yaml
from jupyter_cache import get_cache
from jupyter_cache.executors.basic import ExecutionWorkerLocalMProc, ProcessData
from jupyter_cache.executors.utils import single_nb_execution

# Shared with `scmedal-lite run`: the longest chapter (its cross-validation trains a model per fold) starts first
# after chapter 00, and a kernel may take minutes to start while another chapter trains on both CPUs.
from scmedal_lite.cli import KERNEL_START_TIMEOUT, LONGEST

ROOT = Path(__file__).resolve().parents[1]


class ChapterWorker(ExecutionWorkerLocalMProc):
    """jupyter-cache's worker (each chapter in its own folder) with a kernel start-up timeout of minutes."""

    @staticmethod
    def execute(project_nb, data: ProcessData):
        return single_nb_execution(project_nb.nb, cwd=str(Path(project_nb.uri).parent), timeout=data.timeout,
                                   allow_errors=data.allow_errors, startup_timeout=KERNEL_START_TIMEOUT)


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
    """Run ``records`` (the first alone, then ``jobs`` at a time) into the cache; returns the failed paths."""
    worker = ChapterWorker()
    first, rest = records[0], list(records[1:])
    if jobs > 1:
        rest.sort(key=lambda r: Path(r.uri).stem not in LONGEST)      # stable: the book's order otherwise
    work = [ProcessData(r.pk, r.uri, cache, timeout, False) for r in (first, *rest)]

    def report(results, started):
        failed = []
        for code, uri in results:          # as each finishes
            print(f"  {Path(uri).name}: {'ok' if code == 0 else 'FAILED'} (at {time.perf_counter() - started:.0f} s)",
                  flush=True)
            failed += [uri] if code != 0 else []
        return failed

    started = time.perf_counter()
    print(f"executing {Path(records[0].uri).name} alone (the shared model)", flush=True)
    failed = report([worker(work[0])], started)
    if failed or len(work) == 1:
        return failed
    print(f"executing {len(work) - 1} more, {jobs} at a time", flush=True)
    with multiprocessing.get_context("spawn").Pool(min(jobs, len(work) - 1)) as pool:
        return report(pool.imap_unordered(worker, work[1:], chunksize=1), started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="chapters run at a time after the first (default 2)")
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
