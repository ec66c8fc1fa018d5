"""FusedAdam (one fused kernel per weight, the default) against Keras's Adam, in one process, round-robin.

Three measurements, each alternating the two optimisers so that the ratios share the machine's load:

- **one training step** (512 cells x 1,000 genes, 63 batches; RE, the default FE, the paper's FE): seconds to
  trace and run the first step, then the median milliseconds per step over ``--rounds`` rounds of 10 steps, and
  the share of the float32 matmul rate measured in the same run (``step_profile.py``'s count of dense work);
- **epochs on the COVID data** (18,320 training cells, batch 512, validation included): FE and RE seconds per
  epoch, median of epochs 2..``--epochs``, the two optimisers' epochs interleaved, and the share of the matmul
  rate (``speed.py``'s count);
- **chapter 4's cross-validation on the 1,713-cell draw** (``time_to_result.py``'s draw; the cells scheme, 3 folds
  of 25 epochs, as the chapter runs it): every fold builds and traces new networks, so tracing is a large part.

Keras's Adam is put back for a measurement by replacing ``scmedal_lite.networks.FusedAdam`` (what ``compile``
creates) with ``keras.optimizers.Adam``; a measurement device, not an option.

    .venv/bin/python benchmarks/fused_adam.py [--rounds 9] [--epochs 6] [--out benchmarks/results/fused_adam]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
import warnings

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from fresh_process import processor
from speed import epoch_flops, matmul_rates
from step_profile import BATCHES, CELLS, GENES, step_flops
from time_to_result import draw

import scmedal_lite as sm
from scmedal_lite import classify
from scmedal_lite import networks as N
from scmedal_lite.io import write_json, write_text
from scmedal_lite.presets import get_preset
from scmedal_lite.training import _epoch, _steps, seed_everything

HERE = os.path.dirname(os.path.abspath(__file__))
OPTIMISERS = ("keras_adam", "fused_adam")


@contextlib.contextmanager
def optimiser(name):
    """Networks compiled inside use FusedAdam (``"fused_adam"``, the default) or Keras's Adam."""
    original = N.FusedAdam
    N.FusedAdam = keras.optimizers.Adam if name == "keras_adam" else original
    try:
        yield
    finally:
        N.FusedAdam = original


def build_net(kind):
    seed_everything(0)
    if kind == "re":
        net = N.RandomEffectsAE(GENES, BATCHES, seed=0)
    elif kind == "fe":                                          # the paper's FE design
        net = N.FixedEffectsAE(GENES, BATCHES)
    else:                                                       # the default FE
        preset = get_preset("default")
        config = {"hidden": [512, 132], "latent_dim": 50, "fe": preset["fe"], "fe_design": preset["fe_design"],
                  "fec_head": False}
        net = N.build_network("fe", config, n_genes=GENES, n_batches=BATCHES, seed=0)
    net.compile(learning_rate=1e-3)
    return net


def steps(rounds):
    rng = np.random.default_rng(0)
    x = rng.random((CELLS, GENES), dtype=np.float32)
    z = np.eye(BATCHES, dtype=np.float32)[rng.integers(0, BATCHES, CELLS)]
    data = ((tf.constant(x), tf.constant(z)),)
    compiled, first = {}, {}
    for kind in ("re", "fe_default", "fe"):
        for name in OPTIMISERS:
            with optimiser(name):
                net = build_net(kind)
                step = tf.function(net.train_step, autograph=False)
                tic = time.perf_counter()
                float(step(data)["loss"])
                first[kind, name] = time.perf_counter() - tic
                compiled[kind, name] = step
    times, rates = {k: [] for k in compiled}, []
    for _ in range(rounds):
        rates.append(matmul_rates()["tf_float32"])
        for key, step in compiled.items():
            tic = time.perf_counter()
            for _ in range(10):
                out = step(data)
            float(out["loss"])
            times[key].append((time.perf_counter() - tic) * 100)
    rate = float(np.median(rates))
    rows = []
    for (kind, name), ms in times.items():
        ms_median = float(np.median(ms))
        rows.append({"network": kind, "optimiser": name, "first_step_s": round(first[kind, name], 2),
                     "ms_per_step": round(ms_median, 2),
                     "share_of_matmul_rate": round(step_flops(kind) / rate / 1e6 / ms_median, 3)})
    return rows, rate


