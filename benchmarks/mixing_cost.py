"""What the ``"mixing"`` preset's FE costs per epoch against the default's, on the COVID data (18,320 training
cells, 63 samples; memory of 16,384 latents) and the pancreas atlas (2,620 training cells, 20 donors).

Each run trains FE alone for ``--epochs`` epochs (no early stopping) in a fresh process; the presets alternate
(default, mixing, default, mixing, ...) for ``--rounds`` rounds so that their ratio shares the machine's load.
Reported: the median seconds per epoch over epochs 2..``--epochs`` of each run (the first traces the steps),
the median over rounds, and the ratio mixing / default. The preset also trains more epochs (its whole budget;
book/method.md, "The mixing preset"), which this per-epoch figure leaves out.

    .venv/bin/python benchmarks/mixing_cost.py [--rounds 2] [--epochs 6] [--out benchmarks/results/mixing_cost]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATASETS = {"covid": ("sample_id", "celltype_coarse"), "pancreas": ("donor_id", "cell_type")}
PRESETS = ("default", "mixing")


def one_run(dataset: str, preset: str, epochs: int) -> dict:
    """FE of ``preset`` on ``dataset`` for ``epochs`` epochs in this process: seconds of each epoch."""
    import scmedal_lite as sm

    batch_key, labels_key = DATASETS[dataset]
    adata = sm.datasets.covid_pbmc() if dataset == "covid" else sm.datasets.pancreas()
    sm.pp.prepare(adata, batch_key=batch_key)
    sm.pp.split_cells(adata, batch_key=batch_key, labels_key=labels_key, fold=0)
    model = sm.SCMEDAL(adata, batch_key, labels_key, preset=preset, seed=0)
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
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "mixing_cost"))
    ap.add_argument("--one", nargs=2, metavar=("DATASET", "PRESET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_run(args.one[0], args.one[1], args.epochs)))
        return
    from scmedal_lite.io import write_json, write_text

    runs = []
    for dataset in args.datasets:
        for r in range(args.rounds):
            for preset in PRESETS:
                out = subprocess.run([sys.executable, __file__, "--one", dataset, preset, "--epochs",
                                      str(args.epochs)], capture_output=True, text=True, check=True).stdout
                result = json.loads(out.split("RESULT ", 1)[1])
                median = float(np.median(result["epoch_seconds"][1:]))
                runs.append({"dataset": dataset, "round": r, "preset": preset, "median_epoch_s": median,
                             "first_epoch_s": result["epoch_seconds"][0], **result})
                print(f"{dataset} round {r} {preset}: {median:.2f} s per epoch", flush=True)
    summary = {}
    for dataset in args.datasets:
        med = {p: float(np.median([x["median_epoch_s"] for x in runs if x["dataset"] == dataset
                                   and x["preset"] == p])) for p in PRESETS}
        summary[dataset] = {**{f"{p}_epoch_s": round(v, 3) for p, v in med.items()},
                            "ratio_mixing_to_default": round(med["mixing"] / med["default"], 2)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip()
    meta = {"command": "python benchmarks/mixing_cost.py " + " ".join(sys.argv[1:]), "commit": commit,
            "cpus": os.cpu_count(), "machine": platform.machine(), "epochs": args.epochs, "rounds": args.rounds}
    write_json(args.out + ".json", {"meta": meta, "summary": summary, "runs": runs}, indent=1)
    lines = ["# FE seconds per epoch: the mixing preset against the default", "",
             f"`{meta['command']}` at {meta['commit']} ({meta['cpus']} CPUs, {meta['machine']}); median of "
             f"epochs 2..{args.epochs}, median over {args.rounds} rounds of fresh processes, alternating.", "",
             "| data | default s/epoch | mixing s/epoch | mixing / default |", "|---|---|---|---|"]
    lines += [f"| {d} | {s['default_epoch_s']} | {s['mixing_epoch_s']} | {s['ratio_mixing_to_default']} |"
              for d, s in summary.items()]
    write_text(args.out + ".md", "\n".join(lines) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
