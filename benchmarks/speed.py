"""Training speed, hardware utilisation, counterfactual throughput and time to quality on the real COVID PBMC data.

Everything is measured in one run so the ratios are comparable on a noisy shared machine:
- the machine's dense matmul rate (TensorFlow float32 and bfloat16, NumPy float32; same threads);
- FE and RE seconds per epoch (median over epochs 2..n; 18,320 training cells x 1,000 genes, batch 512) for
  graph mode, XLA and mixed bfloat16, with the floating-point work of one epoch (forward and backward of every
  dense layer, validation included) and the fraction of the matmul rate it reaches;
- the ratio to the authors' implementation measured on this machine (anchors.md: FE 1.73 s, RE 2.00 s per
  epoch idle; 3.5-4 s and 3.4 s per epoch median under load);
- counterfactual throughput (cells x target batches / s) for the 6,107 test cells x 63 samples, and the peak
  memory growth while streaming them;
- time to quality with the default settings: wall time from the start of training until the RE latent's batch
  ASW on the test split passes 0 (and FE's is below PCA's), against the authors' 17-20 minutes.

    .venv/bin/python benchmarks/speed.py [--epochs 6] [--out benchmarks/results/speed]
"""

import argparse
import os
import platform
import sys
import threading
import time

import numpy as np
from fresh_process import processor  # benchmarks/fresh_process.py, next to this script

import scmedal_lite as sm
from scmedal_lite.io import write_json
from scmedal_lite.metrics import score_embeddings

HERE = os.path.dirname(os.path.abspath(__file__))
AUTHORS = {"fe": {"idle": 1.73, "loaded": 3.75}, "re": {"idle": 2.00, "loaded": 3.4}}


def matmul_rates():
    import tensorflow as tf
    out = {}
    n, k, m = 4096, 1000, 512
    for name, dtype in (("tf_float32", tf.float32), ("tf_bfloat16", tf.bfloat16)):
        a, b = tf.cast(tf.random.normal((n, k)), dtype), tf.cast(tf.random.normal((k, m)), dtype)
        mm = tf.function(lambda a, b: tf.matmul(a, b))
        mm(a, b).numpy()
        times = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(10):
                r = mm(a, b)
            r.numpy()
            times.append((time.perf_counter() - t) / 10)
        out[name] = 2 * n * k * m / np.median(times) / 1e9
    a = np.random.rand(n, k).astype("float32")
    b = np.random.rand(k, m).astype("float32")
    times = []
    for _ in range(7):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    out["numpy_float32"] = 2 * n * k * m / np.median(times) / 1e9
    return {k: round(v, 1) for k, v in out.items()}


def dense_flops(widths, n):
    """Forward multiply-add FLOPs of a chain of dense layers with these widths, for n rows."""
    return sum(2 * n * a * b for a, b in zip(widths[:-1], widths[1:]))


def autoencoder_flops(genes):
    """Forward work per cell of the encoder (genes → 512 → 132 → 50) and of the decoder back."""
    return dense_flops([genes, 512, 132, 50], 1), dense_flops([50, 132, 512, genes], 1)


def re_cell_flops(genes, batches):
    """Dense floating-point work of one RE training step per cell (encoder, decoder and batch head forward and
    backward, 3x their forward work), and of one validation pass. The random effects' scale-and-bias
    arithmetic is not a dense layer and is not counted."""
    enc, dec = autoencoder_flops(genes)
    forward = enc + dec + dense_flops([50, 5, batches], 1)
    return 3 * forward, forward


