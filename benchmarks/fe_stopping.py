"""When FE stops early, and what stopping rules that discount noise give instead.

On each data set (``covid2k``: ``time_to_result.py``'s 2,000-cell COVID draw, 1,713 cells, 42 samples;
``pancreas``: the pancreas atlas, 20 donors; ``covid``: all COVID PBMC cells) and seed:

1. FE trains with early stopping that counts any new best of the validation reconstruction (the default
   before ``fe_design["stop_min_improvement"]``; stop 400 steps after it, best weights restored); its
   per-epoch history is kept.
2. Other stopping rules are replayed on that history: a new best must beat the last counted one by a relative
   margin (0.3 % is the default now), or by ``k`` noise standard deviations (the noise from second
   differences of the recent losses), or the mean loss of the last window of steps must beat the mean of the
   window before it by two standard errors.
3. FE trains with the package's default (the 0.3 % margin), and its test-cell latent is compared with the
   first run's, bit for bit.
4. On the data sets in ``--retrain`` (default ``covid2k``), first seed only, FE is trained again to each epoch
   where a window rule stopped (best weights within it restored), and scored.

Scores are on the test cells: kNN same-sample fraction of the FE latent (and its value if fully mixed), batch
and cell-type ASW, validation reconstruction at the best epoch, training seconds. The processor is recorded:
where FE stops differs between processors.

    .venv/bin/python benchmarks/fe_stopping.py [--data covid2k pancreas covid] [--seeds 0 1 2]   # ~30 min, 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import pandas as pd
from fresh_process import machine
from re_minibatch import load as load_small

import scmedal_lite as sm
from scmedal_lite.io import write_json, write_text

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "fe_stopping")
MONITOR = "val_recon_loss"


def replay(values: np.ndarray, improved, patience: int) -> tuple[int, int]:
    """(stop epoch, best epoch by then) of a record rule on a loss history: ``improved(i, best)`` says whether
    epoch ``i`` (0-based) counts as a new best against the best counted so far; stop after ``patience``
    epochs without one."""
    best, wait = math.inf, 0
    for i, value in enumerate(values):
        if improved(i, best):
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                return i + 1, int(np.argmin(values[:i + 1])) + 1
    return len(values), int(np.argmin(values)) + 1


def noise_sd(window: np.ndarray) -> float:
    """Noise standard deviation of a loss curve from its second differences (a linear trend cancels)."""
    d2 = np.diff(window, 2)
    return float(np.median(np.abs(d2)) / (0.6745 * math.sqrt(6))) if len(d2) >= 5 else 0.0


def window_stop(values: np.ndarray, width: int, z: float = 2.0) -> tuple[int, int]:
    """(stop epoch, best epoch by then): the first epoch where the mean of the last ``width`` epochs is not
    below the mean of the ``width`` before it by ``z`` standard errors."""
    for end in range(2 * width, len(values) + 1):
        before, last = values[end - 2 * width:end - width], values[end - width:end]
        se = math.sqrt(before.var(ddof=1) / width + last.var(ddof=1) / width)
        if before.mean() - last.mean() < z * se:
            return end, int(np.argmin(values[:end])) + 1
    return len(values), int(np.argmin(values)) + 1


def rules(values: np.ndarray, patience: int, steps_per_epoch: int) -> list[dict]:
    """Each rule's stop and best epoch on ``values``."""
    out = [{"rule": f"any new best, patience {patience} epochs",
            **dict(zip(("stop", "best"), replay(values, lambda i, b: values[i] < b, patience)))}]
    for margin in (0.001, 0.003, 0.01, 0.02):     # 0.003: the default now (fe_design["stop_min_improvement"])
        stop = replay(values, lambda i, b, m=margin: values[i] < b * (1 - m), patience)
        out.append({"rule": f"new best by {margin:.1%}", "stop": stop[0], "best": stop[1]})
    for k in (0.5, 1.0, 2.0):
        stop = replay(values, lambda i, b, k=k: values[i] < b - k * noise_sd(values[max(0, i + 1 - patience):i + 1]),
                      patience)
        out.append({"rule": f"new best by {k:g} noise SD", "stop": stop[0], "best": stop[1]})
    for steps in (100, 200, 400):
        stop = window_stop(values, math.ceil(steps / steps_per_epoch))
        out.append({"rule": f"window of {steps} steps", "stop": stop[0], "best": stop[1], "window": True})
    return out


def load(name):
    """(prepared and split AnnData, batch key, labels key) of a data set."""
    if name != "covid":
        return load_small(name)
    adata, bk, lk = sm.datasets.covid_pbmc(), "sample_id", "celltype_coarse"
    sm.pp.prepare(adata, batch_key=bk)
    sm.pp.split_cells(adata, batch_key=bk, labels_key=lk)
    return adata, bk, lk


