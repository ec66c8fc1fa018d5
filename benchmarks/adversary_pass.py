"""The default FE with one encoder pass per step (``adversary_pass="shared"``, the default) against two (the
paper's ``"separate"``), in one process, the two alternating so that the ratios share the machine's load.

- **one training step** (512 cells, 63 batches; 1,000 genes as the COVID data, and 2,000 as a user's 2,000
  most variable genes): seconds to trace and run the first step, then the median milliseconds per step over
  ``--rounds`` rounds of 10 steps, and the share of the float32 matmul rate measured in the same run. The dense
  work is counted for what each variant computes: the separate pass's extra encoder forward is counted for it
  and not for the shared one, so the shares compare work done per second, not speed;
- **epochs**: on the COVID data (18,320 training cells) and on the 1,713-cell draw of ``time_to_result.py``
  (1,027 training cells), batch 512, validation included; seconds per epoch, median of epochs 2..``--epochs``,
  the two variants' epochs interleaved (the order swapped every epoch), and the first epoch (tracing included).

    .venv/bin/python benchmarks/adversary_pass.py [--rounds 9] [--epochs 8] [--out benchmarks/results/adversary_pass]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import pandas as pd
import tensorflow as tf
from fresh_process import processor
from fused_adam import split_draw
from speed import dense_flops, matmul_rates

import scmedal_lite as sm
from scmedal_lite import networks as N
from scmedal_lite.io import write_json, write_text
from scmedal_lite.presets import get_preset
from scmedal_lite.training import _epoch, _steps, seed_everything

HERE = os.path.dirname(os.path.abspath(__file__))
PASSES = ("separate", "shared")
CELLS, BATCHES = 512, 63


def fe_step_flops(genes: int, adversary_pass: str, adversary_steps: int = 5) -> int:
    """Dense work of one default-FE step on ``CELLS`` cells: the adversary's updates (forward and backward of
    the adversary on the latent), the autoencoder's forward and backward, the adversary's forward and input
    gradient inside it, the local-mixing term's distances; plus, for the separate pass, the encoder forward the
    adversary's updates run themselves."""
    enc, dec = dense_flops([genes, 512, 132, 50], 1), dense_flops([50, 132, 512, genes], 1)
    adv = dense_flops([50, 512, 132, BATCHES], 1)
    per_cell = 3 * adversary_steps * adv + 3 * (enc + dec) + 3 * adv + 3 * 2 * CELLS * 50
    return CELLS * (per_cell + (enc if adversary_pass == "separate" else 0))


def build(genes: int, adversary_pass: str):
    seed_everything(0)
    preset = get_preset("default")
    config = {"hidden": [512, 132], "latent_dim": 50, "fe": preset["fe"],
              "fe_design": {**preset["fe_design"], "adversary_pass": adversary_pass}, "fec_head": False}
    net = N.build_network("fe", config, n_genes=genes, n_batches=BATCHES, seed=0)
    net.compile(learning_rate=1e-3)
    return net


def steps(rounds: int) -> tuple[list[dict], float]:
    rng = np.random.default_rng(0)
    compiled, first, data = {}, {}, {}
    for genes in (1000, 2000):
        x = rng.random((CELLS, genes), dtype=np.float32)
        z = np.eye(BATCHES, dtype=np.float32)[rng.integers(0, BATCHES, CELLS)]
        data[genes] = ((tf.constant(x), tf.constant(z)),)
        for adversary_pass in PASSES:
            step = tf.function(build(genes, adversary_pass).train_step, autograph=False)
            tic = time.perf_counter()
            float(step(data[genes])["loss"])
            first[genes, adversary_pass] = time.perf_counter() - tic
            compiled[genes, adversary_pass] = step
    times, rates = {k: [] for k in compiled}, []
    for _ in range(rounds):
        rates.append(matmul_rates()["tf_float32"])
        for (genes, adversary_pass), step in compiled.items():
            tic = time.perf_counter()
            for _ in range(10):
                out = step(data[genes])
            float(out["loss"])
            times[genes, adversary_pass].append((time.perf_counter() - tic) * 100)
    rate = float(np.median(rates))
    rows = []
    for (genes, adversary_pass), ms in times.items():
        median = float(np.median(ms))
        rows.append({"genes": genes, "adversary_pass": adversary_pass,
                     "first_step_s": round(first[genes, adversary_pass], 2), "ms_per_step": round(median, 2),
                     "share_of_matmul_rate": round(fe_step_flops(genes, adversary_pass) / rate / 1e6 / median, 3)})
    return rows, rate


