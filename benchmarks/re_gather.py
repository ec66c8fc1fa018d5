"""The random effects' ``z @ w`` as a row gather (issue 13, "faster steps"): is it worth changing?

Each :class:`scmedal_lite.layers.RandomEffects` layer computes ``z @ w``: the one-hot batch rows ``z`` (cells ×
batches) times the sampled weights ``w`` (batches × units), which picks each cell's batch row. With one-hot
``z`` a gather of rows gives the same forward values; its gradient sums the cells of each batch in another order
(float rounding). The script times both, forward and backward, for the default RE network's ten random-effect
layers (widths 512, 132, 132, 512 and the genes, twice each: scale and shift) on a 512-cell minibatch of 63
batches, alternating in one process, and reports the medians, the largest gradient difference and the processor.

    .venv/bin/python benchmarks/re_gather.py [--rounds 5] [--calls 100] [--out benchmarks/results/re_gather]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import tensorflow as tf
from fresh_process import processor  # benchmarks/fresh_process.py, next to this script

from scmedal_lite.io import write_json

HERE = os.path.dirname(os.path.abspath(__file__))


def layer_functions(cells: int, batches: int, widths: list[int], seed: int = 0):
    """Two compiled functions (``matmul``, ``gather``) returning the gradients of ``sum(rows * g)`` for every
    layer, where ``rows`` is ``z @ w`` or ``w[batch]``."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, batches, cells)
    z = tf.constant(np.eye(batches, dtype="float32")[batch])
    index = tf.constant(batch, tf.int32)
    weights = [tf.Variable(rng.normal(size=(batches, u)).astype("float32")) for u in widths for _ in range(2)]
    upstream = [tf.constant(rng.normal(size=(cells, u)).astype("float32")) for u in widths for _ in range(2)]

    def gradients(pick):
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(pick(w) * g) for w, g in zip(weights, upstream)])
        return tape.gradient(loss, weights)

    return {"matmul": tf.function(lambda: gradients(lambda w: tf.matmul(z, w))),
            "gather": tf.function(lambda: gradients(lambda w: tf.gather(w, index)))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "re_gather"))
    args = ap.parse_args(argv)
    widths = [512, 132, 132, 512, args.genes]
    fns = layer_functions(512, 63, widths)
    first = {name: fn() for name, fn in fns.items()}              # trace once
    diff = max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(first["matmul"], first["gather"]))
    times = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            tic = time.perf_counter()
            for _ in range(args.calls):
                fn()
            times[name].append((time.perf_counter() - tic) / args.calls * 1000)
    medians = {name: float(np.median(v)) for name, v in times.items()}
    result = {"command": " ".join(["python", *sys.argv]), "processor": processor(), "cpus": os.cpu_count(),
              "layers": 2 * len(widths), "widths": widths, "cells": 512, "batches": 63,
              "ms_per_call": times, "median_ms": medians, "gather_over_matmul": medians["gather"] / medians["matmul"],
              "max_gradient_difference": diff}
    write_json(args.out + ".json", result)
    print(f"matmul {medians['matmul']:.2f} ms, gather {medians['gather']:.2f} ms "
          f"({medians['gather'] / medians['matmul']:.2f}x); largest gradient difference {diff:.2g}")


if __name__ == "__main__":
    main()