def train(adata, bk, lk, epochs, seed, margin=None):
    """FE trained (``epochs`` None: the default budget; ``margin``: ``fe_design["stop_min_improvement"]``, None
    the package's default) and scored on the test cells."""
    design = {} if margin is None else {"fe_design": {"stop_min_improvement": margin}}
    tic = time.perf_counter()
    model = sm.SCMEDAL(adata, batch_key=bk, labels_key=lk, seed=seed, **design).train(
        epochs, which=("fe",), seed=seed, progress=False)
    seconds = time.perf_counter() - tic
    test = sm.pp.split_masks(adata)["test"]
    z = model.get_latent("fe", adata[test])
    batches, labels = adata.obs.loc[test, bk].to_numpy(), adata.obs.loc[test, lk].to_numpy()
    knn, mixed = sm.metrics.knn_same_batch_fraction(z, batches)
    scores = sm.metrics.score_embeddings({"FE": z}, batches, labels, metrics=["asw"], seed=seed)
    asw = {r.label: float(r.value) for r in scores.itertuples()}
    fe = model.trained["fe"]
    row = {"epochs_run": fe["epochs_run"], "best_epoch": fe["best_epoch"], "seconds": round(seconds, 1),
           "val_recon_at_best": round(float(model.history["fe"][MONITOR].min()), 5),
           "knn_same_batch": round(knn, 4), "knn_if_mixed": round(mixed, 4),
           "batch_asw": round(asw["batch"], 4), "celltype_asw": round(asw["celltype"], 4)}
    return model, row, z


def study(name, seeds, retrain):
    """Per seed: FE counting any new best (the default before ``stop_min_improvement``), the rules replayed on
    its history, the package's default trained for real, and (first seed, ``retrain``) the window stops."""
    adata, bk, lk = load(name)
    out = []
    for seed in seeds:
        model, reference, z_ref = train(adata, bk, lk, None, seed, margin=0.0)
        settings = model.trained["fe"]
        n_train = int(model.train_mask.sum())
        steps_per_epoch = math.ceil(n_train / settings["batch_size"])
        values = model.history["fe"][MONITOR].to_numpy()
        replayed = rules(values, settings["patience"], steps_per_epoch)
        trained = {settings["epochs_run"]: reference}
        for r in replayed:
            if r.pop("window", False) and retrain and seed == seeds[0] and r["stop"] not in trained:
                trained[r["stop"]] = train(adata, bk, lk, r["stop"], seed, margin=0.0)[1]
                print(json.dumps({"data": name, "seed": seed, "epochs": r["stop"], **trained[r["stop"]]}),
                      flush=True)
        for r in replayed:
            r.update({f"trained: {k}": v for k, v in trained.get(r["stop"], {}).items() if k != "epochs_run"})
        _, default, z_default = train(adata, bk, lk, None, seed)
        default["same_latent_as_reference"] = bool(np.array_equal(z_default, z_ref))
        print(json.dumps({"data": name, "seed": seed, "reference": reference, "default": default}), flush=True)
        out.append({"data": name, "seed": seed, "cells": adata.n_obs, "train_cells": n_train,
                    "steps_per_epoch": steps_per_epoch, "patience_epochs": settings["patience"],
                    "history": [round(float(v), 6) for v in values], "rules": replayed,
                    "reference": reference, "default": default})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["covid2k", "pancreas", "covid"],
                    choices=["covid2k", "pancreas", "covid"])
    ap.add_argument("--retrain", nargs="*", default=["covid2k"], choices=["covid2k", "pancreas", "covid"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    load_avg = {"start": list(os.getloadavg())}
    studies = [st for name in args.data for st in study(name, args.seeds, name in args.retrain)]
    load_avg["end"] = list(os.getloadavg())
    command = " ".join(["python benchmarks/fe_stopping.py", "--data", *args.data, "--retrain", *args.retrain,
                        "--seeds", *map(str, args.seeds)])
    result = {"command": command, "machine": machine(load_avg), "studies": studies}
    write_json(args.out + ".json", result)
    summary = pd.DataFrame([{
        "data": st["data"], "seed": st["seed"],
        "any new best: stop (best)": f"{st['reference']['epochs_run']} ({st['reference']['best_epoch']})",
        "0.3 % (default): stop (best)": f"{st['default']['epochs_run']} ({st['default']['best_epoch']})",
        "seconds": f"{st['reference']['seconds']} -> {st['default']['seconds']}",
        "same FE latent": st["default"]["same_latent_as_reference"],
        "kNN same-sample": f"{st['reference']['knn_same_batch']} -> {st['default']['knn_same_batch']}",
        "cell-type ASW": f"{st['reference']['celltype_asw']} -> {st['default']['celltype_asw']}"}
        for st in studies])
    text = ["# Where FE stops, and rules that discount noise", "",
            f"Command: `{command}`. Processor: {result['machine']['processor']}, {result['machine']['cpus']} "
            f"CPUs; load average {load_avg}. FE with early stopping counting any new best of the validation "
            "reconstruction (the default before `stop_min_improvement`) against the default now, which counts "
            "a new best only when it beats the last counted one by 0.3 %; test cells.", "",
            summary.to_markdown(index=False), "",
            "Per data set and seed: `stop` and `best` are epochs; the rules are replayed on the history of the "
            "run counting any new best; the `trained:` columns are FE trained to that epoch from the same seed "
            "(best weights restored).", ""]
    for st in studies:
        text += [f"## {st['data']}, seed {st['seed']}: {st['cells']} cells, {st['train_cells']} training cells, "
                 f"{st['steps_per_epoch']} steps an epoch, patience {st['patience_epochs']} epochs (400 steps)",
                 "", pd.DataFrame(st["rules"]).fillna("").to_markdown(index=False), ""]
    write_text(args.out + ".md", "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
