"""Tests for scmedal_lite.genomaps (small: ~100 genes, <= 100 Gromov-Wasserstein iterations).

The model is a fake implementing the protocol the genomap step uses (batch_categories, batch_key,
var_names, scale, get_reconstruction, counterfactual), so these tests do not depend on model.py.
"""

from __future__ import annotations

import io
import json
import logging
import os

os.environ.setdefault("POT_BACKEND_DISABLE_TENSORFLOW", "1")
os.environ.setdefault("POT_BACKEND_DISABLE_PYTORCH", "1")

import anndata as ad  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from precision import chain_rtol  # noqa: E402
from scmedal_lite import genomaps as gm  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # genomap uses np.matrix

N_GENES = 100
N_BATCHES = 20
DISEASE = [f"b{i:02d}" for i in range(10)]  # the first 10 target batches are "disease" donors
SHIFTED = "G007"


# --------------------------------------------------------------------------------------------------
# fixtures: synthetic data and a fake model
# --------------------------------------------------------------------------------------------------
class FakeModel:
    """Implements the model protocol of the genomap step.

    RE counterfactual of cell x in batch b = 0.9 * scaled(x) + offset_b (per gene, N(0, 0.05))
    + small cell-level noise; in the DISEASE batches gene SHIFTED is moved up by ``shift``.
    """

    def __init__(self, adata: ad.AnnData, batch_key: str = "batch", shift: float = 0.6, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.batch_key = batch_key
        self.batch_categories = sorted(adata.obs[batch_key].unique())
        self.var_names = adata.var_names.copy()
        x = np.asarray(adata.X)
        self._lo, self._hi = x.min(axis=0), x.max(axis=0)
        self._offsets = {b: rng.normal(0.0, 0.05, adata.n_vars) for b in self.batch_categories}
        j = list(self.var_names).index(SHIFTED)
        for b in DISEASE:
            self._offsets[b][j] += shift
        self.calls: list[str] = []

    def scale(self, adata):
        x = np.asarray(adata[:, self.var_names].X, dtype=np.float64)
        return ((x - self._lo) / np.where(self._hi > self._lo, self._hi - self._lo, 1.0)).astype(np.float32)

    def get_reconstruction(self, kind="fe", adata=None, scaled=True):
        assert kind == "fe" and scaled
        return (0.9 * self.scale(adata) + 0.05).astype(np.float32)

    def counterfactual(self, adata, batch, mode="full", scaled=True):
        assert scaled
        self.calls.append(batch)
        i = self.batch_categories.index(batch)
        noise = np.random.default_rng(1000 + i).normal(0.0, 0.02, (adata.n_obs, adata.n_vars))
        x = 0.9 * self.scale(adata) + self._offsets[batch] + noise
        return ad.AnnData(X=x.astype(np.float32), obs=pd.DataFrame(index=adata.obs_names.copy()))


def make_adata(n_cells: int = 400, seed: int = 0) -> ad.AnnData:
    """Correlated genes (5 latent factors); cell types A (75 %) and B (25 %); 20 batches with a
    diagnosis column; batch b19 has no B cells."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_cells, 5))
    x = z @ rng.normal(size=(5, N_GENES)) + rng.normal(size=(n_cells, N_GENES))
    batches = np.array([f"b{i:02d}" for i in range(N_BATCHES)])[rng.integers(0, N_BATCHES, n_cells)]
    ctype = np.where(rng.random(n_cells) < 0.75, "A", "B")
    ctype[batches == "b19"] = "A"
    obs = pd.DataFrame({
        "batch": pd.Categorical(batches),
        "cell_type": pd.Categorical(ctype),
        "diagnosis": np.where(np.isin(batches, DISEASE), "disease", "control"),
    }, index=[f"c{i:04d}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"G{i:03d}" for i in range(N_GENES)])
    return ad.AnnData(X=x.astype(np.float32), obs=obs, var=var)


@pytest.fixture(scope="module")
def adata():
    return make_adata()


@pytest.fixture(scope="module")
def model(adata):
    return FakeModel(adata)


@pytest.fixture(scope="module")
def stack(adata, model):
    cells = gm.select_cells(adata, labels_key="cell_type", cell_types=["A", "B"], n_cells=40,
                            batch_key="batch", force_batches=["b00", "b15"], seed=0)
    return gm.zscore_stack(gm.counterfactual_stack(model, adata, cells))


@pytest.fixture(scope="module")
def layout(stack):
    return gm.GenomapLayout.fit(stack.layers["zscore"], genes=stack.var_names, n_iter=50)


@pytest.fixture(scope="module")
def images(layout, stack):
    return layout.transform(stack.layers["zscore"])


def correlated(n_rows: int, n_genes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_rows, 4)) @ rng.normal(size=(4, n_genes)) + rng.normal(size=(n_rows, n_genes))


# --------------------------------------------------------------------------------------------------
# grid and layout
# --------------------------------------------------------------------------------------------------
def test_grid_shape_examples_and_never_drops_genes():
    assert gm.grid_shape(1000) == (32, 32)
    assert gm.grid_shape(2916) == (54, 54)
    assert gm.grid_shape(3000) == (55, 55)
    assert gm.grid_shape(990) == (31, 32)
    assert gm.grid_shape(1) == (1, 1)
    for n in range(1, 3001):
        r, c = gm.grid_shape(n)
        assert r * c >= n and c - r in (0, 1)
        prev = (r - 1) * r if r == c else r * r  # the next smaller near-square grid
        assert prev < n
    with pytest.raises(ValueError):
        gm.grid_shape(0)


def test_package_last_cell_bug_and_transform_fills_it():
    """genomap leaves the last row's genomap at zero; our transform matches it elsewhere and fills it.
    Uses a non-square gene count (30 genes on a 6 x 6 grid) so the package's truncation is covered."""
    genomap = gm._import_genomap()
    x = correlated(12, 30, seed=1)
    g_pkg, T_pkg = genomap.construct_genomap_returnT(x, 6, 6, epsilon=0, num_iter=30)
    assert g_pkg.shape == (12, 6, 6, 1)
    assert not np.any(g_pkg[-1]), "package bug gone? its last genomap used to be all zeros"
    assert np.any(g_pkg[-2])

    layout = gm.GenomapLayout.fit(x, grid=(6, 6), n_iter=30, method="genomap")
    np.testing.assert_allclose(layout.T, T_pkg)
    imgs = layout.transform(x)
    assert imgs.shape == (12, 6, 6)
    # our projection against the package's: length-30 dot products in another order (tests/precision.py)
    tol = chain_rtol(30) * float(np.abs(x).max()) * 36
    np.testing.assert_allclose(imgs[:-1], g_pkg[:-1, :, :, 0], rtol=chain_rtol(30), atol=tol)
    # last row filled: each gene's value (times the package's rows*cols/n_genes factor) at its pixel
    assert np.any(imgs[-1])
    gt = layout.gene_table()
    np.testing.assert_allclose(imgs[-1][gt["row"], gt["col"]], x[-1] * 36 / 30, rtol=chain_rtol(30), atol=tol)
    # the 6 surplus pixels (last ones in column-major order) stay empty in every image
    flat_f = imgs.transpose(0, 2, 1).reshape(12, -1)
    assert not np.any(flat_f[:, 30:])


def test_grid_distances_are_distances_between_pixels():
    d = gm.grid_distances(3, 2)  # pixels in genomap's column-major order: (0,0) (1,0) (2,0) (0,1) (1,1) (2,1)
    assert d.shape == (6, 6)
    np.testing.assert_allclose(d[0], [0, 1, 2, 1, np.sqrt(2), np.sqrt(5)])
    np.testing.assert_allclose(d, d.T)
    assert gm.grid_distances(32, 32, 1000).shape == (1000, 1000)


def test_published_grid_distances_are_differences_of_radii():
    """What the docs say genomap 1.3.6 gets wrong: its pixel "distance" is |r_i - r_j|, r the distance from
    the grid's centre, so pixels on one ring are at distance 0 and the true distances barely correlate with it."""
    genomap = gm._import_genomap()
    published = genomap.createMeshDistance(32, 32)
    centre = np.array([16.0, 16.0])     # genomap's grid runs from -16 to 15 on each axis
    radius = np.sqrt(((gm.layout.pixel_coordinates(32, 32) - centre) ** 2).sum(axis=1))
    np.testing.assert_allclose(published, np.abs(radius[:, None] - radius[None, :]), atol=1e-9)
    true = gm.grid_distances(32, 32)
    upper = np.triu_indices(1024, 1)
    assert np.corrcoef(published[upper], true[upper])[0, 1] < 0.15


def planted_modules(n_rows=300, n_modules=6, per_module=16, n_other=28, seed=0):
    """Rows x genes with a known answer: ``n_modules`` groups of genes that share a factor (r about 0.8 within
    a group, about 0 between), plus ``n_other`` independent genes; returns (x, module of each gene or -1)."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n_rows, n_modules))
    module = np.repeat(np.arange(n_modules), per_module)
    x = factors[:, module] * 2.0 + rng.normal(size=(n_rows, module.size))
    x = np.concatenate([x, rng.normal(size=(n_rows, n_other))], axis=1)
    order = rng.permutation(x.shape[1])     # modules scattered over the columns
    return x[:, order], np.concatenate([module, np.full(n_other, -1)])[order]


def test_default_layout_puts_coexpressed_genes_together_and_the_published_one_does_not():
    x, module = planted_modules()
    same = module[:, None] == module[None, :]
    upper = np.triu_indices(module.size, 1)
    within = (same & (module[:, None] >= 0))[upper]
    ratios = {}
    for method in gm.LAYOUT_METHODS:
        layout = gm.GenomapLayout.fit(x, n_iter=100, method=method)
        table = layout.gene_table()
        xy = table[["row", "col"]].to_numpy(float)
        dist = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))[upper]
        ratios[method] = dist[within].mean() / dist.mean()
        # layout_locality finds the same: the module pairs are the most correlated ones
        loc = gm.layout_locality(layout, x, n_pairs=int(within.sum()))
        assert loc["ratio"] == pytest.approx(ratios[method], rel=0.05)
    assert ratios["euclidean"] < 0.5, ratios          # a module's genes sit together
    assert ratios["genomap"] > 0.75, ratios           # about as far apart as any two genes
    assert gm.GenomapLayout.fit(x, n_iter=100).meta["iterations"] < 100   # converged before the cap


def test_each_transport_of_the_layout_is_solved_to_its_optimum(monkeypatch, caplog):
    """The exact transports inside the Gromov-Wasserstein solver get layout.emd_iterations: with POT's fixed
    cap, 2,000 genes stopped short of the optimum. Forcing a tiny cap shows the cap reaches POT."""
    from scmedal_lite.genomaps import layout as layout_module

    assert layout_module.emd_iterations(2000) > 100_000 == layout_module.emd_iterations(300)
    x, _ = planted_modules()
    with caplog.at_level(logging.WARNING, logger="scmedal_lite.genomaps.layout"):
        solved = gm.GenomapLayout.fit(x, n_iter=50)
    assert "numItermax" not in caplog.text
    key = gm.layout_cache_key(x, n_iter=50)
    monkeypatch.setattr(layout_module, "emd_iterations", lambda n_genes: 5)
    assert gm.layout_cache_key(x, n_iter=50) != key          # a cache made under another cap is not reused
    with caplog.at_level(logging.WARNING, logger="scmedal_lite.genomaps.layout"):
        capped = gm.GenomapLayout.fit(x, n_iter=50)
    assert "numItermax reached before optimality" in caplog.text
    assert not np.array_equal(solved.T, capped.T)


def test_layout_method_is_checked_and_saved(tmp_path):
    with pytest.raises(ValueError, match="method must be one of"):
        gm.LayoutParams(method="radial")
    x = correlated(30, 20, seed=6)
    layout = gm.GenomapLayout.fit(x, n_iter=30)
    assert layout.method == "euclidean"
    again = gm.GenomapLayout.fit(x, n_iter=30)
    np.testing.assert_array_equal(layout.T, again.T)           # same data, same layout
    layout.save(tmp_path / "lay")
    assert gm.GenomapLayout.load(tmp_path / "lay").method == "euclidean"
    info = json.loads((tmp_path / "lay" / "layout.json").read_text())
    del info["method"]                                        # saved before methods existed: genomap's
    (tmp_path / "lay" / "layout.json").write_text(json.dumps(info))
    assert gm.GenomapLayout.load(tmp_path / "lay").method == "genomap"
    assert gm.layout_cache_key(x, n_iter=30) != gm.layout_cache_key(x, n_iter=30, method="genomap")


def test_gene_table_is_where_one_hot_lights_up():
    x = correlated(60, 95, seed=2)  # 95 genes -> 10 x 10 grid, 5 empty pixels
    layout = gm.GenomapLayout.fit(x, genes=[f"g{i}" for i in range(95)], n_iter=40)
    assert layout.shape == (10, 10)
    gt = layout.gene_table()
    assert list(gt["gene"]) == layout.genes and len(gt) == 95  # no gene dropped
    assert not gt.duplicated(["row", "col"]).any()
    onehot = layout.transform(np.eye(95))
    flat = onehot.reshape(95, -1).argmax(axis=1)
    np.testing.assert_array_equal(flat // 10, gt["row"])
    np.testing.assert_array_equal(flat % 10, gt["col"])
    # and nothing else lights up
    assert np.count_nonzero(onehot.reshape(95, -1), axis=1).max() == 1
    ptab = layout.pixel_table()
    assert ptab["gene"].notna().sum() == 95
    lit = ptab.dropna(subset=["gene"]).set_index("gene")
    assert (lit.loc[gt["gene"], "row"].to_numpy() == gt["row"].to_numpy()).all()


def test_constant_gene_breaks_package_but_not_fit():
    genomap = gm._import_genomap()
    x = correlated(30, 20, seed=3)
    x[:, 4] = 0.0  # a zero-valued (padding-like) gene
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, T_pkg = genomap.construct_genomap_returnT(x, 5, 4, num_iter=20)
    assert T_pkg.sum() == 0  # NaN correlation -> solver gives up -> empty coupling, blank images
    for method in gm.LAYOUT_METHODS:
        layout = gm.GenomapLayout.fit(x, grid=(5, 4), n_iter=20, method=method)
        assert np.isclose(layout.T.sum(), 1.0)
        assert layout.gene_table()["weight"].min() > 0.99


def test_one_gene_gets_the_one_pixel():
    for method in gm.LAYOUT_METHODS:
        layout = gm.GenomapLayout.fit(correlated(10, 1), n_iter=5, method=method)
        assert layout.shape == (1, 1) and np.allclose(layout.T, [[1.0]])


def test_fit_rejects_too_small_grid():
    with pytest.raises(ValueError, match="too small|cannot drop"):
        gm.GenomapLayout.fit(correlated(10, 20), grid=(4, 4), n_iter=5)


def test_save_load_round_trip(tmp_path, layout, stack, images):
    layout.save(tmp_path / "lay")
    assert sorted(p.name for p in (tmp_path / "lay").iterdir()) == ["coupling.npz", "layout.json"]
    loaded = gm.GenomapLayout.load(tmp_path / "lay")
    assert loaded.genes == layout.genes and loaded.shape == layout.shape and loaded.n_iter == layout.n_iter
    np.testing.assert_array_equal(loaded.T, layout.T)
    np.testing.assert_array_equal(loaded.transform(stack.layers["zscore"]), images)
    pd.testing.assert_frame_equal(loaded.gene_table(), layout.gene_table())


def test_fit_or_load_uses_cache(tmp_path, monkeypatch):
    genomap = gm._import_genomap()
    calls = []
    real = genomap.construct_genomap_returnT

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(genomap, "construct_genomap_returnT", counting)
    x = correlated(40, 30, seed=4)
    first = gm.fit_or_load(tmp_path, x, n_iter=20, method="genomap")
    second = gm.fit_or_load(tmp_path, x, n_iter=20, method="genomap")
    assert len(calls) == 1
    assert first.meta["cache_hit"] is False and second.meta["cache_hit"] is True
    assert second.method == "genomap"
    np.testing.assert_array_equal(first.transform(x), second.transform(x))
    gm.fit_or_load(tmp_path, x, n_iter=21, method="genomap")  # other parameters -> other key -> refit
    gm.fit_or_load(tmp_path, x + 1e-3 * np.arange(30), n_iter=20, method="genomap")  # other data -> refit
    assert len(calls) == 3
    euclidean = gm.fit_or_load(tmp_path, x, n_iter=20)  # the default method: its own entry, not genomap's
    assert len(calls) == 3 and euclidean.meta["cache_hit"] is False and euclidean.method == "euclidean"
    assert gm.fit_or_load(tmp_path, x, n_iter=20).meta["cache_hit"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_fit_or_load_swaps_a_broken_entry_in_one_step(tmp_path, monkeypatch):
    """An unreadable cache entry is refitted and replaced by an atomic folder swap (io.atomic_dir), never
    deleted first: the swap is asked to overwrite, and no temporary folder is left."""
    from scmedal_lite import io
    from scmedal_lite.genomaps import layout as layout_module

    x = correlated(40, 30, seed=5)
    key = gm.layout_cache_key(x, n_iter=20)
    entry = tmp_path / f"layout-{key[:20]}"
    entry.mkdir()
    (entry / "layout.json").write_text("{ torn")
    swaps = []
    real = io.atomic_dir

    def recording(path, **kwargs):
        swaps.append((str(path), kwargs))
        return real(path, **kwargs)

    monkeypatch.setattr(layout_module, "atomic_dir", recording)
    fitted = gm.fit_or_load(tmp_path, x, n_iter=20)
    assert fitted.meta["cache_hit"] is False and swaps == [(str(entry), {"overwrite": True})]
    again = gm.fit_or_load(tmp_path, x, params=gm.LayoutParams(n_iter=20))
    assert again.meta["cache_hit"] is True
    np.testing.assert_array_equal(again.T, fitted.T)
    assert sorted(p.name for p in tmp_path.iterdir()) == [entry.name]


# --------------------------------------------------------------------------------------------------
# cell selection
# --------------------------------------------------------------------------------------------------
def test_select_cells_forced_batches_and_determinism(adata, caplog):
    # 8 cells from 400: without forcing, covering all 5 available (batch, type) pairs would be luck
    kw = dict(labels_key="cell_type", cell_types=["A", "B"], n_cells=8, batch_key="batch",
              force_batches=["b03", "b07", "b19"])
    with caplog.at_level(logging.WARNING, logger="scmedal_lite.genomaps"):
        cells = gm.select_cells(adata, seed=0, **kw)
    assert "no cell of type 'B'" in caplog.text  # b19 has no B cells: warned, not fatal
    assert len(cells) == 8 and cells.is_unique and set(cells) <= set(adata.obs_names)
    sel = adata.obs.loc[cells]
    for b in ["b03", "b07"]:
        for t in ["A", "B"]:
            assert ((sel["batch"] == b) & (sel["cell_type"] == t)).any(), (b, t)
    assert ((sel["batch"] == "b19") & (sel["cell_type"] == "A")).any()
    assert cells.equals(gm.select_cells(adata, seed=0, **kw))
    assert not cells.equals(gm.select_cells(adata, seed=1, **kw))


def test_select_cells_proportional_and_capped(adata):
    frac_a = (adata.obs["cell_type"] == "A").mean()
    cells = gm.select_cells(adata, labels_key="cell_type", cell_types=["A", "B"], n_cells=100,
                            batch_key="batch", seed=0)
    n_a = int((adata.obs.loc[cells, "cell_type"] == "A").sum())
    assert abs(n_a - 100 * frac_a) <= 1
    only_b = gm.select_cells(adata, labels_key="cell_type", cell_types="B", n_cells=10_000,
                             batch_key="batch")
    assert len(only_b) == int((adata.obs["cell_type"] == "B").sum())


def test_select_cells_errors(adata):
    kw = dict(labels_key="cell_type", batch_key="batch")
    with pytest.raises(ValueError, match="unknown cell type"):
        gm.select_cells(adata, cell_types=["Z"], **kw)
    with pytest.raises(ValueError, match="unknown batch"):
        gm.select_cells(adata, cell_types=["A"], force_batches=["nope"], **kw)
    with pytest.raises(ValueError, match="not an obs column"):
        gm.select_cells(adata, cell_types=["A"], labels_key="missing", batch_key="batch")


# --------------------------------------------------------------------------------------------------
# stack and z-scores
# --------------------------------------------------------------------------------------------------
def test_counterfactual_stack_layout_and_zscores(stack, model, adata):
    n = stack.uns["genomap_stack"]["n_cells"]
    assert stack.shape == (n * (N_BATCHES + 2), N_GENES)
    assert list(stack.var_names) == list(model.var_names)
    obs = stack.obs
    assert {"cell", "kind", "target_batch", "source_batch", "batch", "cell_type", "diagnosis"} <= set(obs)
    assert (obs["kind"].value_counts().to_dict() == {"re": n * N_BATCHES, "input": n, "fe": n})
    assert obs.loc[obs["kind"] != "re", "target_batch"].isna().all()
    assert sorted(obs.loc[obs["kind"] == "re", "target_batch"].unique()) == model.batch_categories
    assert (obs["source_batch"] == obs["batch"].astype(str)).all()
    cells = pd.Index(obs["cell"][:n])
    np.testing.assert_allclose(stack.X[:n], model.scale(adata[cells]))
    z = stack.layers["zscore"].astype(np.float64)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0, ddof=1), 1, atol=1e-4)
    assert not np.allclose(stack.X, z)  # X keeps scaled values


def test_zscore_constant_gene_and_subset_of_targets(adata, model):
    x = np.array([[1.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    z = gm.zscore_columns(x)
    assert np.all(z[:, 1] == 0)
    np.testing.assert_allclose(z[:, 0], (x[:, 0] - x[:, 0].mean()) / x[:, 0].std(ddof=1))
    st = gm.counterfactual_stack(model, adata, adata.obs_names[:3], target_batches=["b01", "b02"])
    assert st.n_obs == 3 * 4
    assert list(st.obs_names[:2]) == ["c0000|input", "c0001|input"]
    with pytest.raises(ValueError, match="unknown target batch"):
        gm.counterfactual_stack(model, adata, adata.obs_names[:3], target_batches=["zz"])


# --------------------------------------------------------------------------------------------------
# group comparison
# --------------------------------------------------------------------------------------------------
GROUPS = {f"b{i:02d}": ("disease" if f"b{i:02d}" in DISEASE else "control") for i in range(N_BATCHES)}


def test_benjamini_hochberg_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(0).uniform(size=50) ** 2
    np.testing.assert_allclose(gm.benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1])
    out = gm.benjamini_hochberg([0.01, np.nan, 0.04])
    assert np.isnan(out[1]) and np.allclose(out[[0, 2]], [0.02, 0.04])


def test_mwu_finds_the_shifted_gene(images, stack, layout):
    res = gm.compare_batch_groups(images, stack.obs, group_of_batch=GROUPS, groups=("disease", "control"),
                                  test="mwu", layout=layout)
    assert len(res) == N_GENES  # one row per non-empty pixel
    top = res.iloc[0]
    assert top["gene"] == SHIFTED and top["significant"] and top["padj"] < 0.01 and top["effect"] > 0
    gt = layout.gene_table().set_index("gene")
    assert (top["row"], top["col"]) == (gt.at[SHIFTED, "row"], gt.at[SHIFTED, "col"])
    assert res["significant"].sum() == 1  # unrelated genes are not significant
    assert res.attrs["batches"]["disease"] == DISEASE
    # gene-level on the stack itself agrees
    res_g = gm.compare_batch_groups(stack, group_of_batch=GROUPS, groups=("disease", "control"),
                                    layout=layout)
    assert res_g.iloc[0]["gene"] == SHIFTED and res_g["significant"].sum() == 1
    # without FDR correction some null genes pass p < 0.05 by chance, the raw p is kept
    raw = gm.compare_batch_groups(images, stack.obs, group_of_batch=GROUPS, groups=("disease", "control"),
                                  layout=layout, fdr=False)
    np.testing.assert_array_equal(raw["padj"], raw["pvalue"])


def test_group_comparison_does_not_depend_on_the_layout(images, stack, layout):
    """Each pixel is one gene under either layout and pixels are tested one by one: same genes, same p-values."""
    published = gm.GenomapLayout.fit(stack.layers["zscore"], genes=stack.var_names, n_iter=50, method="genomap")
    assert not published.gene_table()[["row", "col"]].equals(layout.gene_table()[["row", "col"]])
    tables = [gm.compare_batch_groups(lay.transform(stack.layers["zscore"]), stack.obs, group_of_batch=GROUPS,
                                      groups=("disease", "control"), test="mwu", layout=lay)
              .set_index("gene").sort_index() for lay in (layout, published)]
    for column in ("pvalue", "padj", "significant"):
        np.testing.assert_allclose(tables[0][column].astype(float), tables[1][column].astype(float), rtol=1e-9)


def test_mixed_model_top_pixels(images, stack, layout):
    res = gm.compare_batch_groups(images, stack.obs, group_of_batch=GROUPS, groups=("disease", "control"),
                                  test="mixed", layout=layout, max_pixels=4)
    assert np.isfinite(res["pvalue"]).sum() == 4
    assert res.iloc[0]["gene"] == SHIFTED and res.iloc[0]["significant"] and res.iloc[0]["effect"] > 0


def test_compare_errors(images, stack, layout):
    with pytest.raises(ValueError, match="at least one target batch"):
        gm.compare_batch_groups(images, stack.obs, group_of_batch={"b00": "x"}, groups=("x", "y"))
    with pytest.raises(ValueError, match="mwu"):
        gm.compare_batch_groups(images, stack.obs, group_of_batch=GROUPS, groups=("disease", "control"),
                                test="ttest")


# --------------------------------------------------------------------------------------------------
# plots and the whole step
# --------------------------------------------------------------------------------------------------
def test_plots(images, stack, layout):
    from matplotlib.figure import Figure

    cell = stack.obs.loc[stack.obs["source_batch"] == "b00", "cell"].iloc[0]
    fig = gm.plot_cell_panel(images, stack, cell, shown_batches=["b00", "b15", "b05"], layout=layout,
                             vmin=-1, vmax=2, top_n=5)
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 5
    colours = [matplotlib.colors.to_hex(ax.title.get_color()) for ax in axes]
    assert colours == ["#000000", "#000000", "#ff0000", "#000000", "#000000"]  # own batch b00 in red
    assert all(ax.images[0].get_clim() == (-1, 2) for ax in axes)
    assert len(axes[0].texts) == 5  # top-5 gene labels
    assert all(t.get_text() in set(layout.genes) for t in axes[0].texts)
    fig.savefig(io.BytesIO(), format="png")

    fig = gm.plot_cell_all_batches(images, stack, cell, layout=layout, ncols=6)
    assert len([ax for ax in fig.axes if ax.images]) == N_BATCHES
    fig.savefig(io.BytesIO(), format="png")

    res = gm.compare_batch_groups(images, stack.obs, group_of_batch=GROUPS, groups=("disease", "control"),
                                  layout=layout)
    fig = gm.plot_significant_pixels(res, layout)
    assert [t.get_text() for t in fig.axes[0].texts] == [SHIFTED]
    fig.savefig(io.BytesIO(), format="png")


def test_run_genomap_analysis_end_to_end(tmp_path, adata, model):
    kw = dict(labels_key="cell_type", cell_types=["A"], condition_key="diagnosis",
              shown_batches=["b00", "b12"], out_dir=tmp_path / "gm", n_cells=30, n_iter=30, seed=0,
              vmin=-1, vmax=2, top_n=3)
    res = gm.run_genomap_analysis(model, adata, **kw)
    out = tmp_path / "gm"
    for name in ["cells.csv", "stack_obs.csv", "genes.csv", "stack_scaled.npy", "stack_zscore.npy",
                 "genomaps.npy", "gene_table.csv", "pixel_table.csv", "comparison_mwu.csv",
                 "significant_pixels_mwu.png", "summary.json"]:
        assert (out / name).is_file(), name
    assert len(list((out / "panels").glob("*.png"))) == 4  # 2 cells x (panel + all batches)
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".")]
    assert not leftovers
    imgs = np.load(out / "genomaps.npy")
    assert imgs.shape == (30 * (N_BATCHES + 2), 10, 10) and np.any(imgs[-1])
    np.testing.assert_array_equal(imgs, res.images)
    cmp_csv = pd.read_csv(out / "comparison_mwu.csv")
    assert cmp_csv.iloc[0]["gene"] == SHIFTED
    assert res.comparison.attrs["groups"] == ["control", "disease"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layout_cache_hit"] is False and summary["grid"] == [10, 10]
    again = gm.run_genomap_analysis(model, adata, all_batches_panels=False, **kw)
    assert again.layout.meta["cache_hit"] is True
    np.testing.assert_array_equal(again.images, res.images)
