"""scmedal_lite: mixed-effects deep autoencoders (scMEDAL) for interpretable batch-effect analysis.

Example
-------
>>> import scmedal_lite as sm
>>> adata = sm.datasets.covid_pbmc()
>>> sm.pp.prepare(adata, batch_key="sample_id")
>>> model = sm.SCMEDAL(adata, batch_key="sample_id", labels_key="celltype_coarse").train(seed=0)
>>> adata.obsm["X_scMEDAL_FE"] = model.get_latent("fe")
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")
_os.environ.setdefault("POT_BACKEND_DISABLE_PYTORCH", "1")

__version__ = "0.1.0"

import logging as _logging  # noqa: E402

_logging.getLogger("tensorflow").setLevel(_logging.ERROR)   # retracing chatter from per-fold models

from . import baselines, classify, datasets, genomaps, metrics, paper_data, pp  # noqa: E402
from .model import SCMEDAL, UnseenBatchWarning  # noqa: E402
from .validate import InputError, read_h5ad  # noqa: E402

__all__ = ["SCMEDAL", "InputError", "UnseenBatchWarning", "baselines", "classify", "datasets", "genomaps",
           "metrics", "paper_data", "pp", "read_h5ad", "__version__"]
