"""Genomap step timings on the real COVID PBMC data: the layout (one Gromov-Wasserstein coupling) for
300 cells x 1,000 genes, and the whole step (cell selection, counterfactual stack over all 63 samples,
layout, images, panels, severe-vs-healthy comparison). Writes benchmarks/results/genomap_timing.json.

    .venv/bin/python benchmarks/genomap_timing.py [--model-dir outputs/book/model/<run>] [--n-iter 200]

Without --model-dir a model is trained first (20 epochs per network; not part of the timings).
"""

import argparse
import os
import time

import numpy as np

import scmedal_lite as sm
from scmedal_lite import genomaps
from scmedal_lite.io import write_json

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--n-iter", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "genomap_timing.json"))
    ap.add_argument("--figures", default=os.path.join(os.path.dirname(HERE), "outputs", "genomap_timing"),
                    help="where the whole step writes its arrays, tables and panels (not committed)")
    args = ap.parse_args()
    adata = sm.datasets.covid_pbmc()
    sm.pp.prepare(adata, batch_key="sample_id")
    if args.model_dir:
        model = sm.SCMEDAL.load(args.model_dir, adata)
    else:
        sm.pp.split_cells(adata, batch_key="sample_id", labels_key="celltype_coarse")
        model = sm.SCMEDAL(adata, "sample_id", "celltype_coarse", seed=0).train(max_epochs=20, progress=False)
    condition = adata.obs.groupby("sample_id", observed=True)["cond_group"].first()
    shown = [*condition[condition == "Severe"].index[:3], *condition[condition == "HC"].index[:2]]
    cells = genomaps.select_cells(adata, labels_key="mergedcelltype", cell_types=["Mono_Classical"],
                                  n_cells=300, batch_key="sample_id", force_batches=shown, seed=0)
    t = time.perf_counter()
    stack = genomaps.counterfactual_stack(model, adata, cells)
    genomaps.zscore_stack(stack)
    t_stack = time.perf_counter() - t
    data = np.asarray(stack.layers["zscore"])
    t = time.perf_counter()
    layout = genomaps.GenomapLayout.fit(data, genes=list(stack.var_names), n_iter=args.n_iter, seed=0)
    t_layout = time.perf_counter() - t
    t = time.perf_counter()
    layout.transform(data)
    t_transform = time.perf_counter() - t
    out_dir = args.figures
    if os.path.isdir(out_dir):
        import shutil
        shutil.rmtree(out_dir)
    t = time.perf_counter()
    genomaps.run_genomap_analysis(model, adata, labels_key="mergedcelltype", cell_types=["Mono_Classical"],
                                  shown_batches=shown, out_dir=out_dir, condition_key="cond_group",
                                  groups=("Severe", "HC"), n_cells=300, n_iter=args.n_iter, seed=0)
    t_whole = time.perf_counter() - t
    t = time.perf_counter()
    genomaps.run_genomap_analysis(model, adata, labels_key="mergedcelltype", cell_types=["Mono_Classical"],
                                  shown_batches=shown, out_dir=out_dir, condition_key="cond_group",
                                  groups=("Severe", "HC"), n_cells=300, n_iter=args.n_iter, seed=0)
    t_cached = time.perf_counter() - t
    command = "python benchmarks/genomap_timing.py" + (" --model-dir <make demo's model>" if args.model_dir else "")
    command += f" --n-iter {args.n_iter}"
    result = {"command": command, "cells": 300, "genes": int(stack.n_vars),
              "stack_rows": int(stack.n_obs), "grid": [layout.rows, layout.cols], "n_iter": args.n_iter,
              "layout_method": layout.method, "layout_iterations": layout.meta.get("iterations"),
              "stack_seconds": round(t_stack, 1), "layout_seconds": round(t_layout, 1),
              "transform_seconds": round(t_transform, 2), "whole_step_seconds": round(t_whole, 1),
              "whole_step_with_cached_layout_seconds": round(t_cached, 1), "load_average": os.getloadavg()}
    write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
