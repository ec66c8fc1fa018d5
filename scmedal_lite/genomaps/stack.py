"""The rows a genomap analysis turns into images: the chosen cells, their counterfactual stack, and z-scores.

:func:`select_cells` picks a few hundred cells of the cell type(s) of interest, making sure every batch that
will be shown contributes a cell of each type. :func:`counterfactual_stack` stacks, for those cells, the
scaled input, the fixed-effects (FE) reconstruction and the random-effects (RE) counterfactual in every
target batch; :func:`zscore_stack` z-scores each gene over all rows of that stack.

Example
-------
>>> cells = select_cells(adata, labels_key="cell_type", cell_types=["Mono"], batch_key="batch", n_cells=300)
>>> stack = zscore_stack(counterfactual_stack(model, adata, cells))      # stack.layers["zscore"]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..rows import to_dense
from ..validate import InputError, as_names

log = logging.getLogger(__name__)

#: The kinds of row in a stack: the scaled input, the FE reconstruction, an RE counterfactual.
ROW_KINDS = ("input", "fe", "re")
#: obs columns that :func:`counterfactual_stack` creates itself.
STACK_COLUMNS = ("cell", "kind", "target_batch", "source_batch")


def dense(x: Any) -> np.ndarray:
    """A dense 2-D array from a numpy array, a scipy sparse matrix or an AnnData (its ``X``)."""
    return to_dense(x.X if isinstance(x, ad.AnnData) else x)


# ---------------------------------------------------------------------------------------------- cells

def _allocate(total: int, capacities: Sequence[int]) -> np.ndarray:
    """Split ``total`` slots proportionally to ``capacities`` (largest-remainder rounding, ties by order).

    Never exceeds a capacity; returns ``capacities`` itself when ``total`` exceeds their sum.
    """
    caps = np.asarray(capacities, dtype=np.int64)
    total = int(min(max(total, 0), caps.sum()))
    if total == 0:
        return np.zeros_like(caps)
    quota = total * caps / caps.sum()  # quota_i <= cap_i because total <= sum(caps)
    alloc = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - alloc), kind="stable")
    alloc[order[: total - alloc.sum()]] += 1
    return alloc


def _check_selection(obs: pd.DataFrame, labels_key: str, types: list[str], batch_key: str, forced: list[str],
                     n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """The cells' labels and batches (str arrays), after checking the keys, the names and ``n_cells``."""
    for key, what in ((labels_key, "labels_key"), (batch_key, "batch_key")):
        if key not in obs.columns:
            raise InputError(f"{what}={key!r} is not an obs column; available: {list(obs.columns)}")
    if not obs.index.is_unique:
        raise InputError("adata.obs_names must be unique (call adata.obs_names_make_unique())")
    if int(n_cells) < 1:
        raise InputError(f"n_cells must be >= 1, got {n_cells}")
    if not types:
        raise InputError("cell_types is empty")
    ct = obs[labels_key].astype(str).to_numpy()
    bt = obs[batch_key].astype(str).to_numpy()
    unknown = sorted(set(types) - set(ct))
    if unknown:
        raise InputError(f"unknown cell type(s) {unknown} in obs[{labels_key!r}]; available: {sorted(set(ct))}")
    unknown = sorted(set(forced) - set(bt))
    if unknown:
        raise InputError(f"unknown batch(es) {unknown} in obs[{batch_key!r}]; available: {sorted(set(bt))}")
    return ct, bt


def _forced_cells(ct, bt, types, forced, rng) -> list[int]:
    """One random cell per (cell type, forced batch) pair that has one (a warning for those that do not)."""
    chosen = []
    for t in types:
        for b in forced:
            cand = np.flatnonzero((ct == t) & (bt == b))
            if cand.size == 0:
                log.warning("select_cells: batch %r has no cell of type %r", b, t)
                continue
            chosen.append(int(rng.choice(cand)))
    return chosen


