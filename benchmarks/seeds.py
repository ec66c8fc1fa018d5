"""Spread over seeds on the real data: batch and cell-type ASW of FE and RE on the test split, for 5 seeds.

Same data, same split (fold 0 of the cell-level rotation), only the seed changes (initialisation, minibatch
order, random-effect sampling). Also checks that a repeated seed reproduces its latents exactly.

    .venv/bin/python benchmarks/seeds.py [--seeds 0 1 2 3 4] [--epochs 20]
"""

import argparse
import os
import time

import numpy as np
import pandas as pd

import scmedal_lite as sm
from scmedal_lite.io import write_json
from scmedal_lite.metrics import score_embeddings

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "seeds"))
    args = ap.parse_args()
    adata = sm.datasets.covid_pbmc()
    sm.pp.prepare(adata, batch_key="sample_id")
    sm.pp.split_cells(adata, batch_key="sample_id", labels_key="celltype_coarse", fold=0)
    test = (adata.obs["split"] == "test").to_numpy()
    rows, first = [], None
    start = time.perf_counter()
    for seed in [*args.seeds, args.seeds[0]]:
        model = sm.SCMEDAL(adata, "sample_id", "celltype_coarse", seed=seed)
        model.train(max_epochs=args.epochs, progress=False)
        latents = {k: model.get_latent(k)[test] for k in ("fe", "re")}
        if first is None:
            first = latents
        elif seed == args.seeds[0]:
            identical = all(np.array_equal(first[k], latents[k]) for k in latents)
            break
        scores = score_embeddings(latents, adata.obs["sample_id"].to_numpy()[test],
                                  adata.obs["celltype_coarse"].to_numpy()[test], metrics=["asw"])
        for r in scores.itertuples():
            rows.append({"seed": seed, "embedding": r.embedding, "label": r.label, "asw": r.value})
        print(seed, scores.round(3).to_dict("records"), flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby(["embedding", "label"])["asw"].agg(["mean", "std", "min", "max"]).round(4)
    result = {"command": f"python benchmarks/seeds.py --epochs {args.epochs}", "epochs": args.epochs,
              "same_seed_identical_latents": bool(identical), "per_seed": rows,
              "summary": summary.reset_index().to_dict("records"),
              "seconds": round(time.perf_counter() - start)}
    write_json(args.out + ".json", result)
    print(summary, "\nsame seed identical:", identical)


if __name__ == "__main__":
    main()
