"""Bad input gets a clear answer: one test per bad input (error type and what the message names), property-based
tests of the input checks and of the parameter parsing, backed AnnData end to end, and safe model loading.

The table in book/bad_inputs.md lists the same inputs and messages.
"""

import json
import os
import re
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

import scmedal_lite as sm
from scmedal_lite import validate
from scmedal_lite.validate import (
    MIN_CELLS_PER_BATCH,
    InputError,
    as_bool,
    as_float,
    as_int,
    as_int_list,
    as_seed,
    check_adata,
    check_batches,
    check_obs_key,
    parse_settings,
)

SMALL = dict(hidden=[16], latent_dim=4)
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def synthetic(n_cells=240, n_genes=20, n_batches=3, seed=0):
    return sm.datasets.synthetic(n_cells=n_cells, n_genes=n_genes, n_batches=n_batches, seed=seed)


@pytest.fixture(scope="module")
def log_adata():
    """240 cells x 20 genes, 3 batches, log-normalised (what SCMEDAL expects)."""
    adata = synthetic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm.pp.prepare(adata, batch_key="batch")
    return adata


@pytest.fixture
def adata(log_adata):
    return log_adata.copy()


@pytest.fixture(scope="module")
def backed(log_adata, tmp_path_factory):
    """The same data written to disk and read back with backed="r" (X stays on disk)."""
    path = tmp_path_factory.mktemp("backed") / "log.h5ad"
    log_adata.write_h5ad(path)
    return anndata.read_h5ad(path, backed="r")


@pytest.fixture(scope="module")
def model(backed):
    """A tiny RE model set up and trained on the backed AnnData, with parameters given as strings (papermill)."""
    m = sm.SCMEDAL(backed, "batch", "celltype", seed="0", fec="false", hidden="16", latent_dim="4")
    return m.train(max_epochs="2", which="re", batch_size="64", learning_rate="1e-3", early_stopping="false",
                   progress="no")


def raises(match, fn, *args, **kwargs):
    """``fn`` raises InputError (a ValueError) whose message matches ``match``; returns the message."""
    with pytest.raises(InputError, match=match) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, ValueError)
    return str(info.value)


# ------------------------------------------------------------------------------------------------ files

def test_missing_file(tmp_path):
    msg = raises("File not found", sm.read_h5ad, tmp_path / "nope.h5ad")
    assert "nope.h5ad" in msg and "Check the path" in msg


def test_not_an_h5ad_file(tmp_path):
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n1,2\n")
    assert "Convert it first" in raises("is not an .h5ad file", sm.read_h5ad, csv)
    (tmp_path / "folder.h5ad").mkdir()
    raises("is not an .h5ad file", sm.read_h5ad, tmp_path / "folder.h5ad")


def test_unreadable_file(tmp_path):
    bad = tmp_path / "garbage.h5ad"
    bad.write_bytes(b"this is not HDF5" * 100)
    assert "Is the file complete" in raises("Could not read .* as AnnData", sm.read_h5ad, bad)
    (tmp_path / "zero.h5ad").write_bytes(b"")
    raises("empty file", sm.read_h5ad, tmp_path / "zero.h5ad")


