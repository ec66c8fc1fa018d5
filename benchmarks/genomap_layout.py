"""Genomap layouts against a known answer: do co-expressed genes sit together, and how long does a layout take?

genomap 1.3.6 (the paper's) couples the genes' correlation distances to "distances" between pixels that are
differences of their distances from the grid's centre (``genomap.createMeshDistance``). The package's default
layout (``method="euclidean"``) couples them to the pixels' Euclidean distances instead, with POT's solver.
For each method, on real data, this records the seconds and iterations of the fit and
:func:`scmedal_lite.genomaps.layout_locality`: the mean pixel distance between the 5,000 most correlated gene
pairs over that of all pairs (1: no better than a random layout) and the rank correlation between gene and
pixel distances. Also: how the published grid distances correlate with the true ones, and whether the default
gives the same layout twice.

Data: z-scored log-normalised expression of 2,000 classical monocytes of the bundled COVID PBMC data (1,000
highly variable genes, as chapter 3 uses), and any chapter-3 stacks given with ``--stack`` (the
``genomaps/stack_zscore.npy`` that ``scmedal-lite run`` or ``make demo`` writes: counterfactuals of the
chosen cells in every batch). Writes ``benchmarks/results/genomap_layout.{json,md}``.

    .venv/bin/python benchmarks/genomap_layout.py [--stack "make demo=outputs/book/genomaps/stack_zscore.npy"]
"""

import argparse
import os
import time

import numpy as np
from fresh_process import machine, write

import scmedal_lite as sm
from scmedal_lite import genomaps as gm

HERE = os.path.dirname(os.path.abspath(__file__))


def monocytes(n_cells: int, seed: int) -> np.ndarray:
    """z-scores of ``n_cells`` seeded classical monocytes of the prepared COVID data (cells x 1,000 genes)."""
    adata = sm.datasets.covid_pbmc()
    sm.pp.prepare(adata, batch_key="sample_id", n_top_genes=1000)
    cells = np.flatnonzero((adata.obs["mergedcelltype"].astype(str) == "Mono_Classical").to_numpy())
    cells = np.sort(np.random.default_rng(seed).choice(cells, size=min(n_cells, cells.size), replace=False))
    x = adata.X[cells]
    return gm.zscore_columns(x.toarray() if hasattr(x, "toarray") else np.asarray(x))


def measure(x: np.ndarray, method: str, n_iter: int) -> dict:
    tic = time.perf_counter()
    layout = gm.GenomapLayout.fit(x, n_iter=n_iter, method=method)
    seconds = time.perf_counter() - tic
    loc = gm.layout_locality(layout, x)
    return {"method": method, "seconds": round(seconds, 1), "iterations": layout.meta.get("iterations"),
            "top_pairs_distance": round(loc["top_pairs_distance"], 2),
            "all_pairs_distance": round(loc["all_pairs_distance"], 2), "ratio": round(loc["ratio"], 3),
            "spearman": round(loc["spearman"], 3), "T": layout.T}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stack", nargs="*", default=[],
                    help="chapter-3 stacks to add, as LABEL=PATH (PATH: a genomaps/stack_zscore.npy)")
    ap.add_argument("--n-cells", type=int, default=2000)
    ap.add_argument("--n-iter", type=int, default=100, help="iterations, at most (chapter 3's default: 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "genomap_layout"))
    args = ap.parse_args(argv)
    load = {"start": list(os.getloadavg())}
    inputs = {f"COVID classical monocytes ({args.n_cells} cells, observed)": monocytes(args.n_cells, args.seed)}
    for item in args.stack:
        label, _, path = item.rpartition("=")
        inputs[f"chapter-3 stack, {label or path}"] = np.load(path).astype(np.float64)
    genomap = gm._import_genomap()
    published = genomap.createMeshDistance(32, 32)
    upper = np.triu_indices(1024, 1)
    mesh_r = float(np.corrcoef(published[upper], gm.grid_distances(32, 32)[upper])[0, 1])
    runs, rows = [], []
    for name, x in inputs.items():
        results = [measure(x, method, args.n_iter) for method in ("genomap", "euclidean")]
        repeat = gm.GenomapLayout.fit(x, n_iter=args.n_iter)
        same = bool(np.array_equal(repeat.T, results[1]["T"]))
        for r in results:
            r.pop("T")
            rows.append([name, f"{x.shape[0]} x {x.shape[1]}", r["method"], r["seconds"],
                         r["iterations"] if r["iterations"] is not None else f"{args.n_iter} (all)",
                         r["top_pairs_distance"], r["all_pairs_distance"], r["ratio"], r["spearman"]])
        runs.append({"data": name, "shape": list(x.shape), "results": results, "euclidean_repeat_identical": same})
    load["end"] = list(os.getloadavg())
    command = "python benchmarks/genomap_layout.py" + (" --stack " + " ".join(f'"{s}"' for s in args.stack)
                                                        if args.stack else "")
    result = {"command": command, "machine": machine(load), "n_iter": args.n_iter,
              "published_vs_true_grid_distance_r": round(mesh_r, 3), "runs": runs}
    write(args.out, result, "Genomap layouts: co-expressed genes together, and the time a layout takes",
          f"Command: `{command}`; {machine(load)['processor']}, {os.cpu_count()} CPUs, load average {load}. "
          f"At most {args.n_iter} iterations (chapter 3's default). `ratio`: mean pixel distance of the 5,000 "
          "most correlated gene pairs over that of all pairs (1: no better than a random layout; "
          "`gm.layout_locality`). `spearman`: rank correlation of gene distance (1 - r) and pixel distance.",
          ["data", "rows x genes", "layout", "seconds", "iterations", "top pairs: pixel distance",
           "all pairs", "ratio", "spearman"], rows,
          f"genomap's grid distances (`createMeshDistance(32, 32)`: differences of distances from the centre) "
          f"correlate with the true distances between pixels at r = {mesh_r:.3f}. The default layout fitted "
          f"twice is identical: {all(r['euclidean_repeat_identical'] for r in runs)}.")


if __name__ == "__main__":
    main()
