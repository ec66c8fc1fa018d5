"""Integration benchmark (issue 12): how well each method removes the batch and keeps the cell types.

Methods: scMEDAL FE (package default), FE with the paper's weights (``preset="paper"``), FE with the opt-in
neighbour-keeping term (``fe_keep``) and with it the batch-centring term (``fe_center``; ``FE_SETTINGS``), FE
with averaged weights (``fe_avg``) and with them the neighbour-keeping term (``fe_avg_keep``; ``FE_DESIGNS``), FE
with the encoder run twice per step as the paper does (``fe_separate``: ``adversary_pass="separate"``), FE with
its mixing term at full weight from the first step, the default before stop 47 (``fe_nowarmup``), FE with the
``"mixing"`` preset (``fe_mixing``: the set-level adversary, the neighbourhood-measured mixing term, the
counterfactual-consistency term; book/method.md, "The mixing preset"), FE with its cell-type head (``fec``:
``fec=True``, trained with the labels of the training and validation cells, as scANVI is given the training
cells'; the test cells' labels are never seen), RE,
AE, PCA, Harmony, Scanorama, and scVI / scANVI when scvi-tools is installed (and ``scvi_scaled``: scVI fit on
the networks' input with a Gaussian likelihood, ``BASELINE_VARIANTS``). Data: the COVID PBMC data (batch
``sample_id``, labels ``celltype_coarse``), the human pancreas atlas subsample (batch ``donor_id``, labels
``cell_type``; ``sm.datasets.pancreas()``), the same pancreas cells with its 4 studies as the batches
(``pancreas_studies``, batch ``Dataset``), or any ``.h5ad`` (``--data``). Protocol: the package's recipe
(``sm.pp.prepare``), the cell-level split of fold 0 (``sm.pp.split_cells``), every method fit on the same
input (the min-max scaled expression the networks see; with ``--input pearson``, Pearson residuals of the
counts in place of the log expression), scVI and scANVI on the raw counts, scores on the test cells.

Each method runs in a fresh Python process, so its wall time and peak memory are its own: wall time is the
method's own work (set-up, fit, embedding of every cell), without imports and data loading; peak memory is the
process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` after the imports and the data
are loaded), so it counts everything the method holds in RAM, TensorFlow's and BLAS's buffers included, and
"above start" subtracts the resident set just before the method began.

Scores: the package's own (kNN same-batch fraction and its value under perfect mixing, the paper's batch and
cell-type ASW, the batch variance share overall and within cell types) and, when scib-metrics is importable
(``pip install "scmedal_lite[scib]"``), the unscaled aggregates of its Benchmarker
(``sm.metrics.scib_benchmark``). Writes ``results/integration.{csv,md}``.

    .venv/bin/python benchmarks/integration.py                  # everything (every data set and method)
    .venv/bin/python benchmarks/integration.py --quick          # a check: 3,000 cells, 3 epochs, -> outputs/
    .venv/bin/python benchmarks/integration.py --methods fe fe_paper --merge    # rerun two, keep the others
    .venv/bin/python benchmarks/integration.py --data my.h5ad --batch-key donor --labels-key cell_type
    .venv/bin/python benchmarks/integration.py --methods fe_mixing --overrides '{"fe_design": {"adversary_set": 0}}' \
        --out /tmp/no_set                          # a network method with some of its settings changed
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import date

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(HERE, "results", "integration")
QUICK_OUT = os.path.join(ROOT, "outputs", "benchmarks", "integration_quick")
QUICK_CELLS, QUICK_EPOCHS, QUICK_SCIB_CELLS = 3000, 3, 1000

#: Method key -> (display name, kind): "network" methods train scMEDAL networks, "baseline" ones call
#: scmedal_lite.baselines.
METHODS = {
    "fe": ("scMEDAL-FE", "network"),
    "fe_paper": ("scMEDAL-FE (paper)", "network"),
    "fe_keep": ("scMEDAL-FE (w_keep=100)", "network"),
    "fe_center": ("scMEDAL-FE (w_keep=100, w_center=30)", "network"),
    "fe_avg": ("scMEDAL-FE (weight_average=0.99)", "network"),
    "fe_avg_keep": ("scMEDAL-FE (weight_average=0.99, w_keep=100)", "network"),
    "fe_separate": ("scMEDAL-FE (adversary_pass=separate)", "network"),
    "fe_nowarmup": ("scMEDAL-FE (mix_warmup=0)", "network"),
    "fe_mixing": ("scMEDAL-FE (preset=mixing)", "network"),
    "fec": ("scMEDAL-FEC (labels)", "network"),
    "re": ("scMEDAL-RE", "network"),
    "ae": ("AE", "network"),
    "pca": ("PCA", "baseline"),
    "harmony": ("Harmony", "baseline"),
    "scanorama": ("Scanorama", "baseline"),
    "scvi": ("scVI", "baseline"),
    "scvi_scaled": ("scVI (the networks' input, normal likelihood)", "baseline"),
    "scanvi": ("scANVI", "baseline"),
}
NEEDS_SCVI = ("scvi", "scanvi", "scvi_scaled")

#: Built-in data sets: loader, batch key, labels key, and why these keys (for the report).
DATASETS = {
    "covid": {"batch_key": "sample_id", "labels_key": "celltype_coarse",
              "title": "COVID-19 PBMC (Liu et al. 2021; `sm.datasets.covid_pbmc()`)",
              "why": "63 samples (donor x time point) are the batches scMEDAL models; the 11 coarse cell "
                     "types are present in every sequencing batch (the fine ones are not harmonised)."},
    "pancreas": {"batch_key": "donor_id", "labels_key": "cell_type",
                 "title": "Human pancreas atlas subsample (CELLxGENE / CellHint; `sm.datasets.pancreas()`, "
                          "hormone2cell 0.1.2)",
                 "why": "`donor_id` (20 donors, 18-647 cells, each donor in one of 4 studies) is the "
                        "finest technical unit: removing it removes the study, assay and donor effects, and "
                        "20 levels suit a random-effects model better than the 4 studies (`Dataset`). "
                        "`cell_type` (9 CELLxGENE types) is harmonised across the studies; the 18 finer "
                        "`CellHint_harmonised_group` labels include groups seen in one study only, which "
                        "would score batch removal as a loss of biology."},
    "pancreas_studies": {"batch_key": "Dataset", "labels_key": "cell_type",
                         "title": "The same pancreas cells, batches = the 4 studies (`sm.datasets.pancreas()`, "
                                  "`Dataset`)",
                         "why": "The 4 studies (189-1,674 cells) differ in assay and in whole cells against "
                                "nuclei (`suspension_type`): few, large, strongly different batches, unlike "
                                "COVID's 63 samples and the atlas's 20 donors. Same cell types as above."},
}


# ---------------------------------------------------------------------------------------------- memory

def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset this process's peak resident set (Linux >= 4.0); False where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- worker

#: FE settings of the methods that switch on opt-in terms (book/method.md).
FE_SETTINGS = {"fe_keep": {"w_keep": 100.0}, "fe_center": {"w_keep": 100.0, "w_center": 30.0},
               "fe_avg_keep": {"w_keep": 100.0}}
#: FE design settings of the methods that switch on opt-in designs (book/method.md, "Averaged weights").
FE_DESIGNS = {"fe_avg": {"weight_average": 0.99}, "fe_avg_keep": {"weight_average": 0.99},
              "fe_separate": {"adversary_pass": "separate"}, "fe_nowarmup": {"mix_warmup": 0.0}}


def _run_network(adata, key, spec, epochs, seed, overrides=None):
    """One scMEDAL network; ``overrides`` (``--overrides``): settings on top of the method's own (their ``fe`` and
    ``fe_design`` entries update the method's, the others are passed as they are)."""
    import scmedal_lite as sm

    kind = "fe" if key.startswith("fe") else key
    preset = {"fe_paper": "paper", "fe_mixing": "mixing"}.get(key, "default")
    note = ""
    if key == "fe_paper" and epochs is None:
        # the paper's weights, with the default schedule's length (its step budget in epochs), not 500 epochs
        default = sm.SCMEDAL(adata, spec["batch_key"], spec["labels_key"], seed=seed)
        epochs = default.epochs_for(int(default.train_mask.sum()), default.config["schedule"]["batch_size"])
        note = f"max_epochs={epochs}: the default schedule's length"
    start = _begin()
    overrides = dict(overrides or {})
    fe = {**FE_SETTINGS.get(key, {}), **overrides.pop("fe", {})} or None    # the opt-in terms the key names
    fe_design = {**FE_DESIGNS.get(key, {}), **overrides.pop("fe_design", {})} or None
    # fec: the FE network with its cell-type head, the package's counterpart of scANVI; --overrides' "fec" entry
    # changes the head's loss weights (SCMEDAL's fec={...}) and means nothing to the other methods
    if "fec" in overrides and key != "fec":
        raise ValueError(f"--overrides names 'fec' (the cell-type head's weights); only the fec method has one, "
                         f"not {key}.")
    fec = overrides.pop("fec", True) if key == "fec" else False
    model = sm.SCMEDAL(adata, spec["batch_key"], spec["labels_key"], preset=preset, seed=seed, fe=fe,
                       fe_design=fe_design, fec=fec, **overrides)
    model.train(max_epochs=epochs, which=(kind,), progress=False)
    emb = model.get_latent(kind)
    trained = model.trained[kind]
    info = {"epochs": trained["epochs_run"], "best_epoch": trained["best_epoch"],
            "max_epochs": trained["max_epochs"], "note": note}
    return emb, start, info