def test_truncated_file(tmp_path, log_adata):
    path = tmp_path / "cut.h5ad"
    log_adata.write_h5ad(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    raises("Could not read", sm.read_h5ad, path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files without permission")
def test_file_without_read_permission(tmp_path, log_adata):
    path = tmp_path / "locked.h5ad"
    log_adata.write_h5ad(path)
    path.chmod(0)
    raises("Could not read", sm.read_h5ad, path)


@pytest.mark.parametrize("shape", [(0, 20), (20, 0)])
def test_empty_file(tmp_path, log_adata, shape):
    path = tmp_path / "empty.h5ad"
    log_adata[: shape[0], : shape[1]].copy().write_h5ad(path)
    raises(rf"empty \({shape[0]} cells x {shape[1]} genes\)", sm.read_h5ad, path)


def test_read_never_opens_for_writing(tmp_path, log_adata):
    path = tmp_path / "x.h5ad"
    log_adata.write_h5ad(path)
    raises("backed must be None .* or 'r'", sm.read_h5ad, path, backed="r+")
    assert sm.read_h5ad(path, backed="r").isbacked


# ------------------------------------------------------------------------------------------------ matrices

def test_not_an_anndata(log_adata):
    raises("Expected an AnnData object, got DataFrame", sm.SCMEDAL, log_adata.to_df(), "batch")


def test_duplicate_gene_names(adata):
    adata.var_names = ["g0"] * 2 + [f"g{i}" for i in range(2, adata.n_vars)]
    msg = raises("Duplicate gene names", sm.SCMEDAL, adata, "batch")
    assert "'g0'" in msg and "var_names_make_unique" in msg


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_nan_or_infinite_values(adata, value, kind):
    X = adata.X.toarray()
    X[-1, -1] = value                                 # the very last entry: every value is checked
    adata.X = sparse.csr_matrix(X) if kind == "sparse" else X
    assert "np.nan_to_num" in raises("NaN or infinite", sm.SCMEDAL, adata, "batch")


def test_negative_values(adata):
    X = adata.X.toarray()
    X[3, 4] = -0.5
    adata.X = X
    msg = raises("negative values", sm.SCMEDAL, adata, "batch")
    assert "scaled or centred" in msg


def test_nan_in_a_backed_file_beyond_the_first_block(tmp_path, log_adata, monkeypatch):
    monkeypatch.setattr(validate, "_BLOCK_ROWS", 16)
    bad = log_adata.copy()
    X = bad.X.toarray()
    X[200, 0] = np.nan
    bad.X = X
    bad.write_h5ad(tmp_path / "nan.h5ad")
    raises("NaN or infinite", sm.read_h5ad, tmp_path / "nan.h5ad", backed="r")


def test_raw_counts_where_log_expected_warn():
    counts = synthetic()
    with pytest.warns(UserWarning, match="looks like raw counts.*sm.pp.prepare"):
        sm.SCMEDAL(counts, "batch", **SMALL)


def test_log_data_where_counts_expected_warn(adata):
    with pytest.warns(UserWarning, match="does not look like raw counts"):
        sm.pp.prepare(adata)


def test_counts_and_log_detection():
    assert validate.looks_like_counts(np.array([0, 3, 25, 7.0]))
    assert not validate.looks_like_counts(np.array([0, 1.2, 3.4]))           # log-normalised
    assert not validate.looks_like_counts(np.array([0, 1, 3.0]))             # small integers: undecided, no warning


def test_layer_missing_or_x_none(adata):
    msg = raises("layer 'lognorm' is not in adata.layers", sm.SCMEDAL, adata, "batch", layer="lognorm")
    assert "'counts'" in msg                                                # the layers that exist are listed
    empty = anndata.AnnData(obs=adata.obs, var=adata.var)
    raises(r"adata.X is empty \(None\)", check_adata, empty)


def test_prepare_needs_data_in_memory(backed):
    raises("needs them in memory.*to_memory", sm.pp.prepare, backed)


# ------------------------------------------------------------------------------------------------ obs columns

@pytest.mark.parametrize("role, kwargs", [("batch_key", {"batch_key": "donor"}),
                                          ("labels_key", {"batch_key": "batch", "labels_key": "cell_type"})])
def test_key_not_in_obs(adata, role, kwargs):
    msg = raises(f"{role} '.*' is not a column of adata.obs", sm.SCMEDAL, adata, **kwargs)
    assert "columns are: ['batch', 'celltype', 'condition'" in msg


def test_condition_key_not_in_obs_or_with_missing_values(adata):
    from scmedal_lite.classify import cross_validate_mec
    msg = raises("condition_key 'disease' is not a column", cross_validate_mec, adata, batch_key="batch",
                 labels_key="celltype", condition_key="disease")
    assert "'condition'" in msg
    adata.obs["condition"] = adata.obs["condition"].astype(object)
    adata.obs.iloc[:3, adata.obs.columns.get_loc("condition")] = np.nan
    raises("condition_key 'condition' has 3 missing values", cross_validate_mec, adata, batch_key="batch",
           labels_key="celltype", condition_key="condition")


@pytest.mark.parametrize("key", ["batch", "celltype"])
def test_key_with_missing_values(adata, key):
    adata.obs[key] = adata.obs[key].astype(object)
    adata.obs.iloc[[0, 5], adata.obs.columns.get_loc(key)] = None
    msg = raises(f"'{key}' has 2 missing values", sm.SCMEDAL, adata, "batch", "celltype")
    assert "notna()" in msg


def test_single_batch(adata):
    adata.obs["one"] = "b0"
    assert "at least two" in raises("has a single batch", sm.SCMEDAL, adata, "one")


def test_batch_below_minimum_cells(adata):
    adata.obs["batch"] = adata.obs["batch"].astype(str)
    adata.obs.iloc[: MIN_CELLS_PER_BATCH - 1, adata.obs.columns.get_loc("batch")] = "tiny"
    msg = raises(f"fewer than {MIN_CELLS_PER_BATCH} cells", sm.SCMEDAL, adata, "batch")
    assert f"'tiny': {MIN_CELLS_PER_BATCH - 1}" in msg


def test_bad_split_column(adata):
    adata.obs["split"] = "train"
    adata.obs.iloc[:5, adata.obs.columns.get_loc("split")] = "holdout"
    raises(r"must hold train / val / test, found \['holdout'\]", sm.SCMEDAL, adata, "batch")
    adata.obs["split"] = "train"
    raises("no 'val' cells", sm.SCMEDAL, adata, "batch")


def test_fec_needs_labels(adata):
    raises("fec=True needs labels_key", sm.SCMEDAL, adata, "batch", fec="true")


# ------------------------------------------------------------------------------------------------ parameters

@pytest.mark.parametrize("kwargs, match", [
    ({"seed": "abc"}, "seed must be an integer, got 'abc'"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"seed": 2**40}, "seed must be <= 4294967295"),
    ({"seed": True}, "seed must be an integer"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"preset": "fast"}, "Unknown preset 'fast'; choose one of"),
    ({"scaling": "cell"}, "scaling must be one of"),
    ({"quirks": "none"}, "quirks must be one of"),
    ({"kl": "analytic"}, "kl must be one of"),
    ({"fec": "maybe"}, "fec must be true or false"),
    ({"latent_dim": 0}, "latent_dim must be >= 1"),
    ({"hidden": "big"}, r"hidden\[0\] must be an integer"),
    ({"hidden": "[__import__('os').getcwd()]"}, "hidden must be a list of integers"),
    ({"hidden": []}, "hidden must be a non-empty list"),
    ({"depth": 3}, r"Unknown settings \['depth'\]"),
    ({"fe": {"w_recon": -1}}, r"fe\['w_recon'\] must be >= 0.0"),
    ({"re": {"w_kl": 1}}, r"Unknown re settings \['w_kl'\]"),
    ({"schedule": {"batch_size": "0"}}, r"schedule\['batch_size'\] must be >= 1"),
    ({"schedule": {"learning_rate": 0}}, r"schedule\['learning_rate'\] must be > 0.0"),
    ({"schedule": 5}, "schedule must be a dict"),
])
def test_bad_model_parameters(adata, kwargs, match):
    raises(match, sm.SCMEDAL, adata, "batch", "celltype", **kwargs)


