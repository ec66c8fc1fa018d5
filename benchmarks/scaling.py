"""Time per epoch and peak memory against the number of cells: 30k, 120k and 480k cells made by tiling the real
COVID PBMC data with relabelled samples (k copies of each sample become k samples).

Each configuration runs in its own process (peak RSS is per process): the FE network trains for 2 epochs,
streaming minibatches either from an in-memory sparse matrix or from a backed (``backed="r"``) .h5ad file.
Writes benchmarks/results/scaling.{json,md} and scaling.png.

    .venv/bin/python benchmarks/scaling.py [--sizes 30000 120000 480000] [--workdir /tmp/scmedal_scaling]
"""

import argparse
import json
import os
import subprocess
import sys
import time

from scmedal_lite.io import write_figure, write_json, write_text

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import json, sys, time


def peak_rss_mb():
    # VmHWM: this process's own peak (ru_maxrss would include the parent's peak inherited across fork/exec)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)


import anndata, numpy as np
import scmedal_lite as sm
path, mode = sys.argv[1], sys.argv[2]
t = time.perf_counter()
adata = anndata.read_h5ad(path, backed="r" if mode == "backed" else None)
load = time.perf_counter() - t
model = sm.SCMEDAL(adata, "sample_id", seed=0)
setup = time.perf_counter() - t - load
model.train(max_epochs=2, which=("fe",), progress=False, early_stopping=False)
hist = model.history["fe"]
print(json.dumps({"cells": adata.n_obs, "mode": mode, "load_s": round(load, 1), "setup_s": round(setup, 1),
                  "epoch_s": [round(s, 2) for s in hist["seconds"]],
                  "peak_rss_mb": peak_rss_mb()}))
"""


def make_tiled(n_cells, path):
    import anndata
    import numpy as np
    from scipy import sparse

    import scmedal_lite as sm
    base = sm.datasets.covid_pbmc()
    sm.pp.prepare(base, batch_key="sample_id")
    k = int(np.ceil(n_cells / base.n_obs))
    parts = []
    for rep in range(k):
        part = base.copy()
        part.obs["sample_id"] = part.obs["sample_id"].astype(str) + f"_rep{rep}"
        part.obs_names = [f"{n}_rep{rep}" for n in part.obs_names]
        del part.layers["counts"]
        parts.append(part)
    tiled = anndata.concat(parts)[:n_cells].copy()
    tiled.obs = tiled.obs[["sample_id", "celltype_coarse"]].astype("category")
    # shuffle rows once: files are usually sorted by sample, which a streaming reader should not rely on
    order = np.random.default_rng(0).permutation(tiled.n_obs)
    tiled = tiled[order].copy()
    tiled.X = sparse.csr_matrix(tiled.X, dtype=np.float32)
    tiled.write_h5ad(path)
    return tiled.n_obs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[30_000, 120_000, 480_000])
    ap.add_argument("--modes", nargs="*", default=["memory", "backed"])
    ap.add_argument("--workdir", default="/tmp/scmedal_scaling")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "scaling"))
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    rows = []
    for n in args.sizes:
        path = os.path.join(args.workdir, f"tiled_{n}.h5ad")
        if not os.path.exists(path):
            make_tiled(n, path)
        for mode in args.modes:
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHILD, path, mode], capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-3000:])
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["epoch2_s"] = row["epoch_s"][-1]
            row["wall_s"] = round(time.perf_counter() - t, 1)
            row["file_mb"] = round(os.path.getsize(path) / 2 ** 20)
            rows.append(row)
            print(row, flush=True)
    import pandas as pd
    table = pd.DataFrame(rows)
    base = table.groupby("mode")["epoch2_s"].transform("first") / table.groupby("mode")["cells"].transform("first")
    table["s_per_epoch_per_30k_cells"] = (table["epoch2_s"] / table["cells"] * 30_000).round(2)
    table["linearity_vs_smallest"] = (table["epoch2_s"] / (base * table["cells"])).round(2)
    write_json(args.out + ".json", {"command": "python benchmarks/scaling.py",
                                    "rows": table.to_dict(orient="records"), "cpus": os.cpu_count()})
    cols = ["cells", "mode", "epoch2_s", "s_per_epoch_per_30k_cells", "linearity_vs_smallest", "peak_rss_mb",
            "file_mb", "load_s", "setup_s"]
    write_text(args.out + ".md", ["# FE epoch time and peak memory against cells (tiled COVID PBMC)", "",
                                  "`python benchmarks/scaling.py`", "", table[cols].to_markdown(index=False)])
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.5), layout="tight")
    axes = fig.subplots(1, 2)
    for mode, part in table.groupby("mode"):
        axes[0].plot(part["cells"], part["epoch2_s"], "o-", label=mode)
        axes[1].plot(part["cells"], part["peak_rss_mb"], "o-", label=mode)
    axes[0].set(xlabel="cells", ylabel="seconds per FE epoch", xscale="log", yscale="log")
    axes[1].set(xlabel="cells", ylabel="peak RSS (MB)", xscale="log")
    axes[0].legend()
    write_figure(args.out + ".png", fig, dpi=100, bbox_inches=None)


if __name__ == "__main__":
    main()
