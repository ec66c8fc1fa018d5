"""Tests of a genomap stack: pixel by pixel (or gene by gene), do the target batches of two groups differ?

:func:`compare_batch_groups` reads the values to compare (:func:`features`), assigns each counterfactual row
to its batch group (:func:`row_groups`), tests every feature (Mann-Whitney U on per-batch means, or a
mixed model with a random intercept per cell) and corrects for multiple testing (:func:`benjamini_hochberg`).

Example
-------
>>> res = compare_batch_groups(images, stack.obs, group_of_batch={"b1": "disease", "b2": "control", ...},
...                            groups=("disease", "control"), layout=layout)
>>> res.head()          # gene, row, col, effect, mean_a, mean_b, statistic, pvalue, padj, significant
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .._settings import settings
from ..validate import InputError, check_choice
from .layout import GenomapLayout
from .stack import dense

log = logging.getLogger(__name__)

#: The tests :func:`compare_batch_groups` runs.
TESTS = ("mwu", "mixed")
#: up to this many target batches in total, Mann-Whitney p-values are exact (no ties) rather than asymptotic
_MWU_EXACT_MAX = 60


def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (step-up, monotone, capped at 1). NaNs stay NaN and do
    not count as tests."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    scaled = pv[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(scaled[::-1])[::-1]
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


# ---------------------------------------------------------------------------------------------- inputs

def _stack_features(stack: ad.AnnData, layout: GenomapLayout | None, layer: str | None):
    vals = dense(stack.layers[layer] if layer is not None else stack.X).astype(np.float64)
    ftab = pd.DataFrame({"gene": stack.var_names.astype(str), "row": np.nan, "col": np.nan})
    if layout is not None:
        gt = layout.gene_table().set_index("gene")
        ftab["row"] = ftab["gene"].map(gt["row"])
        ftab["col"] = ftab["gene"].map(gt["col"])
    return vals, ftab, stack.obs


def _image_features(images: Any, layout: GenomapLayout | None):
    imgs = np.asarray(images)
    if imgs.ndim != 3:
        raise InputError(f"images must be (n, rows, cols), got shape {imgs.shape}")
    n, rows, cols = imgs.shape
    vals = imgs.reshape(n, rows * cols).astype(np.float64)
    if layout is not None:
        if layout.shape != (rows, cols):
            raise InputError(f"layout grid {layout.shape} does not match images {(rows, cols)}")
        ftab = layout.pixel_table()[["gene", "row", "col"]].copy()
        keep = ftab["gene"].notna().to_numpy()
    else:
        rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        ftab = pd.DataFrame({"gene": None, "row": rr.ravel(), "col": cc.ravel()})
        keep = np.any(vals != 0, axis=0)
    return vals[:, keep], ftab.loc[keep].reset_index(drop=True), None


def features(images_or_stack: np.ndarray | ad.AnnData, layout: GenomapLayout | None = None,
             layer: str | None = "zscore") -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame | None]:
    """(rows x features matrix, feature table [gene, row, col], the stack's obs or None) of genomap images
    (the non-empty pixels when ``layout`` is given) or of a stack AnnData (its genes, on ``layer``)."""
    if isinstance(images_or_stack, ad.AnnData):
        return _stack_features(images_or_stack, layout, layer)
    return _image_features(images_or_stack, layout)


@dataclass
class RowGroups:
    """Which stack rows enter a comparison and how (see :func:`row_groups`)."""

    use: np.ndarray          # rows that enter (RE rows of a batch in group a or b)
    in_a: np.ndarray         # of those rows, which are in group a
    target: np.ndarray       # of those rows, the target batch (str)
    batches_a: list[str]
    batches_b: list[str]


def row_groups(obs: pd.DataFrame, group_of_batch: Mapping[str, str], a: str, b: str) -> RowGroups:
    """The RE rows of ``obs`` whose target batch is in group ``a`` or ``b`` of ``group_of_batch``."""
    gmap = {str(k): str(v) for k, v in group_of_batch.items()}
    kind = obs["kind"].astype(str).to_numpy()
    target = obs["target_batch"].astype(object).to_numpy()
    grp = np.array([gmap.get(str(t)) if k == "re" else None for k, t in zip(kind, target)], dtype=object)
    use = np.array([g in (a, b) for g in grp], dtype=bool)
    ignored = sorted({str(t) for k, t in zip(kind, target) if k == "re" and str(t) not in gmap})
    if ignored:
        log.info("compare_batch_groups: target batches without a group are ignored: %s", ignored)
    batches_a = sorted({str(t) for t, g in zip(target[use], grp[use]) if g == a})
    batches_b = sorted({str(t) for t, g in zip(target[use], grp[use]) if g == b})
    if not batches_a or not batches_b:
        raise InputError(f"each group needs at least one target batch in the stack: "
                         f"{a}: {batches_a}, {b}: {batches_b}")
    if min(len(batches_a), len(batches_b)) < 3:
        log.warning("compare_batch_groups: few target batches (%d vs %d); tests have little power",
                    len(batches_a), len(batches_b))
    return RowGroups(use=use, in_a=grp[use] == a, target=target[use].astype(str), batches_a=batches_a,
                     batches_b=batches_b)


# ---------------------------------------------------------------------------------------------- tests

def mwu_tests(bmeans: np.ndarray, n_a: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Mann-Whitney U per column of ``bmeans`` (batch means; the first ``n_a`` rows are group a):
    exact p-values where a column has no ties (and there are few batches), the tie-corrected normal
    approximation otherwise; NaN where all batch means are tied. Returns (U of group a, p-values)."""
    from scipy.stats import mannwhitneyu

    n_feat = bmeans.shape[1]
    stat, pval = np.full(n_feat, np.nan), np.full(n_feat, np.nan)
    tied = np.any(np.diff(np.sort(bmeans, axis=0), axis=0) == 0, axis=0)
    small = bmeans.shape[0] <= _MWU_EXACT_MAX
    for cols, method in ((~tied & small, "exact"), (tied | (not small), "asymptotic")):
        if not cols.any():
            continue
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore")
            res = mannwhitneyu(bmeans[:n_a][:, cols], bmeans[n_a:][:, cols], axis=0, alternative="two-sided",
                               method=method)
        stat[cols], pval[cols] = np.asarray(res.statistic, float), np.asarray(res.pvalue, float)
    const = np.ptp(bmeans, axis=0) == 0  # all batch means tied: no information
    stat[const], pval[const] = np.nan, np.nan
    return stat, pval


def _mixed_one(values: np.ndarray, in_a: np.ndarray, cells: np.ndarray) -> tuple[float, float]:
    """(z statistic, p-value) of the group coefficient in value ~ group + (1 | cell)."""
    import statsmodels.api as sm

    exog = np.column_stack([np.ones_like(values), in_a.astype(np.float64)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit = sm.MixedLM(values, exog, groups=cells).fit(reml=True)
            return float(fit.tvalues[1]), float(fit.pvalues[1])
        except Exception as exc:  # singular fits etc.
            log.debug("mixedlm failed: %s", exc)
            return float("nan"), float("nan")


def mixed_tests(v: np.ndarray, in_a: np.ndarray, cells: np.ndarray, bmeans: np.ndarray,
                max_pixels: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A ``MixedLM`` fit of value ~ group + (1 | cell) per column of ``v`` (at most ``max_pixels`` columns: those
    whose batch means vary most; the others and constant columns get NaN). Returns (z statistics, p-values)."""
    n_feat = v.shape[1]
    stat, pval = np.full(n_feat, np.nan), np.full(n_feat, np.nan)
    order = np.arange(n_feat)
    if max_pixels is not None and max_pixels < n_feat:
        order = np.argsort(-bmeans.var(axis=0), kind="stable")[: int(max_pixels)]
    for j in tqdm(order, desc="mixedlm", leave=False, disable=not settings.progress):
        if np.ptp(v[:, j]) == 0:
            continue
        stat[j], pval[j] = _mixed_one(v[:, j], in_a, cells)
    return stat, pval


def _result_table(ftab, rg: RowGroups, v, stat, pval, *, test, groups, fdr, alpha) -> pd.DataFrame:
    """The comparison table, sorted by (padj, pvalue), with the test's settings in ``attrs``."""
    a, b = groups
    mean_a, mean_b = v[rg.in_a].mean(axis=0), v[~rg.in_a].mean(axis=0)
    padj = benjamini_hochberg(pval) if fdr else pval.copy()
    out = ftab.copy()
    out["effect"] = mean_a - mean_b
    out["mean_a"] = mean_a
    out["mean_b"] = mean_b
    out["statistic"] = stat
    out["pvalue"] = pval
    out["padj"] = padj
    out["significant"] = np.nan_to_num(padj, nan=1.0) < alpha
    out = out.sort_values(["padj", "pvalue"], kind="stable", na_position="last").reset_index(drop=True)
    out.attrs.update({"test": test, "groups": [a, b], "batches": {a: rg.batches_a, b: rg.batches_b},
                      "fdr": bool(fdr), "alpha": float(alpha)})
    return out


def compare_batch_groups(images_or_stack: np.ndarray | ad.AnnData, stack_obs: pd.DataFrame | None = None, *,
                         group_of_batch: Mapping[str, str], groups: tuple[str, str], test: str = "mwu",
                         fdr: bool = True, alpha: float = 0.05, layout: GenomapLayout | None = None,
                         layer: str | None = "zscore", max_pixels: int | None = None) -> pd.DataFrame:
    """Pixel-wise (or gene-wise) differences between two groups of **target** batches.

    Input: either genomap images (n_rows, rows, cols) with ``stack_obs`` (the stack's obs, same row
    order) and preferably ``layout`` (to name each pixel's gene and skip empty pixels), or the
    stack AnnData itself (tests genes directly, on ``layer``, default the z-scores). Only the RE
    counterfactual rows are used; each row's group is ``group_of_batch[target_batch]`` and only
    ``groups = (a, b)`` enter (other batches/groups are ignored).

    ``effect`` = mean over rows of group ``a`` minus mean over rows of group ``b`` (z-score units).

    Tests
    -----
    ``"mwu"`` (scMEDAL's AML analysis): average each target batch's values over the cells, then a
    two-sided Mann-Whitney U per pixel between the batch means of the two groups (exact p-values
    when a pixel's batch means have no ties and there are at most 60 target batches, otherwise the
    tie-corrected normal approximation). The replicates are the target batches, which is the honest
    unit here. ``statistic`` = U of group ``a``. With ``k`` batches per group the smallest possible
    p-value is ``2 / C(2k, k)`` (e.g. 0.0022 for 6 vs 6), so with many pixels and few batches
    nothing may survive the FDR correction.

    ``"mixed"``: per pixel a statsmodels ``MixedLM`` fit of value ~ group with a random intercept
    per **cell** (``groups=cell``). scMEDAL's ASD analysis used ``groups=batch``; but the same cells
    are decoded into every target batch, so the observations are paired by cell, and the cell is
    the natural grouping factor (the group indicator varies within each cell). Caveat: cells within
    a target batch still share that batch's decoder effect, so with few target batches the p-values
    remain optimistic (pseudo-replication at the batch level); treat "mixed" as a sensitivity
    analysis and "mwu" as the primary test. It is slow (one fit per pixel): ``max_pixels`` keeps the
    ``max_pixels`` features with the largest variance of their per-target-batch means (unsupervised:
    group labels are not used); the others get NaN. ``statistic`` = z of the group coefficient.

    ``padj``: Benjamini-Hochberg over the tested features (``fdr=False``: padj = pvalue);
    ``significant`` = padj < ``alpha``.

    Returns a DataFrame sorted by (padj, pvalue) with columns gene, row, col, effect, mean_a,
    mean_b, statistic, pvalue, padj, significant; ``df.attrs`` records the test and the batches in
    each group.
    """
    check_choice("test", test, TESTS)
    if len(groups) != 2 or groups[0] == groups[1]:
        raise InputError(f"groups must be two different labels, got {groups!r}")
    a, b = (str(g) for g in groups)
    vals, ftab, obs_from_stack = features(images_or_stack, layout, layer)
    obs = stack_obs if stack_obs is not None else obs_from_stack
    if obs is None:
        raise InputError("stack_obs is required with images")
    if len(obs) != vals.shape[0]:
        raise InputError(f"stack_obs has {len(obs)} rows for {vals.shape[0]} images")
    rg = row_groups(obs, group_of_batch, a, b)
    v = vals[rg.use]
    bmeans = np.vstack([v[rg.target == bb].mean(axis=0) for bb in rg.batches_a + rg.batches_b])
    if test == "mwu":
        stat, pval = mwu_tests(bmeans, len(rg.batches_a))
    else:
        cells = obs["cell"].astype(str).to_numpy()[rg.use]
        stat, pval = mixed_tests(v, rg.in_a, cells, bmeans, max_pixels)
    out = _result_table(ftab, rg, v, stat, pval, test=test, groups=(a, b), fdr=fdr, alpha=alpha)
    log.info("compare_batch_groups (%s): %d of %d tested features significant (%s vs %s, %d vs %d batches)",
             test, int(out["significant"].sum()), int(np.isfinite(pval).sum()), a, b,
             len(rg.batches_a), len(rg.batches_b))
    return out