def test_model_parameters_given_as_strings(adata):
    m = sm.SCMEDAL(adata, "batch", "celltype", seed="7", fec="False", hidden="[16, 8]", latent_dim="4",
                   schedule={"learning_rate": "0.01", "max_epochs": "3", "max_steps": "None"}, fe={"w_gen": "0.5"})
    assert m.seed == 7 and m.config["fec_head"] is False
    assert m.config["hidden"] == [16, 8] and m.config["latent_dim"] == 4
    assert m.config["schedule"]["learning_rate"] == 0.01 and m.config["schedule"]["max_epochs"] == 3
    assert m.config["schedule"]["max_steps"] is None and m.config["fe"]["w_gen"] == 0.5


@pytest.mark.parametrize("kwargs, match", [
    ({"max_epochs": 0}, "max_epochs must be >= 1, got 0"),
    ({"max_epochs": "-3"}, "max_epochs must be >= 1"),
    ({"max_epochs": "ten"}, "max_epochs must be an integer, got 'ten'"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"learning_rate": "abc"}, "learning_rate must be a number"),
    ({"learning_rate": 0}, "learning_rate must be > 0.0"),
    ({"learning_rate": "nan"}, "learning_rate must be finite"),
    ({"patience": 0}, "patience must be >= 1"),
    ({"seed": "-1"}, "seed must be >= 0"),
    ({"early_stopping": "maybe"}, "early_stopping must be true or false"),
    ({"faithful": 2}, "faithful must be true or false"),
    ({"which": "fec"}, r"which must be one of \['fe', 're', 'ae'\], got 'fec'"),
    ({"which": ["fe", "xx"]}, "got 'xx'"),
])
def test_bad_training_parameters_fail_before_training(adata, kwargs, match):
    m = sm.SCMEDAL(adata, "batch", "celltype", **SMALL)
    raises(match, m.train, **{"progress": False, **kwargs})
    assert m.networks == {} and m.trained == {}                    # nothing started


