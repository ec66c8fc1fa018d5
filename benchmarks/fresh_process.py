"""Measure each variant of one thing in a fresh Python process, the variants alternating, and write the results.

Used by ``trace_time.py`` and ``scib_gc.py``: nothing is cached between measurements (traced graphs, compiled jax
functions, imported modules), and alternating spreads a shared machine's changing load over all variants.
A script calls :func:`alternate` in its main process and, with ``--worker VARIANT``, prints one measurement with
:func:`report`.

    runs = alternate(__file__, ("a", "b"), rounds=3)          # {"a": [result, ...], "b": [...]}
"""

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


def machine(load: dict) -> dict:
    """CPU count, platform and the load averages given (e.g. at the start and the end)."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": load}


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
