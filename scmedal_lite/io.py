"""Writing outputs whole or not at all: temporary names in the same folder, then an atomic rename.

Example
-------
>>> with atomic_write("results/scores.csv") as tmp:
...     df.to_csv(tmp)                 # results/scores.csv appears only when this block succeeds
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from .validate import InputError


@contextlib.contextmanager
def atomic_write(path: str):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically, on error it is removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str, *, overwrite: bool = False):
    """Yield a temporary directory that becomes ``path`` on success (replacing it only with ``overwrite``)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        if not os.path.isdir(path) or os.listdir(path):
            raise InputError(f"{path!r} already exists; pass overwrite=True or choose another folder.")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
            os.replace(path, os.path.join(old, "x"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