#: Baselines run with options of their own: method key -> (the function in scmedal_lite.baselines, its options).
#: ``scvi_scaled`` is scVI fit on what the networks see (the min-max scaled log expression) with a Gaussian
#: likelihood, the counterpart of their squared error: beside ``scvi`` (raw counts, ZINB) it separates what
#: scVI gains from the counts from what it gains from its model.
BASELINE_VARIANTS = {"scvi_scaled": ("scvi", {"counts_layer": None, "model_kwargs": {"gene_likelihood": "normal"}})}
#: The module each baseline imports (loaded before the clock starts, so its wall time is its own work).
BASELINE_MODULES = {"harmony": "harmonypy", "scanorama": "scanorama", "scvi": "scvi", "scanvi": "scvi",
                    "scvi_scaled": "scvi"}


def _run_baseline(adata, key, spec, seed):
    from scmedal_lite import baselines
    from scmedal_lite.pp import split_masks

    importlib.import_module(BASELINE_MODULES.get(key, "sklearn.decomposition"))
    x = np.asarray(adata.layers["scaled"])
    train = split_masks(adata)["train"]
    start = _begin()
    if key in BASELINE_VARIANTS:
        function, options = BASELINE_VARIANTS[key]
        emb = getattr(baselines, function)(adata, batch_key=spec["batch_key"], x=x, train_mask=train, seed=seed,
                                           **options)
    else:
        emb = baselines.run_baselines(adata, batch_key=spec["batch_key"], labels_key=spec["labels_key"],
                                      methods=[key], x=x, train_mask=train, seed=seed)[key]
    return emb, start, {}


