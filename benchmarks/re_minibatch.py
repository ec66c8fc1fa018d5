"""The RE network's minibatch under the step budget on small real data: time and quality against minibatch size.

Trains FE and RE with the package's defaults (seed 0) except the minibatch, on

- ``covid2k``: the 1,713 cells of ``time_to_result.py``'s 2,000-cell draw of the COVID PBMC data (42 samples;
  1,028 training cells);
- ``pancreas``: the pancreas atlas, batch = donor (20 donors; 1,964 training cells),

and scores the test cells: each network's training seconds and epochs, test reconstruction MSE (min-max
scale), batch and cell-type ASW and the kNN same-batch fraction of both latents. ``fitted`` is the default
(``fitted_batch_size``: FE at 512, RE shrunk to 8 steps an epoch); the other rows set both networks'
minibatch (``schedule={"batch_size": b}``, which the rule leaves as is).

    .venv/bin/python benchmarks/re_minibatch.py [--datasets covid2k pancreas] [--sizes 512 128 64]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pandas as pd
from fresh_process import processor
from time_to_result import draw  # the same seeded draw as the time-to-result benchmark

import scmedal_lite as sm
from scmedal_lite.io import write_json, write_text

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "re_minibatch")


def load(name):
    """(prepared and split AnnData, batch key, labels key) of a data set."""
    if name == "covid2k":
        adata, bk, lk = draw(sm.datasets.covid_pbmc(), 2000), "sample_id", "celltype_coarse"
    else:
        adata, bk, lk = sm.datasets.pancreas(), "donor_id", "cell_type"
    sm.pp.prepare(adata, batch_key=bk)
    sm.pp.split_cells(adata, batch_key=bk, labels_key=lk)
    return adata, bk, lk


def test_mse(model, adata, kind):
    """Test cells' reconstruction MSE of network ``kind`` (min-max scale)."""
    test = sm.pp.split_masks(adata)["test"]
    x = np.asarray(model.scale(adata[test]))
    return round(float(np.mean((x - model.get_reconstruction(kind, adata[test], scaled=True)) ** 2)), 5)


def latent_scores(model, adata, bk, lk, kinds, seed):
    """``{"FE_asw_batch": ..., ...}``: batch and cell-type ASW and kNN same-batch fraction of the test cells'
    latents of the networks ``kinds``."""
    test = sm.pp.split_masks(adata)["test"]
    latents = {k.upper(): model.get_latent(k, adata[test]) for k in kinds}
    scores = sm.metrics.score_embeddings(latents, adata.obs.loc[test, bk].to_numpy(),
                                         adata.obs.loc[test, lk].to_numpy(),
                                         metrics=["asw", "knn_batch_fraction"], seed=seed)
    return {f"{r.embedding}_{r.metric}_{r.label}": round(float(r.value), 4) for r in scores.itertuples()}


def run(adata, bk, lk, size, seed):
    schedule = {} if size == "fitted" else {"batch_size": int(size)}
    model = sm.SCMEDAL(adata, batch_key=bk, labels_key=lk, seed=seed, schedule=schedule)
    model.train(which=("fe", "re"), seed=seed, progress=False)
    row = {"minibatch": size}
    for kind in ("fe", "re"):
        t = model.trained[kind]
        row.update({f"{kind}_batch_size": t["batch_size"], f"{kind}_epochs": t["epochs_run"],
                    f"{kind}_best_epoch": t["best_epoch"], f"{kind}_seconds": round(t["seconds"], 1),
                    f"{kind}_test_mse": test_mse(model, adata, kind)})
    return {**row, **latent_scores(model, adata, bk, lk, ("fe", "re"), seed)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["covid2k", "pancreas"], choices=["covid2k", "pancreas"])
    ap.add_argument("--sizes", nargs="+", default=["fitted", "512", "128", "64"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    rows, tic = [], time.perf_counter()
    for name in args.datasets:
        adata, bk, lk = load(name)
        n_train = int(sm.pp.split_masks(adata)["train"].sum())
        for size in args.sizes:
            row = {"data": name, "cells": adata.n_obs, "train_cells": n_train, **run(adata, bk, lk, size, args.seed)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    df = pd.DataFrame(rows)
    meta = {"command": "python benchmarks/re_minibatch.py " + " ".join(
                [f"--datasets {' '.join(args.datasets)}", f"--sizes {' '.join(args.sizes)}", f"--seed {args.seed}"]),
            "machine": f"{processor()}, {os.cpu_count()} CPUs",
            "minutes": round((time.perf_counter() - tic) / 60, 1)}
    write_json(args.out + ".json", {**meta, "rows": rows})
    cols = ["data", "minibatch", "fe_batch_size", "re_batch_size", "fe_epochs", "fe_seconds", "re_epochs",
            "re_best_epoch", "re_seconds", "fe_test_mse", "re_test_mse", "FE_knn_batch_fraction_batch",
            "FE_asw_celltype", "RE_asw_batch", "RE_knn_batch_fraction_batch", "RE_asw_celltype"]
    text = ["# The RE network's minibatch on small data", "",
            f"Command: `{meta['command']}` ({meta['machine']}; {meta['minutes']} min). Test cells; one seed. "
            "`fitted`: the default (FE 512, RE shrunk to at least 8 steps an epoch); the other rows set both "
            "networks' minibatch. Seconds are each network's training (the machine is shared: compare within "
            "a data set).", "", df[[c for c in cols if c in df]].to_markdown(index=False), ""]
    write_text(args.out + ".md", "\n".join(text))


if __name__ == "__main__":
    main()
