"""Tests for scmedal_lite.paper_data on tiny files written in the real formats (no network access)."""

import gzip
import hashlib
import io
import json
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from scmedal_lite import paper_data as pdata
from scmedal_lite.presets import PRESETS
from scmedal_lite.validate import InputError


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Only file:// URLs may be opened; anything else fails the test."""
    real = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        target = url.full_url if isinstance(url, urllib.request.Request) else url
        assert str(target).startswith("file://"), f"test tried to reach the network: {target}"
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)
    monkeypatch.setenv(pdata.CACHE_ENV, "/nonexistent/should-not-be-used")


def file_url(path):
    return "file://" + os.path.abspath(path)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_preset_columns(adata, name):
    keys = PRESETS[name]["data"]
    for role in ("batch_key", "labels_key", "condition_key"):
        assert keys[role] in adata.obs.columns
        assert adata.obs[keys[role]].notna().all()
    assert sparse.isspmatrix_csr(adata.X) or isinstance(adata.X, sparse.csr_array)
    assert adata.X.dtype == np.float32


# ----------------------------------------------------------------------------------------- fetch()

def test_fetch_file_url_checksum_and_cache(tmp_path):
    src = tmp_path / "src" / "data.txt"
    src.parent.mkdir()
    src.write_bytes(b"hello scmedal\n")
    digest = sha256(src)
    cache = tmp_path / "cache"
    path = pdata.fetch(file_url(src), sha256=digest, cache_dir=cache)
    assert path == str(cache / "data.txt")
    assert Path(path).read_bytes() == b"hello scmedal\n"
    src.unlink()                      # a second call must not download again
    assert pdata.fetch(file_url(src), sha256=digest, cache_dir=cache) == path
    assert os.listdir(cache) == ["data.txt"]          # no temporary files left behind


def test_fetch_checksum_mismatch_deletes_and_names_both(tmp_path):
    src = tmp_path / "data.bin"
    src.write_bytes(b"abc")
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(pdata.ChecksumError) as err:
        pdata.fetch(file_url(src), sha256=wrong, cache_dir=cache, filename="x.bin")
    msg = str(err.value)
    assert wrong in msg and sha256(src) in msg
    assert os.listdir(cache) == []


def test_fetch_replaces_corrupt_cached_file(tmp_path):
    src = tmp_path / "data.bin"
    src.write_bytes(b"good")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "data.bin").write_bytes(b"truncated")
    path = pdata.fetch(file_url(src), sha256=sha256(src), cache_dir=cache)
    assert Path(path).read_bytes() == b"good"