def _begin() -> dict:
    rss = _status_mb("VmRSS")
    return {"rss_before_mb": rss, "peak_reset": _reset_peak(), "load_before": os.getloadavg()[0],
            "t0": time.perf_counter()}


def worker(args) -> None:
    """One method on the prepared data, in this fresh process: writes the embedding (.npz) and a .json."""
    import scmedal_lite as sm

    if METHODS[args.worker][1] == "network":
        import scmedal_lite.model  # noqa: F401  (TensorFlow is imported before the clock starts)
    adata = sm.read_h5ad(args.prepared)
    spec = json.loads(args.spec)
    if METHODS[args.worker][1] == "network":
        emb, start, info = _run_network(adata, args.worker, spec, args.epochs, args.seed,
                                        json.loads(args.overrides) if args.overrides else None)
    else:
        emb, start, info = _run_baseline(adata, args.worker, spec, args.seed)
    seconds = time.perf_counter() - start["t0"]
    peak = _status_mb("VmHWM")
    info.update(seconds=seconds, peak_rss_mb=peak, rss_before_mb=start["rss_before_mb"],
                peak_is_method_only=start["peak_reset"], load_before=start["load_before"],
                load_after=os.getloadavg()[0])
    sm.io.write_npz(args.worker_out + ".npz", embedding=np.asarray(emb, dtype=np.float32))
    sm.io.write_json(args.worker_out + ".json", info)


