"""What a notebook's first scIB benchmark costs, and what the package's two shortcuts around scib-metrics save.

``sm.metrics.scib_benchmark`` runs scib-metrics' Benchmarker with two changes that leave every score the same.
The variants:

- ``skipped`` (the package's default): both shortcuts on;
- ``forced``: scib-metrics' own ``gc.collect()`` before every metric of every embedding. In a process that
  has imported TensorFlow, scanpy and the data (every chapter's kernel), a full collection walks millions of
  objects;
- ``umap_learn_graph``: kBET's fuzzy neighbour graph built by umap-learn's ``fuzzy_simplicial_set``, whose
  numba code compiles in every new process, instead of ``scmedal_lite.knn_graph.umap_graph`` (NumPy).

Each variant runs in a fresh process that imports TensorFlow and scanpy as a chapter does, alternating,
``--rounds`` times: the first call of ``scib_benchmark`` (jax compiles its functions then) and a second call, on
``--cells`` test cells drawn from the COVID PBMC data with three embeddings (50 and 20 principal components of
the log-normalised cells, and Harmony's correction of the 50). The scores of all variants must be identical.
Writes ``--out`` (``benchmarks/results/scib_first_call.{json,md}``; ``results/scib_gc.{json,md}`` are an
earlier run of the first two variants). Needs the ``[scib]`` extra.

    .venv/bin/python benchmarks/scib_first_call.py [--rounds 3] [--cells 1000]
"""

import contextlib
import os
import statistics
import time

from fresh_process import machine, run_on_cells, write

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("skipped", "forced", "umap_learn_graph")


def measure(variant: str, n_cells: int) -> dict:
    """One fresh-process measurement of ``variant`` (printed as JSON by ``--worker``)."""
    import anndata
    import numpy as np
    import scanpy  # noqa: F401
    import tensorflow  # noqa: F401  (a chapter's kernel has it loaded)

    import scmedal_lite as sm
    from scmedal_lite import baselines, metrics

    if variant == "forced":                         # scib-metrics' own gc.collect() calls
        metrics._benchmarker_collections_skipped = contextlib.nullcontext
    if variant == "umap_learn_graph":               # umap-learn's numba graph, compiled in this process
        metrics._umap_graph_in_numpy = lambda *a: contextlib.nullcontext()
    adata = sm.datasets.covid_pbmc()
    sm.pp.prepare(adata, batch_key="sample_id")
    cells = adata[np.random.default_rng(0).choice(adata.n_obs, n_cells, replace=False)].copy()
    scored = anndata.AnnData(obs=cells.obs[["sample_id", "celltype_coarse"]].copy())
    scored.obsm["PCA"] = baselines.pca(cells, seed=0)
    scored.obsm["PCA (20)"] = scored.obsm["PCA"][:, :20]
    scored.obsm["Harmony"] = baselines.harmony(cells, batch_key="sample_id", seed=0)
    times, tables = [], []
    for _ in range(2):
        tic = time.perf_counter()
        tables.append(sm.metrics.scib_benchmark(scored, ["PCA", "PCA (20)", "Harmony"], "sample_id",
                                                "celltype_coarse", pre_integrated_key="PCA", seed=0))
        times.append(time.perf_counter() - tic)
    return {"first_call_s": times[0], "second_call_s": times[1],
            "totals": tables[0]["Total"].round(12).to_dict(), "same_both_calls": tables[0].equals(tables[1])}


def main(argv=None):
    parsed = run_on_cells(__file__, __doc__, VARIANTS, measure, rounds=3, cells=1000,
                          out=os.path.join(HERE, "results", "scib_first_call"), argv=argv)
    if parsed is None:                     # a worker: it printed its measurement
        return
    args, runs, load = parsed
    keys = ("first_call_s_median", "second_call_s_median")
    summary = {v: {"first_call_s_median": round(statistics.median(r["first_call_s"] for r in runs[v]), 1),
                   "second_call_s_median": round(statistics.median(r["second_call_s"] for r in runs[v]), 1),
                   "rounds": runs[v]} for v in VARIANTS}
    same = all(r["totals"] == runs["skipped"][0]["totals"] for v in VARIANTS for r in runs[v])
    ratios = {v: {k: round(summary[v][k] / summary["skipped"][k], 2) for k in keys} for v in VARIANTS[1:]}
    command = f"python benchmarks/scib_first_call.py --rounds {args.rounds} --cells {args.cells}"
    result = {"command": command, "machine": machine(load), "variants": summary, "over_skipped": ratios,
              "identical_scores": same}
    write(args.out, result, "scIB benchmark in a notebook's process: what each shortcut around scib-metrics saves",
          f"Command: `{command}`; {os.cpu_count()} CPUs, {machine(load)['processor']}, load average {load}. "
          "Fresh process per measurement (TensorFlow and scanpy imported, as in a chapter's kernel), variants "
          "alternating; medians over rounds. Three embeddings of the same cells. `skipped` is the package's "
          "default; each other row turns one shortcut off.",
          ["variant", "first call, s (jax compiles)", "second call, s"],
          [[v, summary[v]["first_call_s_median"], summary[v]["second_call_s_median"]] for v in VARIANTS],
          "Against `skipped`: " + "; ".join(f"{v} first call {r['first_call_s_median']}x, second call "
                                            f"{r['second_call_s_median']}x" for v, r in ratios.items())
          + f". Identical scores in every run: {same}.")


if __name__ == "__main__":
    main()
