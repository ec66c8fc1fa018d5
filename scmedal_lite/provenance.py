"""Which software made a result: the versions of the package and of its main dependencies.

:func:`versions` reads the installed distributions' metadata (nothing is imported, TensorFlow does not start), so
the command line can record it in ``run.json`` and :func:`scmedal_lite.tl.latent` under ``uns["scmedal"]``.

Example
-------
>>> from scmedal_lite.provenance import versions
>>> sorted(versions())[:3]
['anndata', 'genomap', 'keras']
"""

from __future__ import annotations

import platform
from importlib import metadata

from . import __version__

#: The dependencies recorded, each with the distributions that provide it (TensorFlow comes under several names).
DEPENDENCIES = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel", "tf-nightly"),
    "keras": ("keras",),
    "scanpy": ("scanpy",),
    "anndata": ("anndata",),
    "numpy": ("numpy",),
    "pandas": ("pandas",),
    "genomap": ("genomap",),
}
#: What :func:`versions` says of a dependency that is not installed.
MISSING = "not installed"


def _version(distributions) -> str:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return MISSING


def versions() -> dict[str, str]:
    """``{"scmedal_lite": ..., "python": ..., "tensorflow": ..., "keras": ..., "scanpy": ..., "anndata": ...,
    "numpy": ..., "pandas": ..., "genomap": ...}``; a missing dependency reads ``"not installed"``."""
    out = {"scmedal_lite": __version__, "python": platform.python_version()}
    out.update({name: _version(dists) for name, dists in DEPENDENCIES.items()})
    return out