def fe_cell_flops(genes, batches, config, minibatch=512):
    """Dense floating-point work of one FE training step per cell, and of one validation pass, for an FE
    network configured by ``config`` (``SCMEDAL.config``; its ``fe_design``: the adversary on every encoder
    activation or on the latent, its updates per step, one encoder pass per step or two; its ``fe`` weights:
    whether the local-mixing term runs, over ``minibatch`` cells).

    An adversary update is its forward and backward pass (3x its forward work); the autoencoder's update runs
    the encoder and decoder forward and backward (3x) and the adversary forward and back to its input (2x);
    with ``adversary_pass="separate"`` the adversary's updates run the encoder forward once more; with the
    local-mixing term its distances, forward and backward. The random-effects decoder's scale-and-bias
    arithmetic is not a dense layer and is not counted.

    >>> from scmedal_lite.presets import get_preset
    >>> [round(fe_cell_flops(1000, 63, get_preset(p))[0] / 1e6, 2) for p in ("paper", "default")]
    [12.52, 10.64]
    """
    design = config["fe_design"]
    enc, dec = autoencoder_flops(genes)
    width = 50 + (512 + 132 if design["adversary_input"] == "all" else 0)
    adv = dense_flops([width, 512, 132, batches], 1)
    mix_cells = minibatch if config["fe"].get("w_mix", 0) > 0 else 0
    train = (enc if design["adversary_pass"] == "separate" else 0) + 3 * design["adversary_steps"] * adv
    train += 3 * (enc + dec) + 2 * adv + 3 * 2 * mix_cells * 50
    return train, enc + dec + adv


def epoch_flops(kind, n_train, n_val, genes, batches, config=None, batch_size=512):
    """Dense floating-point work of one epoch of ``kind`` (training and validation cells); FE needs the
    model's ``config`` (:func:`fe_cell_flops`)."""
    if kind == "fe":
        per_cell, val_cell = fe_cell_flops(genes, batches, config, batch_size)
    else:
        per_cell, val_cell = re_cell_flops(genes, batches)
    return per_cell * n_train + val_cell * n_val


def epoch_times(adata, kind, epochs, **model_kwargs):
    from scmedal_lite.training import fit_network
    model = sm.SCMEDAL(adata, "sample_id", "celltype_coarse", **{k: v for k, v in model_kwargs.items()
                                                                 if k == "precision"})
    net = model._build(kind)
    net.compile(learning_rate=1e-3)
    train = model._inputs(kind, adata, model.train_mask)
    val = model._inputs(kind, adata, model.val_mask)
    hist, _ = fit_network(net, train, val, epochs=epochs, progress=False, early_stopping=False,
                          jit_compile=model_kwargs.get("jit", False))
    return (hist["seconds"].tolist(), int(model.train_mask.sum()), int(model.val_mask.sum()),
            model.config)


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def counterfactual_throughput(model, adata, chunk_size=4096):
    test = adata[(adata.obs["split"] == "test").to_numpy()]
    peak = {"base": rss_mb(), "max": rss_mb()}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak["max"] = max(peak["max"], rss_mb())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    list(model.iter_counterfactuals(test[:64], model.batch_categories[:2]))      # compile
    watcher.start()
    t = time.perf_counter()
    total = 0
    for _, _cells, values in model.iter_counterfactuals(test, chunk_size=chunk_size):
        total += values.shape[0]
    seconds = time.perf_counter() - t
    stop.set()
    watcher.join()
    full_size_mb = test.n_obs * len(model.batch_categories) * adata.n_vars * 4 / 2 ** 20
    return {"cells": test.n_obs, "batches": len(model.batch_categories), "seconds": round(seconds, 2),
            "cells_x_batches_per_s": round(total / seconds), "chunk_size": chunk_size,
            "peak_rss_growth_mb": round(peak["max"] - peak["base"], 1),
            "all_outputs_would_take_mb": round(full_size_mb)}