def select_cells(adata: ad.AnnData, *, labels_key: str, cell_types: str | Sequence[str], n_cells: int = 300,
                 batch_key: str, force_batches: Sequence[str] = (), seed: int = 0) -> pd.Index:
    """Choose the cells whose counterfactuals will be turned into genomaps.

    1. For every (cell type, forced batch) pair one cell is drawn at random, when the batch has a cell
       of that type (a warning is logged otherwise). These guarantee that every batch shown in the
       per-cell panels has a cell of each type.
    2. The remaining ``n_cells - n_forced`` slots are split across the cell types **in proportion to
       their numbers of remaining candidate cells** (largest-remainder rounding), so the sample keeps
       the cell-type mix of the data, and each type's share is drawn at random without replacement.

    ``labels_key`` is the obs column of the cell types. No cell is chosen twice. If fewer than ``n_cells``
    candidates exist, all are returned (warning); if there are more forced pairs than ``n_cells``, all forced
    cells are kept (warning). Everything is driven by ``numpy.random.default_rng(seed)``: the same inputs and
    seed give the same cells.

    Returns
    -------
    pandas.Index of obs_names, in the order of ``adata.obs``.

    Example
    -------
    >>> cells = select_cells(adata, labels_key="cell_type", cell_types=["Mono", "Mono-like"],
    ...                      batch_key="batch", force_batches=["AML420B", "BM5"], n_cells=300)
    """
    obs = adata.obs
    types, forced = as_names(cell_types), as_names(force_batches)
    ct, bt = _check_selection(obs, labels_key, types, batch_key, forced, n_cells)
    rng = np.random.default_rng(seed)
    chosen = _forced_cells(ct, bt, types, forced, rng)
    if len(chosen) > n_cells:
        log.warning("select_cells: %d forced cells exceed n_cells=%d; keeping all forced cells",
                    len(chosen), n_cells)
    taken = np.zeros(len(ct), dtype=bool)
    taken[chosen] = True
    remaining_by_type = [np.flatnonzero((ct == t) & ~taken) for t in types]
    n_fill = max(int(n_cells) - len(chosen), 0)
    alloc = _allocate(n_fill, [len(r) for r in remaining_by_type])
    if alloc.sum() < n_fill:
        log.warning("select_cells: only %d candidate cells for n_cells=%d", len(chosen) + int(alloc.sum()),
                    n_cells)
    for cand, k in zip(remaining_by_type, alloc):
        if k:
            chosen.extend(int(i) for i in rng.choice(cand, size=int(k), replace=False))
    idx = np.sort(np.asarray(chosen, dtype=np.int64))
    log.info("select_cells: %d cells (%s)", idx.size,
             ", ".join(f"{t}: {int((ct[idx] == t).sum())}" for t in types))
    return obs.index[idx]


# ---------------------------------------------------------------------------------------------- stack

def _check_stack_inputs(model: Any, adata: ad.AnnData, cells: pd.Index, target_batches) -> list[str]:
    """The target batches (default all the model knows), after checking the cells, batches and batch key."""
    if cells.empty:
        raise InputError("no cells given")
    if not cells.is_unique:
        raise InputError("cells contains duplicates")
    missing = cells.difference(adata.obs_names)
    if len(missing):
        raise InputError(f"{len(missing)} cell(s) not in adata.obs_names, e.g. {list(missing[:3])}")
    known = [str(b) for b in model.batch_categories]
    batches = known if target_batches is None else as_names(target_batches)
    if not batches:
        raise InputError("target_batches is empty")
    unknown = sorted(set(batches) - set(known))
    if unknown:
        raise InputError(f"unknown target batch(es) {unknown}; the model knows {known}")
    if model.batch_key not in adata.obs.columns:
        raise InputError(f"model.batch_key={model.batch_key!r} is not an obs column of adata")
    return batches


def _fixed_effects_reconstruction(model: Any, sub: ad.AnnData) -> np.ndarray:
    """The FE network's reconstruction free of any batch effect (random effects at their prior mean, when its
    decoder has them), in the scaled units."""
    if getattr(model, "_fe_has_random_effects", lambda: False)():
        return model.get_reconstruction("fe", sub, scaled=True, random_effects=False)
    return model.get_reconstruction("fe", sub, scaled=True)


def _blocks(model: Any, sub: ad.AnnData, genes: pd.Index, batches: list[str], mode: str) -> list[np.ndarray]:
    """The scaled input, the FE reconstruction and one RE counterfactual per target batch of ``sub``'s cells."""
    shape = (sub.n_obs, len(genes))

    def checked(x: Any, what: str) -> np.ndarray:
        x = dense(x).astype(np.float32, copy=False)
        if x.shape != shape:
            raise InputError(f"{what} has shape {x.shape}, expected {shape}")
        return x

    blocks = [checked(model.scale(sub), "model.scale(...)"),
              checked(_fixed_effects_reconstruction(model, sub), "FE reconstruction")]
    for b in tqdm(batches, desc="counterfactuals", leave=False):
        cf = model.counterfactual(sub, batch=b, mode=mode, scaled=True)
        same = np.array_equal(np.asarray(getattr(cf, "obs_names", sub.obs_names)), np.asarray(sub.obs_names))
        if not same:
            raise InputError(f"counterfactual for batch {b!r} returned cells in a different order")
        blocks.append(checked(cf, f"counterfactual for batch {b!r}"))
    return blocks


