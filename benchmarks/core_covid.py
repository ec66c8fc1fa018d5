"""Issue 2 acceptance run: FE and RE with the default settings on the real COVID PBMC data.

Batch = sample_id (63 samples), labels = coarse cell types, the paper's cell-level 60/20/20 split (fold 0).
Scores on the test split: batch and cell-type ASW of PCA-50 (fit on train), FE and RE, and the kNN
same-batch fraction against what perfect mixing gives. Writes benchmarks/results/core_covid.{json,md}.

    .venv/bin/python benchmarks/core_covid.py [--preset default] [--seed 0]
"""

import argparse
import os
import platform
import time

from sklearn.decomposition import PCA

import scmedal_lite as sm
from scmedal_lite.io import write_json, write_text
from scmedal_lite.metrics import score_embeddings

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "core_covid"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    adata = sm.datasets.covid_pbmc()
    sm.pp.prepare(adata, batch_key="sample_id")
    sm.pp.split_cells(adata, batch_key="sample_id", labels_key="celltype_coarse", fold=0)
    model = sm.SCMEDAL(adata, "sample_id", "celltype_coarse", preset=args.preset, seed=args.seed)
    model.train(seed=args.seed, progress=False)
    test = (adata.obs["split"] == "test").to_numpy()
    x = model.scale(adata)
    embeddings = {
        "PCA": PCA(50, random_state=0).fit(x[model.train_mask]).transform(x[test]),
        "scMEDAL-FE": model.get_latent("fe")[test],
        "scMEDAL-RE": model.get_latent("re")[test],
    }
    scores = score_embeddings(embeddings, adata.obs["sample_id"].to_numpy()[test],
                              adata.obs["celltype_coarse"].to_numpy()[test],
                              metrics=["asw", "knn_batch_fraction", "knn_batch_fraction_expected"])
    table = scores.pivot_table(index="embedding", columns=["metric", "label"], values="value")
    table.columns = [f"{m}_{lab}" for m, lab in table.columns]
    result = {
        "command": f"python benchmarks/core_covid.py --preset {args.preset} --seed {args.seed}",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "data": {"cells": adata.n_obs, "genes": adata.n_vars, "batches": len(model.batch_categories),
                 "train": int(model.train_mask.sum()), "val": int(model.val_mask.sum()), "test": int(test.sum())},
        "training": model.trained,
        "scores_test": table.round(4).to_dict(orient="index"),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(args.out + ".json", result)
    lines = [f"# FE and RE on COVID PBMC (preset {args.preset}, seed {args.seed})", "",
             f"`{result['command']}`", "", table.round(3).to_markdown(), "",
             *[f"- {k.upper()}: {v['epochs_run']} epochs (best {v['best_epoch']}), {v['seconds']:.0f} s"
               for k, v in model.trained.items()],
             f"- total wall time {result['total_seconds']} s on {os.cpu_count()} CPUs"]
    write_text(args.out + ".md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
