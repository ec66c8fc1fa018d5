"""Host work per training call (issue 13, "fewer host round trips"): the epoch loop's cost outside the compiled steps.

Two variants of the training loop, alternating in one process on the same cells, FE and RE trained for a fixed
number of epochs (no early stopping), epochs 2.. timed:

- ``keras``: what the loop did before: each step called through ``tf.function`` (its signature lookup on
  every call) and the running means reset with ``keras.Model.reset_metrics`` (one eager assignment per metric
  variable), twice an epoch;
- ``direct`` (the package now): each step called through the traced graph's concrete function, and the
  running means reset in one compiled call (``scmedal_lite.training.metrics_resetter``).

Both run the same graph, so the latents must be equal bit for bit; the script checks it. Data: the 1,713-cell
draw of ``time_to_result.py`` (3 steps an epoch) and the full COVID training split (36 steps an epoch).

    .venv/bin/python benchmarks/host_overhead.py [--epochs 40] [--rounds 3] [--out benchmarks/results/host_overhead]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import tensorflow as tf
from fresh_process import processor  # benchmarks/fresh_process.py, next to this script
from time_to_result import subset

import scmedal_lite as sm
from scmedal_lite import training, tutorial
from scmedal_lite.io import write_json, write_text

HERE = os.path.dirname(os.path.abspath(__file__))
DIRECT = {"traced_once": training.traced_once, "metrics_resetter": training.metrics_resetter}


def keras_traced_once(fn, jit_compile=False):
    """The loop's previous call path: every call through ``tf.function`` (one trace for any row count)."""
    compiled = {}

    def call(*args):
        if not compiled:
            compiled["fn"] = tf.function(fn, input_signature=training.open_rows_signature(args),
                                         jit_compile=jit_compile, autograph=False)
        return compiled["fn"](*args)
    return call


KERAS = {"traced_once": keras_traced_once, "metrics_resetter": lambda net: net.reset_metrics}


def load(name, folder):
    path = None
    if name == "covid2k":
        path = os.path.join(folder, "covid2k.h5ad")
        subset(sm.datasets.covid_pbmc(), 2000, path)
    _, adata, _ = tutorial.setup(data_path=path, batch_key="sample_id", labels_key="celltype_coarse",
                                 condition_key="cond_group", max_epochs=None, seed=0, quick=False,
                                 output_dir=os.path.join(folder, name), model_dir=None,
                                 notebook="04_classification", train=False)
    return adata


def run(adata, variant, epochs):
    for name, fn in variant.items():
        setattr(training, name, fn)
    model = sm.SCMEDAL(adata, "sample_id", "celltype_coarse", seed=0)
    model.train(max_epochs=epochs, progress=False, early_stopping=False)
    seconds = {k: float(np.median(h["seconds"].iloc[1:])) for k, h in model.history.items()}
    latents = {k: model.get_latent(k, adata) for k in ("fe", "re")}
    return seconds, latents


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["covid2k", "covid"], choices=["covid2k", "covid"])
    ap.add_argument("--epochs", type=int, default=40, help="epochs per run on covid2k (covid: a tenth, at least 4)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "host_overhead"))
    args = ap.parse_args()
    load_avg = {"start": list(os.getloadavg())}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data:
            adata = load(name, tmp)
            epochs = args.epochs if name == "covid2k" else max(4, args.epochs // 10)
            times = {"keras": [], "direct": []}
            same = True
            for _ in range(args.rounds):
                results = {v: run(adata, variant, epochs) for v, variant in (("keras", KERAS), ("direct", DIRECT))}
                for v in times:
                    times[v].append(results[v][0])
                same &= all(np.array_equal(results["keras"][1][k], results["direct"][1][k]) for k in ("fe", "re"))
            for net in ("fe", "re"):
                med = {v: float(np.median([t[net] for t in times[v]])) for v in times}
                rows.append({"data": name, "cells": adata.n_obs, "network": net, "epochs": epochs,
                             "keras_ms": round(1e3 * med["keras"], 1), "direct_ms": round(1e3 * med["direct"], 1),
                             "ratio": round(med["keras"] / med["direct"], 3), "same_latents": bool(same)})
                print(rows[-1], flush=True)
    for name, fn in DIRECT.items():
        setattr(training, name, fn)
    load_avg["end"] = list(os.getloadavg())
    result = {"machine": {"cpus": os.cpu_count(), "processor": processor(), "load_average": load_avg},
              "command": " ".join(["benchmarks/host_overhead.py", *sys.argv[1:]]), "rows": rows}
    write_json(args.out + ".json", result)
    lines = ["# Host work per training call: `tf.function` calls and eager metric resets against direct calls", "",
             f"Machine: {result['machine']['cpus']} CPUs ({result['machine']['processor']}), load average "
             f"{load_avg}. Command: `{result['command']}`. Median seconds of epochs 2.. over {args.rounds} "
             "rounds, the two variants alternating in one process.", "",
             "| data (cells) | network | epochs | keras, ms / epoch | direct, ms / epoch | ratio | latents equal |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['data']} ({r['cells']}) | {r['network'].upper()} | {r['epochs']} | {r['keras_ms']} | "
              f"{r['direct_ms']} | {r['ratio']}x | {'yes' if r['same_latents'] else 'no'} |" for r in rows]
    write_text(args.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
