"""Input checks that turn bad input into a clear error before anything heavy starts.

Every check raises :class:`InputError` (a ``ValueError``) whose message names the problem and the fix.

Example
-------
>>> check_obs_key(adata, "donor", role="batch_key")     # doctest: +SKIP
InputError: batch_key 'donor' is not a column of adata.obs; columns are: ['sample_id', 'cond_group', ...]
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

MIN_CELLS_PER_BATCH = 10


class InputError(ValueError):
    """Bad input: the message says what is wrong and how to fix it."""


def read_h5ad(path, *, backed: str | None = None) -> AnnData:
    """Read an ``.h5ad`` file read-only, with clear errors for a missing, wrong-type or unreadable file."""
    import anndata

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"File not found: {path!r}. Check the path (relative paths start at {os.getcwd()!r}).")
    if os.path.isdir(path) or not path.endswith(".h5ad"):
        raise InputError(f"{path!r} is not an .h5ad file. Convert it first, e.g. "
                         "`sc.read_10x_mtx(...).write_h5ad('data.h5ad')` or `anndata.read_csv(...)`.")
    try:
        adata = anndata.read_h5ad(path, backed=backed)
    except Exception as err:  # h5py/anndata raise many types for corrupt files
        raise InputError(f"Could not read {path!r} as AnnData ({type(err).__name__}: {err}). "
                         "Is the file complete and written by anndata?") from err
    check_adata(adata)
    return adata


def check_adata(adata, *, expect: str | None = None) -> None:
    """Check ``adata`` is a non-empty AnnData with finite values; warn when values look unlike ``expect``.

    ``expect`` is ``"counts"`` (raw integer counts), ``"log"`` (log-normalised) or ``None`` (no check).
    """
    if not isinstance(adata, AnnData):
        raise InputError(f"Expected an AnnData object, got {type(adata).__name__}. "
                         "Read your file with scmedal_lite.read_h5ad(path) or anndata.read_h5ad(path).")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"The AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes); "
                         "subset it to a non-empty selection.")
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise InputError(f"Duplicate gene names, e.g. {dup}. Call adata.var_names_make_unique() first.")
    values = _sample_values(adata.X)
    if values.size == 0:
        return
    if not np.isfinite(values).all():
        raise InputError("adata.X contains NaN or infinite values; remove or impute them first "
                         "(e.g. adata.X = np.nan_to_num(adata.X)).")
    if (values < 0).any():
        raise InputError("adata.X contains negative values: it looks already scaled or centred. "
                         "scMEDAL needs counts (for sm.pp.prepare) or log-normalised expression (>= 0).")
    looks_counts = np.allclose(values, np.round(values)) and values.max() > 20
    if expect == "counts" and not looks_counts:
        warnings.warn("adata.X does not look like raw counts (non-integer or small values): it may be "
                      "normalised or log-transformed already. sm.pp.prepare normalises and log-transforms; "
                      "skip it if your data are log-normalised.", UserWarning, stacklevel=3)
    if expect == "log" and looks_counts:
        warnings.warn("adata.X looks like raw counts (integers, max > 20). Run sm.pp.prepare(adata) first, "
                      "or pass layer= a log-normalised layer.", UserWarning, stacklevel=3)


def _sample_values(X, n: int = 200_000) -> np.ndarray:
    if hasattr(X, "shape") and not sparse.issparse(X) and not isinstance(X, np.ndarray):
        X = X[: min(X.shape[0], 2000)]           # backed dataset: read a slice only
        X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    data = X.data if sparse.issparse(X) else np.asarray(X).ravel()
    return np.asarray(data[:n], dtype="float64")


def check_obs_key(adata: AnnData, key: str, *, role: str, allow_missing: bool = False) -> None:
    """Check that ``key`` is an ``obs`` column without missing values."""
    if not isinstance(key, str):
        raise InputError(f"{role} must be a column name (str), got {type(key).__name__}: {key!r}.")
    if key not in adata.obs.columns:
        raise InputError(f"{role} {key!r} is not a column of adata.obs; columns are: "
                         f"{list(adata.obs.columns)}.")
    missing = int(pd.isna(adata.obs[key]).sum())
    if missing and not allow_missing:
        raise InputError(f"{role} {key!r} has {missing} missing values; drop those cells "
                         f"(adata = adata[adata.obs[{key!r}].notna()].copy()) or fill them.")


def check_batches(adata: AnnData, batch_key: str, *, min_cells: int = MIN_CELLS_PER_BATCH) -> pd.Series:
    """Check there are at least two batches and each has at least ``min_cells`` cells; returns the counts."""
    check_obs_key(adata, batch_key, role="batch_key")
    counts = adata.obs[batch_key].astype(str).value_counts()
    if len(counts) < 2:
        raise InputError(f"batch_key {batch_key!r} has a single batch ({counts.index[0]!r}); scMEDAL models "
                         "variation between batches and needs at least two. Choose another batch column.")
    small = counts[counts < min_cells]
    if len(small):
        raise InputError(f"Batches with fewer than {min_cells} cells in {batch_key!r}: "
                         f"{small.to_dict()}. Drop them (adata = adata[~adata.obs[{batch_key!r}].isin(...)]) "
                         "or merge them with another batch.")
    return counts


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {list(choices)}, got {value!r}.")


def as_int(name: str, value, *, minimum: int | None = None) -> int:
    """Parse an integer parameter (papermill passes strings) and check its range."""
    try:
        if isinstance(value, bool):
            raise TypeError
        as_float = float(value)
        out = int(as_float)
        if out != as_float:
            raise TypeError
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an integer, got {value!r}.") from None
    if minimum is not None and out < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {out}.")
    return out


def as_float(name: str, value, *, minimum: float | None = None, exclusive: bool = False) -> float:
    """Parse a float parameter (strings accepted) and check its range."""
    try:
        if isinstance(value, bool):
            raise TypeError
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}.") from None
    if not np.isfinite(out):
        raise InputError(f"{name} must be finite, got {value!r}.")
    if minimum is not None and (out <= minimum if exclusive else out < minimum):
        raise InputError(f"{name} must be {'>' if exclusive else '>='} {minimum}, got {out}.")
    return out


def as_bool(name: str, value) -> bool:
    """Parse a boolean parameter; accepts true/false/yes/no/1/0 strings (papermill, CLI)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise InputError(f"{name} must be true or false, got {value!r}.")