def test_fetch_offline_message_names_manual_path(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    url = "https://example.org/files/big.tar"
    with pytest.raises(ConnectionError) as err:
        pdata.fetch(url, cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert "big.tar" in msg and url in msg
    assert str(tmp_path / "c" / "big.tar") in msg
    assert not (tmp_path / "c" / "big.tar").exists()


def test_cache_dir_default_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(pdata.CACHE_ENV, str(tmp_path / "envcache"))
    src = tmp_path / "f.txt"
    src.write_text("x")
    assert pdata.fetch(file_url(src)) == str(tmp_path / "envcache" / "f.txt")
    monkeypatch.delenv(pdata.CACHE_ENV)
    assert pdata.resolve_cache_dir() == os.path.expanduser("~/.cache/scmedal_lite")


# ----------------------------------------------------------------------------------------- AML

AML_GENES = ["GAPDH", "CD34", "MPO", "CD3E"]
# sample -> (barcodes, counts genes x cells, CellType per barcode (None = NaN), R-style header)
AML_SAMPLES = {
    "GSM0001_AML419A-D0": (["AML419A-D0_AAA", "AML419A-D0_CCC", "AML419A-D0_GGG"],
                           [[1, 0, 4], [0, 7, 0], [2, 0, 0], [0, 0, 9]], ["HSC-like", None, "Mono"], False),
    "GSM0002_AML419A-D15": (["AML419A-D15_AAA", "AML419A-D15_TTT"],
                            [[3, 1], [0, 0], [5, 0], [0, 2]], ["Mono-like", "T"], False),
    "GSM0003_BM1": (["BM1_AAA", "BM1_CCC"], [[0, 6], [8, 0], [0, 1], [1, 0]], ["HSC", "GMP"], True),
    "GSM0004_AML314-D0": (["AML314-D0_AAA"], [[5], [5], [5], [5]], ["GMP-like"], False),
    "GSM0005_OCI-AML3": (["OCI-AML3_AAA"], [[2], [0], [0], [3]], ["Prog-like"], False),
}


def gz_bytes(text):
    return gzip.compress(text.encode())


def dem_text(barcodes, counts, r_style):
    header = barcodes if r_style else ["Gene"] + barcodes
    rows = ["\t".join([g] + [str(v) for v in row]) for g, row in zip(AML_GENES, counts)]
    return "\t".join(header) + "\n" + "\n".join(rows) + "\n"


def anno_text(barcodes, types):
    df = pd.DataFrame({"Cell": barcodes, "NumberOfReads": range(len(barcodes)),
                       "CellType": [t if t is not None else np.nan for t in types]})
    return df.to_csv(sep="\t", index=False, na_rep="NA")


def aml_files():
    out = {}
    for stem, (barcodes, counts, types, r_style) in AML_SAMPLES.items():
        out[f"{stem}.dem.txt.gz"] = gz_bytes(dem_text(barcodes, counts, r_style))
        out[f"{stem}.anno.txt.gz"] = gz_bytes(anno_text(barcodes, types))
    return out


@pytest.fixture
def aml_tar(tmp_path):
    path = tmp_path / "geo" / "GSE116256_RAW.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w") as tar:
        for name, data in aml_files().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def check_aml(adata):
    assert adata.shape == (7, 4)
    assert list(adata.var_names) == AML_GENES
    assert_preset_columns(adata, "AML")
    obs = adata.obs
    assert set(obs["batch"]) == {"AML419A", "BM1", "OCI"}
    assert (obs["batch"] == "AML419A").sum() == 4                     # D0 (2 annotated) + D15 (2) merged
    assert set(obs.loc[obs["batch"] == "AML419A", "sample"]) == {"AML419A-D0", "AML419A-D15"}
    assert not obs["sample"].astype(str).str.startswith("AML314").any()
    assert "AML419A-D0_CCC" not in obs.index                          # CellType NaN dropped
    groups = obs.groupby("batch", observed=True)["Patient_group"].first().astype(str).to_dict()
    assert groups == {"AML419A": "AML", "BM1": "control", "OCI": "cellline"}
    assert obs.loc["AML419A-D0_GGG", "celltype"] == "Mono"
    # counts of cell AML419A-D0_GGG are column 3 of its table; BM1_CCC comes from an R-style header
    np.testing.assert_array_equal(adata["AML419A-D0_GGG"].X.toarray().ravel(), [4, 0, 0, 9])
    np.testing.assert_array_equal(adata["BM1_CCC"].X.toarray().ravel(), [6, 0, 1, 0])
    assert adata.uns["dataset"]["name"] == "AML"


def test_aml_from_local_tar(aml_tar):
    check_aml(pdata.aml_vangalen(files=aml_tar))


def test_aml_from_extracted_folder(tmp_path):
    folder = tmp_path / "extracted"
    folder.mkdir()
    for name, data in aml_files().items():
        (folder / name).write_bytes(data)
    check_aml(pdata.aml_vangalen(files=folder))


def test_aml_downloads_into_cache(aml_tar, tmp_path, monkeypatch):
    monkeypatch.setattr(pdata, "AML_URL", file_url(aml_tar))
    cache = tmp_path / "cache"
    check_aml(pdata.load_paper_dataset("aml", cache_dir=cache))
    assert (cache / "GSE116256_RAW.tar").exists()


def test_aml_batch_rules():
    assert pdata.aml_sample_batch("AML419A-D15") == "AML419A"
    assert pdata.aml_sample_batch("BM5-34p38n") == "BM5"
    assert pdata.aml_patient_group("MUTZ3") == "cellline"
    assert pdata.aml_patient_group("BM3") == "control"
    assert pdata.aml_patient_group("AML1012") == "AML"


# ----------------------------------------------------------------------------------------- ASD

ASD_COUNTS = np.array([[0, 3, 1, 0], [5, 0, 0, 2], [1, 1, 0, 0], [0, 0, 7, 4], [2, 0, 0, 1]], float)
ASD_GENES = ["ENSG01|SNAP25", "ENSG02|GFAP", "ENSG03|MBP", "ENSG04|GENE4", "ENSG05|GENE4"]
ASD_CELLS = ["c1_AAA", "c2_CCC", "c3_GGG", "c4_TTT"]


@pytest.fixture
def asd_dir(tmp_path):
    folder = tmp_path / "autism"
    folder.mkdir()
    logged = np.log2(ASD_COUNTS + 1)
    lines = ["\t".join(["gene"] + ASD_CELLS)]
    lines += ["\t".join([g] + [f"{v:.6f}" for v in row]) for g, row in zip(ASD_GENES, logged)]
    (folder / "exprMatrix.tsv.gz").write_bytes(gz_bytes("\n".join(lines) + "\n"))
    meta = pd.DataFrame({"cell": ASD_CELLS[:3],            # c4 has no metadata
                         "cluster": ["L2/3", "AST-PP", "L2/3"], "sample": ["s1", "s2", "s1"],
                         "individual": [5144, 5278, 5144], "region": ["PFC", "ACC", "PFC"],
                         "diagnosis": ["ASD", "Control", "ASD"], "Capbatch": ["CB1", "CB2", "CB1"]})
    meta.to_csv(folder / "meta.tsv", sep="\t", index=False)
    return folder


def check_asd(adata):
    assert adata.shape == (3, 5)
    assert_preset_columns(adata, "ASD")
    assert list(adata.obs["batch"]) == ["donor_5144", "donor_5278", "donor_5144"]
    assert list(adata.obs["celltype"]) == ["L2/3", "AST-PP", "L2/3"]
    assert list(adata.obs["diagnosis"]) == ["ASD", "Control", "ASD"]
    assert "Capbatch" in adata.obs.columns
    np.testing.assert_allclose(adata.X.toarray(), ASD_COUNTS[:, :3].T, atol=1e-4)   # 2**x - 1 inverts the log
    assert list(adata.var["gene_ids"]) == ["ENSG01", "ENSG02", "ENSG03", "ENSG04", "ENSG05"]
    assert adata.var_names[0] == "SNAP25" and adata.var_names.is_unique


def test_asd_from_folder(asd_dir):
    check_asd(pdata.asd_velmeshev(files=asd_dir))


def test_asd_downloads_both_files(asd_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pdata, "ASD_URLS", {"exprMatrix": file_url(asd_dir / "exprMatrix.tsv.gz"),
                                            "meta": file_url(asd_dir / "meta.tsv")})
    check_asd(pdata.asd_velmeshev(cache_dir=tmp_path / "cache"))
    assert sorted(os.listdir(tmp_path / "cache")) == ["exprMatrix.tsv.gz", "meta.tsv"]


# ----------------------------------------------------------------------------------------- HH

@pytest.fixture
def hh_file(tmp_path):
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"sampleID": ["H1_LV", "H1_LV", "H2_RA", "H2_RA", "H3_AX"],
                        "celltype": ["Fibroblast", "Myeloid", "Fibroblast", "Endothelial", "Myeloid"],
                        "TissueDetail": ["left ventricle"] * 2 + ["right atrium"] * 2 + ["apex"],
                        "DonorID": ["D1", "D1", "D2", "D2", "D3"], "protocol": ["10X3'V2"] * 4 + ["10X3'V3"]},
                       index=[f"cell{i}" for i in range(5)])
    adata = anndata.AnnData(rng.poisson(2, size=(5, 6)).astype(np.int64), obs=obs,
                            var=pd.DataFrame(index=[f"g{i}" for i in range(6)]))
    path = tmp_path / "hh" / pdata.HH_FILENAME
    path.parent.mkdir()
    adata.write_h5ad(path)
    return path


