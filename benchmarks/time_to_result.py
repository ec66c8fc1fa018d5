"""Time to a result: ``scmedal-lite run`` (all five notebooks) on subsets of the real COVID PBMC data.

A user's whole analysis, timed as a user runs it: cells drawn at random from the bundled COVID PBMC counts
(seeded; samples with fewer than 20 of the drawn cells dropped, as a user would), written to an ``.h5ad``, then

    scmedal-lite run data.h5ad --batch-key sample_id --labels-key celltype_coarse --condition-key cond_group

Recorded per size: seconds per notebook (``run.json``), the whole command's wall time, the peak memory of the
process tree (the command and its notebook kernels, sampled every 0.2 s), each network's epochs and seconds
(and FE's and RE's median epoch as a share of the float32 matmul rate, measured before and after the runs),
and the quality figures the chapters report: FE kNN same-batch fraction and RE batch ASW on the test cells
(chapter 0), the add_batches kNN same-batch fraction (chapter 2), and the FE and FE + RE balanced accuracy
(chapter 4).

``--dataset pancreas_studies`` (or ``pancreas``) times the same command on another real data set instead: the
whole pancreas atlas subsample (``sm.datasets.pancreas()``, 3,274 cells, raw counts of 33,053 genes, of which
the package keeps 2,000), with its 4 studies (or its 20 donors) as the batches, ``cell_type`` as the labels and
no condition; ``--sizes`` does not apply.

``--baseline DIR`` also runs an older copy of the package (a folder holding ``scmedal_lite/`` and
``notebooks/``, e.g. ``git archive <commit> scmedal_lite notebooks | tar -x -C DIR``) on the same files in the
same session, alternating with the current code, so that the ratios share the machine's load.

    .venv/bin/python benchmarks/time_to_result.py [--sizes 2000 10000] [--baseline /tmp/old]
    .venv/bin/python benchmarks/time_to_result.py --dataset pancreas_studies  # results/time_to_result_pancreas_studies
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pandas as pd
import psutil
from fresh_process import processor
from speed import epoch_flops, matmul_rates  # benchmarks/speed.py, next to this script

import scmedal_lite as sm
from scmedal_lite.io import write_json, write_text

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
#: The keys of the command besides ``--batch-key`` (COVID's).
KEYS = ["--labels-key", "celltype_coarse", "--condition-key", "cond_group"]
#: The batch column, the command's other keys and the report's title per ``--dataset``.
DATASETS = {
    "covid": {"batch_key": "sample_id", "keys": KEYS, "title": "COVID PBMC subsets"},
    "covid_sequencing_batches": {"batch_key": "Batch", "keys": KEYS,
                                 "title": "COVID PBMC subsets, their 3 sequencing batches as batches"},
    "pancreas_studies": {"batch_key": "Dataset", "keys": ["--labels-key", "cell_type"],
                         "title": "the pancreas atlas subsample, its 4 studies as batches"},
    "pancreas": {"batch_key": "donor_id", "keys": ["--labels-key", "cell_type"],
                 "title": "the pancreas atlas subsample, its 20 donors as batches"},
}


def draw(full, n, seed=0):
    """``n`` seeded random cells of ``full`` (raw counts), batches with < 20 of them dropped, as a user would."""
    idx = np.sort(np.random.default_rng(seed).choice(full.n_obs, size=min(n, full.n_obs), replace=False))
    adata = full[idx].copy()
    counts = adata.obs["sample_id"].value_counts()
    adata = adata[adata.obs["sample_id"].isin(counts.index[counts >= 20])].copy()
    adata.obs["sample_id"] = adata.obs["sample_id"].astype(str).astype("category")
    return adata


def subset(full, n, path, seed=0, batch_key="sample_id"):
    """Write :func:`draw`'s cells to ``path``; (cells, batches of ``batch_key``)."""
    adata = draw(full, n, seed)
    adata.write_h5ad(path)
    return adata.n_obs, adata.obs[batch_key].nunique()


class PeakMemory:
    """Peak resident memory (MB) of a process and all its descendants, sampled every ``interval`` s."""

    def __init__(self, pid, interval=0.2):
        self.proc, self.interval, self.peak = psutil.Process(pid), interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total / 2 ** 20)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return round(self.peak, 1)


def whole(adata, path, batch_key):
    """Write all of ``adata`` to ``path``; (cells, batches)."""
    adata.write_h5ad(path)
    return adata.n_obs, adata.obs[batch_key].nunique()