def epochs(adata, n_epochs, rate):
    """Per network, both optimisers' epochs interleaved (epoch e of one, then of the other, the order swapped
    every epoch), so that a change in the machine's load falls on both."""
    rows = []
    for kind in ("fe", "re"):
        runs = {}
        for name in OPTIMISERS:
            with optimiser(name):
                model = sm.SCMEDAL(adata, "sample_id", "celltype_coarse", seed=0)
                net = model._build(kind)
                net.compile(learning_rate=1e-3)
                runs[name] = (net, _steps(net, None, False), model._inputs(kind, adata, model.train_mask),
                              model._inputs(kind, adata, model.val_mask), [])
        n_train = int(model.train_mask.sum())
        for epoch in range(n_epochs):
            order = np.random.default_rng([0, epoch]).permutation(n_train)
            for name in OPTIMISERS[::1 if epoch % 2 == 0 else -1]:
                net, steps_, train, val, seconds = runs[name]
                seconds.append(_epoch(net, steps_, train, val, order, 512, 2048)["seconds"])
        flops = epoch_flops(kind, n_train, int(model.val_mask.sum()), adata.n_vars, 63, model.config)
        for name in OPTIMISERS:
            seconds = runs[name][-1]
            median = float(np.median(seconds[1:]))
            rows.append({"network": kind, "optimiser": name, "first_epoch_s": round(seconds[0], 2),
                         "s_per_epoch": round(median, 3),
                         "share_of_matmul_rate": round(flops / rate / 1e9 / median, 3)})
    return rows


