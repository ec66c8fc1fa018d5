"""Writing outputs whole or not at all: every file and folder the package, the notebooks and the benchmarks write.

Each writer fills a temporary name in the target's folder, flushes it to disk (fsync), gives it the usual
permissions (``0o666`` less the umask) and renames it onto the target. A run killed at any moment leaves the
target either as it was (absent, or the old version) or complete and new, never half-written. What a kill
can leave behind is a hidden temporary (``.<name>.*.tmp``) beside the target; it is never read and can be
deleted. Folders are created as needed.

- files: :func:`write_csv`, :func:`write_json`, :func:`write_text`, :func:`write_npy`, :func:`write_npz`,
  :func:`write_figure`, :func:`write_h5ad`, and :func:`atomic_write` for any other writer;
- folders: :func:`atomic_dir` (a whole folder, swapped in one step), :func:`promote_dir` (a folder built
  elsewhere, e.g. a resumable ``<name>.partial``, swapped in the same way) and :func:`remove_temporaries`.

Example
-------
>>> write_csv("results/scores.csv", df)          # results/scores.csv appears only when complete
>>> with atomic_write("results/model.h5") as tmp:
...     h5py.File(tmp, "w")...                      # any writer that takes a path
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import sys
import tempfile

from .validate import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    try:
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
    except OSError:
        pass


@contextlib.contextmanager
def atomic_write(path: str):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically, on error it is removed.

    The new file gets the usual permissions (``0o666`` less the umask), is flushed to disk, then renamed;
    the folder is created if needed.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())      # mkstemp makes 0o600 files
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text) -> str:
    """Write ``text`` (a string, or a list of lines) to ``path``, UTF-8, ending with one newline."""
    text = text if isinstance(text, str) else "\n".join(text)
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text.rstrip("\n") + "\n")
    return os.fspath(path)


def _json_default(value):
    """JSON for what ``json`` does not know: NumPy scalars and arrays, paths; anything else as its text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def write_json(path: str, obj, *, indent: int | None = 1) -> str:
    """Write ``obj`` as JSON (NumPy values as numbers, paths and other objects as text)."""
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, default=_json_default)
    return os.fspath(path)


def write_csv(path: str, df, *, index: bool = False, **kwargs) -> str:
    """Write a DataFrame as CSV (``index=False`` unless asked; other options go to ``DataFrame.to_csv``)."""
    with atomic_write(path) as tmp:
        df.to_csv(tmp, index=index, **kwargs)
    return os.fspath(path)


def write_npy(path: str, array) -> str:
    """Write one array as ``.npy``. No pickle: object arrays are refused."""
    import numpy as np

    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)
    return os.fspath(path)


def write_npz(path: str, *, compressed: bool = False, **arrays) -> str:
    """Write named arrays as ``.npz`` (``np.savez``, or ``np.savez_compressed`` with ``compressed=True``)."""
    import numpy as np

    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compressed else np.savez)(f, **arrays)
    return os.fspath(path)


def write_figure(path: str, fig, *, dpi: int = 110, **kwargs) -> str:
    """Save a matplotlib figure; the format comes from the file name (default PNG), the bounding box is
    ``"tight"`` unless ``bbox_inches`` is given; other options go to ``Figure.savefig``."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    kwargs.setdefault("bbox_inches", "tight")
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt, **kwargs)
    return os.fspath(path)


def write_h5ad(path: str, adata) -> str:
    """Write an AnnData as ``.h5ad``."""
    with atomic_write(path) as tmp:
        adata.write_h5ad(tmp)
    return os.fspath(path)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _fsync_tree(folder: str) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync_file(os.path.join(root, name))
        _fsync_dir(root)


def _swap_in(src: str, path: str) -> None:
    """Make the complete folder ``src`` be ``path`` in one step (an existing ``path`` is replaced and removed)."""
    parent = os.path.dirname(path)
    os.chmod(src, 0o777 & ~_umask())      # mkdtemp makes 0o700 folders
    _fsync_tree(src)
    if os.path.exists(path):
        if _exchange(src, path):           # src now holds the old folder
            shutil.rmtree(src, ignore_errors=True)
        else:
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
            os.replace(path, os.path.join(old, "x"))
            os.replace(src, path)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, path)
    _fsync_dir(parent)


def _refuse_busy(path: str, overwrite: bool) -> None:
    if os.path.exists(path) and not overwrite:
        if not os.path.isdir(path) or os.listdir(path):
            raise InputError(f"{path!r} already exists; pass overwrite=True or choose another folder.")


@contextlib.contextmanager
def atomic_dir(path: str, *, overwrite: bool = False):
    """Yield a temporary directory that becomes ``path`` on success (replacing it only with ``overwrite``).

    An existing non-empty ``path`` is refused unless ``overwrite=True``. The replacement is one atomic swap
    on Linux, so at every instant ``path`` is the complete old folder or the complete new one; elsewhere
    the old folder is moved aside first (a kill in between leaves it in ``.<name>.*.old``).
    """
    path = os.path.abspath(os.fspath(path))
    _refuse_busy(path, overwrite)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        _swap_in(tmp, path)
    finally:
        if os.path.lexists(tmp):
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.remove(tmp)


def promote_dir(src: str, path: str, *, overwrite: bool = False) -> str:
    """Make the finished folder ``src`` (e.g. a resumable ``<path>.partial``) be ``path``, as :func:`atomic_dir`
    does at its end: in one step, replacing a non-empty ``path`` only with ``overwrite``. The hidden
    temporaries a killed writer may have left inside ``src`` are removed first (:func:`remove_temporaries`).
    Returns ``path``."""
    path = os.path.abspath(os.fspath(path))
    _refuse_busy(path, overwrite)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    remove_temporaries(src)
    _swap_in(os.path.abspath(src), path)
    return path


def remove_temporaries(folder: str) -> list[str]:
    """Remove what killed writers of this module leave under ``folder``: hidden ``.<name>.*.tmp`` files and
    folders and ``.<name>.*.old`` folders. Returns the paths removed."""
    removed = []
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            if name.startswith(".") and name.endswith((".tmp", ".old")):
                full = os.path.join(root, name)
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full, ignore_errors=True)
                else:
                    os.remove(full)
                removed.append(full)
        dirs[:] = [d for d in dirs if not (d.startswith(".") and d.endswith((".tmp", ".old")))]
    return removed
