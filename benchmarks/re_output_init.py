"""The RE network's output initialisation: the authors' (BatchNorm scale 1, shift 0, the default) against the
opt-in ``re_design={"output_init": "data"}`` (the training data's per-gene mean and s.d.), same data, seed and
budget.

For each data set (the bundled COVID PBMC cells; a seeded 2,000-cell subset of them as ``time_to_result``
draws it; the human pancreas atlas subsample, batch = donor, when ``hormone2cell`` is installed) and each
initialisation, the RE network alone is trained with the package defaults (2,000-step budget,
early stopping on the validation loss), then scored on the test cells: reconstruction MSE (scaled units), the
batch silhouette (ASW) and kNN same-batch fraction of the RE latent (higher: more batch-specific, the RE
network's purpose), and the epoch at which the validation reconstruction first reached the authors'
initialisation's final value.

    .venv/bin/python benchmarks/re_output_init.py [--datasets covid covid2k pancreas] [--merge]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import anndata
import numpy as np

import scmedal_lite as sm
from scmedal_lite.io import write_json, write_text

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from time_to_result import subset  # noqa: E402

INITS = ("paper", "data")
#: Batch and cell-type columns per data set.
KEYS = {"covid": ("sample_id", "celltype_coarse"), "covid2k": ("sample_id", "celltype_coarse"),
        "pancreas": ("donor_id", "cell_type")}


def load(name: str) -> anndata.AnnData:
    batch, labels = KEYS[name]
    adata = sm.datasets.pancreas() if name == "pancreas" else sm.datasets.covid_pbmc()
    if name == "covid2k":
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "covid2k.h5ad")
            subset(adata, 2000, path)
            adata = anndata.read_h5ad(path)
    sm.pp.prepare(adata, batch_key=batch)
    sm.pp.split_cells(adata, batch_key=batch, labels_key=labels)
    return adata


def run(adata: anndata.AnnData, name: str, init: str, seed: int) -> dict:
    batch, labels = KEYS[name]
    model = sm.SCMEDAL(adata, batch, labels, seed=seed, re_design={"output_init": init})
    tic = time.perf_counter()
    model.train(which=("re",), progress=False)
    seconds = time.perf_counter() - tic
    history = model.history["re"]
    test = (adata.obs["split"] == "test").to_numpy()
    latent = model.get_latent("re", adata[test])
    scores = sm.metrics.score_embeddings({"RE": latent}, adata.obs[batch].to_numpy()[test],
                                         adata.obs[labels].to_numpy()[test], metrics=["asw", "knn_batch_fraction"],
                                         seed=seed)
    pick = lambda metric, label: float(scores.query("metric == @metric and label == @label")["value"].iloc[0])  # noqa: E731
    recon = model.get_reconstruction("re", adata[test], scaled=True)
    info = model.trained["re"]
    return {"init": init, "epochs_run": int(info["epochs_run"]), "max_epochs": int(info["max_epochs"]),
            "best_epoch": int(info["best_epoch"]), "seconds": round(seconds, 1),
            "test_recon_mse": round(float(np.mean((recon - model.scale(adata[test])) ** 2)), 5),
            "re_batch_asw": round(pick("asw", "batch"), 4), "re_celltype_asw": round(pick("asw", "celltype"), 4),
            "re_knn_same_batch": round(pick("knn_batch_fraction", "batch"), 4),
            "val_recon_first": round(float(history["val_recon_loss"].iloc[0]), 5),
            "val_recon_final": round(float(history["val_recon_loss"].iloc[-1]), 5),
            "val_batch_acc_final": round(float(history["val_batch_acc"].iloc[-1]), 4),
            "val_recon": history["val_recon_loss"].round(6).tolist()}


def report(result: dict) -> str:
    lines = ["# The RE network's output initialisation: the authors' against the data's moments", "",
             f"Command: `{result['command']}`; seed {result['seed']}; {result['machine']}. RE network alone, package "
             "defaults (2,000-step budget, early stopping on the validation loss); scores on the test cells.", "",
             "| data (cells) | output init | epochs run / budget | best epoch | seconds | val. recon. epoch 1 | "
             "val. recon. final | epoch reaching the authors' final val. recon. | test recon. MSE | RE batch ASW | "
             "RE kNN same-batch | RE cell-type ASW | val. batch-head acc. |",
             "|---" * 13 + "|"]
    for name, runs in result["datasets"].items():
        target = runs["paper"]["val_recon"][-1]
        for r in runs.values():
            reached = next((i + 1 for i, v in enumerate(r["val_recon"]) if v <= target), None)
            lines.append(f"| {name} ({result['cells'][name]}) | {r['init']} | {r['epochs_run']} / {r['max_epochs']} | "
                         f"{r['best_epoch']} | {r['seconds']} | {r['val_recon_first']} | {r['val_recon_final']} | "
                         f"{reached} | {r['test_recon_mse']} | {r['re_batch_asw']} | {r['re_knn_same_batch']} | "
                         f"{r['re_celltype_asw']} | {r['val_batch_acc_final']} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["covid", "covid2k", "pancreas"], choices=list(KEYS))
    ap.add_argument("--merge", action="store_true", help="keep the other data sets of an existing --out .json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "re_output_init"))
    args = ap.parse_args()
    sm.settings.deterministic = True
    result = {"command": " ".join(["benchmarks/re_output_init.py", *sys.argv[1:]]), "seed": args.seed,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "cells": {}, "datasets": {}}
    if args.merge and os.path.exists(args.out + ".json"):
        with open(args.out + ".json") as f:
            old = json.load(f)
        result["command"] = f"{old['command']}; then {result['command']}"
        result["cells"], result["datasets"] = old["cells"], old["datasets"]
    for name in args.datasets:
        adata = load(name)
        result["cells"][name] = int(adata.n_obs)
        result["datasets"][name] = {}
        for init in INITS:
            row = run(adata, name, init, args.seed)
            result["datasets"][name][init] = row
            print(name, {k: v for k, v in row.items() if k != "val_recon"}, flush=True)
    write_json(args.out + ".json", result)
    write_text(args.out + ".md", report(result))
    print(report(result))


if __name__ == "__main__":
    main()
