"""What the ``"mixing"`` preset's FE costs per epoch against the default's, on the COVID data (18,320 training
cells, 63 samples; memory of 16,384 latents) and the pancreas atlas (2,620 training cells, 20 donors).

Each run trains FE alone for ``--epochs`` epochs (no early stopping) in a fresh process; the presets alternate
(``fresh_process.alternate``) for ``--rounds`` rounds so that their ratio shares the machine's load. Reported:
the median seconds per epoch over epochs 2..``--epochs`` of each run (the first traces the steps), the median
over rounds, and the ratio mixing / default. The preset also trains more epochs (its whole budget;
book/method.md, "The mixing preset"), which this per-epoch figure leaves out.

    .venv/bin/python benchmarks/mixing_cost.py [--rounds 2] [--epochs 6] [--out benchmarks/results/mixing_cost]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from fresh_process import alternate, machine, report, write
from integration import DATASETS, code_version, load_builtin

HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS = ("default", "mixing")
DATA = ("covid", "pancreas")


def epoch_seconds(dataset: str, preset: str, epochs: int) -> dict:
    """FE of ``preset`` on ``dataset`` for ``epochs`` epochs in this process: seconds of each epoch."""
    import scmedal_lite as sm

    adata = load_builtin(dataset)
    model = sm.SCMEDAL(adata, DATASETS[dataset]["batch_key"], DATASETS[dataset]["labels_key"], preset=preset,
                       seed=0)
    seconds, last = [], [time.perf_counter()]

    def tick(kind, epoch, logs):
        now = time.perf_counter()
        seconds.append(now - last[0])
        last[0] = now

    model.train(max_epochs=epochs, which=("fe",), progress=False, early_stopping=False, on_epoch_end=tick)
    return {"epoch_seconds": seconds, "training_cells": int(model.train_mask.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--datasets", nargs="+", choices=DATA, default=list(DATA))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "mixing_cost"))
    ap.add_argument("--worker", choices=PRESETS, help=argparse.SUPPRESS)
    ap.add_argument("--dataset", choices=DATA, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        report(epoch_seconds(args.dataset, args.worker, args.epochs))
        return
    load = {"start": [round(x, 2) for x in os.getloadavg()]}
    runs = {d: alternate(__file__, PRESETS, args.rounds, ["--dataset", d, "--epochs", args.epochs])
            for d in args.datasets}
    load["end"] = [round(x, 2) for x in os.getloadavg()]
    median = {d: {p: statistics.median(statistics.median(r["epoch_seconds"][1:]) for r in runs[d][p])
                  for p in PRESETS} for d in args.datasets}
    commit = code_version()
    command = "python benchmarks/mixing_cost.py " + " ".join(sys.argv[1:])
    rows = [[d, round(m["default"], 3), round(m["mixing"], 3), round(m["mixing"] / m["default"], 2)]
            for d, m in median.items()]
    write(args.out, {"command": command, "commit": commit, "machine": machine(load), "epochs": args.epochs,
                     "rounds": args.rounds, "median_epoch_s": median, "runs": runs},
          "FE seconds per epoch: the mixing preset against the default",
          f"`{command}` at {commit} ({os.cpu_count()} CPUs); median of epochs 2..{args.epochs}, median over "
          f"{args.rounds} rounds of fresh processes, the presets alternating.",
          ["data", "default s/epoch", "mixing s/epoch", "mixing / default"], rows,
          f"Load average at the start and end: {load['start']}, {load['end']}.")


if __name__ == "__main__":
    main()
