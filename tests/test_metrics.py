"""Tests for scmedal_lite.metrics and scmedal_lite.pl.plot_scores (small data, a few seconds in all)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_samples,
    silhouette_score,
)

from scmedal_lite import metrics  # noqa: E402
from scmedal_lite.pl import plot_scores  # noqa: E402


def values(df):
    """{(metric, label): value} for a single-embedding score table."""
    assert df["embedding"].nunique() == 1
    return {(m, lab): v for m, lab, v in df[["metric", "label", "value"]].itertuples(index=False)}


def clusters(rng, n_per=80, n_types=4, dim=8, spread=15.0):
    """Well separated cell-type clusters: returns X and the cell-type labels."""
    centers = rng.normal(scale=spread, size=(n_types, dim))
    ct = np.repeat(np.arange(n_types), n_per)
    return centers[ct] + rng.normal(size=(len(ct), dim)), ct


# ------------------------------------------------------------------ paper scores vs sklearn


def test_paper_scores_match_sklearn():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 6))
    batch = rng.choice(["a", "b", "c"], 150)
    ct = rng.integers(0, 4, 150)
    df = metrics.score_embeddings({"X": X}, batch, ct, metrics=["asw", "inv_db", "ch"], sample_size=None)
    v = values(df)
    assert len(df) == 6
    for lab, y in (("batch", batch), ("celltype", ct)):
        assert v["asw", lab] == pytest.approx(silhouette_score(X, y), abs=1e-12)
        assert v["inv_db", lab] == pytest.approx(1 / davies_bouldin_score(X, y), rel=1e-12)
        assert v["ch", lab] == pytest.approx(calinski_harabasz_score(X, y), rel=1e-12)


def test_celltype_asw_scib_is_rescaled_asw_and_lite_overall_is_weighted_mean():
    rng = np.random.default_rng(2)
    X, ct = clusters(rng, n_per=40, spread=3.0)
    batch = rng.integers(0, 3, len(ct))
    v = values(metrics.score_embeddings({"X": X}, batch, ct))
    assert v["celltype_asw_scib", "celltype"] == pytest.approx((v["asw", "celltype"] + 1) / 2)
    expected = 0.4 * np.mean([v["batch_asw_scib", "batch"], v["knn_inv_simpson", "batch"]]) + 0.6 * np.mean(
        [v["celltype_asw_scib", "celltype"], v["nmi", "celltype"], v["ari", "celltype"]]
    )
    assert v["lite_overall", "overall"] == pytest.approx(expected)


def test_batch_asw_scib_matches_definition_and_skips_single_batch_types():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 5))
    ct = np.repeat([0, 1, 2], 40)
    batch = rng.integers(0, 3, 120)
    batch[ct == 2] = 0  # cell type 2 is seen in one batch only: skipped, as in scIB
    ref = np.mean([np.mean(1 - np.abs(silhouette_samples(X[ct == c], batch[ct == c]))) for c in (0, 1)])
    v = values(metrics.score_embeddings({"X": X}, batch, ct, metrics=["batch_asw_scib"]))
    assert v["batch_asw_scib", "batch"] == pytest.approx(ref)


# ------------------------------------------------------------------ neighbourhood scores vs brute force


def brute_knn(X, k):
    d = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1)[:, :k]


def test_knn_fraction_and_inv_simpson_match_brute_force():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(90, 3))
    X[:30, 0] += 2.0  # some structure so neighbourhoods are uneven
    batch = np.where(X[:, 0] > 1, rng.integers(0, 2, 90), rng.integers(0, 3, 90))
    k = 7
    idx = brute_knn(X, k)
    frac = np.mean([np.mean(batch[idx[i]] == batch[i]) for i in range(90)])
    inv_simpson = []
    for i in range(90):
        p = np.bincount(batch[idx[i]], minlength=3) / k
        inv_simpson.append(1 / np.sum(p**2))
    scaled = (np.median(inv_simpson) - 1) / (3 - 1)
    n_b = np.bincount(batch)
    expected = np.sum(n_b / 90 * (n_b - 1) / 89)

    obs, exp = metrics.knn_same_batch_fraction(X, batch, k=k)
    assert obs == pytest.approx(frac)
    assert exp == pytest.approx(expected)
    v = values(metrics.score_embeddings({"X": X}, batch, n_neighbors=k, metrics=[
        "knn_inv_simpson", "knn_batch_fraction", "knn_batch_fraction_expected"]))
    assert v["knn_inv_simpson", "batch"] == pytest.approx(scaled)
    assert v["knn_batch_fraction", "batch"] == pytest.approx(frac)
    assert v["knn_batch_fraction_expected", "batch"] == pytest.approx(expected)


def test_knn_fraction_small_hand_example_excludes_self_even_for_duplicates():
    X = np.array([[0.0], [0.0], [0.1], [10.0], [10.0], [10.1]])
    batch = ["a", "a", "a", "b", "b", "b"]
    obs, exp = metrics.knn_same_batch_fraction(X, batch, k=2)
    assert obs == 1.0
    assert exp == pytest.approx(2 * 0.5 * 2 / 5)
    # with k=3 every cell has exactly one neighbour from the other batch
    obs3, _ = metrics.knn_same_batch_fraction(X, batch, k=3)
    assert obs3 == pytest.approx(2 / 3)


# ------------------------------------------------------------------ behaviour on synthetic structures


def test_mixed_batches_score_as_mixed_and_celltypes_as_separated():
    rng = np.random.default_rng(5)
    X, ct = clusters(rng, n_per=100)
    batch = rng.integers(0, 2, len(ct))  # independent of the structure: perfectly mixed
    v = values(metrics.score_embeddings({"X": X}, batch, ct, n_neighbors=15))
    assert v["batch_asw_scib", "batch"] > 0.9
    assert v["knn_inv_simpson", "batch"] > 0.8
    expected = v["knn_batch_fraction_expected", "batch"]
    assert v["knn_batch_fraction", "batch"] == pytest.approx(expected, abs=0.05)
    assert abs(v["asw", "batch"]) < 0.05
    assert v["asw", "celltype"] > 0.8
    assert v["celltype_asw_scib", "celltype"] > 0.9
    assert v["nmi", "celltype"] == pytest.approx(1.0)
    assert v["ari", "celltype"] == pytest.approx(1.0)
    assert v["lite_overall", "overall"] > 0.85


def test_separated_batches_score_as_unmixed():
    rng = np.random.default_rng(6)
    X, ct = clusters(rng, n_per=100)
    batch = rng.integers(0, 2, len(ct))
    X[:, 0] += 60.0 * batch  # every cell type split by batch, far apart
    v = values(metrics.score_embeddings({"X": X}, batch, ct))
    assert v["batch_asw_scib", "batch"] < 0.1
    assert v["knn_inv_simpson", "batch"] == pytest.approx(0.0)
    assert v["knn_batch_fraction", "batch"] == pytest.approx(1.0)
    assert v["knn_batch_fraction_expected", "batch"] == pytest.approx(0.5, abs=0.02)
    assert v["asw", "batch"] > 0.2  # global silhouette is diluted by the cell-type spread
    assert v["lite_overall", "overall"] < v["celltype_asw_scib", "celltype"]


def test_labels_none_gives_batch_scores_only_and_renamed_labels():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(80, 4))
    batch = rng.integers(0, 2, 80)
    df = metrics.score_embeddings({"X": X}, batch, None, batch_name="donor")
    assert set(df["label"]) == {"donor"}
    assert list(df["metric"]) == ["asw", "inv_db", "ch", *metrics.BATCH_METRICS]
    ct = rng.integers(0, 3, 80)
    df2 = metrics.score_embeddings({"X": X}, batch, ct, metrics=["nmi", "asw"], label_name="cell_type")
    assert df2[["metric", "label"]].values.tolist() == [["nmi", "cell_type"], ["asw", "batch"],
                                                         ["asw", "cell_type"]]


def test_inv_simpson_is_capped_with_more_batches_than_neighbours():
    """The unweighted index of k neighbours cannot exceed k: perfect mixing of 63 batches with 15 neighbours
    scores (15 - 1) / (63 - 1), about 0.23, which is why it is not called iLISI."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(63 * 20, 5))
    batch = np.tile(np.arange(63), 20)                        # independent of X: perfectly mixed
    v = values(metrics.score_embeddings({"X": X}, batch, metrics=["knn_inv_simpson"], sample_size=None))
    assert v["knn_inv_simpson", "batch"] <= (15 - 1) / (63 - 1) + 1e-12
    assert v["knn_inv_simpson", "batch"] > 0.15


