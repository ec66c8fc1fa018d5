"""An epoch's last, partial minibatch on small real data: Keras's rule against merging a small rest.

Keras (and so the authors' code) ends each epoch with a minibatch of whatever cells are left. On small data
that rest can be tiny: the 1,027 training cells of the 2,000-cell COVID draw give FE two minibatches of 512
and one of 3 cells, so every third FE step, a full-sized Adam update, follows the gradient of 3 cells (RE, in
minibatches of 128, gets one of 3 cells in every 9 steps). This benchmark trains FE and RE with the package's
defaults (``training.SMALL_REST = 0``) and with a rest below half a minibatch merged into the last full one
(``SMALL_REST = 0.5``; the step budget and the patience are then counted in the merged epochs' steps) on

- ``covid2k``: the 1,713 cells of ``time_to_result.py``'s 2,000-cell draw (42 samples; 1,027 training cells);
- ``covid3k``: the same kind of draw of 3,000 cells (a rest of under half a minibatch too),

and scores the test cells: epochs, seconds, test reconstruction MSE (min-max scale), batch and cell-type ASW
and the kNN same-batch fraction of both latents. Data whose rest is at least half a minibatch (the full COVID
data, 35 × 512 + 400; the pancreas atlas, 3 × 512 + 428) train the same under both rules.

With ``--w-keep W`` FE trains with the neighbour-keeping guard (``fe={"w_keep": W}``; ``book/method.md``,
"Over-mixing") and the results go to ``results/last_minibatch_keep``.

    .venv/bin/python benchmarks/last_minibatch.py [--datasets covid2k covid3k] [--seeds 0 1] [--w-keep 100]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import pandas as pd
from fresh_process import processor
from re_minibatch import latent_scores, test_mse
from time_to_result import draw  # the same seeded draw as the time-to-result benchmark

import scmedal_lite as sm
from scmedal_lite import training
from scmedal_lite.io import write_json, write_text

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "last_minibatch")
SIZES = {"covid2k": 2000, "covid3k": 3000}
RULES = {"keras": 0.0, "merge": 0.5}


def load(name):
    """(prepared and split AnnData, batch key, labels key) of a COVID draw."""
    adata = draw(sm.datasets.covid_pbmc(), SIZES[name])
    sm.pp.prepare(adata, batch_key="sample_id")
    sm.pp.split_cells(adata, batch_key="sample_id", labels_key="celltype_coarse")
    return adata, "sample_id", "celltype_coarse"


def run(adata, bk, lk, rule, seed, w_keep=0.0):
    kinds = ("fe",) if w_keep else ("fe", "re")          # the guard changes FE only; RE trains the same
    training.SMALL_REST = RULES[rule]
    try:
        guard = {"fe": {"w_keep": w_keep}} if w_keep else {}
        model = sm.SCMEDAL(adata, batch_key=bk, labels_key=lk, seed=seed, **guard)
        model.train(which=kinds, seed=seed, progress=False)
    finally:
        training.SMALL_REST = 0.0
    row = {"rule": rule, "seed": seed, "fe_w_keep": w_keep}
    for kind in kinds:
        t = model.trained[kind]
        bounds = training.minibatch_bounds(int(model.train_mask.sum()), t["batch_size"], RULES[rule])
        row.update({f"{kind}_minibatches": "+".join(str(b - a) for a, b in bounds[-2:]),
                    f"{kind}_epochs": t["epochs_run"], f"{kind}_best_epoch": t["best_epoch"],
                    f"{kind}_seconds": round(t["seconds"], 1), f"{kind}_test_mse": test_mse(model, adata, kind)})
    return {**row, **latent_scores(model, adata, bk, lk, kinds, seed)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--w-keep", type=float, default=0.0, help="FE's neighbour-keeping weight (default 0, off)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.out = args.out or (OUT + "_keep" if args.w_keep else OUT)
    rows, tic = [], time.perf_counter()
    for name in args.datasets:
        adata, bk, lk = load(name)
        n_train = int(sm.pp.split_masks(adata)["train"].sum())
        for seed in args.seeds:
            for rule in RULES:
                row = {"data": name, "cells": adata.n_obs, "train_cells": n_train,
                       **run(adata, bk, lk, rule, seed, args.w_keep)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    df = pd.DataFrame(rows)
    meta = {"command": "python benchmarks/last_minibatch.py " + " ".join(
                [f"--datasets {' '.join(args.datasets)}", f"--seeds {' '.join(map(str, args.seeds))}"]
                + ([f"--w-keep {args.w_keep:g}"] if args.w_keep else [])),
            "machine": f"{processor()}, {os.cpu_count()} CPUs",
            "minutes": round((time.perf_counter() - tic) / 60, 1)}
    write_json(args.out + ".json", {**meta, "rows": rows})
    cols = ["data", "train_cells", "seed", "rule", "fe_w_keep", "fe_minibatches", "fe_epochs", "fe_best_epoch",
            "fe_seconds", "fe_test_mse", "FE_knn_batch_fraction_batch", "FE_asw_celltype", "re_minibatches",
            "re_epochs", "re_best_epoch", "re_seconds", "re_test_mse", "RE_asw_batch", "RE_knn_batch_fraction_batch",
            "RE_asw_celltype"]
    text = ["# An epoch's last minibatch on small data: Keras's rule against merging a small rest", "",
            f"Command: `{meta['command']}` ({meta['machine']}; {meta['minutes']} min). Test cells. `keras`: the "
            "default, a last minibatch of whatever is left; `merge`: a rest under half a minibatch joins the last "
            "full one (`*_minibatches`: the sizes of an epoch's last two). Seconds are each network's training "
            "(the machine is shared: compare within a data set).", "",
            df[[c for c in cols if c in df]].to_markdown(index=False), ""]
    write_text(args.out + ".md", "\n".join(text))


if __name__ == "__main__":
    main()
