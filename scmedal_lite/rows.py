"""Row sources: minibatches drawn from dense, sparse or backed (``backed="r"``) matrices without densifying
the whole matrix, so training memory is bounded by the minibatch, not by cells × genes.

Example
-------
>>> x = ScaledRows(adata.X, rows=np.flatnonzero(train_mask), minmax=model.minmax)   # doctest: +SKIP
>>> x[np.array([0, 5, 9])].shape                                                       # doctest: +SKIP
(3, 1000)
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from .pp import apply_minmax


def read_rows(matrix, rows: np.ndarray) -> np.ndarray | sparse.spmatrix:
    """Rows ``rows`` (increasing integers) of an in-memory or backed matrix."""
    if isinstance(matrix, np.ndarray) or sparse.issparse(matrix):
        return matrix[rows]
    if len(rows) and np.all(np.diff(rows) == 1):        # contiguous: a plain slice is fastest on disk
        return matrix[int(rows[0]):int(rows[-1]) + 1]
    return matrix[rows]


def to_dense(block) -> np.ndarray:
    return block.toarray() if sparse.issparse(block) else np.asarray(block)


class ScaledRows:
    """Selected rows of a matrix, min–max scaled (and column-subset) on the fly, as dense float32.

    ``rows``: the cells (row positions) this source exposes, in order; ``minmax``: fitted min-max values
    (:func:`scmedal_lite.pp.fit_minmax`, :func:`stream_minmax`); ``columns``: optional column
    positions (to match a model's genes). Indexing with positions ``0..len(rows)-1`` reads only those rows.
    """

    def __init__(self, matrix, rows: np.ndarray, minmax: dict, columns: np.ndarray | None = None):
        self.matrix, self.rows, self.minmax, self.columns = matrix, np.asarray(rows), minmax, columns
        n_cols = matrix.shape[1] if columns is None else len(columns)
        self.shape = (len(self.rows), n_cols)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        positions = self.rows[index]
        order = np.argsort(positions, kind="stable")
        block = to_dense(read_rows(self.matrix, positions[order]))
        if self.columns is not None:
            block = block[:, self.columns]
        out = np.empty_like(block, dtype="float32")
        out[order] = apply_minmax(block, self.minmax)
        return out

    def dense(self, chunk_size: int = 8192) -> np.ndarray:
        """The whole source as one dense array (read in chunks)."""
        out = np.empty(self.shape, dtype="float32")
        for start in range(0, self.shape[0], chunk_size):
            out[start:start + chunk_size] = self[np.arange(start, min(start + chunk_size, self.shape[0]))]
        return out


class OneHotRows:
    """One-hot (or fixed-row) design rows built on demand from integer codes; code ``-1`` takes ``fallback``."""

    def __init__(self, codes: np.ndarray, n_classes: int, fallback: np.ndarray | None = None):
        self.codes, self.n_classes = np.asarray(codes), int(n_classes)
        self.fallback = np.zeros(n_classes, "float32") if fallback is None else np.asarray(fallback, "float32")
        self.shape = (len(self.codes), self.n_classes)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        codes = self.codes[index]
        out = np.tile(self.fallback, (len(codes), 1))
        known = codes >= 0
        out[known] = 0.0
        out[np.flatnonzero(known), codes[known]] = 1.0
        return out


def stream_minmax(matrix, rows: np.ndarray, *, mode: str = "global", columns=None,
                  chunk_size: int = 16384) -> dict:
    """Min–max parameters over ``rows`` of ``matrix``, read in chunks (see :func:`scmedal_lite.pp.fit_minmax`)."""
    from .pp import fit_minmax

    lo = hi = None
    for start in range(0, len(rows), chunk_size):
        block = read_rows(matrix, np.asarray(rows[start:start + chunk_size]))
        if columns is not None:
            block = block[:, columns]
        part = fit_minmax(block, mode=mode)
        b_lo, b_hi = np.asarray(part["min"]), np.asarray(part["max"])
        lo = b_lo if lo is None else np.minimum(lo, b_lo)
        hi = b_hi if hi is None else np.maximum(hi, b_hi)
    return {"mode": mode, "min": lo.tolist(), "max": hi.tolist()}