def test_old_metric_names_warn_and_report_new_names():
    rng = np.random.default_rng(12)
    X, ct = clusters(rng, n_per=30, spread=3.0)
    batch = rng.integers(0, 3, len(ct))
    with pytest.warns(FutureWarning, match=r"deprecated.*knn_inv_simpson.*lite_overall"):
        old = metrics.score_embeddings({"X": X}, batch, ct, metrics=["ilisi", "scib_overall"])
    new = metrics.score_embeddings({"X": X}, batch, ct, metrics=["knn_inv_simpson", "lite_overall"])
    pd.testing.assert_frame_equal(old, new)
    assert not {"ilisi", "scib_overall"} & set(metrics.METRICS)


# ------------------------------------------------------------------ subsampling


def test_subsample_is_seeded_and_shared_across_embeddings():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(300, 5))
    batch = rng.integers(0, 3, 300)
    ct = rng.integers(0, 3, 300)
    kw = dict(metrics=["asw", "knn_batch_fraction", "nmi"], sample_size=120)

    a = metrics.score_embeddings({"one": X, "two": X.copy()}, batch, ct, seed=3, **kw)
    b = metrics.score_embeddings({"one": X}, batch, ct, seed=3, **kw)
    c = metrics.score_embeddings({"one": X}, batch, ct, seed=4, **kw)
    one, two = (a[a.embedding == e].reset_index(drop=True) for e in ("one", "two"))
    pd.testing.assert_series_equal(one["value"], two["value"])  # same cells for every embedding
    pd.testing.assert_frame_equal(one, b)  # reproducible
    assert not np.allclose(b["value"], c["value"])  # the seed matters

    idx = metrics.subsample_indices(300, 120, seed=3)
    assert len(idx) == 120 and len(np.unique(idx)) == 120 and np.all(np.diff(idx) > 0)
    whole = metrics.score_embeddings({"one": X[idx]}, batch[idx], ct[idx], sample_size=None,
                                     metrics=kw["metrics"], seed=3)
    pd.testing.assert_frame_equal(whole, b)
    np.testing.assert_array_equal(metrics.subsample_indices(50, 120), np.arange(50))