def _stack_obs(sub: ad.AnnData, batches: list[str], batch_key: str) -> pd.DataFrame:
    """obs of the stack: the four :data:`STACK_COLUMNS`, then the source cells' own columns; one block of rows
    per row kind (input, FE, then each target batch's RE)."""
    n, n_blocks = sub.n_obs, len(batches) + 2
    targets: list[Any] = [np.nan, np.nan] + batches
    src = sub.obs.copy()
    src.columns = [f"obs_{c}" if c in STACK_COLUMNS else c for c in src.columns]
    src_rep = src.iloc[np.tile(np.arange(n), n_blocks)].reset_index(drop=True)
    obs = pd.DataFrame({
        "cell": np.tile(sub.obs_names.to_numpy(), n_blocks),
        "kind": pd.Categorical(np.repeat(["input", "fe"] + ["re"] * len(batches), n), categories=list(ROW_KINDS)),
        "target_batch": pd.Categorical(np.repeat(np.asarray(targets, dtype=object), n), categories=batches),
        "source_batch": np.tile(sub.obs[batch_key].astype(str).to_numpy(), n_blocks),
    })
    obs = pd.concat([obs, src_rep], axis=1)
    suffix = ["input", "fe"] + [f"re:{b}" for b in batches]
    obs.index = pd.Index([f"{c}|{s}" for s in suffix for c in sub.obs_names], dtype=str)
    return obs


def counterfactual_stack(model: Any, adata: ad.AnnData, cells: Sequence[str] | pd.Index, *,
                         target_batches: Sequence[str] | None = None, mode: str = "auto") -> ad.AnnData:
    """Stack input, FE reconstruction and RE counterfactuals of ``cells`` into one AnnData.

    Rows, in blocks of ``len(cells)`` (cells in the given order within each block):
    the min-max scaled input (``model.scale``), the FE reconstruction
    (free of any batch effect: with the default FE network, its decoder with the random effects at their prior
    mean), then one block per target batch with the counterfactual reconstruction as if measured in that batch
    (``model.counterfactual(batch=b, mode=mode, scaled=True)``; ``mode="auto"``: decoded from the FE latent when
    the model can). All values are in the scaled units the networks see.

    obs columns: ``cell`` (source obs_name), ``kind`` (one of :data:`ROW_KINDS`: "input", "fe", "re"),
    ``target_batch`` (categorical; NaN for input/FE rows), ``source_batch`` (the cell's own batch, from
    ``obs[model.batch_key]``), and every obs column of the source cells under its own name (a column
    that clashes with the four above is kept as ``obs_<name>``). obs_names are ``"<cell>|input"``,
    ``"<cell>|fe"`` and ``"<cell>|re:<batch>"``; var = the model's genes.

    ``target_batches`` defaults to all ``model.batch_categories``.

    Example
    -------
    >>> stack = zscore_stack(counterfactual_stack(model, adata, cells))
    """
    cells = pd.Index(cells).astype(str)
    batches = _check_stack_inputs(model, adata, cells, target_batches)
    sub = adata[cells].copy()
    genes = pd.Index(np.asarray(model.var_names).astype(str))
    blocks = _blocks(model, sub, genes, batches, mode)
    stack = ad.AnnData(X=np.vstack(blocks), obs=_stack_obs(sub, batches, model.batch_key),
                       var=pd.DataFrame(index=genes))
    stack.uns["genomap_stack"] = {"target_batches": batches, "mode": mode, "batch_key": model.batch_key,
                                  "n_cells": int(sub.n_obs)}
    log.info("counterfactual_stack: %d rows (%d cells x %d blocks) x %d genes",
             stack.n_obs, sub.n_obs, len(blocks), len(genes))
    return stack


# ---------------------------------------------------------------------------------------------- z-scores

def zscore_columns(x: np.ndarray) -> np.ndarray:
    """Per-column z-scores (ddof=1); constant columns (and a single row) give 0."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] < 2:
        return np.zeros_like(x)
    mean = x.mean(axis=0)
    std = x.std(axis=0, ddof=1)
    const = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
    z = (x - mean) / np.where(const, 1.0, std)
    z[:, const] = 0.0
    return z


def zscore_stack(stack: ad.AnnData, *, layer: str = "zscore") -> ad.AnnData:
    """Z-score every gene over all rows of ``stack`` (ddof=1; zero-variance genes become 0).

    The result is stored as ``stack.layers[layer]`` (float32); ``stack.X`` keeps the scaled values.
    Returns ``stack`` (modified in place) for chaining.
    """
    stack.layers[layer] = zscore_columns(dense(stack.X)).astype(np.float32)
    return stack