# ---------------------------------------------------------------------------------------------- data

def load_builtin(name: str, quick_seed: int | None = None):
    """A built-in data set (:data:`DATASETS`) prepared (``sm.pp.prepare``) and split (fold 0 of
    ``sm.pp.split_cells``); with ``quick_seed``, a ``QUICK_CELLS`` subsample drawn with that seed first."""
    import scmedal_lite as sm
    from scmedal_lite import tutorial

    batch_key, labels_key = DATASETS[name]["batch_key"], DATASETS[name]["labels_key"]
    adata = sm.datasets.covid_pbmc() if name == "covid" else sm.datasets.pancreas()  # pancreas, pancreas_studies
    if quick_seed is not None:
        adata = tutorial.quick_subsample(adata, batch_key=batch_key, n_cells=QUICK_CELLS, seed=quick_seed)
    sm.pp.prepare(adata, batch_key=batch_key)
    sm.pp.split_cells(adata, batch_key=batch_key, labels_key=labels_key, fold=0)
    return adata


#: ``--input pearson``: the clip of the Pearson residuals (scanpy's default, sqrt(cells), lets a few cells set
#: the global min-max range and squeezes every other value into a sliver of it).
PEARSON_CLIP = 10.0


def pearson_input(adata) -> np.ndarray:
    """``--input pearson``: analytic Pearson residuals of the raw counts of the same genes (Lause et al. 2021;
    scanpy's ``normalize_pearson_residuals``, theta 100), clipped to +-PEARSON_CLIP and shifted by it, so they
    are non-negative as the package's input must be (the networks' min-max scaling and PCA do not see a
    shift). A Gaussian stand-in for a count likelihood, fit, as the genes are chosen, on every cell."""
    import anndata
    import scanpy as sc

    work = anndata.AnnData(X=adata.layers["counts"].astype(np.float32))      # sparse or dense alike
    sc.experimental.pp.normalize_pearson_residuals(work, theta=100, clip=PEARSON_CLIP)
    return np.asarray(work.X, dtype=np.float32) + np.float32(PEARSON_CLIP)


def prepare_dataset(name: str, args, work: str) -> tuple[str, dict]:
    """Load, (quick: subsample), prepare and split one data set; add the scaled input; write it for the
    workers. Returns the path and the data set's spec (keys and facts)."""
    import scmedal_lite as sm
    from scmedal_lite import tutorial

    if name in DATASETS:
        spec = {k: DATASETS[name][k] for k in ("batch_key", "labels_key")}
        adata = load_builtin(name, quick_seed=args.seed if args.quick else None)
    else:                                   # --data: what `scmedal-lite run` does with a user's file
        spec = {"batch_key": args.batch_key, "labels_key": args.labels_key}
        params = tutorial.Params.parse(data_path=args.data, batch_key=args.batch_key,
                                       labels_key=args.labels_key, condition_key=None, seed=args.seed,
                                       quick=args.quick)
        adata = tutorial.load_data(params)
    if args.input == "pearson":
        adata.X = pearson_input(adata)
    model = sm.SCMEDAL(adata, spec["batch_key"], spec["labels_key"], seed=args.seed)
    adata.layers["scaled"] = np.asarray(model.scale(adata), dtype=np.float32)
    split = adata.obs["split"].astype(str)
    spec.update(cells=adata.n_obs, genes=adata.n_vars, test_cells=int((split == "test").sum()),
                batches=int(adata.obs[spec["batch_key"]].nunique()),
                cell_types=int(adata.obs[spec["labels_key"]].nunique()))
    path = os.path.join(work, f"{name}.h5ad")
    sm.io.write_h5ad(path, adata)
    return path, spec


# ---------------------------------------------------------------------------------------------- runs