def check_hh(adata):
    assert adata.shape == (5, 6)
    assert list(adata.obs["batch"]) == list(adata.obs["sampleID"])
    for col in ("celltype", "TissueDetail", "DonorID", "protocol"):
        assert col in adata.obs.columns
    assert adata.obs["batch"].nunique() == 3


def test_hh_in_memory(hh_file):
    adata = pdata.healthy_heart(files=hh_file)
    check_hh(adata)
    assert_preset_columns(adata, "HH")
    expected = anndata.read_h5ad(hh_file).X
    np.testing.assert_array_equal(adata.X.toarray(), expected)


def test_hh_backed(hh_file):
    adata = pdata.healthy_heart(files=hh_file.parent, backed="r")
    check_hh(adata)
    assert adata.isbacked
    adata.file.close()


def test_hh_downloads_via_figshare_api(hh_file, tmp_path, monkeypatch):
    guarded = urllib.request.urlopen
    listing = [{"name": "other.csv", "download_url": "file:///nowhere"},
               {"name": pdata.HH_FILENAME, "download_url": file_url(hh_file),
                "computed_md5": hashlib.md5(hh_file.read_bytes()).hexdigest()}]

    def fake(url, *args, **kwargs):
        if url == pdata.FIGSHARE_API.format(article=pdata.HH_FIGSHARE_ARTICLE):
            return io.BytesIO(json.dumps(listing).encode())
        return guarded(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", fake)
    cache = tmp_path / "cache"
    check_hh(pdata.healthy_heart(cache_dir=cache))
    assert (cache / pdata.HH_FILENAME).exists()

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    check_hh(pdata.healthy_heart(cache_dir=cache))               # cached: no network needed
    with pytest.raises(ConnectionError, match=str(tmp_path / "empty" / pdata.HH_FILENAME)):
        pdata.healthy_heart(cache_dir=tmp_path / "empty")


# ----------------------------------------------------------------------------------------- authors' bundle

def write_split(folder, parts, *, as_sparse=False, seed=0):
    """Write split_k/{train,val,test}; returns {part: (X, meta)}."""
    rng = np.random.default_rng(seed)
    genes = ["GENE_A", "GENE_B", "GENE_C"]
    written, start = {}, 0
    for part, n in parts.items():
        d = folder / part
        d.mkdir(parents=True)
        X = rng.random((n, 3)).astype(np.float32)
        np.save(d / "exprMatrix.npy", sparse.csr_matrix(X) if as_sparse else X)
        pd.DataFrame({"gene_ids": genes}).to_csv(d / "geneids.csv")
        meta = pd.DataFrame({"original_index": np.arange(start, start + n) * 10,
                             "batch": rng.choice(["b1", "b2"], n), "celltype": rng.choice(["t1", "t2"], n)})
        meta.to_csv(d / "meta.csv")
        written[part] = (X, meta)
        start += n
    return written


def test_authors_bundle_dense_split_verbatim(tmp_path):
    root = tmp_path / "figshare"
    written = write_split(root / "AML_data" / "scenario" / "splits" / "split_1",
                          {"train": 6, "val": 2, "test": 2})
    write_split(root / "ASD_data" / "scenario" / "splits" / "split_1", {"train": 3, "val": 1, "test": 1})
    adata = pdata.authors_bundle("AML", 1, root=root)
    assert adata.shape == (10, 3)
    assert list(adata.var_names) == ["GENE_A", "GENE_B", "GENE_C"]
    assert adata.obs["split"].value_counts().to_dict() == {"train": 6, "val": 2, "test": 2}
    assert list(adata.obs["split"].cat.categories) == ["train", "val", "test"]
    test_X, test_meta = written["test"]
    sub = adata[adata.obs["split"] == "test"]
    assert list(sub.obs_names) == [str(i) for i in test_meta["original_index"]]
    np.testing.assert_allclose(sub.X.toarray(), test_X)
    assert list(sub.obs["batch"]) == list(test_meta["batch"])
    assert "Unnamed: 0" not in adata.obs.columns
    assert pdata.authors_bundle("ASD", "split_1", root=root).n_obs == 5


def test_authors_bundle_sparse_pickle_needs_opt_in(tmp_path):
    folder = tmp_path / "HH_data" / "split_2"
    written = write_split(folder, {"train": 4, "val": 2, "test": 2}, as_sparse=True)
    with pytest.raises(InputError, match="allow_pickle=True"):
        pdata.authors_bundle("HH", 2, files=folder)
    adata = pdata.authors_bundle("HH", 2, files=folder, allow_pickle=True)
    assert adata.shape == (8, 3)
    np.testing.assert_allclose(adata[adata.obs["split"] == "train"].X.toarray(), written["train"][0])


def test_authors_bundle_clear_errors(tmp_path):
    with pytest.raises(InputError, match="figshare"):
        pdata.authors_bundle("AML", 1, root=tmp_path)
    with pytest.raises(InputError, match="Unknown paper dataset"):
        pdata.authors_bundle("PBMC", 1, root=tmp_path)
    with pytest.raises(InputError, match="split"):
        pdata.authors_bundle("AML", 1.5, root=tmp_path)


# ----------------------------------------------------------------------------------------- registry

def test_registry():
    assert set(pdata.PAPER_DATASETS) == {"AML", "ASD", "HH"} <= set(PRESETS)
    with pytest.raises(InputError, match="AML"):
        pdata.load_paper_dataset("COVID")


def test_aml_rejects_folder_without_samples(tmp_path):
    with pytest.raises(InputError, match="No usable AML samples"):
        pdata.aml_vangalen(files=tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="neither a tar"):
        pdata.aml_vangalen(files=tmp_path / "notes.txt")