def run_cli(data, out, code_dir=None, jobs=None, *, keys):
    """``scmedal-lite run`` on ``data`` into ``out`` with the package at ``code_dir`` (None: this checkout),
    ``--jobs jobs`` (None: the command's default; an older copy may not know the flag) and ``keys`` (the
    ``--batch-key`` etc. arguments)."""
    env = dict(os.environ)
    for var in ("SCMEDAL_DATA_PATH", "SCMEDAL_MAX_EPOCHS", "SCMEDAL_QUICK", "SCMEDAL_OUTPUT_DIR", "SCMEDAL_MODEL_DIR"):
        env.pop(var, None)
    # -P: the command imports the package from code_dir (PYTHONPATH), not from the folder it is started in
    cmd = [sys.executable, "-P", "-m", "scmedal_lite.cli", "run", data, *keys, "--out", out, "--quiet"]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    if code_dir is not None:
        env["PYTHONPATH"] = code_dir
        cmd += ["--notebooks-dir", os.path.join(code_dir, "notebooks")]
    tic = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory = PeakMemory(proc.pid)
    output, _ = proc.communicate()
    peak = memory.stop()
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        raise RuntimeError(f"scmedal-lite run failed ({proc.returncode}):\n{output[-3000:]}")
    return wall, peak


def differing_tables(a, b):
    """Result tables (``results/*.csv``) of run ``b`` whose bytes differ from run ``a``'s, by name."""
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(a, "results", "*.csv")))
    differ = []
    for name in names:
        with open(os.path.join(a, "results", name), "rb") as fa, open(os.path.join(b, "results", name), "rb") as fb:
            if fa.read() != fb.read():
                differ.append(name)
    return differ


def _csv(out, name):
    path = os.path.join(out, "results", name)
    return pd.read_csv(path) if os.path.exists(path) else None


def quality(out):
    """The figures the chapters report, read from the run's result tables."""
    q = {}
    scores = _csv(out, "quickstart_scores.csv")
    if scores is not None:
        def pick(emb, metric, label):
            s = scores.query("embedding == @emb and metric == @metric and label == @label")["value"]
            return round(float(s.iloc[0]), 4) if len(s) else None
        q["fe_knn_same_batch"] = pick("scMEDAL-FE", "knn_batch_fraction", "batch")
        q["knn_expected_if_mixed"] = pick("scMEDAL-FE", "knn_batch_fraction_expected", "batch")
        q["re_batch_asw"] = pick("scMEDAL-RE", "asw", "batch")
    unseen = _csv(out, "unseen_batch.csv")
    if unseen is not None:
        row = unseen.set_index(unseen.columns[0])
        q["add_batches_knn_same_batch"] = round(float(row["kNN same-batch fraction"].iloc[-1]), 4)
        q["true_batch_knn_same_batch"] = round(float(row["kNN same-batch fraction"].iloc[0]), 4)
    summary = _csv(out, "classification_summary.csv")
    if summary is not None:
        s = summary.query("metric == 'balanced_accuracy'")
        for scheme in sorted(set(s["scheme"])):
            view = s[s["scheme"] == scheme].set_index("features")["mean"]
            for feats, key in (("scMEDAL-FE", "fe"), ("scMEDAL-FE + RE", "fe_re"),
                               ("scMEDAL-FE + RE (estimated)", "fe_re_estimated")):
                if feats in view:
                    q[f"mec_{scheme}_{key}"] = round(float(view[feats]), 4)
    return q


def split_counts(out):
    """Training and validation cells of a run (``obs["split"]`` of its ``adata.h5ad``), or ``(None, None)``."""
    import anndata

    path = os.path.join(out, "adata.h5ad")
    if not os.path.exists(path):
        return None, None
    adata = anndata.read_h5ad(path, backed="r")
    split = adata.obs["split"].astype(str).to_numpy()
    adata.file.close()
    return int((split == "train").sum()), int((split == "val").sum())


def epoch_share(kind, setup, cells, median_epoch_s, rate):
    """FE's or RE's dense work of an epoch (``speed.epoch_flops``, from the run's own configuration) over its
    median epoch, as a share of the float32 matmul rate ``rate`` (GFLOP/s); None where it cannot be counted
    (the comparison AE, or a configuration from before ``fe_design``)."""
    n_train, n_val = cells
    if kind not in ("fe", "re") or not median_epoch_s or n_train is None:
        return None
    config = setup.get("config") or {}
    if kind == "fe" and not {"fe", "fe_design"} <= set(config):
        return None
    flops = epoch_flops(kind, n_train, n_val, len(setup["genes"]), len(setup["batch_categories"]), config)
    return round(flops / median_epoch_s / 1e9 / rate, 3)