def time_to_quality(adata, seed=0):
    from sklearn.decomposition import PCA
    test = (adata.obs["split"] == "test").to_numpy()
    batch = adata.obs["sample_id"].to_numpy()[test]
    labels = adata.obs["celltype_coarse"].to_numpy()[test]
    model = sm.SCMEDAL(adata, "sample_id", "celltype_coarse", seed=seed)
    x = model.scale(adata)
    pca = PCA(50, random_state=0).fit(x[model.train_mask]).transform(x[test])
    pca_scores = score_embeddings({"pca": pca}, batch, labels, metrics=["asw"])
    pca_asw = float(pca_scores.query("label == 'batch'")["value"].iloc[0])
    trace = {"fe": [], "re": []}
    clock = {"train": 0.0, "last": None}

    def monitor(kind, epoch, logs):
        clock["train"] += logs["seconds"]
        asw = float(score_embeddings({kind: model.get_latent(kind)[test]}, batch, labels, metrics=["asw"],
                                     sample_size=3000).query("label == 'batch'")["value"].iloc[0])
        trace[kind].append({"epoch": epoch, "train_seconds": round(clock["train"], 1), "batch_asw": round(asw, 4)})
        done = asw > 0 if kind == "re" else asw < pca_asw
        return done

    t = time.perf_counter()
    clock["train"] = 0.0
    model.train(which=("fe",), progress=False, on_epoch_end=monitor)
    fe_seconds = clock["train"]
    clock["train"] = 0.0
    model.train(which=("re",), progress=False, on_epoch_end=monitor)
    re_seconds = clock["train"]
    return {"pca_batch_asw": round(pca_asw, 4), "fe_seconds_to_below_pca": round(fe_seconds, 1),
            "re_seconds_to_positive": round(re_seconds, 1), "trace": trace,
            "wall_seconds_incl_scoring": round(time.perf_counter() - t, 1),
            "authors_minutes": "17-20 (their RE passes 0 after 250-300 epochs at lr 1e-4)"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "speed"))
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    adata = sm.datasets.covid_pbmc()
    sm.pp.prepare(adata, batch_key="sample_id")
    sm.pp.split_cells(adata, batch_key="sample_id", labels_key="celltype_coarse", fold=0)
    result = {"machine": {"processor": processor(), "cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average_start": os.getloadavg()},
              "command": " ".join(["python benchmarks/speed.py", *sys.argv[1:]])}
    result["matmul_gflops"] = rates = matmul_rates()
    result["epochs"] = {}
    for kind in ("fe", "re"):
        for mode, kw in (("graph_float32", {}), ("xla_float32", {"jit": True}),
                         ("graph_bfloat16", {"precision": "bfloat16"})):
            seconds, n_train, n_val, config = epoch_times(adata, kind, args.epochs, **kw)
            median = float(np.median(seconds[1:]))
            flops = epoch_flops(kind, n_train, n_val, adata.n_vars, 63, config)
            reference = rates["tf_bfloat16" if "bfloat16" in mode else "tf_float32"]
            result["epochs"][f"{kind}_{mode}"] = {
                "seconds_per_epoch": [round(s, 3) for s in seconds], "median_s": round(median, 3),
                "gflop_per_epoch": round(flops / 1e9, 1), "achieved_gflops": round(flops / median / 1e9, 1),
                "fraction_of_matmul_rate": round(flops / median / 1e9 / reference, 3),
                "fraction_of_float32_matmul_rate": round(flops / median / 1e9 / rates["tf_float32"], 3),
                "speedup_vs_authors_idle": round(AUTHORS[kind]["idle"] / median, 2),
                "speedup_vs_authors_loaded": round(AUTHORS[kind]["loaded"] / median, 2)}
            print(kind, mode, result["epochs"][f"{kind}_{mode}"], flush=True)
    model = sm.SCMEDAL(adata, "sample_id", "celltype_coarse", seed=0)
    model.train(max_epochs=3, which=("re",), progress=False)
    result["counterfactuals"] = {f"chunk_{c}": counterfactual_throughput(model, adata, c) for c in (1024, 4096)}
    print(result["counterfactuals"], flush=True)
    if not args.skip_quality:
        result["time_to_quality"] = time_to_quality(adata)
        print({k: v for k, v in result["time_to_quality"].items() if k != "trace"}, flush=True)
    result["machine"]["load_average_end"] = os.getloadavg()
    write_json(args.out + ".json", result)


if __name__ == "__main__":
    main()
