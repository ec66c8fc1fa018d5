"""The paper's protocol on one dataset: k folds; FE, RE, AE, PCA and the baselines; scores; MEC on cell-level and
leave-batches-out splits. Writes paper-style tables to benchmarks/results/reproduce_<name>.{csv,md,json}.

Default: the real COVID PBMC data (batch = sample_id, labels = coarse cell type, MEC target = the condition,
cond_group).

    .venv/bin/python benchmarks/reproduce.py                       # 5 folds, 30 epochs per network
    .venv/bin/python benchmarks/reproduce.py --folds 2 --epochs 5  # a quick look

Epochs are reduced from the paper's 500 (with early stopping that never fired) to fit a 2-core CPU; the
step budget of the default preset would give about 56 epochs on this data.
"""

import argparse
import os
import platform
import time
import warnings

import pandas as pd

import scmedal_lite as sm
from scmedal_lite import baselines, classify, metrics
from scmedal_lite.io import write_csv, write_json, write_text

HERE = os.path.dirname(os.path.abspath(__file__))
SCORE_METRICS = ["asw", "inv_db", "ch", "batch_asw_scib", "knn_inv_simpson", "knn_batch_fraction",
                 "celltype_asw_scib", "nmi", "ari", "lite_overall"]


def cell_level_fold(adata, fold, args, log):
    sm.pp.split_cells(adata, batch_key=args.batch_key, labels_key=args.labels_key, fold=fold, n_folds=args.folds)
    model = sm.SCMEDAL(adata, args.batch_key, args.labels_key, seed=args.seed + fold)
    tic = time.perf_counter()
    model.train(max_epochs=args.epochs, which=("fe", "re", "ae"), progress=False)
    timings = {f"train_{k}": v["seconds"] for k, v in model.trained.items()}
    x = model.scale(adata)
    emb = {"scMEDAL-FE": model.get_latent("fe"), "scMEDAL-RE": model.get_latent("re"), "AE": model.get_latent("ae")}
    found = baselines.run_baselines(adata, batch_key=args.batch_key, methods=args.baselines, x=x,
                                    train_mask=model.train_mask, seed=args.seed)
    emb.update({name.capitalize() if name != "pca" else "PCA": e for name, e in found.items()})
    timings.update({f"fit_{k}": v for k, v in found.timings.items()})
    test = (adata.obs["split"] == "test").to_numpy()
    scores = metrics.score_embeddings({k: v[test] for k, v in emb.items()},
                                      adata.obs[args.batch_key].to_numpy()[test],
                                      adata.obs[args.labels_key].to_numpy()[test], metrics=SCORE_METRICS,
                                      seed=args.seed)
    scores.insert(0, "fold", fold)
    fe_latents = {k: v for k, v in emb.items() if k != "scMEDAL-RE"}
    mec = classify.mixed_effects_classification(model, adata, condition_key=args.condition_key, fe_latents=fe_latents,
                                                re_latent=emb["scMEDAL-RE"], re_alone=True)
    mec.insert(0, "fold", fold)
    mec.insert(1, "scheme", "cells")
    log(f"fold {fold}: cell-level done in {time.perf_counter() - tic:.0f} s")
    return scores, mec, timings, model.trained


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="covid_pbmc")
    ap.add_argument("--data", default=None, help=".h5ad with counts (default: the bundled COVID PBMC data)")
    ap.add_argument("--batch-key", default="sample_id")
    ap.add_argument("--labels-key", default="celltype_coarse")
    ap.add_argument("--condition-key", default="cond_group")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baselines", nargs="*", default=["pca", "harmony", "scanorama"])
    args = ap.parse_args()
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:7.0f} s] {msg}", flush=True)

    adata = sm.read_h5ad(args.data) if args.data else sm.datasets.covid_pbmc()
    sm.pp.prepare(adata, batch_key=args.batch_key)
    all_scores, all_mec, all_timings = [], [], []
    for fold in range(args.folds):
        scores, mec, timings, trained = cell_level_fold(adata, fold, args, log)
        all_scores.append(scores)
        all_mec.append(mec)
        all_timings.append({"fold": fold, **timings, **{f"epochs_{k}": v["epochs_run"] for k, v in trained.items()}})
    tic = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sm.UnseenBatchWarning)
        lbo = classify.cross_validate_mec(adata, batch_key=args.batch_key, labels_key=args.labels_key,
                                          condition_key=args.condition_key, scheme="batches", n_folds=args.folds,
                                          seed=args.seed, train_kwargs={"max_epochs": args.epochs},
                                          baselines=("pca",), progress=False)
    log(f"leave-batches-out MEC done in {time.perf_counter() - tic:.0f} s")
    scores = pd.concat(all_scores, ignore_index=True)
    mec = pd.concat([*all_mec, lbo], ignore_index=True)
    score_summary = metrics.summarize_folds(scores)
    mec_summary = classify.summarize_mec(mec)
    out = os.path.join(HERE, "results", f"reproduce_{args.name}")
    for suffix, frame in (("scores.csv", scores), ("scores_summary.csv", score_summary), ("mec.csv", mec),
                          ("mec_summary.csv", mec_summary), ("timings.csv", pd.DataFrame(all_timings))):
        write_csv(f"{out}_{suffix}", frame)
    total = time.perf_counter() - start
    command = (f"python benchmarks/reproduce.py --folds {args.folds} --epochs {args.epochs} --seed {args.seed}"
               + (f" --data {args.data}" if args.data else ""))
    lines = [f"# Reproduction of the paper's protocol on {args.name}", "",
             f"Command: `{command}`  ", f"Wall time: {total / 60:.1f} min on {os.cpu_count()} CPUs "
             f"({platform.processor() or platform.machine()}). Epochs per network: {args.epochs} "
             "(the paper: 500; reduced to fit this machine).", "",
             f"batch = `{args.batch_key}`, label = `{args.labels_key}`, MEC target = `{args.condition_key}`; "
             f"{args.folds} folds, test split, mean [95% t-interval].", ""]
    for metric in ("asw", "inv_db", "ch", "batch_asw_scib", "knn_inv_simpson", "knn_batch_fraction", "nmi", "ari",
                   "lite_overall"):
        table = metrics.format_table(score_summary, metric=metric)
        lines += [f"## {metric}", "", table.to_markdown(), ""]
    test_mec = mec_summary[mec_summary["split"] == "test"]
    for scheme in ("cells", "batches"):
        part = test_mec[test_mec["scheme"] == scheme].copy()
        part["value"] = part.apply(lambda r: f"{100 * r['mean']:.1f} [{100 * r['ci_low']:.1f}, "
                                             f"{100 * r['ci_high']:.1f}]" if r["n"] > 1 else
                                   f"{100 * r['mean']:.1f}", axis=1)
        wide = part.pivot_table(index="features", columns="metric", values="value", aggfunc="first")
        title = "cell-level splits" if scheme == "cells" else "leave-batches-out splits"
        lines += [f"## MEC ({title}), % on test", "", wide.to_markdown(), ""]
    write_text(out + ".md", lines)
    write_json(out + ".json", {"command": command, "total_seconds": total, "epochs": args.epochs,
                               "folds": args.folds, "cpus": os.cpu_count()})
    log(f"wrote {out}.md")


if __name__ == "__main__":
    main()