# ------------------------------------------------------------------ errors


@pytest.fixture
def small():
    rng = np.random.default_rng(9)
    return rng.normal(size=(40, 3)), rng.integers(0, 2, 40), rng.integers(0, 3, 40)


def test_unknown_metric_is_named(small):
    X, b, c = small
    with pytest.raises(ValueError, match=r"unknown metric.*'silhouette'.*valid names.*'asw'"):
        metrics.score_embeddings({"X": X}, b, c, metrics=["asw", "silhouette"])


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda X, b, c: ({"X": X}, b[:-1], c), "batch has 39 entries but the embeddings have 40"),
        (lambda X, b, c: ({"X": X}, b, c[:10]), "labels has 10 entries"),
        (lambda X, b, c: ({"X": X, "Y": X[:30]}, b, c), "different numbers of cells"),
        (lambda X, b, c: ({"X": np.where(np.eye(40, 3) > 0, np.nan, X)}, b, c), "'X' contains NaN"),
        (lambda X, b, c: ({"X": X}, np.zeros(40), c), "batch needs at least 2 distinct values"),
        (lambda X, b, c: ({"X": X}, b, np.ones(40)), "labels needs at least 2 distinct values"),
        (lambda X, b, c: ({"X": X[:, 0]}, b, c), "2-D array"),
        (lambda X, b, c: (X, b, c), "non-empty mapping"),
        (lambda X, b, c: ({"X": X}, np.array([None] + [1] * 39, dtype=object), c), "missing values"),
    ],
)
def test_bad_input_raises_clear_errors(small, mutate, match):
    emb, b, c = mutate(*small)
    with pytest.raises(ValueError, match=match):
        metrics.score_embeddings(emb, b, c)


def test_label_metrics_without_labels_and_too_many_neighbours(small):
    X, b, _ = small
    with pytest.raises(ValueError, match=r"\['nmi'\] need cell-type labels"):
        metrics.score_embeddings({"X": X}, b, None, metrics=["nmi"])
    with pytest.raises(ValueError, match="n_neighbors"):
        metrics.knn_same_batch_fraction(X, b, k=40)


