"""Writing outputs whole or not at all: temporary names in the same folder, then an atomic rename.

A run killed at any moment leaves the target either as it was (absent, or the old version) or complete
and new, never half-written. What a kill can leave behind is a hidden temporary (``.<name>.*.tmp``) beside
the target; it is never read and can be deleted.

Example
-------
>>> with atomic_write("results/scores.csv") as tmp:
...     df.to_csv(tmp)                 # results/scores.csv appears only when this block succeeds
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
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

    The new file gets the usual permissions (``0o666`` less the umask), is flushed to disk, then renamed.
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


@contextlib.contextmanager
def atomic_dir(path: str, *, overwrite: bool = False):
    """Yield a temporary directory that becomes ``path`` on success (replacing it only with ``overwrite``).

    An existing non-empty ``path`` is refused unless ``overwrite=True``. The replacement is one atomic swap
    on Linux, so at every instant ``path`` is the complete old folder or the complete new one; elsewhere
    the old folder is moved aside first (a kill in between leaves it in ``.<name>.*.old``).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        if not os.path.isdir(path) or os.listdir(path):
            raise InputError(f"{path!r} already exists; pass overwrite=True or choose another folder.")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())      # mkdtemp makes 0o700 folders
        _fsync_tree(tmp)
        if os.path.exists(path):
            if _exchange(tmp, path):           # tmp now holds the old folder; removed below
                pass
            else:
                old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
                os.replace(path, os.path.join(old, "x"))
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(parent)
    finally:
        if os.path.lexists(tmp):
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.remove(tmp)
