"""XLA (``train(jit_compile=True)``) against the default compiled graph on small data, whole trainings.

Issue 13 asks for XLA "wherever it pays for its compile time, decided automatically". Per epoch on the full COVID
data it paid on one AVX-512 processor and cost twice the time on an AVX2 one (``speed.py``; the book's
"Performance and scale" page). This prices it where a user's first analysis is most often run: the 2,000-cell
draw of ``time_to_result.py`` (``subset``: seeded, batches with fewer than 20 cells dropped), read, prepared and
split by ``tutorial.load_data`` as every notebook does, FE then RE trained with the default preset and budget,
seed 0. Each variant runs in a fresh process (compiling included), the variants alternating; medians over
rounds. Recorded per network: seconds, epochs run and best epoch, seconds per epoch, a hash of the test cells'
latent (the same seed gives the same latent in every round of a variant) and the quality figures the chapters
report (FE's kNN same-batch fraction, RE's batch ASW). XLA's numerics differ from the graph's, so each variant
trains its own trajectory.

    .venv/bin/python benchmarks/xla_small_data.py [--rounds 2] [--cells 2000]

Writes ``benchmarks/results/xla_small_data.{json,md}``.
"""

import hashlib
import os
import statistics
import time

from fresh_process import machine, run_on_cells, write

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("graph", "xla")


def measure(variant: str, n_cells: int) -> dict:
    """One fresh-process training of FE then RE, compiled as ``variant`` says (printed as JSON by ``--worker``)."""
    import tempfile

    from time_to_result import subset  # benchmarks/time_to_result.py, next to this script

    import scmedal_lite as sm
    from scmedal_lite import tutorial

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "draw.h5ad")
        subset(sm.datasets.covid_pbmc(), n_cells, path)
        p = tutorial.Params.parse(data_path=path, seed=0, notebook="xla_small_data")
        adata = tutorial.load_data(p)                  # read, prepared and split as every notebook does
    test = sm.pp.split_masks(adata)["test"]
    batches = adata.obs[p.batch_key].to_numpy()[test]
    labels = adata.obs[p.labels_key].to_numpy()[test]
    model = sm.SCMEDAL(adata, p.batch_key, p.labels_key, seed=p.seed)
    out = {"cells": int(adata.n_obs)}
    for kind, metric in (("fe", "knn_batch_fraction"), ("re", "asw")):
        tic = time.perf_counter()
        model.train(p.epochs, which=(kind,), seed=p.seed, jit_compile=variant == "xla", progress=False)
        seconds = time.perf_counter() - tic
        latent = model.get_latent(kind)[test]
        scores = sm.metrics.score_embeddings({kind: latent}, batches, labels, seed=0)
        info = model.trained[kind]
        out[kind] = {"seconds": round(seconds, 2), "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
                     "s_per_epoch": round(seconds / info["epochs_run"], 4),
                     "latent_sha1": hashlib.sha1(latent.tobytes()).hexdigest()[:12],
                     metric: round(float(scores.query("metric == @metric and label == 'batch'")["value"].iloc[0]), 4)}
    return out


def main(argv=None):
    parsed = run_on_cells(__file__, __doc__, VARIANTS, measure, rounds=2, cells=2000,
                          out=os.path.join(HERE, "results", "xla_small_data"), argv=argv)
    if parsed is None:                     # a worker: it printed its measurement
        return
    args, runs, load = parsed

    def median(variant, kind, key):
        return round(statistics.median(r[kind][key] for r in runs[variant]), 3)

    summary = {v: {kind: {key: median(v, kind, key) for key in ("seconds", "epochs_run", "s_per_epoch")}
                   for kind in ("fe", "re")} for v in VARIANTS}
    same_seed_same_latent = {v: all(len({r[k]["latent_sha1"] for r in runs[v]}) == 1 for k in ("fe", "re"))
                             for v in VARIANTS}
    ratios = {kind: round(summary["xla"][kind]["seconds"] / summary["graph"][kind]["seconds"], 2)
              for kind in ("fe", "re")}
    command = f"python benchmarks/xla_small_data.py --rounds {args.rounds} --cells {args.cells}"
    result = {"command": command, "machine": machine(load), "cells": runs["graph"][0]["cells"],
              "medians": summary, "xla_over_graph_seconds": ratios,
              "same_seed_same_latent": same_seed_same_latent, "rounds": runs}
    rows = [[v, kind, summary[v][kind]["seconds"], summary[v][kind]["epochs_run"], summary[v][kind]["s_per_epoch"],
             runs[v][0][kind].get("knn_batch_fraction", runs[v][0][kind].get("asw"))]
            for v in VARIANTS for kind in ("fe", "re")]
    write(args.out, result, "XLA against the compiled graph on small data: whole trainings",
          f"Command: `{command}`; {os.cpu_count()} CPUs, {machine(load)['processor']}, load average {load}. "
          f"{result['cells']} cells of the COVID data, default preset and budget, seed 0; a fresh process per "
          "measurement (compiling included), variants alternating; medians over rounds.",
          ["variant", "network", "seconds", "epochs run", "s / epoch", "FE kNN same-batch / RE batch ASW"],
          rows,
          f"XLA / graph, seconds: FE {ratios['fe']}x, RE {ratios['re']}x. Same latent in every round of a "
          f"variant: {same_seed_same_latent}.")


if __name__ == "__main__":
    main()