def test_subsample_losing_a_batch_is_reported():
    X = np.random.default_rng(0).normal(size=(100, 2))
    batch = np.r_[np.zeros(99), 1]
    with pytest.raises(ValueError, match="in the subsample"):
        metrics.score_embeddings({"X": X}, batch, sample_size=5, seed=0)


# ------------------------------------------------------------------ fold summaries and tables


def folds_table():
    vals = {("PCA", "batch"): [0.10, 0.12, 0.09, 0.15, 0.11],
            ("PCA", "celltype"): [0.3, 0.31, 0.29, 0.35, 0.3],
            ("FE", "batch"): [-0.2, -0.25, -0.18, -0.22, -0.21], ("FE", "celltype"): [0.4]}
    rows = [(e, "asw", lab, v) for (e, lab), vs in vals.items() for v in vs]
    rows.append(("FE", "ch", "batch", 5.0))
    return pd.DataFrame(rows, columns=["embedding", "metric", "label", "value"]), vals


def test_summarize_folds_matches_hand_computation():
    df, vals = folds_table()
    s = metrics.summarize_folds(df)
    assert list(s.columns) == ["embedding", "metric", "label", "n", "mean", "std", "sem", "ci_low", "ci_high"]
    row = s[(s.embedding == "PCA") & (s.metric == "asw") & (s.label == "batch")].iloc[0]
    x = np.array(vals["PCA", "batch"])
    sem = x.std(ddof=1) / np.sqrt(5)
    half = stats.t.ppf(0.975, 4) * sem
    assert row["n"] == 5
    assert row["mean"] == pytest.approx(x.mean())
    assert row["std"] == pytest.approx(x.std(ddof=1))
    assert row["sem"] == pytest.approx(sem)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((x.mean() - half, x.mean() + half))
    lo, hi = stats.t.interval(0.95, 4, loc=x.mean(), scale=sem)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((lo, hi))

    single = s[(s.embedding == "FE") & (s.label == "celltype")].iloc[0]
    assert single["n"] == 1 and single["mean"] == 0.4
    assert np.isnan(single[["std", "sem", "ci_low", "ci_high"]].astype(float)).all()

    by_emb = metrics.summarize_folds(df[df.metric == "asw"], by="embedding")
    assert by_emb["n"].tolist() == [10, 6]
    with pytest.raises(ValueError, match="not found"):
        metrics.summarize_folds(df, by=("fold",))


def test_format_table_layout_and_strings():
    df, vals = folds_table()
    s = metrics.summarize_folds(df)
    t = metrics.format_table(s, metric="asw")
    assert list(t.index) == ["PCA", "FE"] and list(t.columns) == ["batch", "celltype"]
    r = s[(s.embedding == "PCA") & (s.metric == "asw") & (s.label == "batch")].iloc[0]
    assert t.loc["PCA", "batch"] == f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
    assert t.loc["FE", "celltype"] == "0.400"
    pd.testing.assert_frame_equal(metrics.format_table(df, metric="asw"), t)  # tidy input is summarised
    with pytest.raises(ValueError, match="'knn_inv_simpson' not in the summary"):
        metrics.format_table(s, metric="knn_inv_simpson")


# ------------------------------------------------------------------ plotting


def test_plot_scores_panels_and_axes():
    df, _ = folds_table()
    fig = plot_scores(df)
    try:
        assert [a.get_title() for a in fig.axes] == ["asw", "ch"]
        labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        assert labels == ["PCA", "FE"]
        assert len(fig.axes[0].patches) == 4  # 2 embeddings x 2 labels
    finally:
        plt.close(fig)

    fig2, ax = plt.subplots()
    try:
        assert plot_scores(df, metrics="ch", ax=ax) is fig2
        with pytest.raises(ValueError, match="1 Axes for 2 metrics"):
            plot_scores(df, ax=ax)
        with pytest.raises(ValueError, match=r"\['nmi'\] not in df"):
            plot_scores(df, metrics=["nmi"])
    finally:
        plt.close(fig2)


def test_plot_scores_on_real_scores():
    rng = np.random.default_rng(10)
    X, ct = clusters(rng, n_per=30)
    batch = rng.integers(0, 2, len(ct))
    df = metrics.score_embeddings({"A": X, "B": X[:, :3]}, batch, ct)
    fig = plot_scores(df)
    try:
        assert len(fig.axes) == len(metrics.METRICS)
    finally:
        plt.close(fig)


