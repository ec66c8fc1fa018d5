"""The first UMAP after a fresh install, with and without ``sm.pl.precompile_umap`` (which ``make install`` runs).

umap-learn and pynndescent ask numba to keep their compiled code on disk, but compile it on first use: after a
fresh install, the first chapter that draws a UMAP pays for it. Each measurement is a fresh process with an empty
numba cache folder of its own (``NUMBA_CACHE_DIR``, as after a fresh install) that imports TensorFlow and scanpy,
as a chapter's kernel has, and then times its first and second ``sm.pl.umap`` on the same cells. In the variant
``after_precompile`` a separate process first runs ``sm.pl.precompile_umap()`` on that folder (timed: the cost
moved to the install). Variants alternate; medians over rounds.

    .venv/bin/python benchmarks/umap_precompile.py [--rounds 3] [--cells 2000]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from fresh_process import machine, run_on_cells, write

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("fresh_install", "after_precompile")


def measure(variant: str, n_cells: int) -> dict:
    """One fresh-process measurement of ``variant`` with an empty numba cache folder of its own."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        precompile_s = None
        if variant == "after_precompile":
            tic = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import scmedal_lite as sm; sm.pl.precompile_umap()"], env=env,
                           check=True, capture_output=True)
            precompile_s = round(time.perf_counter() - tic, 2)
        code = f"""
import hashlib, json, time
import numpy as np, scanpy, tensorflow
import scmedal_lite as sm
x = np.random.default_rng(0).normal(size=({n_cells}, 30)).astype("float32")
times = []
for _ in range(2):
    tic = time.perf_counter()
    xy = sm.pl.umap(x)
    times.append(round(time.perf_counter() - tic, 2))
print(json.dumps({{"first_umap_s": times[0], "second_umap_s": times[1],
                  "layout_sha1": hashlib.sha1(xy.tobytes()).hexdigest()}}))
"""
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    return {**result, "precompile_s": precompile_s}


def main(argv=None):
    parsed = run_on_cells(__file__, __doc__, VARIANTS, measure, rounds=3, cells=2000,
                          out=os.path.join(HERE, "results", "umap_precompile"), argv=argv)
    if parsed is None:                     # a worker: it printed its measurement
        return
    args, runs, load = parsed

    def median(variant, key):
        return round(statistics.median(r[key] for r in runs[variant]), 2)

    summary = {v: {"first_umap_s_median": median(v, "first_umap_s"),
                   "second_umap_s_median": median(v, "second_umap_s"), "rounds": runs[v]} for v in VARIANTS}
    summary["after_precompile"]["precompile_s_median"] = median("after_precompile", "precompile_s")
    same = len({r["layout_sha1"] for v in VARIANTS for r in runs[v]}) == 1
    saved = round(summary["fresh_install"]["first_umap_s_median"]
                  - summary["after_precompile"]["first_umap_s_median"], 2)
    command = f"python benchmarks/umap_precompile.py --rounds {args.rounds} --cells {args.cells}"
    result = {"command": command, "machine": machine(load), "variants": summary,
              "first_umap_saved_s": saved, "identical_layouts": same}
    write(args.out, result, "The first UMAP after a fresh install, with and without `sm.pl.precompile_umap`",
          f"Command: `{command}`; {os.cpu_count()} CPUs, load average {load}. Fresh process per measurement with an "
          "empty numba cache folder (as after a fresh install), TensorFlow and scanpy imported first (as in a "
          "chapter's kernel); variants alternating; medians over rounds.",
          ["variant", "precompile (at install), s", "first UMAP, s", "second UMAP, s"],
          [[v, summary[v].get("precompile_s_median", "—"), summary[v]["first_umap_s_median"],
            summary[v]["second_umap_s_median"]] for v in VARIANTS],
          f"The first UMAP in a chapter's kernel is {saved} s shorter after the precompile. "
          f"Identical layouts in every run: {same}.")


if __name__ == "__main__":
    main()
