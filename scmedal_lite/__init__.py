"""scmedal_lite: mixed-effects deep autoencoders (scMEDAL) for interpretable batch-effect analysis.

Example
-------
>>> import scmedal_lite as sm
>>> adata = sm.datasets.covid_pbmc()
>>> sm.pp.prepare(adata, batch_key="sample_id")
>>> model = sm.SCMEDAL(adata, batch_key="sample_id", labels_key="celltype_coarse").train(seed=0)
>>> sm.tl.latent(model, adata, kind="fe")        # adata.obsm["X_scMEDAL_FE"], uns["scmedal"]

Submodules and the model are imported on first use, so ``scmedal-lite`` can check its input (and fail with
a one-line message) before TensorFlow starts. Importing the package sets no environment variable, no logger
level and no TensorFlow switch: those are explicit choices in :data:`settings` (``sm.settings``).
"""

import importlib

from ._settings import settings

__version__ = "0.1.0"

_SUBMODULES = {"baselines", "classify", "datasets", "genomaps", "io", "metrics", "paper_data", "pl", "pp",
               "presets", "provenance", "tl", "tutorial"}
_ATTRIBUTES = {"SCMEDAL": "model", "UnseenBatchWarning": "model", "InputError": "validate",
               "read_h5ad": "validate", "versions": "provenance"}

__all__ = ["SCMEDAL", "InputError", "UnseenBatchWarning", "read_h5ad", "settings", "versions", "__version__",
           *sorted(_SUBMODULES)]


def _check_keras_backend() -> None:
    """The networks are written for Keras' TensorFlow backend; say so clearly when another one is chosen."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ImportError(f"scmedal_lite needs Keras' TensorFlow backend, but Keras runs on {backend!r} "
                          "(KERAS_BACKEND or ~/.keras/keras.json). Set KERAS_BACKEND=tensorflow before "
                          "Keras is first imported.")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _ATTRIBUTES:
        if _ATTRIBUTES[name] == "model":
            _check_keras_backend()
        return getattr(importlib.import_module(f".{_ATTRIBUTES[name]}", __name__), name)
    raise AttributeError(f"module 'scmedal_lite' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