def training(out, rate=None):
    """Per network of the run's shared model: epochs run, budget, seconds, first epoch and median epoch (s),
    and with ``rate`` (the float32 matmul rate, GFLOP/s) the median epoch's share of it (:func:`epoch_share`)."""
    rows = {}
    cells = split_counts(out) if rate else (None, None)
    for path in sorted(glob.glob(os.path.join(out, "model", "*", "setup.json"))):
        with open(path) as f:
            setup = json.load(f)
        for kind, info in (setup.get("trained") or {}).items():
            row = {"epochs_run": info.get("epochs_run"), "max_epochs": info.get("max_epochs"),
                   "seconds": round(float(info.get("seconds", 0)), 1)}
            history = os.path.join(os.path.dirname(path), f"history_{kind}.csv")
            if os.path.exists(history):
                seconds = pd.read_csv(history)["seconds"].to_numpy()
                row["first_epoch_s"] = round(float(seconds[0]), 2)
                row["median_epoch_s"] = round(float(np.median(seconds[1:])), 3) if len(seconds) > 1 else None
                if rate:
                    row["share_of_matmul_rate"] = epoch_share(kind, setup, cells, row["median_epoch_s"], rate)
            rows[kind] = row
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--baseline", default=None, help="folder with an older scmedal_lite/ and notebooks/")
    ap.add_argument("--baseline-name", default="baseline")
    ap.add_argument("--jobs", type=int, nargs="+", default=None,
                    help="run the current code once per value of --jobs (default: once, the command's default); "
                         "the runs' result tables are compared byte for byte")
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="covid",
                    help="covid (covid_sequencing_batches: its 3 sequencing batches as the batches): seeded "
                         "subsets of --sizes cells; pancreas_studies / pancreas: the whole atlas")
    ap.add_argument("--out", default=None, help="default: results/time_to_result (covid), else "
                                                "results/time_to_result_<dataset>")
    args = ap.parse_args()
    if args.out is None:
        args.out = os.path.join(HERE, "results", "time_to_result" + ("" if args.dataset == "covid"
                                                                     else f"_{args.dataset}"))

    keys = ["--batch-key", DATASETS[args.dataset]["batch_key"], *DATASETS[args.dataset]["keys"]]
    if args.dataset.startswith("covid"):
        full, sizes = sm.datasets.covid_pbmc(), args.sizes
    else:
        full, sizes = sm.datasets.pancreas(), [None]
    codes = ([(args.baseline_name, os.path.abspath(args.baseline), None)] if args.baseline else [])
    codes += ([(f"current --jobs {j}", None, j) for j in args.jobs] if args.jobs else [("current", None, None)])
    rows = []
    load = {"start": list(os.getloadavg())}
    rates = {"start": round(matmul_rates()["tf_float32"], 1)}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            data = os.path.join(tmp, f"{args.dataset}_{n or 'all'}.h5ad")
            batch_key = DATASETS[args.dataset]["batch_key"]
            cells, batches = subset(full, n, data, batch_key=batch_key) if n else whole(full, data, batch_key)
            first_current = None
            for name, code, jobs in codes:
                out = os.path.join(tmp, f"run_{n}_{name.replace(' ', '_')}")
                wall, peak = run_cli(data, out, code, jobs, keys=keys)
                with open(os.path.join(out, "run.json")) as f:
                    run = json.load(f)
                timings = run["seconds_per_notebook"]
                row = {"cells": cells, "batches": batches, "code": name, "jobs": run.get("jobs", 1),
                       "wall_seconds": round(wall, 1), "peak_memory_mb": peak,
                       **{f"s_{k}": v for k, v in timings.items()}, **quality(out),
                       "training": training(out, rates["start"])}
                if code is None:
                    if first_current is None:
                        first_current = out
                    else:
                        row["tables_differing_from_first_current_run"] = differing_tables(first_current, out)
                rows.append(row)
                print(json.dumps(row), flush=True)
    load["end"] = list(os.getloadavg())
    rates["end"] = round(matmul_rates()["tf_float32"], 1)
    result = {"machine": {"cpus": os.cpu_count(), "processor": processor(), "load_average": load,
                          "tf_float32_matmul_gflops": rates},
              "versions": {"scmedal_lite": sm.__version__, "python": platform.python_version()},
              "optional_extras": optional_extras(),
              "command": " ".join(["benchmarks/time_to_result.py", *sys.argv[1:]]), "rows": rows,
              "data": DATASETS[args.dataset]["title"]}
    write_json(args.out + ".json", result)
    write_text(args.out + ".md", report(result))
    print(report(result))


