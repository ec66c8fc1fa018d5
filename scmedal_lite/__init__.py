"""scmedal_lite: mixed-effects deep autoencoders (scMEDAL) for interpretable batch-effect analysis.

Example
-------
>>> import scmedal_lite as sm
>>> adata = sm.datasets.covid_pbmc()
>>> sm.pp.prepare(adata, batch_key="sample_id")
>>> model = sm.SCMEDAL(adata, batch_key="sample_id", labels_key="celltype_coarse").train(seed=0)
>>> adata.obsm["X_scMEDAL_FE"] = model.get_latent("fe")

Submodules and the model are imported on first use, so ``scmedal-lite`` can check its input (and fail with
a one-line message) before TensorFlow starts.
"""

import importlib
import logging
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")
os.environ.setdefault("POT_BACKEND_DISABLE_PYTORCH", "1")
logging.getLogger("tensorflow").setLevel(logging.ERROR)   # retracing chatter from per-fold models

__version__ = "0.1.0"

_SUBMODULES = {"baselines", "classify", "datasets", "genomaps", "io", "metrics", "paper_data", "pl", "pp",
               "presets", "tutorial"}
_ATTRIBUTES = {"SCMEDAL": "model", "UnseenBatchWarning": "model", "InputError": "validate",
               "read_h5ad": "validate"}

__all__ = ["SCMEDAL", "InputError", "UnseenBatchWarning", "read_h5ad", "__version__", *sorted(_SUBMODULES)]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(f".{_ATTRIBUTES[name]}", __name__), name)
    raise AttributeError(f"module 'scmedal_lite' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
