"""Genomaps of counterfactual reconstructions (retrospective analysis, method.md section 4).

The step answers "what would these cells look like if they had been measured in batch *b*?" and turns
the answer into images that can be compared across batches. One module per part:

1. :mod:`~scmedal_lite.genomaps.stack`: :func:`select_cells` picks a few hundred cells of the cell type(s)
   of interest, making sure every batch that will be shown contributes at least one cell of each type;
   :func:`counterfactual_stack` stacks, for those cells, the scaled input, the fixed-effects (FE)
   reconstruction and the random-effects (RE) counterfactual reconstruction in every target batch;
   :func:`zscore_stack` z-scores each gene over all rows of that stack.
2. :mod:`~scmedal_lite.genomaps.layout`: :class:`GenomapLayout` places the genes on a 2-D grid with **one**
   Gromov-Wasserstein coupling for the whole stack, so a pixel means the same gene in every image (input, FE
   and every counterfactual batch); :class:`LayoutParams` says how it is fitted (``method="euclidean"``, the
   default, couples the genes' correlation distances to the pixels' Euclidean distances with POT;
   ``method="genomap"`` is the published layout of the `genomap <https://pypi.org/project/genomap/>`_
   package, whose grid distances are not distances between pixels) and :func:`fit_or_load` caches it;
   :func:`layout_locality` measures whether co-expressed genes sit together.
3. :mod:`~scmedal_lite.genomaps.stats`: :func:`compare_batch_groups` tests, pixel by pixel, for differences
   between two groups of target batches (for example disease versus control donors).
4. :mod:`~scmedal_lite.genomaps.plots`: :func:`plot_cell_panel` / :func:`plot_cell_all_batches` draw the
   images of one cell and :func:`plot_significant_pixels` maps a comparison.
5. :mod:`~scmedal_lite.genomaps.pipeline`: :func:`run_genomap_analysis` runs the whole step; its result's
   :meth:`~GenomapAnalysisResult.write` writes every table, array and figure.

Typical use::

    from scmedal_lite import genomaps as gm

    res = gm.run_genomap_analysis(
        model, adata, labels_key="cell_type", cell_types=["Mono"],
        condition_key="disease", shown_batches=["donor1", "donor7"], out_dir="outputs/genomaps",
    )
    res.comparison.head()

Notes on the genomap package (1.3.6), checked on small cases (see ``tests/test_genomaps.py``):

* Grid distances. ``genomap.createMeshDistance`` computes each pixel's distance from the grid's centre and
  then the absolute differences of those radii, not the Euclidean distances between pixels (its docstring
  says Euclidean). On a 32 x 32 grid the two correlate at r = 0.06. The published layouts therefore only
  sort genes into rings; ``method="genomap"`` keeps them for reproduction, the default does not use them.

* Grid size. With ``n_genes < rows * cols`` the package couples the genes to the **first**
  ``n_genes`` pixels in its column-major (Fortran) pixel order only; the remaining pixels stay empty
  (zero). With ``n_genes > rows * cols`` it fails with a shape error. :func:`grid_shape` therefore
  always returns a grid with at least ``n_genes`` pixels, so no gene is ever dropped (the scMEDAL
  code kept only the first 54 x 54 = 2916 genes).
* Padding with zero-valued dummy genes does **not** work: a constant gene has an undefined (NaN)
  correlation, the optimal-transport solver then reports "Problem unbounded" and the coupling comes
  back all zeros, i.e. every image is blank. :meth:`GenomapLayout.fit` instead replaces constant
  genes, for the coupling only, by seeded standard-normal noise (uncorrelated with everything, so
  they get the neutral distance 1 - r ~ 1), and checks the returned coupling.
* The package scales the projection by ``rows * cols`` (not by ``n_genes``), so with empty pixels
  every pixel value is the gene's value times ``rows * cols / n_genes``; :meth:`GenomapLayout.transform`
  reproduces this so its images equal the package's.
* The package never fills the **last** row's genomap (its loop stops one short; the last image is all
  zeros). :meth:`GenomapLayout.transform` projects every row with the coupling itself and fills it.
* ``import ot`` (POT, used by genomap) imports TensorFlow / PyTorch backends unless
  ``POT_BACKEND_DISABLE_TENSORFLOW=1`` and ``POT_BACKEND_DISABLE_PYTORCH=1`` are set; the layout module sets
  both (``os.environ.setdefault``) just before it first imports genomap.
* genomap is licensed CC BY-NC-ND: it is only imported and its public functions called.
"""

from .layout import (
    LAYOUT_METHODS,
    GenomapLayout,
    LayoutParams,
    fit_or_load,
    grid_distances,
    grid_shape,
    layout_cache_key,
    layout_locality,
)
from .layout import _import_genomap as _import_genomap  # noqa: I001 - private, for the tests (gm._import_genomap)
from .pipeline import GenomapAnalysisResult, PanelSettings, run_genomap_analysis
from .plots import plot_cell_all_batches, plot_cell_panel, plot_significant_pixels
from .stack import ROW_KINDS, STACK_COLUMNS, counterfactual_stack, select_cells, zscore_columns, zscore_stack
from .stats import TESTS, benjamini_hochberg, compare_batch_groups

__all__ = [
    "LAYOUT_METHODS",
    "GenomapAnalysisResult",
    "GenomapLayout",
    "LayoutParams",
    "PanelSettings",
    "ROW_KINDS",
    "STACK_COLUMNS",
    "TESTS",
    "benjamini_hochberg",
    "compare_batch_groups",
    "counterfactual_stack",
    "fit_or_load",
    "grid_distances",
    "grid_shape",
    "layout_cache_key",
    "layout_locality",
    "plot_cell_all_batches",
    "plot_cell_panel",
    "plot_significant_pixels",
    "run_genomap_analysis",
    "select_cells",
    "zscore_columns",
    "zscore_stack",
]