def optional_extras():
    """Which optional packages the chapters would use here (each adds work: chapter 1's scIB benchmark with
    ``[scib]``, scVI with ``scvi-tools``); a default install (``make install``) has neither."""
    return {name: importlib.util.find_spec(module) is not None
            for name, module in (("scib-metrics", "scib_metrics"), ("scvi-tools", "scvi"))}


def report(result):
    rows = result["rows"]
    nb = sorted({k for r in rows for k in r if k.startswith("s_")})
    lines = [f"# Time to result: `scmedal-lite run` (all notebooks) on {result.get('data', 'COVID PBMC subsets')}", "",
             f"Machine: {result['machine']['cpus']} CPUs ({result['machine']['processor']}), load average "
             f"{result['machine']['load_average']}. Command: `{result['command']}`.",
             "Optional extras installed: " + (", ".join(f"{k} {'yes' if v else 'no'}"
                                                       for k, v in result.get("optional_extras", {}).items())
                                               or "not recorded") + ".", "",
             "| cells (batches) | code | wall s | " + " | ".join(k[2:] for k in nb) +
             " | peak MB | FE kNN same-batch | RE batch ASW | MEC bal. acc. FE / FE+RE (cells; batches) |",
             "|---" * (5 + len(nb)) + "|---|---|"]
    for r in rows:
        mec = (f"{r.get('mec_cells_fe', float('nan')):.3f} / {r.get('mec_cells_fe_re', float('nan')):.3f}; "
               f"{r.get('mec_batches_fe', float('nan')):.3f} / {r.get('mec_batches_fe_re', float('nan')):.3f}")
        lines.append(f"| {r['cells']} ({r['batches']}) | {r['code']} | {r['wall_seconds']} | "
                     + " | ".join(str(r.get(k, "")) for k in nb)
                     + f" | {r['peak_memory_mb']} | {r.get('fe_knn_same_batch')} | {r.get('re_batch_asw')} | {mec} |")
    rates = result["machine"].get("tf_float32_matmul_gflops")
    lines += ["", "Training per network (epochs run / budget, seconds"
              + ("; the median epoch's dense work as a share of the float32 matmul rate measured before the "
                 f"runs, {rates['start']} GFLOP/s ({rates['end']} after them), while chapter 04 trains beside "
                 "chapter 00 as `scmedal-lite run` does" if rates else "") + "):", ""]

    def share(v):
        return f", {100 * v['share_of_matmul_rate']:.0f} % of the matmul rate" if v.get("share_of_matmul_rate") else ""

    for r in rows:
        t = "; ".join(f"{k.upper()} {v['epochs_run']}/{v['max_epochs']} epochs in {v['seconds']} s "
                      f"(first epoch {v.get('first_epoch_s')} s, then {v.get('median_epoch_s')} s{share(v)})"
                      for k, v in r["training"].items())
        lines.append(f"- {r['cells']} cells, {r['code']}: {t}")
    by = {}
    for r in rows:
        by.setdefault(r["cells"], {})[r["code"]] = r
    ratios = [f"- {n} cells: {pair['baseline']['wall_seconds'] / pair['current']['wall_seconds']:.2f}x "
              f"({pair['baseline']['wall_seconds']} s -> {pair['current']['wall_seconds']} s)"
              for n, pair in by.items() if "baseline" in pair and "current" in pair]
    if ratios:
        lines += ["", "Whole-run speed-up, baseline / current (same session):", "", *ratios]
    jobs = []
    for n, runs in by.items():
        one = runs.get("current --jobs 1")
        for name, r in runs.items():
            if one is not None and r is not one and name.startswith("current --jobs"):
                same = r.get("tables_differing_from_first_current_run")
                jobs.append(f"- {n} cells, {name}: {one['wall_seconds'] / r['wall_seconds']:.2f}x faster than "
                            f"--jobs 1 ({one['wall_seconds']} s -> {r['wall_seconds']} s); result tables "
                            + ("identical" if same == [] else f"differing: {same}"))
    if jobs:
        lines += ["", "Notebooks run at a time after the first (`--jobs`), same session:", "", *jobs]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