def test_unknown_metric():
    X = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['nope'\]; valid names are"):
        sm.metrics.score_embeddings({"x": X}, np.repeat(["a", "b"], 20), metrics=["nope"])


def test_parsers_accept_papermill_strings():
    assert as_int("n", "50") == 50 and as_int("n", "5e2") == 500 and as_int("n", " 7.0 ") == 7
    assert as_int("n", "123456789012345678901234567890") == 123456789012345678901234567890
    assert as_float("x", "1e-3") == 1e-3 and as_float("x", 2) == 2.0
    assert as_bool("b", "Yes") is True and as_bool("b", "off") is False and as_bool("b", 0) is False
    assert as_int_list("h", "512, 132") == [512, 132] == as_int_list("h", "[512, 132]") == as_int_list("h", (512, 132))
    assert as_seed("seed", "4294967295") == 2**32 - 1
    for bad in ("1.5", "inf", "nan", "1e999", "", "0x10", True, None, [1], 2.5, float("nan")):
        with pytest.raises(InputError, match="must be an integer"):
            as_int("n", bad)


# ------------------------------------------------------------------------------------------------ properties

def _ok_or_input_error(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except InputError as err:
        assert str(err)
        return err


anything = st.one_of(st.text(), st.binary(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                     st.booleans(), st.none(), st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.complex_numbers())


@PROPS
@given(value=anything, minimum=st.one_of(st.none(), st.integers(-5, 5)))
def test_as_int_parses_or_says_why(value, minimum):
    out = _ok_or_input_error(as_int, "n", value, minimum=minimum)
    if not isinstance(out, InputError):
        assert type(out) is int and (minimum is None or out >= minimum)
        if isinstance(value, (int, float)):
            assert out == value


@PROPS
@given(value=anything)
def test_as_float_parses_or_says_why(value):
    out = _ok_or_input_error(as_float, "x", value, minimum=0.0, exclusive=True)
    if not isinstance(out, InputError):
        assert type(out) is float and np.isfinite(out) and out > 0


@PROPS
@given(value=anything)
def test_as_bool_parses_or_says_why(value):
    out = _ok_or_input_error(as_bool, "b", value)
    if not isinstance(out, InputError):
        assert type(out) is bool


@PROPS
@given(value=st.one_of(st.text(), st.lists(anything, max_size=3)))
def test_as_int_list_parses_or_says_why(value):
    out = _ok_or_input_error(as_int_list, "hidden", value)
    if not isinstance(out, InputError):
        assert out and all(type(v) is int and v >= 1 for v in out)


@PROPS
@given(number=st.integers(), text_form=st.sampled_from(["{}", " {} ", "{}.0", "+{}"]))
def test_as_int_round_trips_integers_written_as_text(number, text_form):
    text = text_form.format(number).replace("+-", "-")
    if text_form == "{}.0" and abs(number) > 2**53:
        return                                               # not exactly representable as a float
    assert as_int("n", text) == number


@PROPS
@given(x=st.floats(allow_nan=False, allow_infinity=False))
def test_as_float_round_trips(x):
    assert as_float("x", repr(x)) == x


@PROPS
@given(part=st.sampled_from(["fe", "re", "schedule"]),
       values=st.dictionaries(st.sampled_from(["w_recon", "w_gen", "w_clus", "batch_size", "learning_rate",
                                               "max_epochs", "nonsense"]),
                              st.one_of(st.text(max_size=5), st.integers(-3, 3), st.floats(), st.none()),
                              max_size=3))
def test_parse_settings_parses_or_says_why(part, values):
    defaults = sm.presets.get_preset("default")[part]
    out = _ok_or_input_error(parse_settings, part, values, defaults)
    if not isinstance(out, InputError):
        assert set(out) == set(values) <= set(defaults) | set(validate.SCHEDULE_TYPES)


obs_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8)


@PROPS
@given(columns=st.lists(obs_names, min_size=1, max_size=4, unique=True), key=obs_names,
       missing=st.lists(st.booleans(), min_size=12, max_size=12))
def test_obs_key_checks(columns, key, missing):
    obs = pd.DataFrame({c: np.where(missing, None, "x") if i == 0 else "y" for i, c in enumerate(columns)},
                       index=[str(i) for i in range(12)])
    adata = anndata.AnnData(np.ones((12, 2), "float32"), obs=obs)
    if key not in columns:
        msg = raises("is not a column of adata.obs", check_obs_key, adata, key, role="batch_key")
        assert repr(key) in msg and repr(columns) in msg
    elif key == columns[0] and any(missing):
        raises(f"has {sum(missing)} missing values", check_obs_key, adata, key, role="batch_key")
    else:
        check_obs_key(adata, key, role="batch_key")


@PROPS
@given(sizes=st.lists(st.integers(1, 25), min_size=1, max_size=5))
def test_batch_size_checks(sizes):
    labels = np.repeat([f"b{i}" for i in range(len(sizes))], sizes)
    obs = pd.DataFrame({"batch": labels}, index=[str(i) for i in range(len(labels))])
    adata = anndata.AnnData(np.ones((len(labels), 2), "float32"), obs=obs)
    if len(sizes) < 2:
        raises("single batch", check_batches, adata, "batch")
    elif min(sizes) < MIN_CELLS_PER_BATCH:
        msg = raises(f"fewer than {MIN_CELLS_PER_BATCH} cells", check_batches, adata, "batch")
        assert all(f"'b{i}': {n}" in msg for i, n in enumerate(sizes) if n < MIN_CELLS_PER_BATCH)
    else:
        assert check_batches(adata, "batch").sum() == len(labels)


@PROPS
@given(n=st.integers(1, 30), bad=st.sampled_from([np.nan, np.inf, -1.0, None]), where=st.integers(0, 10_000),
       dense=st.booleans())
def test_matrix_checks_find_any_bad_value(n, bad, where, dense):
    X = np.random.default_rng(n).poisson(2.0, size=(n, 7)).astype("float32") + 1
    if bad is not None:
        X.flat[where % X.size] = bad
    adata = anndata.AnnData(X if dense else sparse.csr_matrix(X))
    if bad is None:
        check_adata(adata)
    elif bad == -1.0:
        raises("negative values", check_adata, adata)
    else:
        raises("NaN or infinite", check_adata, adata)


# ------------------------------------------------------------------------------------------------ backed AnnData

def test_backed_anndata_setup_train_latent_counterfactual(model, backed, log_adata):
    assert backed.isbacked and model.trained["re"]["epochs_run"] == 2
    assert model.trained["re"]["early_stopping"] is False and model.config["hidden"] == [16]
    latent = model.get_latent("re")
    assert latent.shape == (backed.n_obs, 4) and np.isfinite(latent).all()
    np.testing.assert_array_equal(model.get_latent("re", log_adata), latent)   # in memory: the same numbers
    cf = model.counterfactual(backed[:30], batch="batch1")
    np.testing.assert_array_equal(cf.X, model.counterfactual(log_adata[:30], batch="batch1").X)
    assert cf.shape == (30, backed.n_vars)


def test_dense_backed_and_sparse_in_memory_set_up_the_same(tmp_path, log_adata):
    dense = log_adata.copy()
    dense.X = dense.X.toarray()
    dense.write_h5ad(tmp_path / "dense.h5ad")
    on_disk = anndata.read_h5ad(tmp_path / "dense.h5ad", backed="r")
    a = sm.SCMEDAL(on_disk, "batch", "celltype", **SMALL)
    b = sm.SCMEDAL(log_adata, "batch", "celltype", **SMALL)
    assert a.minmax == b.minmax
    np.testing.assert_array_equal(a.scale(), b.scale())


# ------------------------------------------------------------------------------------------------ apply time

def test_genes_missing_at_apply_time(model, log_adata):
    msg = raises(f"3 of the model's {log_adata.n_vars} genes are missing", model.get_latent, "re",
                 log_adata[:, 3:].copy())
    assert str(list(log_adata.var_names[:3])) in msg and "same genes" in msg
    raises("genes are missing", model.counterfactual, log_adata[:, 3:].copy(), "batch0")


def test_genes_reordered_or_extra_at_apply_time_are_aligned(model, log_adata):
    cells = log_adata[:25].copy()
    shuffled = cells[:, cells.var_names[::-1]].copy()
    extra = anndata.AnnData(np.hstack([np.ones((25, 2), "float32"), cells.X.toarray()]), obs=cells.obs,
                            var=pd.DataFrame(index=["new1", "new2"] + list(cells.var_names)))
    ref = model.get_latent("re", cells)
    np.testing.assert_array_equal(model.get_latent("re", shuffled), ref)
    np.testing.assert_array_equal(model.get_latent("re", extra), ref)


def test_duplicate_genes_or_nan_at_apply_time(model, log_adata):
    dup = log_adata[:20].copy()
    dup.var_names = ["gene0"] + list(dup.var_names[1:-1]) + ["gene0"]
    raises("Duplicate gene names", model.get_latent, "re", dup)
    nan = log_adata[:20].copy()
    nan.X = nan.X.toarray()
    nan.X[4, 2] = np.nan
    raises("NaN or infinite", model.get_latent, "re", nan)
    raises("NaN or infinite", model.counterfactual, nan, "batch0")


def test_unseen_batch_at_apply_time_uses_the_rule_and_warns(model, log_adata):
    cells = log_adata[:20].copy()
    cells.obs["batch"] = "new_site"
    for unseen in ("mean", "prior"):
        with pytest.warns(sm.UnseenBatchWarning, match=f"never saw.*'{unseen}' rule"):
            z = model.get_latent("re", cells, unseen=unseen)
        assert z.shape == (20, 4) and np.isfinite(z).all()
    with pytest.warns(sm.UnseenBatchWarning):
        cf = model.counterfactual(cells, "batch0", mode="decoder")
    assert np.isfinite(cf.X).all()
    raises("unseen must be one of", model.get_latent, "re", cells, unseen="zero")


def test_batch_column_absent_or_missing_at_apply_time(model, log_adata):
    cells = log_adata[:20].copy()
    del cells.obs["batch"]
    assert "columns are" in raises("batch_key 'batch' is not a column", model.get_latent, "re", cells)
    raises("batch_key 'batch' is not a column", model.counterfactual, cells, "batch0", mode="decoder")
    model.counterfactual(cells, "batch0")                     # mode "full" needs only the target batch
    cells = log_adata[:20].copy()
    cells.obs["batch"] = cells.obs["batch"].astype(object)
    cells.obs.iloc[:2, cells.obs.columns.get_loc("batch")] = np.nan
    with pytest.warns(sm.UnseenBatchWarning, match="2 cells"):   # a missing batch is an unseen one
        model.get_latent("re", cells)


def test_bad_apply_parameters(model, log_adata):
    raises("chunk_size must be >= 1", model.get_latent, "re", log_adata, chunk_size=0)
    raises("kind must be one of", model.get_latent, "pca")
    raises("The FE network is not trained yet", model.get_latent, "fe")
    raises(r"Target batches \['batch9'\] are unknown", model.counterfactual, log_adata[:5], "batch9")
    raises("mode must be one of", model.counterfactual, log_adata[:5], "batch0", mode="both")


# ------------------------------------------------------------------------------------------------ saved models

@pytest.fixture
def saved(model, tmp_path):
    return model.save(tmp_path / "run")


def _edit_setup(path, change):
    with open(os.path.join(path, "setup.json")) as f:
        setup = json.load(f)
    setup = change(setup)
    if not isinstance(setup, (str, bytes)):
        setup = json.dumps(setup)
    with open(os.path.join(path, "setup.json"), "wb") as f:
        f.write(setup if isinstance(setup, bytes) else setup.encode())


def test_saved_model_loads(saved, model, log_adata):
    again = sm.SCMEDAL.load(saved, log_adata)
    np.testing.assert_array_equal(again.get_latent("re"), model.get_latent("re", log_adata))


def test_saved_model_in_format_1_still_loads(saved, model, log_adata):
    """Models saved before the fitted min-max values were renamed (format 1: 'scaling') load unchanged."""
    def to_format_1(setup):
        setup["scaling"] = setup.pop("minmax")
        return {**setup, "format_version": 1}

    _edit_setup(saved, to_format_1)
    again = sm.SCMEDAL.load(saved, log_adata)
    assert again.minmax == model.minmax
    np.testing.assert_array_equal(again.get_latent("re"), model.get_latent("re", log_adata))


def test_saved_model_folder_problems(saved, tmp_path, log_adata):
    raises("No saved model at .*not a directory", sm.SCMEDAL.load, tmp_path / "elsewhere")
    raises("genes are missing", sm.SCMEDAL.load, saved, log_adata[:, 5:].copy())
    os.remove(os.path.join(saved, "re.weights.h5"))
    raises("incomplete: re.weights.h5 is missing", sm.SCMEDAL.load, saved)


def test_saved_model_corrupt_weights(saved):
    with open(os.path.join(saved, "re.weights.h5"), "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 2000)
    raises("Could not load .*re.weights.h5", sm.SCMEDAL.load, saved)


def test_saved_model_without_setup(saved):
    os.remove(os.path.join(saved, "setup.json"))
    assert "Was the save interrupted" in raises("setup.json is missing", sm.SCMEDAL.load, saved)


@pytest.mark.parametrize("change, match", [
    (lambda s: '{"format_version": 1, ', "corrupt"),
    (lambda s: b"\xff\xfe not utf-8", "corrupt"),
    (lambda s: "[" * 100_000 + "]" * 100_000, "corrupt|not a saved scmedal_lite model"),
    (lambda s: {**s, "format_version": 99, "scmedal_lite_version": "9.0"}, "saved in format 99 by scmedal_lite '9.0'"),
    (lambda s: {k: v for k, v in s.items() if k != "format_version"}, "saved in format None"),
    (lambda s: [s], "not a saved scmedal_lite model"),
    (lambda s: {k: v for k, v in s.items() if k != "genes"}, "field 'genes' is missing"),
    (lambda s: {**s, "genes": "gene0"}, "'genes' has type str"),
    (lambda s: {**s, "trained": {"../../etc/passwd": {}}}, r"unknown networks \['../../etc/passwd'\]"),
    (lambda s: {**s, "minmax": {"mode": "global", "min": [0], "max": []}}, "minmax has 1 values"),
])
def test_saved_model_bad_setup_json(saved, change, match):
    _edit_setup(saved, change)
    raises(match, sm.SCMEDAL.load, saved)


def test_loading_never_executes_code_from_the_files(saved, tmp_path, monkeypatch):
    """Payloads in setup.json (Python expressions, pickle-style and YAML tags) are data, never run; the weights
    are read by Keras from HDF5 and checkpoints with np.load(allow_pickle=False)."""
    monkeypatch.chdir(tmp_path)
    sentinel = tmp_path / "PWNED"
    payload = f"__import__('os').system('touch {sentinel}')"
    payloads = [
        lambda s: {**s, "batch_key": payload, "layer": "!!python/object/apply:os.system ['touch PWNED']",
                   "label_categories": [payload], "py/object": "os.system", "__reduce__": payload},
        lambda s: {**s, "config": {**s["config"], "hidden": f"[{payload}]"}},
        lambda s: {**s, "config": {**s["config"], "latent_dim": payload}},
        lambda s: {**s, "genes": [payload] + s["genes"][1:]},
        lambda s: {**s, "trained": {payload: {}}},
    ]
    original = open(os.path.join(saved, "setup.json")).read()
    for change in payloads:
        with open(os.path.join(saved, "setup.json"), "w") as f:
            f.write(original)
        _edit_setup(saved, change)
        try:
            sm.SCMEDAL.load(saved)
        except InputError:
            pass
        assert not sentinel.exists() and not (tmp_path / "PWNED").exists()

    # A checkpoint whose array file holds a pickle that would run code: refused, not run.
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    np.save(ckpt / "evil.npy", np.array([Evil()], dtype=object), allow_pickle=True)
    (ckpt / "state.json").write_text(json.dumps({"epochs_done": 1, "history": [], "best": 1.0, "best_epoch": 1,
                                                 "wait": 0, "weights": "w.weights.h5", "arrays": "evil.npy"}))
    with pytest.raises(Exception) as info:
        from scmedal_lite.networks import AutoEncoder
        from scmedal_lite.training import Checkpointer, EarlyStopper
        net = AutoEncoder(20, hidden=(4,), latent_dim=2)
        net.build()
        net.compile(optimizer="adam")
        net.save_weights(str(ckpt / "w.weights.h5"))
        Checkpointer(str(ckpt), net).restore(EarlyStopper(3))
    assert "pickle" in str(info.value).lower() and not sentinel.exists()
    assert pickle  # imported only to build the payload above


def test_package_never_unpickles():
    """grep: no pickle anywhere in the package except the explicit opt-in for the authors' own HH bundle."""
    root = os.path.dirname(sm.__file__)
    hits = []
    for folder, _, files in sorted(os.walk(root)):              # subpackages (genomaps/) included
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            for i, line in enumerate(open(path, encoding="utf-8"), 1):
                if re.search(r"pickle|marshal|shelve|\beval\(|\bexec\(|yaml\.load|torch\.load|joblib", line):
                    hits.append((os.path.relpath(path, root), i, line.strip()))
    allowed = [h for h in hits if h[0] == "paper_data.py"
               or "allow_pickle=False" in h[2] or "No pickle" in h[2] or "literal_eval" in h[2]]
    assert hits == allowed, [h for h in hits if h not in allowed]
    assert [h for h in hits if "allow_pickle=True" in h[2]] == [
        h for h in hits if h[0] == "paper_data.py" and "allow_pickle=True" in h[2]]


def test_save_refuses_to_overwrite_without_the_flag(saved, model):
    raises("already exists; pass overwrite=True", model.save, saved)
    model.save(saved, overwrite=True)
    assert sorted(os.listdir(saved)) == ["history_re.csv", "re.weights.h5", "setup.json"]
    assert not [n for n in os.listdir(os.path.dirname(saved)) if n.endswith((".tmp", ".old"))]