def epochs(adata, label: str, n_epochs: int) -> list[dict]:
    """Both variants' epochs interleaved (epoch e of one, then of the other, the order swapped every epoch)."""
    runs = {}
    for adversary_pass in PASSES:
        model = sm.SCMEDAL(adata, "sample_id", "celltype_coarse", seed=0,
                           fe_design={"adversary_pass": adversary_pass})
        seed_everything(0)
        net = model._build("fe")
        net.compile(learning_rate=1e-3)
        train = model._inputs("fe", adata, model.train_mask)
        model._set_training_references(net, train, 0)          # the small-data guard's axes, as train() sets them
        runs[adversary_pass] = (net, _steps(net, None, False), train, model._inputs("fe", adata, model.val_mask), [])
    n_train = int(model.train_mask.sum())
    batch_size = model.config["schedule"]["batch_size"]
    for epoch in range(n_epochs):
        order = np.random.default_rng([0, epoch]).permutation(n_train)
        for adversary_pass in PASSES[::1 if epoch % 2 == 0 else -1]:
            net, steps_, train, val, seconds = runs[adversary_pass]
            seconds.append(_epoch(net, steps_, train, val, order, batch_size, 2048)["seconds"])
    return [{"data": label, "training cells": n_train, "adversary_pass": p, "first_epoch_s": round(runs[p][-1][0], 2),
             "s_per_epoch": round(float(np.median(runs[p][-1][1:])), 3)} for p in PASSES]


def ratio(rows, key, by):
    """``separate / shared`` of ``key`` per value of ``by``."""
    frame = pd.DataFrame(rows).pivot_table(index=by, columns="adversary_pass", values=key, aggfunc="first")
    return (frame["separate"] / frame["shared"]).round(3).to_dict()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "adversary_pass"))
    args = ap.parse_args()
    load = {"start": list(os.getloadavg())}
    step_rows, rate = steps(args.rounds)
    full = sm.datasets.covid_pbmc()
    sm.pp.prepare(full, batch_key="sample_id")
    sm.pp.split_cells(full, batch_key="sample_id", labels_key="celltype_coarse")
    epoch_rows = epochs(full, "COVID, all cells", args.epochs) + epochs(split_draw(sm.datasets.covid_pbmc()),
                                                                      "COVID, 1,713-cell draw", args.epochs)
    load["end"] = list(os.getloadavg())
    result = {"command": "benchmarks/adversary_pass.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                     vars(args).items() if k != "out"),
              "machine": {"processor": processor(), "platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average": load, "float32_matmul_gflops": round(rate, 1)},
              "steps": step_rows, "epochs": epoch_rows,
              "step_time_ratio_separate_over_shared": ratio(step_rows, "ms_per_step", "genes"),
              "epoch_time_ratio_separate_over_shared": ratio(epoch_rows, "s_per_epoch", "data")}
    write_json(args.out + ".json", result)
    text = ["# One encoder pass per FE step (`adversary_pass`): shared (default) against separate (the paper's)", "",
            f"Command: `{result['command']}`. Processor: {result['machine']['processor']}, "
            f"{result['machine']['cpus']} CPUs; float32 matmul rate {rate:.0f} GFLOP/s in the same run; "
            f"load average {load}.", "",
            "## One training step (512 cells, 63 batches)", "", pd.DataFrame(step_rows).to_markdown(index=False), "",
            f"Step time, separate / shared: {result['step_time_ratio_separate_over_shared']} (by genes).", "",
            "## Epochs (batch 512, validation included; median of epochs 2..N, interleaved)", "",
            pd.DataFrame(epoch_rows).to_markdown(index=False), "",
            f"Epoch time, separate / shared: {result['epoch_time_ratio_separate_over_shared']}.", ""]
    write_text(args.out + ".md", "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