def run_method(key: str, prepared: str, spec: dict, args, work: str, log) -> dict | None:
    """Run one method in a fresh process; returns its info (with the embedding path) or None if it failed."""
    out = os.path.join(work, f"{os.path.basename(prepared)[:-5]}_{key}")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", key, "--prepared", prepared,
           "--worker-out", out, "--spec", json.dumps(spec), "--seed", str(args.seed)]
    if args.quick and METHODS[key][1] == "network":
        cmd += ["--epochs", str(QUICK_EPOCHS)]
    if args.overrides and METHODS[key][1] == "network":
        cmd += ["--overrides", args.overrides]
    tic = time.perf_counter()
    with open(out + ".log", "w") as logfile:
        proc = subprocess.run(cmd, stdout=logfile, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        with open(out + ".log") as f:
            tail = f.read().strip().splitlines()[-1:] or ["(no output)"]
        log(f"  {key}: FAILED (exit {proc.returncode}): {tail[0]}")
        return None
    with open(out + ".json") as f:
        info = json.load(f)
    info["embedding"] = out + ".npz"
    log(f"  {key}: {info['seconds']:.0f} s, peak {info['peak_rss_mb']:.0f} MB "
        f"(process {time.perf_counter() - tic:.0f} s)")
    return info


def score(prepared: str, spec: dict, infos: dict, args, log) -> pd.DataFrame:
    """Tidy rows (method, metric, label, value): resources, the package's scores, scib-metrics' aggregates."""
    import anndata

    from scmedal_lite import metrics

    adata = anndata.read_h5ad(prepared)
    test = (adata.obs["split"].astype(str) == "test").to_numpy()
    emb = {key: np.load(info["embedding"])["embedding"][test] for key, info in infos.items()}
    batch = adata.obs[spec["batch_key"]].astype(str).to_numpy()[test]
    labels = adata.obs[spec["labels_key"]].astype(str).to_numpy()[test]
    rows = []
    for key, info in infos.items():
        for metric in ("seconds", "peak_rss_mb", "rss_before_mb", "load_before", "load_after", "epochs",
                       "max_epochs"):
            if info.get(metric) is not None:
                rows.append((key, metric, "resources", float(info[metric])))
    own = metrics.score_embeddings(emb, batch, labels, seed=args.seed,
                                   metrics=["asw", "knn_batch_fraction", "knn_batch_fraction_expected"])
    rows += list(own.itertuples(index=False, name=None))
    for key, e in emb.items():           # the linear batch effect left, overall and within cell types
        rows.append((key, "batch_variance_share", "batch", metrics.batch_variance_share(e, batch)))
        rows.append((key, "batch_variance_share", "within celltype",
                     metrics.batch_variance_share(e, batch, groups=labels)))
    if importlib.util.find_spec("scib_metrics") is not None:
        obs = adata.obs.loc[test, [spec["batch_key"], spec["labels_key"]]]
        cells = anndata.AnnData(X=adata.X[test], obs=obs)
        for key, e in emb.items():
            cells.obsm[key] = e
        tic = time.perf_counter()
        scib = metrics.scib_benchmark(cells, list(emb), spec["batch_key"], spec["labels_key"],
                                      subsample=QUICK_SCIB_CELLS if args.quick else args.scib_cells,
                                      seed=args.seed, tidy=True)
        log(f"  scib-metrics: {time.perf_counter() - tic:.0f} s")
        rows += list(scib.itertuples(index=False, name=None))
    return pd.DataFrame(rows, columns=["method", "metric", "label", "value"])


# ---------------------------------------------------------------------------------------------- report

def code_version() -> str:
    """The commit of this checkout, with ``-dirty`` when the package or the benchmarks have local changes."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--", "scmedal_lite", "benchmarks/integration.py")
                   else "")


def _fmt(v, digits=3):
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def _pair(a, b, digits=3):
    return "" if a is None else _fmt(a, digits) + ("" if b is None else f" ({_fmt(b, digits)})")


def read_results(path: str) -> pd.DataFrame:
    """A results csv as written (``--merge`` keeps its rows); commits stay text (4227e83 is not a number)."""
    return pd.read_csv(path, dtype={"commit": str})


def dataset_table(df: pd.DataFrame) -> pd.DataFrame:
    """One data set's summary: a row per method, resources, the package's scores and scib's aggregates."""
    def get(method, metric, label):
        hit = df[(df.method == method) & (df.metric == metric) & (df.label == label)]["value"]
        return float(hit.iloc[0]) if len(hit) else None

    rows = []
    for key in [k for k in METHODS if k in set(df.method)]:
        peak, before = get(key, "peak_rss_mb", "resources"), get(key, "rss_before_mb", "resources")
        epochs = get(key, "epochs", "resources")
        load = [get(key, f"load_{when}", "resources") for when in ("before", "after")]
        rows.append({
            "method": METHODS[key][0], "wall s": _fmt(get(key, "seconds", "resources"), 0),
            "load": "" if None in load else f"{load[0]:.1f}-{load[1]:.1f}",
            "peak RSS MB (above start)": f"{peak:.0f} ({peak - before:+.0f})" if peak else "",
            "epochs": "" if epochs is None else f"{epochs:.0f}",
            "kNN same-batch": _fmt(get(key, "knn_batch_fraction", "batch")),
            "batch ASW": _fmt(get(key, "asw", "batch")), "cell-type ASW": _fmt(get(key, "asw", "celltype")),
            "batch variance share (within cell types)": _pair(get(key, "batch_variance_share", "batch"),
                                                              get(key, "batch_variance_share", "within celltype")),
            "scIB batch": _fmt(get(key, "Batch correction", "Aggregate score")),
            "scIB bio": _fmt(get(key, "Bio conservation", "Aggregate score")),
            "scIB total": _fmt(get(key, "Total", "Aggregate score")),
            "code": f"`{df.loc[df.method == key, 'commit'].iloc[0]}`",   # as code: tabulate reads 4227e83 as 4.2e86
        })
    return pd.DataFrame(rows)


def scib_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """One data set's scib-metrics table: a row per method, its ten metrics and three aggregates."""
    part = df[df.label.isin(["Batch correction", "Bio conservation", "Aggregate score"])]
    if part.empty:
        return None
    wide = part.pivot_table(index="method", columns="metric", values="value", sort=False)
    wide = wide.reindex([k for k in METHODS if k in wide.index])
    wide.index = [METHODS[k][0] for k in wide.index]
    return wide.round(3)


def _facts(df: pd.DataFrame) -> dict:
    data = df[df.method == "data"]
    return {m: int(v) for m, v in zip(data.metric, data.value)}


def _notes(notes_run: list[str]) -> list[str]:
    return [
        "## How to read this", "",
        "- **Scores are on the test cells** of the cell-level split of fold 0 (`sm.pp.split_cells`, 60/20/20). "
        "scMEDAL's networks and PCA are fit on the training cells (the networks stop early on the validation "
        "cells); Harmony and Scanorama are transductive and fit on every cell, as in the paper.",
        "- **kNN same-batch**: mean fraction of a test cell's 15 nearest neighbours (Euclidean, itself "
        "excluded) from its own batch; the value under perfect mixing is given under each table. "
        "**batch / cell-type ASW**: the paper's silhouette widths (lower batch ASW = better mixed).",
        "- **batch variance share**: the share of the embedding's variance that the batches' means explain "
        "(`sm.metrics.batch_variance_share`; the quantity behind scIB's PCR comparison), and in brackets the "
        "same within cell types (each type centred on its own mean): the linear batch effect left once the "
        "batches' cell-type make-up no longer counts. Lower = less batch left.",
        "- **scIB batch / bio / total**: scib-metrics 0.5.10's Benchmarker with its default metrics "
        "(`sm.metrics.scib_benchmark`), unscaled: batch = mean of BRAS, iLISI, kBET, graph connectivity, "
        "PCR comparison; bio = mean of isolated labels, KMeans NMI, KMeans ARI, silhouette label, cLISI; "
        "total = 0.4 batch + 0.6 bio. Neighbours are exact (sklearn); the unintegrated reference of PCR "
        "comparison is a seeded PCA of the log-normalised test cells.",
        "- **wall s**: the method's own work in its own fresh process (set-up, fit and the embedding of every "
        "cell), without Python start-up, imports and data loading. The machine is a shared 2-core CPU: "
        "**load** is its 1-minute load average when the method started and ended; above 2, other jobs "
        "competed for the CPUs and the time is longer than on an idle machine.",
        "- **peak RSS MB**: the process's peak resident memory (`VmHWM`) while the method ran (reset through "
        "`/proc/self/clear_refs` after imports and data loading), so it includes the interpreter, the "
        "libraries (TensorFlow for the networks) and the data already in memory; the figure in brackets is "
        "the rise above the resident memory just before the method started.",
        "- **scMEDAL-FE (paper)**: `preset=\"paper\"` (FE weights w_recon 4000, w_gen 1; Adam 1e-4, batch 512, "
        "patience 30) trained for at most as many epochs as the default schedule gives this data (`max_epochs` "
        "= the default's step budget in epochs, given under each table), not the paper's 500.",
        "- **Labels**: scANVI and scMEDAL-FEC (`fec=True`, the FE network with its cell-type head) are given "
        "cell types (scANVI those of the training cells, FEC those of the training and validation cells, "
        "whose loss stops it); the test cells' labels, which the bio scores use, are never seen. Every other "
        "method is unsupervised.",
        "- **scVI (the networks' input, normal likelihood)** (`scvi_scaled`): scVI fit on the min-max scaled "
        "log expression the networks see, with a Gaussian likelihood (the counterpart of their squared error) "
        "instead of the counts and their ZINB likelihood: beside scVI, what scVI owes to the counts.",
        "- **code**: the commit the row was computed with (`-dirty`: with local changes); rows of methods "
        "not rerun by the last command (`--merge`) keep their earlier values.",
        *notes_run,
    ]


def command_line(argv: list[str]) -> str:
    """The command a report names, shell-quoted so that it can be pasted back as it is (a JSON
    ``--overrides`` included).

    >>> print(command_line(["--seed", "1", "--overrides", '{"fe": {"w_cycle": 0}}']))
    python benchmarks/integration.py --seed 1 --overrides '{"fe": {"w_cycle": 0}}'
    """
    return ("python benchmarks/integration.py " + shlex.join(argv)).strip()


def write_report(df: pd.DataFrame, out: str, command: str, notes_run: list[str], quick: bool) -> None:
    from scmedal_lite.io import write_csv, write_text

    write_csv(out + ".csv", df)
    lines = ["# Integration benchmark" + (" (QUICK MODE: a check, not results)" if quick else ""), "",
             f"Last command: `{command}` ({date.today().isoformat()}, {os.cpu_count()} CPUs, "
             f"{platform.processor() or platform.machine()}). Tidy values: `{os.path.basename(out)}.csv`.", ""]
    for name in pd.unique(df.dataset):
        part = df[df.dataset == name]
        facts = _facts(part)
        info = DATASETS.get(name, {"title": name, "why": ""})
        lines += [f"## {info['title']}", "",
                  f"{facts.get('cells', 0):,} cells x {facts.get('genes', 0):,} genes after the recipe; "
                  f"{facts.get('batches', 0)} batches, {facts.get('cell_types', 0)} cell types; "
                  f"{facts.get('test_cells', 0):,} test cells scored. {info['why']}", "",
                  dataset_table(part).to_markdown(index=False), ""]
        expected = part[part.metric == "knn_batch_fraction_expected"]["value"]
        if len(expected):
            lines += [f"kNN same-batch fraction under perfect mixing: {expected.iloc[0]:.3f}.", ""]
        epochs = part[(part.method == "fe_paper") & (part.metric == "max_epochs")]["value"]
        if len(epochs):
            lines += [f"scMEDAL-FE (paper) ran at most {epochs.iloc[0]:.0f} epochs.", ""]
        table = scib_table(part)
        if table is not None:
            lines += ["scib-metrics, every metric:", "", table.to_markdown(), ""]
    write_text(out + ".md", lines + _notes(notes_run))


# ---------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                    help="methods to run (default: all; scvi / scanvi only when scvi-tools is installed)")
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS),
                    help="built-in data sets (ignored with --data)")
    ap.add_argument("--data", default=None, help="an .h5ad instead of the built-in data sets")
    ap.add_argument("--batch-key", default=None)
    ap.add_argument("--labels-key", default=None)
    ap.add_argument("--name", default=None, help="the data set's name in the tables (--data; default: file stem)")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_CELLS:,} cells, {QUICK_EPOCHS} epochs, scib on {QUICK_SCIB_CELLS:,} cells; "
                         f"writes to {os.path.relpath(QUICK_OUT, ROOT)} unless --out")
    ap.add_argument("--scib-cells", type=int, default=None,
                    help="score at most this many test cells with scib-metrics (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input", choices=("log", "pearson"), default="log",
                    help="what every method but scVI / scANVI is fit on: the package's log expression (default), "
                         "or Pearson residuals of the counts (pearson_input)")
    ap.add_argument("--out", default=None, help=f"output prefix (default {os.path.relpath(DEFAULT_OUT, ROOT)})")
    ap.add_argument("--commit", default=None,
                    help="the code version recorded in the tables (default: git's, with -dirty for local changes)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of methods and data sets not run now from the existing csv")
    ap.add_argument("--overrides", default=None,
                    help="JSON of sm.SCMEDAL's settings for the scMEDAL networks, on top of each method's own "
                         "(fe, fe_design, schedule, ...), e.g. '{\"fe_design\": {\"adversary_set\": 0}}'")
    ap.add_argument("--worker", choices=list(METHODS), help=argparse.SUPPRESS)
    ap.add_argument("--prepared", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.data and not (args.batch_key and args.labels_key):
        ap.error("--data needs --batch-key and --labels-key")
    if args.overrides is not None:       # its keys and values are checked by sm.SCMEDAL, in each worker
        try:
            overrides = json.loads(args.overrides)
        except json.JSONDecodeError as err:
            ap.error(f"--overrides is not valid JSON ({err}); e.g. '{{\"fe\": {{\"w_cycle\": 0}}}}'")
        if not isinstance(overrides, dict):
            ap.error(f"--overrides must be a JSON object of sm.SCMEDAL's settings; got {args.overrides!r}")
    return args


def run_dataset(name, args, work, log, notes) -> pd.DataFrame:
    tic = time.perf_counter()
    prepared, spec = prepare_dataset(name, args, work)
    log(f"{name}: {spec['cells']} cells x {spec['genes']} genes, {spec['test_cells']} test cells "
        f"({time.perf_counter() - tic:.0f} s to prepare)")
    infos = {}
    for key in args.methods:
        info = run_method(key, prepared, spec, args, work, log)
        if info is None:
            notes.append(f"- {name}: {METHODS[key][0]} failed; see the command's output.")
        else:
            infos[key] = info
    df = score(prepared, spec, infos, args, log) if infos else pd.DataFrame(
        columns=["method", "metric", "label", "value"])
    facts = [("data", k, "data", float(spec[k])) for k in ("cells", "genes", "batches", "cell_types",
                                                             "test_cells")]
    df = pd.concat([pd.DataFrame(facts, columns=df.columns), df], ignore_index=True)
    df.insert(0, "dataset", name)
    return df


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    notes = []
    if importlib.util.find_spec("scvi") is None and set(NEEDS_SCVI) & set(args.methods):
        args.methods = [m for m in args.methods if m not in NEEDS_SCVI]
        notes.append("- scVI and scANVI were skipped: scvi-tools is not installed in the environment of the "
                     "last run (`pip install \"scmedal_lite[scvi]\"`).")
    if args.input == "pearson":
        notes.append(f"- **Input** (`--input pearson`): every method but scVI and scANVI was fit on Pearson "
                     f"residuals of the counts (theta 100, clipped to +-{PEARSON_CLIP:g}; `pearson_input`) of the "
                     "same genes instead of the log expression; scVI and scANVI fit the counts as always.")
    if importlib.util.find_spec("scib_metrics") is None:
        notes.append("- scib-metrics is not installed in the environment of the last run, so its columns are "
                     "empty for the methods it ran: `pip install \"scmedal_lite[scib]\"`.")
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    names = [args.name or os.path.splitext(os.path.basename(args.data))[0]] if args.data else args.datasets
    version = args.commit or code_version()
    with tempfile.TemporaryDirectory(prefix="integration_") as work:
        frames = [run_dataset(name, args, work, log, notes) for name in names]
    df = pd.concat(frames, ignore_index=True)
    df["commit"] = version
    if args.merge and os.path.exists(out + ".csv"):
        old = read_results(out + ".csv")
        rerun = set(zip(df.dataset, df.method))
        keep = [(d, m) not in rerun for d, m in zip(old.dataset, old.method)]
        df = pd.concat([old[keep], df], ignore_index=True)
    write_report(df, out, command_line(argv if argv is not None else sys.argv[1:]), notes, args.quick)
    log(f"wrote {out}.md and {out}.csv")


if __name__ == "__main__":
    main()
