"""Does a rotation or rescaling of the FE latent close the gap to Harmony? Both, transformed alike, scored alike.

FE's latent is not isotropic (on COVID its first principal axis holds about 46 % of its variance), and the
scores of issue 12 depend on the embedding's geometry: the kNN same-batch fraction on which directions dominate
the distances, scIB's PCR comparison on how variance is spread over principal components. So a label-free
transform applied after training could move FE's scores without any change to the network. This benchmark
applies the same transforms to FE's latent and to Harmony's embedding and scores both the same way:

- ``raw``: the embedding as the package and harmonypy return it;
- ``pD``: its top ``D`` principal axes (fitted on the training cells' embedding), the rest dropped;
- ``wD``: the same, each axis scaled to unit variance (whitened).

Each seed prepares COVID as ``integration.py`` does (the same split), trains the default FE and runs Harmony in
fresh processes (``integration.run_method``), then scores the test cells: the kNN same-sample fraction (15
neighbours), the batch variance share overall and within cell types, and, when scib-metrics is installed,
scIB's batch, bio and total (``sm.metrics.scib_benchmark``). Writes ``results/latent_transforms.{md,json}``.

    .venv/bin/python benchmarks/latent_transforms.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
from fresh_process import processor
from integration import prepare_dataset, run_method  # benchmarks/integration.py, next to this script

HERE = os.path.dirname(os.path.abspath(__file__))
TRANSFORMS = ("raw", "p10", "p15", "w20", "w50")


def transform(embedding: np.ndarray, fit_rows: np.ndarray, name: str) -> np.ndarray:
    """``name`` applied to ``embedding``: ``raw``, ``pD`` (top D principal axes of ``embedding[fit_rows]``) or
    ``wD`` (the same, scaled to unit variance on those rows).

    >>> e = np.array([[0.0, 0.0], [2.0, 0.1], [4.0, -0.1], [6.0, 0.0]])
    >>> np.round(np.abs(transform(e, np.ones(4, bool), "p1")).ravel(), 2).tolist()
    [3.0, 1.0, 1.0, 3.0]
    >>> round(float(transform(e, np.ones(4, bool), "w1").std()), 3)
    1.0
    """
    if name == "raw":
        return embedding
    dims = int(name[1:])
    fit = embedding[fit_rows].astype(np.float64)
    mean = fit.mean(axis=0)
    _, singular, axes = np.linalg.svd(fit - mean, full_matrices=False)
    out = (embedding - mean) @ axes[:dims].T
    if name.startswith("w"):
        out = out / (singular[:dims] / np.sqrt(len(fit)))
    return out


def score_seed(seed: int, work: str, log) -> list[dict]:
    import anndata

    from scmedal_lite import metrics

    args = SimpleNamespace(quick=False, seed=seed, data=None)
    prepared, spec = prepare_dataset("covid", args, work)
    infos = {key: run_method(key, prepared, spec, args, work, log) for key in ("fe", "harmony")}
    adata = anndata.read_h5ad(prepared)
    split = adata.obs["split"].astype(str).to_numpy()
    test, train = split == "test", split == "train"
    batch = adata.obs[spec["batch_key"]].astype(str).to_numpy()[test]
    labels = adata.obs[spec["labels_key"]].astype(str).to_numpy()[test]
    emb = {}
    for key, info in infos.items():
        full = np.load(info["embedding"])["embedding"]
        for name in TRANSFORMS:
            emb[f"{key} {name}"] = np.asarray(transform(full, train, name)[test], np.float32)
    knn = metrics.score_embeddings(emb, batch, labels, seed=seed, metrics=["knn_batch_fraction"])
    knn = knn.set_index("embedding")["value"]
    agg = None
    if importlib.util.find_spec("scib_metrics") is not None:
        cells = anndata.AnnData(X=adata.X[test], obs=adata.obs.loc[test, [spec["batch_key"], spec["labels_key"]]])
        for key, e in emb.items():
            cells.obsm[key.replace(" ", "_")] = e
        scib = metrics.scib_benchmark(cells, [k.replace(" ", "_") for k in emb], spec["batch_key"],
                                      spec["labels_key"], seed=seed, tidy=True)
        agg = scib[scib.label == "Aggregate score"].pivot(index="embedding", columns="metric", values="value")
    rows = []
    for key, e in emb.items():
        method, name = key.split(" ")
        row = {"seed": seed, "method": method, "transform": name, "knn_same_batch": float(knn[key]),
               "batch_variance_share": metrics.batch_variance_share(e, batch),
               "within_celltype_share": metrics.batch_variance_share(e, batch, groups=labels)}
        if agg is not None:
            a = agg.loc[key.replace(" ", "_")]
            row.update(scib_batch=float(a["Batch correction"]), scib_bio=float(a["Bio conservation"]),
                       scib_total=float(a["Total"]))
        rows.append(row)
    return rows


def write_report(df: pd.DataFrame, out: str, command: str) -> None:
    from scmedal_lite.io import write_json, write_text

    write_json(out + ".json", {"command": command, "processor": processor(), "rows": df.to_dict("records")})
    cols = [c for c in ("knn_same_batch", "within_celltype_share", "scib_batch", "scib_bio", "scib_total")
            if c in df]
    df = df.assign(transform=pd.Categorical(df["transform"], TRANSFORMS, ordered=True))
    table = df.pivot_table(index=["transform", "method"], columns="seed", values=cols, observed=True)
    lines = ["# The FE latent and Harmony's embedding under the same rotations and rescalings", "",
             f"Command: `{command}`. Processor: {processor()}. COVID PBMC, test cells; `raw` as returned, "
             "`pD` the top D principal axes, `wD` the same whitened (axes fitted on the training cells).", ""]
    for col in cols:
        part = table[col].round(3)
        part.columns = [f"seed {s}" for s in part.columns]
        lines += [f"## {col}", "", part.reset_index().to_markdown(index=False), ""]
    write_text(out + ".md", "\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "latent_transforms"))
    args = ap.parse_args(argv)
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="latent_transforms_") as work:
            rows += score_seed(seed, work, log)
        log(f"seed {seed} scored")
    command = "python benchmarks/latent_transforms.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(pd.DataFrame(rows), args.out, command.strip())
    log(f"wrote {args.out}.md and {args.out}.json")


if __name__ == "__main__":
    main()
