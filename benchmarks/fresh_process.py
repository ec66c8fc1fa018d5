"""Measure each variant of one thing in a fresh Python process, the variants alternating, and write the results.

Used by ``trace_time.py``, ``scib_first_call.py`` and ``umap_precompile.py``: nothing is cached between
measurements (traced graphs, compiled jax functions, imported modules), and alternating spreads a shared machine's
changing load over all variants. A script calls :func:`alternate` in its main process and, with
``--worker VARIANT``, prints one measurement with :func:`report`.

    runs = alternate(__file__, ("a", "b"), rounds=3)          # {"a": [result, ...], "b": [...]}
"""

import argparse
import json
import os
import platform
import subprocess
import sys


def report(result: dict) -> None:
    """Print a worker's measurement where :func:`alternate` finds it."""
    print("RESULT " + json.dumps(result))


def alternate(script: str, variants, rounds: int, args=()) -> dict:
    """Run ``script --worker VARIANT *args`` for every variant, ``rounds`` times; the measurements per variant."""
    runs = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            out = subprocess.run([sys.executable, script, "--worker", variant, *map(str, args)],
                                 capture_output=True, text=True, check=True).stdout
            runs[variant].append(json.loads(next(line for line in out.splitlines()
                                                 if line.startswith("RESULT "))[7:]))
    return runs


def run_on_cells(script: str, doc: str, variants, measure, *, rounds: int, cells: int, out: str, argv=None):
    """The command line of a script that measures ``variants`` on a number of cells: ``--rounds``, ``--cells``,
    ``--out`` (defaults given here) and the hidden ``--worker VARIANT``. In a worker it prints
    ``measure(variant, cells)`` (:func:`report`) and returns None; otherwise it runs every variant in fresh
    processes, alternating (:func:`alternate`), and returns ``(args, runs, load)``, the load averages at the
    start and the end.

        parsed = run_on_cells(__file__, __doc__, VARIANTS, measure, rounds=3, cells=2000, out=OUT)
    """
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--cells", type=int, default=cells)
    ap.add_argument("--out", default=out)
    ap.add_argument("--worker", choices=variants, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        report(measure(args.worker, args.cells))
        return None
    load = {"start": [round(x, 2) for x in os.getloadavg()]}
    runs = alternate(script, variants, args.rounds, ["--cells", args.cells])
    load["end"] = [round(x, 2) for x in os.getloadavg()]
    return args, runs, load


def processor() -> str:
    """The CPU model and its widest vector extension (``/proc/cpuinfo``; else ``platform.machine()``).

    Recorded because results differ between processors: the same seed gives the same result on one machine,
    but float round-off differs between AVX2 and AVX-512 kernels, and with it where early stopping ends.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    widest = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model}, {widest}"


def machine(load: dict) -> dict:
    """CPU count, processor, platform and the load averages given (e.g. at the start and the end)."""
    return {"cpus": os.cpu_count(), "processor": processor(), "platform": platform.platform(), "load_average": load}


def write(out: str, result: dict, title: str, intro: str, columns: list[str], rows: list[list],
          footer: str) -> None:
    """Write ``out.json`` (``result``) and ``out.md``: a title, a paragraph, a table and a closing line (printed)."""
    lines = [f"# {title}", "", intro, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
             *("| " + " | ".join(map(str, row)) + " |" for row in rows), "", footer]
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
