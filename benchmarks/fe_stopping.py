"""Where the default FE stops on small data, and what stopping rules that discount noise would give instead.

On ``time_to_result.py``'s 2,000-cell COVID draw (1,713 cells, 42 samples), seed 0:

1. FE trains with the package's defaults (stop 400 steps after the last new best of the validation
   reconstruction, best weights restored); its per-epoch history is kept.
2. Other stopping rules are replayed on that history: a new best must beat the old by a relative margin, or by
   ``k`` noise standard deviations (the noise from second differences of the recent losses), or the mean loss
   of the last window of steps must beat the mean of the window before it by two standard errors.
3. FE is trained again, from the same seed, to each epoch where a window rule stopped (best weights within it
   restored), and scored like the default.

Scores are on the test cells: kNN same-sample fraction of the FE latent (and its value if fully mixed), batch
and cell-type ASW, validation reconstruction at the best epoch, training seconds. The processor is recorded:
where the default stops differs between processors.

    .venv/bin/python benchmarks/fe_stopping.py      # about 6 minutes on 2 cores
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
from re_minibatch import load

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
    out = [{"rule": f"default: any new best, patience {patience} epochs",
            **dict(zip(("stop", "best"), replay(values, lambda i, b: values[i] < b, patience)))}]
    for margin in (0.001, 0.003, 0.01, 0.02):
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


def train(adata, bk, lk, epochs, seed):
    """FE trained (``epochs`` None: the default budget) and scored on the test cells."""
    tic = time.perf_counter()
    model = sm.SCMEDAL(adata, batch_key=bk, labels_key=lk, seed=seed).train(epochs, which=("fe",), seed=seed,
                                                                          progress=False)
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
    return model, row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    load_avg = {"start": list(os.getloadavg())}
    adata, bk, lk = load("covid2k")
    model, default = train(adata, bk, lk, None, args.seed)
    settings = model.trained["fe"]
    n_train = int(model.train_mask.sum())
    steps_per_epoch = math.ceil(n_train / settings["batch_size"])
    values = model.history["fe"][MONITOR].to_numpy()
    replayed = rules(values, settings["patience"], steps_per_epoch)
    trained = {settings["epochs_run"]: default}
    for r in replayed:
        if r.pop("window", False) and r["stop"] not in trained:
            trained[r["stop"]] = train(adata, bk, lk, r["stop"], args.seed)[1]
            print(json.dumps({"epochs": r["stop"], **trained[r["stop"]]}), flush=True)
    for r in replayed:
        r.update({f"trained: {k}": v for k, v in trained.get(r["stop"], {}).items()
                  if k not in ("epochs_run",)})
    load_avg["end"] = list(os.getloadavg())
    result = {"command": "python benchmarks/fe_stopping.py" + (f" --seed {args.seed}" if args.seed else ""),
              "machine": machine(load_avg), "cells": adata.n_obs, "train_cells": n_train,
              "steps_per_epoch": steps_per_epoch, "patience_epochs": settings["patience"],
              "history": [round(float(v), 6) for v in values], "rules": replayed}
    write_json(args.out + ".json", result)
    table = pd.DataFrame(replayed).fillna("")
    text = ["# Where FE stops on small data, and rules that discount noise", "",
            f"Command: `{result['command']}`. Processor: {result['machine']['processor']}, "
            f"{result['machine']['cpus']} CPUs. Data: {adata.n_obs} cells of the COVID 2,000-cell draw, "
            f"{n_train} training cells, {steps_per_epoch} steps an epoch; the default patience is "
            f"{settings['patience']} epochs (400 steps). One seed. `stop` and `best` are epochs; rules other than "
            "the default are replayed on the default run's history; the `trained:` columns are FE trained to "
            "that epoch from the same seed (best weights restored), scored on the test cells.", "",
            table.to_markdown(index=False), ""]
    write_text(args.out + ".md", "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