def cross_validation(full, repeats):
    sub = draw(full, 2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm.pp.prepare(sub, batch_key="sample_id")
    rows = []
    for repeat in range(repeats):
        for name in OPTIMISERS:
            with optimiser(name):
                tic = time.perf_counter()
                table = classify.cross_validate_mec(
                    sub, batch_key="sample_id", labels_key="celltype_coarse", condition_key="cond_group",
                    scheme="cells", n_folds=5, folds=[0, 1, 2], seed=0, train_kwargs={"max_epochs": 25},
                    baselines=("pca",), n_jobs=2, progress=False)
                seconds = time.perf_counter() - tic
            acc = table.query("metric == 'balanced_accuracy' and split == 'test'").groupby("features")["value"].mean()
            rows.append({"repeat": repeat, "optimiser": name, "seconds": round(seconds, 1),
                         "FE bal. acc.": round(float(acc["scMEDAL-FE"]), 3),
                         "FE + RE bal. acc.": round(float(acc["scMEDAL-FE + RE"]), 3)})
    return rows


def split_draw(full):
    """The 1,713-cell draw, prepared and split as chapter 0 does."""
    sub = draw(full, 2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm.pp.prepare(sub, batch_key="sample_id")
    sm.pp.split_cells(sub, batch_key="sample_id", labels_key="celltype_coarse", fold=0)
    return sub


def trained_per_seed(full, seeds, kind):
    """``(seed, optimiser, model, test cells)`` for ``kind`` trained with defaults on the 1,713-cell draw, per
    seed and optimiser."""
    sub = split_draw(full)
    test = sub.obs["split"].to_numpy() == "test"
    for seed in seeds:
        for name in OPTIMISERS:
            with optimiser(name):
                model = sm.SCMEDAL(sub, "sample_id", "celltype_coarse", seed=seed).train(which=(kind,),
                                                                                          progress=False)
            yield seed, name, model, sub[test]


def re_batch_asw(full, seeds):
    """The default RE, per seed and optimiser: the batch ASW of its latent on the test cells (chapter 0's
    figure) and the validation reconstruction error at its best epoch."""
    rows = []
    for seed, name, model, test in trained_per_seed(full, seeds, "re"):
        scores = sm.metrics.score_embeddings({"RE": model.get_latent("re", test)},
                                             test.obs["sample_id"].to_numpy(), metrics=["asw"])
        rows.append({"seed": seed, "optimiser": name, "epochs run": model.trained["re"]["epochs_run"],
                     "RE batch ASW (test)": round(float(scores["value"].iloc[0]), 4),
                     "val. reconstruction at best": round(float(model.history["re"]["val_recon_loss"].min()), 5)})
        print(rows[-1], flush=True)
    return rows


def fe_stops(full, seeds):
    """The default FE, per seed and optimiser: where early stopping ends it. Float rounding differs between the
    two optimisers, and on small data the epoch FE stops at is sensitive to it."""
    rows = []
    for seed, name, model, test in trained_per_seed(full, seeds, "fe"):
        knn, expected = sm.metrics.knn_same_batch_fraction(model.get_latent("fe", test),
                                                            test.obs["sample_id"].to_numpy())
        info = model.trained["fe"]
        rows.append({"seed": seed, "optimiser": name, "epochs run": info["epochs_run"],
                     "best epoch": info["best_epoch"], "budget": info["max_epochs"],
                     "seconds": round(info["seconds"], 1), "FE kNN same-batch (test)": round(knn, 4),
                     "if mixed": round(expected, 4)})
        print(rows[-1], flush=True)
    return rows


def ratio(rows, key, value):
    """Keras's value over FusedAdam's, per ``key``."""
    out = {}
    for row in rows:
        out.setdefault(row[key], {})[row["optimiser"]] = row[value]
    return {k: round(v["keras_adam"] / v["fused_adam"], 3) for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--cv-repeats", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "fused_adam"))
    ap.add_argument("--fe-stops", type=int, nargs="*", default=None, metavar="SEED",
                    help="only FE's stopping epoch on the 1,713-cell draw for these seeds, both optimisers "
                         "(written to --out)")
    ap.add_argument("--re-asw", type=int, nargs="*", default=None, metavar="SEED",
                    help="only RE's batch ASW on the 1,713-cell draw for these seeds, both optimisers "
                         "(written to --out)")
    args = ap.parse_args()
    seed_parts = {"re_asw": (re_batch_asw, "--re-asw", "re_batch_asw",
                             "# The default RE's batch ASW on the 1,713-cell COVID draw, with Keras's Adam and "
                             "FusedAdam", "Test cells."),
                  "fe_stops": (fe_stops, "--fe-stops", "fe_stops",
                               "# Where the default FE stops on the 1,713-cell COVID draw, with Keras's Adam and "
                               "FusedAdam", "Seconds are wall time on a shared machine; the epochs are what matters.")}
    for attr, (measure, flag, key, title, remark) in seed_parts.items():
        seeds = getattr(args, attr)
        if seeds is not None:
            rows = measure(sm.datasets.covid_pbmc(), seeds)
            machine = {"processor": processor(), "cpus": os.cpu_count(), "load_average_end": os.getloadavg()}
            command = f"python benchmarks/fused_adam.py {flag} {' '.join(map(str, seeds))}"
            write_json(args.out + ".json", {"command": command, "machine": machine, key: rows})
            write_text(args.out + ".md", "\n\n".join([
                title, f"Machine: {machine['cpus']} CPUs ({machine['processor']}). Command: `{command}`. {remark}",
                table(rows)]) + "\n")
            return
    result = {"command": f"python benchmarks/fused_adam.py --rounds {args.rounds} --epochs {args.epochs} "
                         f"--cv-repeats {args.cv_repeats}",
              "machine": {"processor": processor(), "cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average_start": os.getloadavg(), "tensorflow": tf.__version__,
                          "keras": keras.__version__}}
    result["steps"], rate = steps(args.rounds)
    result["tf_float32_matmul_gflops"] = round(rate, 1)
    print(result["steps"], flush=True)
    full = sm.datasets.covid_pbmc()
    adata = full.copy()
    sm.pp.prepare(adata, batch_key="sample_id")
    sm.pp.split_cells(adata, batch_key="sample_id", labels_key="celltype_coarse", fold=0)
    result["epochs"] = epochs(adata, args.epochs, rate)
    print(result["epochs"], flush=True)
    result["cross_validation"] = cross_validation(full, args.cv_repeats)
    print(result["cross_validation"], flush=True)
    result["machine"]["load_average_end"] = os.getloadavg()
    result["keras_over_fused"] = {
        "ms_per_step": ratio(result["steps"], "network", "ms_per_step"),
        "first_step_s": ratio(result["steps"], "network", "first_step_s"),
        "s_per_epoch": ratio(result["epochs"], "network", "s_per_epoch"),
        "cross_validation_s": round(float(np.median([r["seconds"] for r in result["cross_validation"]
                                                     if r["optimiser"] == "keras_adam"])
                                          / np.median([r["seconds"] for r in result["cross_validation"]
                                                       if r["optimiser"] == "fused_adam"])), 3)}
    write_json(args.out + ".json", result)
    write_text(args.out + ".md", report(result))
    print(report(result))


def table(rows):
    """A markdown table of a list of row dicts, as the other benchmarks write theirs."""
    return pd.DataFrame(rows).to_markdown(index=False)


def report(result):
    m = result["machine"]
    return "\n\n".join([
        "# FusedAdam against Keras's Adam",
        f"Machine: {m['cpus']} CPUs ({m['processor']}), TensorFlow {m['tensorflow']}, Keras {m['keras']}; load "
        f"average {[round(v, 2) for v in m['load_average_start']]} -> {[round(v, 2) for v in m['load_average_end']]}; "
        f"float32 matmul rate {result['tf_float32_matmul_gflops']} GFLOP/s, measured in the same run. Command: "
        f"`{result['command']}`.",
        "## One training step (512 cells x 1,000 genes, 63 batches)\n\n`fe` is the paper's FE design, "
        "`fe_default` the package's.\n\n" + table(result["steps"]),
        "## Epochs on the COVID data (18,320 training cells)\n\n" + table(result["epochs"]),
        "## Chapter 4's cross-validation on the 1,713-cell draw (cells scheme, 3 folds, 25 epochs)\n\n"
        + table(result["cross_validation"]),
        "## Keras's Adam over FusedAdam (above 1: FusedAdam is faster)\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in result["keras_over_fused"].items()),
    ]) + "\n"


if __name__ == "__main__":
    main()