def test_within_batch_neighbours_kept_known_answers_and_errors():
    """1 for batches moved as wholes; lower when cells swap places inside their batch; the embedding and the
    reference must describe the same cells; single-cell batches are skipped."""
    from scmedal_lite.metrics import within_batch_neighbours_kept
    from scmedal_lite.validate import InputError

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 6))
    batch = np.repeat(["a", "b", "c"], 100)
    moved = ref * 2 + 30 * (batch == "b")[:, None]
    assert within_batch_neighbours_kept(moved, ref, batch) == 1.0
    half = ref.copy()
    half[:50] = rng.permutation(half[:50])                       # half of batch a scrambled
    assert 0.5 < within_batch_neighbours_kept(half, ref, batch) < 0.95
    with pytest.raises(InputError, match="same cells"):
        within_batch_neighbours_kept(ref[:10], ref, batch)
    lonely = np.array(["a"] * 299 + ["z"])
    assert within_batch_neighbours_kept(moved, ref, lonely) <= 1.0


def test_batch_variance_share_known_answers_and_errors():
    """The R² of the embedding on the batch: s²/4 / (1 + s²/4) for two equal batches of unit variance shifted
    by s along one axis; unchanged by scaling; agrees with a least-squares regression on the batch; a constant
    embedding and mismatched labels are named errors."""
    from scmedal_lite.metrics import batch_variance_share
    from scmedal_lite.validate import InputError

    rng = np.random.default_rng(3)
    batch = np.repeat(["a", "b"], 500)
    noise = rng.normal(size=(1000, 1))
    for b in ("a", "b"):                                  # exactly mean 0, variance 1 within each batch
        noise[batch == b] = (noise[batch == b] - noise[batch == b].mean()) / noise[batch == b].std()
    for s in (0.0, 2.0):
        shifted = noise + s * (batch == "b")[:, None]
        assert batch_variance_share(shifted, batch) == pytest.approx(s * s / 4 / (1 + s * s / 4), abs=1e-9)
        assert batch_variance_share(7 * shifted - 2, batch) == pytest.approx(batch_variance_share(shifted, batch))
    x = rng.normal(size=(300, 4)) + np.repeat(rng.normal(size=(3, 4)), 100, axis=0)
    three = np.repeat(["p", "q", "r"], 100)
    onehot = (three[:, None] == np.array(["p", "q", "r"])).astype(float)
    fitted = onehot @ np.linalg.lstsq(onehot, x, rcond=None)[0]
    r2 = 1 - np.sum((x - fitted) ** 2) / np.sum((x - x.mean(0)) ** 2)
    assert batch_variance_share(x, three) == pytest.approx(r2, rel=1e-9)
    with pytest.raises(InputError, match="constant"):
        batch_variance_share(np.ones((10, 2)), ["a"] * 5 + ["b"] * 5)
    with pytest.raises(InputError, match="entries"):
        batch_variance_share(x, three[:10])


def test_batch_variance_share_within_groups_ignores_the_batches_make_up():
    """Within groups: two batches with no shift but different cell-type make-up score near 0 within types and
    clearly above it overall; a shift of each batch within every type scores the same R² as the regression on
    (type, batch) minus the regression on type alone, pooled; mismatched groups are a named error."""
    from scmedal_lite.metrics import batch_variance_share
    from scmedal_lite.validate import InputError

    rng = np.random.default_rng(5)
    kind = np.repeat(["T", "B"], 500)
    batch = np.where(rng.random(1000) < np.where(kind == "T", 0.8, 0.2), "b1", "b2")   # make-up differs
    x = rng.normal(size=(1000, 3)) + 5 * (kind == "B")[:, None]
    assert batch_variance_share(x, batch) > 0.2
    assert batch_variance_share(x, batch, groups=kind) < 0.01
    shifted = x + 1.5 * (batch == "b2")[:, None]
    cells = kind + batch

    def residual(design):
        onehot = (design[:, None] == np.unique(design)).astype(float)
        return shifted - onehot @ np.linalg.lstsq(onehot, shifted, rcond=None)[0]

    expected = 1 - np.sum(residual(cells) ** 2) / np.sum(residual(kind) ** 2)
    assert batch_variance_share(shifted, batch, groups=kind) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(InputError, match="groups"):
        batch_variance_share(x, batch, groups=kind[:10])
