"""The paper's datasets (AML, ASD, Healthy Heart), loaded from their public sources, plus the authors' splits.

Each loader returns an AnnData with **raw counts** (ASD: de-logged normalised values, see
:func:`asd_velmeshev`) in a float32 CSR ``X`` and the paper's ``obs`` columns (``batch``, ``celltype`` and
the dataset's condition column), ready for :func:`scmedal_lite.pp.prepare`. Downloads go through
:func:`fetch`, a small cache (``$SCMEDAL_LITE_CACHE`` or ``~/.cache/scmedal_lite``). Offline, place the files
in the cache by hand (the error message prints the exact path) or pass them with ``files=``.

Example
-------
>>> import scmedal_lite as sm
>>> from scmedal_lite.paper_data import load_paper_dataset
>>> from scmedal_lite.presets import get_preset
>>> adata = load_paper_dataset("AML")                       # downloads GSE116256_RAW.tar once (~0.5 GB)
>>> sm.pp.prepare(adata, n_top_genes=get_preset("AML")["data"]["n_top_genes"])
>>> # or the authors' own preprocessed data and fold-1 split, used verbatim:
>>> adata = authors_bundle("AML", 1, root="~/data/scMEDAL_figshare")
>>> model = sm.SCMEDAL(adata, batch_key="batch", labels_key="celltype", split_key="split", preset="AML")
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import json
import logging
import os
import re
import shutil
import socket
import tarfile
import urllib.error
import urllib.parse
import urllib.request

import anndata
import numpy as np
import pandas as pd
from scipy import sparse

from .io import atomic_write
from .validate import InputError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Sources. Checksums are None where the publisher gives none we could verify here (these machines are
# offline); fetch() then only checks that the download completed. Figshare files are checked against the
# MD5 that the Figshare API reports.
# ---------------------------------------------------------------------------------------------------------

CACHE_ENV = "SCMEDAL_LITE_CACHE"

#: van Galen et al. 2019, GEO GSE116256: one tar of per-sample ``*.dem.txt.gz`` / ``*.anno.txt.gz`` files.
AML_URL = "https://ftp.ncbi.nlm.nih.gov/geo/series/GSE116nnn/GSE116256/suppl/GSE116256_RAW.tar"
AML_SHA256 = None  # unknown: GEO publishes no checksum for supplementary tars.
#: Samples the paper drops (after Dai et al. 2021), by patient id (all time points).
AML_EXCLUDED = ("AML314", "AML371", "AML722B", "AML997")
AML_CONTROL_PREFIX = "BM"
AML_CELLLINES = ("MUTZ3", "OCI")

#: Velmeshev et al. 2019 via the UCSC Cell Browser dataset "autism".
ASD_URLS = {"exprMatrix": "https://cells.ucsc.edu/autism/exprMatrix.tsv.gz",
            "meta": "https://cells.ucsc.edu/autism/meta.tsv"}
ASD_SHA256 = {"exprMatrix": None, "meta": None}  # unknown: the Cell Browser publishes no checksums.

#: Litvinukova et al. 2020 as repackaged by Yu et al. 2023 (Figshare 10.6084/m9.figshare.20499630).
HH_DOI = "10.6084/m9.figshare.20499630"
HH_FIGSHARE_ARTICLE = 20499630
HH_FILENAME = "Healthy_human_heart_adata.h5ad"
FIGSHARE_API = "https://api.figshare.com/v2/articles/{article}/files"

#: The authors' preprocessed data and 5-fold splits (Figshare 10.6084/m9.figshare.28414367). A collection
#: of large archives: download and extract it yourself, then point :func:`authors_bundle` at it.
BUNDLE_DOI = "10.6084/m9.figshare.28414367"
BUNDLE_URL = f"https://doi.org/{BUNDLE_DOI}"
BUNDLE_PARTS = ("train", "val", "test")
_BUNDLE_DIR_TOKENS = {"AML": ("aml",), "ASD": ("asd",), "HH": ("hh", "healthyheart", "healthy_heart")}

_CHUNK_GENES = 2000       # genes per chunk when parsing a genes x cells text table
_COPY_BLOCK = 1 << 20     # bytes per read when downloading


class ChecksumError(ValueError):
    """A downloaded or cached file does not match its published checksum."""


# ---------------------------------------------------------------------------------------------------------
# Download cache
# ---------------------------------------------------------------------------------------------------------

def resolve_cache_dir(path=None) -> str:
    """The cache folder: ``path`` if given, else ``$SCMEDAL_LITE_CACHE``, else ``~/.cache/scmedal_lite``."""
    if path is None:
        path = os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "scmedal_lite")
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _digest(path: str, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_COPY_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _checksum_problem(path: str, sha256: str | None, md5: str | None) -> str | None:
    """None if ``path`` matches the given checksums, else a message naming expected and actual values."""
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            got = _digest(path, algorithm)
            if got.lower() != expected.lower():
                return f"{algorithm} mismatch for {path}: expected {expected.lower()}, got {got}"
    return None


def _offline_error(what: str, url: str, target: str, err: BaseException) -> ConnectionError:
    reason = f"HTTP {err.code} {err.reason}" if isinstance(err, urllib.error.HTTPError) else (
        getattr(err, "reason", None) or err)
    return ConnectionError(
        f"Could not download {what} from {url} ({reason}). This machine may be offline.\n"
        f"Download it on a machine with internet access and place it at:\n    {target}\n"
        f"(the cache folder is set by cache_dir= or ${CACHE_ENV}); or pass the local file to the loader's "
        "files= argument.")


_NETWORK_ERRORS = (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, socket.gaierror,
                   http.client.HTTPException)


def _download(url: str, target: str, *, timeout: float, sha256: str | None, md5: str | None) -> None:
    """Stream ``url`` into a temporary file beside ``target``, check it, then rename it to ``target``.

    On any error (network, checksum) the temporary file is removed and ``target`` is left untouched.
    """
    with atomic_write(target) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, _COPY_BLOCK)
        problem = _checksum_problem(tmp, sha256, md5)
        if problem is not None:
            raise ChecksumError(f"Download of {url} deleted: {problem.replace(tmp, target)}. The source may "
                                "have changed or the download was corrupted; try again, or check the source.")


def fetch(url: str, *, sha256: str | None = None, cache_dir: str | None = None, filename: str | None = None,
          md5: str | None = None, timeout: float = 60.0) -> str:
    """Download ``url`` into the cache once and return the local path.

    Parameters
    ----------
    url
        Any URL urllib opens (``https://``, ``ftp://``, ``file://``).
    sha256, md5
        Expected checksums (hex). A cached file that matches is reused without any network access; one that
        does not is downloaded again. A fresh download that does not match is deleted and
        :class:`ChecksumError` is raised, naming the expected and actual values. ``None``: not checked.
    cache_dir
        Cache folder; default ``$SCMEDAL_LITE_CACHE`` or ``~/.cache/scmedal_lite``.
    filename
        Name in the cache; default the last component of the URL path.

    Notes
    -----
    Offline (or on any network error) a :class:`ConnectionError` says which file failed, from where, and
    the exact path at which to place a manually downloaded copy.

    Example
    -------
    >>> path = fetch("https://cells.ucsc.edu/autism/meta.tsv")          # doctest: +SKIP
    """
    folder = resolve_cache_dir(cache_dir)
    filename = filename or os.path.basename(urllib.parse.urlparse(url).path)
    if not filename:
        raise InputError(f"Cannot derive a file name from {url!r}; pass filename=.")
    target = os.path.join(folder, filename)
    if os.path.exists(target):
        problem = _checksum_problem(target, sha256, md5)
        if problem is None:
            log.info("Using cached %s", target)
            return target
        log.warning("Cached file is corrupt (%s); downloading it again.", problem)
        os.remove(target)
    os.makedirs(folder, exist_ok=True)
    log.info("Downloading %s -> %s", url, target)
    try:
        _download(url, target, timeout=timeout, sha256=sha256, md5=md5)
    except _NETWORK_ERRORS as err:
        raise _offline_error(filename, url, target, err) from err
    log.info("Downloaded %s (%.1f MB)", target, os.path.getsize(target) / 1e6)
    return target


def figshare_file(article: int, name: str, *, timeout: float = 60.0) -> tuple[str, str | None]:
    """``(download_url, md5)`` of the file ``name`` of a public Figshare article, via the Figshare API."""
    api = FIGSHARE_API.format(article=article)
    try:
        with urllib.request.urlopen(api, timeout=timeout) as response:
            listing = json.loads(response.read().decode("utf-8"))
    except _NETWORK_ERRORS as err:
        raise ConnectionError(f"Could not list the files of Figshare article {article} at {api} "
                              f"({getattr(err, 'reason', None) or err}).") from err
    for entry in listing:
        if entry.get("name") == name:
            return entry["download_url"], entry.get("computed_md5") or entry.get("supplied_md5") or None
    names = [entry.get("name") for entry in listing]
    raise InputError(f"Figshare article {article} has no file {name!r}; it lists {names}.")


# ---------------------------------------------------------------------------------------------------------
# Shared parsing helpers
# ---------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _open_text(source):
    """A text stream for a path or binary file object, gunzipping ``.gz`` content (detected by magic bytes).

    Everything opened here (and a file object passed in) is closed on exit.
    """
    with contextlib.ExitStack() as stack:
        raw = open(source, "rb") if isinstance(source, (str, os.PathLike)) else source
        stack.callback(raw.close)
        if not hasattr(raw, "peek"):
            raw = io.BufferedReader(raw)
        if raw.peek(2)[:2] == b"\x1f\x8b":
            raw = stack.enter_context(gzip.GzipFile(fileobj=raw))
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        stack.callback(text.detach)          # the underlying streams are closed above, not by the wrapper
        yield text


def read_genes_by_cells(source, *, name: str = "table") -> tuple[sparse.csr_matrix, pd.Index, pd.Index]:
    """Parse a tab-separated genes × cells text table into ``(cells × genes CSR float32, cells, genes)``.

    The first column holds gene names; the header holds cell barcodes, with or without a label for the gene
    column (both R and pandas layouts). Read in chunks of genes, so a large table never exists densely.
    """
    with _open_text(source) as text:
        header = [h.strip('"') for h in text.readline().rstrip("\r\n").split("\t")]
        blocks, genes, barcodes = [], [], None
        for chunk in pd.read_csv(text, sep="\t", header=None, index_col=0, chunksize=_CHUNK_GENES):
            if barcodes is None:
                n = chunk.shape[1]
                if n == len(header):
                    barcodes = header
                elif n == len(header) - 1:
                    barcodes = header[1:]
                else:
                    raise InputError(f"{name}: the header names {len(header)} columns "
                                     f"but rows have {n} values.")
            genes.extend(chunk.index.astype(str))
            blocks.append(sparse.csr_matrix(chunk.to_numpy(dtype=np.float32)))
    if barcodes is None:
        raise InputError(f"{name}: no gene rows found.")
    X = sparse.vstack(blocks, format="csr").T.tocsr()
    return X.astype(np.float32), pd.Index(barcodes), pd.Index(genes)


def _categorical(obs: pd.DataFrame, columns) -> None:
    for col in columns:
        obs[col] = pd.Categorical(obs[col].astype(str))


def _dataset_info(name: str, source: str, values: str) -> dict:
    from .presets import PRESETS
    info = {"name": name, "source": source, "values": values}
    info.update({k: PRESETS[name]["data"][k] for k in ("batch_key", "labels_key", "condition_key",
                                                       "n_top_genes")})
    return info


def _local(path) -> str:
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(path):
        raise InputError(f"File or folder not found: {path!r}.")
    return path


# ---------------------------------------------------------------------------------------------------------
# AML: van Galen et al. 2019 (GEO GSE116256)
# ---------------------------------------------------------------------------------------------------------

_AML_FILE = re.compile(r"^(?:GSM\d+_)?(?P<sample>.+)\.(?P<kind>dem|anno)\.txt(?:\.gz)?$")


def aml_sample_batch(sample: str) -> str:
    """The paper's AML batch of a GEO sample: the name before the first ``-`` (time points merged).

    ``"AML419A-D0"`` and ``"AML419A-D15"`` -> ``"AML419A"``; ``"BM5-34p"`` -> ``"BM5"``;
    ``"OCI-AML3"`` -> ``"OCI"``.
    """
    return sample.split("-", 1)[0]


def aml_patient_group(batch: str) -> str:
    """``"control"`` for bone marrow BM1..BM5, ``"cellline"`` for MUTZ3 / OCI-AML3, else ``"AML"``."""
    if batch.upper().startswith(AML_CONTROL_PREFIX):
        return "control"
    if any(batch.upper().startswith(c) for c in AML_CELLLINES):
        return "cellline"
    return "AML"


class _Members:
    """Per-sample ``dem``/``anno`` members of a GEO tar or a folder, opened as binary streams on demand."""

    def __init__(self, path: str):
        self.path, self.tar, found = path, None, None
        if os.path.isdir(path):
            tars = [f for f in os.listdir(path) if f.endswith(".tar")]
            found = {f: os.path.join(path, f) for f in os.listdir(path)}
            if not any(_AML_FILE.match(f) for f in found) and len(tars) == 1:
                path, found = os.path.join(path, tars[0]), None
        if found is None:
            if not tarfile.is_tarfile(path):
                raise InputError(f"{path!r} is neither a tar archive nor a folder of GEO files.")
            self.tar = tarfile.open(path)
            found = {os.path.basename(m.name): m for m in self.tar.getmembers() if m.isfile()}
        self.samples: dict[str, dict] = {}
        for fname, ref in sorted(found.items()):
            match = _AML_FILE.match(fname)
            if match:
                self.samples.setdefault(match["sample"], {})[match["kind"]] = ref

    def open(self, ref):
        return self.tar.extractfile(ref) if self.tar is not None else open(ref, "rb")

    def close(self):
        if self.tar is not None:
            self.tar.close()


def _aml_sample(members: _Members, sample: str, refs: dict) -> anndata.AnnData | None:
    X, cells, genes = read_genes_by_cells(members.open(refs["dem"]), name=f"{sample}.dem")
    with _open_text(members.open(refs["anno"])) as text:
        anno = pd.read_csv(text, sep="\t")
    for col in ("Cell", "CellType"):
        if col not in anno.columns:
            raise InputError(f"{sample}.anno has no {col!r} column; columns are {list(anno.columns)}.")
    anno = anno.drop_duplicates("Cell").set_index("Cell")
    anno.index = anno.index.astype(str)
    keep = cells.isin(anno.index[anno["CellType"].notna()])
    n_unannotated = int((~cells.isin(anno.index)).sum())
    if n_unannotated:
        log.warning("%s: %d cells of the count table have no annotation; dropped.", sample, n_unannotated)
    obs = anno.loc[cells[keep]].copy()
    log.info("%s: %d cells, %d kept (CellType present)", sample, len(cells), int(keep.sum()))
    if not keep.any():
        return None
    obs.insert(0, "sample", sample)
    batch = aml_sample_batch(sample)
    obs.insert(0, "Patient_group", aml_patient_group(batch))
    obs.insert(0, "celltype", obs["CellType"].astype(str))
    obs.insert(0, "batch", batch)
    genes = pd.Index(anndata.utils.make_index_unique(genes))
    return anndata.AnnData(X[np.flatnonzero(keep)], obs=obs, var=pd.DataFrame(index=genes))


def aml_vangalen(*, cache_dir: str | None = None, files=None) -> anndata.AnnData:
    """van Galen et al. 2019 AML bone marrow (GEO GSE116256), as in the paper: raw counts, 19 batches.

    Reads the per-sample ``GSM*_<sample>.dem.txt.gz`` count tables (genes × cells) and
    ``GSM*_<sample>.anno.txt.gz`` annotations (``Cell``, ``CellType``, ...). Following the paper, cells
    without a ``CellType`` and the samples AML314, AML371, AML722B and AML997 are dropped (41,090 -> 38,417
    cells). ``obs``: ``batch`` (patient: the sample name before the first ``-``, so the time points of one
    patient are merged and ``OCI-AML3`` becomes ``OCI``), ``celltype`` (= ``CellType``, 21 classes),
    ``Patient_group`` (``AML`` / ``control`` for BM1-BM5 / ``cellline`` for MUTZ3, OCI), ``sample`` (the GEO
    sample name) and the other annotation columns. Genes present in every sample are kept.

    ``files``: a local ``GSE116256_RAW.tar``, a folder holding it, or a folder of the extracted ``.gz``
    files. Default: download the tar (~0.5 GB) into the cache with :func:`fetch`.

    >>> adata = aml_vangalen()                                              # doctest: +SKIP
    >>> sm.pp.prepare(adata, n_top_genes=2916)                              # doctest: +SKIP
    """
    path = _local(files) if files is not None else fetch(AML_URL, sha256=AML_SHA256, cache_dir=cache_dir)
    members = _Members(path)
    try:
        parts = []
        for sample, refs in members.samples.items():
            if aml_sample_batch(sample) in AML_EXCLUDED:
                log.info("%s: excluded as in the paper", sample)
                continue
            if set(refs) != {"dem", "anno"}:
                log.warning("%s: has only its %s file; skipped.", sample, "/".join(refs))
                continue
            part = _aml_sample(members, sample, refs)
            if part is not None:
                parts.append(part)
    finally:
        members.close()
    if not parts:
        raise InputError(f"No usable AML samples (*.dem.txt.gz with *.anno.txt.gz) found in {path!r}.")
    return _aml_combine(parts)


def _aml_combine(parts: list[anndata.AnnData]) -> anndata.AnnData:
    genes = parts[0].var_names
    for part in parts[1:]:
        genes = genes.intersection(part.var_names, sort=False)
    if any(len(p.var_names) != len(genes) for p in parts):
        log.warning("Samples measure different genes; keeping the %d genes common to all.", len(genes))
    X = sparse.vstack([p[:, genes].X for p in parts], format="csr").astype(np.float32)
    obs = pd.concat([p.obs for p in parts])
    if not obs.index.is_unique:
        obs.index = obs["sample"].astype(str) + "_" + obs.index.astype(str)
    _categorical(obs, ["batch", "celltype", "Patient_group", "sample"])
    adata = anndata.AnnData(X, obs=obs, var=pd.DataFrame(index=genes))
    adata.uns["dataset"] = _dataset_info("AML", "van Galen et al. 2019, GEO GSE116256", "raw counts")
    log.info("AML: %d cells x %d genes, %d batches", adata.n_obs, adata.n_vars, obs["batch"].nunique())
    return adata


# ---------------------------------------------------------------------------------------------------------
# ASD: Velmeshev et al. 2019 (UCSC Cell Browser "autism")
# ---------------------------------------------------------------------------------------------------------

def _asd_paths(files, cache_dir) -> dict[str, str]:
    if files is None:
        return {key: fetch(url, sha256=ASD_SHA256[key], cache_dir=cache_dir) for key, url in ASD_URLS.items()}
    if isinstance(files, dict):
        missing = {"exprMatrix", "meta"} - set(files)
        if missing:
            raise InputError(f"files= needs the keys 'exprMatrix' and 'meta'; missing {sorted(missing)}.")
        return {key: _local(files[key]) for key in ("exprMatrix", "meta")}
    folder = _local(files)
    paths = {}
    for key, names in (("exprMatrix", ("exprMatrix.tsv.gz", "exprMatrix.tsv")), ("meta", ("meta.tsv",))):
        hits = [os.path.join(folder, n) for n in names if os.path.exists(os.path.join(folder, n))]
        if not hits:
            raise InputError(f"{folder!r} has no {' or '.join(names)}.")
        paths[key] = hits[0]
    return paths


def asd_velmeshev(*, cache_dir: str | None = None, files=None) -> anndata.AnnData:
    """Velmeshev et al. 2019 autism snRNA-seq (UCSC Cell Browser ``autism``), 31 donors.

    The Cell Browser matrix ``exprMatrix.tsv.gz`` (genes × cells; genes ``ENSG...|SYMBOL``) holds
    **log2(x+1)-normalised** values, not counts. As the paper does, ``X`` is ``2**value - 1``: the
    normalised expression, which ``sm.pp.prepare`` then renormalises and log-transforms. These are *not*
    integer UMI counts (the original counts are not published), so count-based models do not apply.
    ``var_names`` are gene symbols (made unique); ``var["gene_ids"]`` keeps the Ensembl ids.
    ``obs``: ``batch`` = ``"donor_" + individual``, ``celltype`` = ``cluster`` (17 types), ``diagnosis``
    (ASD / Control) and every other ``meta.tsv`` column (``region``, ``age``, ``sex``, ``Capbatch``, ...).

    ``files``: a folder with ``exprMatrix.tsv.gz`` and ``meta.tsv``, or
    ``{"exprMatrix": path, "meta": path}``.
    Default: download both from the Cell Browser into the cache.

    >>> adata = asd_velmeshev()                                             # doctest: +SKIP
    >>> sm.pp.prepare(adata, n_top_genes=2916)                              # doctest: +SKIP
    """
    paths = _asd_paths(files, cache_dir)
    X, cells, gene_ids = read_genes_by_cells(paths["exprMatrix"], name="exprMatrix")
    X.data = np.expm1(X.data.astype(np.float64) * np.log(2.0)).astype(np.float32)  # 2**x - 1 (0 stays 0)
    meta = pd.read_csv(paths["meta"], sep="\t", dtype={"individual": str})
    for col in ("cell", "individual", "cluster", "diagnosis"):
        if col not in meta.columns:
            raise InputError(f"meta.tsv has no {col!r} column; columns are {list(meta.columns)}.")
    meta = meta.drop_duplicates("cell").set_index("cell")
    keep = cells.isin(meta.index)
    if not keep.all():
        log.warning("ASD: %d cells of exprMatrix have no metadata; dropped.", int((~keep).sum()))
    obs = meta.loc[cells[keep]].copy()
    obs.insert(0, "celltype", obs["cluster"].astype(str))
    obs.insert(0, "batch", "donor_" + obs["individual"].astype(str))
    _categorical(obs, ["batch", "celltype", "diagnosis"])
    ids = pd.Series(gene_ids, dtype=str)
    symbols = ids.str.split("|").str[-1]
    var = pd.DataFrame({"gene_ids": ids.str.split("|").str[0].to_numpy()},
                       index=anndata.utils.make_index_unique(pd.Index(symbols)))
    adata = anndata.AnnData(X[np.flatnonzero(keep)], obs=obs, var=var)
    adata.uns["dataset"] = _dataset_info("ASD", "Velmeshev et al. 2019, UCSC Cell Browser 'autism'",
                                         "normalised expression, 2**x - 1 of the published log2(x+1) values")
    log.info("ASD: %d cells x %d genes, %d batches", adata.n_obs, adata.n_vars, obs["batch"].nunique())
    return adata


# ---------------------------------------------------------------------------------------------------------
# HH: Litvinukova et al. 2020 healthy heart (Figshare 10.6084/m9.figshare.20499630)
# ---------------------------------------------------------------------------------------------------------

def _hh_path(files, cache) -> str:
    if files is not None:
        path = _local(files)
        return os.path.join(path, HH_FILENAME) if os.path.isdir(path) else path
    target = os.path.join(resolve_cache_dir(cache), HH_FILENAME)
    if os.path.exists(target):
        return target  # no network needed (the Figshare MD5 is checked when the file is downloaded)
    api = FIGSHARE_API.format(article=HH_FIGSHARE_ARTICLE)
    try:
        url, md5 = figshare_file(HH_FIGSHARE_ARTICLE, HH_FILENAME)
    except ConnectionError as err:
        raise _offline_error(HH_FILENAME, f"{api} (doi:{HH_DOI})", target, err.__cause__ or err) from err
    return fetch(url, md5=md5, cache_dir=cache, filename=HH_FILENAME)


def healthy_heart(*, cache_dir: str | None = None, files=None, backed: str | None = None) -> anndata.AnnData:
    """Healthy human heart atlas (Litvinukova et al. 2020, as repackaged on Figshare by Yu et al. 2023).

    ``Healthy_human_heart_adata.h5ad``: 486,134 cells × 33,538 genes of raw counts (about 5 GB to
    download). ``obs["batch"]`` is a copy of ``sampleID`` (147 donor × region × protocol samples); the
    original columns stay, including ``celltype``, ``TissueDetail`` (the condition used by the paper's MEC),
    ``DonorID`` and ``protocol``.

    ``backed="r"`` opens the file without reading ``X`` into memory (``X`` is then left as stored, and
    ``obs`` is in memory); default reads everything and makes ``X`` a float32 CSR matrix.
    ``files``: a local ``.h5ad`` or a folder holding ``Healthy_human_heart_adata.h5ad``. Default: download it
    from Figshare into the cache, checked against the MD5 that Figshare reports.

    >>> adata = healthy_heart(backed="r")                                   # doctest: +SKIP
    >>> small = adata[adata.obs["protocol"] == "10X3'V3"].to_memory()       # doctest: +SKIP
    """
    path = _hh_path(files, cache_dir)
    if not os.path.exists(path):
        raise InputError(f"File not found: {path!r}.")
    adata = anndata.read_h5ad(path, backed=backed)
    for col in ("sampleID", "celltype"):
        if col not in adata.obs.columns:
            raise InputError(f"{path} has no obs column {col!r}; columns are {list(adata.obs.columns)}.")
    adata.obs["batch"] = pd.Categorical(adata.obs["sampleID"].astype(str))
    if not backed:
        adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
    adata.uns["dataset"] = _dataset_info("HH", f"Litvinukova et al. 2020 (doi:{HH_DOI})", "raw counts")
    log.info("HH: %d cells x %d genes, %d batches", adata.n_obs, adata.n_vars, adata.obs["batch"].nunique())
    return adata


# ---------------------------------------------------------------------------------------------------------
# The authors' preprocessed bundle and splits (Figshare 10.6084/m9.figshare.28414367)
# ---------------------------------------------------------------------------------------------------------

def _split_name(split) -> str:
    if isinstance(split, (int, np.integer)) and not isinstance(split, bool):
        return f"split_{int(split)}"
    if isinstance(split, str) and re.fullmatch(r"split_\d+", split):
        return split
    raise InputError(f"split must be a fold number (1..5) or 'split_k', got {split!r}.")


def _is_split_dir(path: str) -> bool:
    return all(os.path.isdir(os.path.join(path, part)) for part in BUNDLE_PARTS)


def _find_split_dir(dataset: str, split: str, root: str) -> str:
    """The ``split_k`` folder under ``root``; ambiguity between datasets is resolved by folder names."""
    hits = []
    for here, dirs, _ in os.walk(root):
        if os.path.relpath(here, root).count(os.sep) >= 6:
            dirs[:] = []
        if os.path.basename(here) == split and _is_split_dir(here):
            hits.append(here)
            dirs[:] = []
    if len(hits) > 1:
        tokens = _BUNDLE_DIR_TOKENS[dataset]
        hits = [h for h in hits if any(part.lower().startswith(tokens)
                                       for part in os.path.relpath(h, root).split(os.sep))] or hits
    if not hits:
        raise InputError(
            f"No {split}/{{train,val,test}} folder for {dataset} under {root!r}. Download the authors' "
            f"preprocessed data from {BUNDLE_URL}, extract it, and pass root= (a folder containing "
            f"{split}) or files= (the {split} folder itself).")
    if len(hits) > 1:
        raise InputError(f"Several {split} folders for {dataset} under {root!r}: {hits}. "
                         "Pass files= one of them.")
    return hits[0]


def _read_matrix(path: str, allow_pickle: bool):
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "pickle" not in str(err):
            raise
    if not allow_pickle:
        raise InputError(
            f"{path} holds a pickled Python object (a scipy sparse matrix saved with np.save, as in the "
            "authors' HH bundle). Loading it runs pickle, which can execute code contained in the file. "
            "If you trust the file (downloaded from the authors' Figshare), pass allow_pickle=True.")
    log.warning("Loading %s with allow_pickle=True (unpickling the authors' file).", path)
    obj = np.load(path, allow_pickle=True)
    obj = obj.item() if obj.dtype == object and obj.shape == () else obj
    if not (sparse.issparse(obj) or (isinstance(obj, np.ndarray) and obj.dtype != object)):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a matrix.")
    return obj


def _read_genes(path: str, n_genes: int) -> pd.Index:
    """Gene names from ``geneids.csv``.

    The first text column among: columns named like ``gene``, other named columns, then an unnamed (index)
    column. A file written without a header line is recognised by its length.
    """
    table = pd.read_csv(path)
    if len(table) == n_genes - 1:                   # written without a header line
        table = pd.read_csv(path, header=None)
    unnamed = [c for c in table.columns if str(c).startswith("Unnamed")]
    named = [c for c in table.columns if c not in unnamed]
    genelike = [c for c in named if "gene" in str(c).lower()]
    ordered = genelike + [c for c in named if c not in genelike] + unnamed
    text = [c for c in ordered if table[c].dtype == object]
    column = (text or ordered)[0]
    genes = pd.Index(table[column].astype(str))
    if len(genes) != n_genes:
        raise InputError(f"{path} lists {len(genes)} genes but the matrix has {n_genes} columns.")
    return genes


def _read_part(folder: str, part: str, allow_pickle: bool) -> anndata.AnnData:
    files = {name: os.path.join(folder, part, name) for name in ("exprMatrix.npy", "geneids.csv", "meta.csv")}
    for path in files.values():
        if not os.path.exists(path):
            raise InputError(f"Missing {path}: expected {part}/{{exprMatrix.npy, geneids.csv, meta.csv}}.")
    X = _read_matrix(files["exprMatrix.npy"], allow_pickle)
    if X.ndim != 2:
        raise InputError(f"{files['exprMatrix.npy']} is not a 2-D matrix (shape {X.shape}).")
    meta = pd.read_csv(files["meta.csv"])
    meta = meta.drop(columns=[c for c in meta.columns if str(c).startswith("Unnamed")])
    if len(meta) != X.shape[0]:
        raise InputError(f"{part}: meta.csv has {len(meta)} rows but exprMatrix.npy has {X.shape[0]} cells.")
    genes = _read_genes(files["geneids.csv"], X.shape[1])
    meta.index = (meta["original_index"].astype(str) if "original_index" in meta.columns
                  else pd.Index([f"{part}_{i}" for i in range(len(meta))]))
    meta["split"] = part
    return anndata.AnnData(sparse.csr_matrix(X, dtype=np.float32), obs=meta, var=pd.DataFrame(index=genes))


def authors_bundle(dataset: str, split=1, *, root: str | None = None, files: str | None = None,
                   allow_pickle: bool = False) -> anndata.AnnData:
    """The authors' preprocessed data for one fold, train + val + test in one AnnData, split kept verbatim.

    The Figshare bundle (doi:10.6084/m9.figshare.28414367; download and extract it yourself) stores each
    fold as ``split_k/{train,val,test}/{exprMatrix.npy, geneids.csv, meta.csv}``. ``X`` is the authors'
    **log-normalised HVG** matrix (2916 or 3000 genes; no scaling), so do *not* run ``sm.pp.prepare``; the
    model's min-max scaling is fitted at training time. ``obs`` is ``meta.csv`` (``batch``, ``celltype``,
    ``original_index``, ...), indexed by ``original_index``, plus ``obs["split"]`` in {train, val, test}.

    Parameters
    ----------
    dataset
        ``"AML"``, ``"ASD"`` or ``"HH"``: picks the right ``split_k`` when ``root`` holds several datasets.
    split
        Fold number (1..5) or ``"split_k"``.
    root
        A folder with the extracted bundle (searched for ``split_k``); default ``<cache>/authors_bundle``.
    files
        The ``split_k`` folder itself (overrides ``root``).
    allow_pickle
        The HH matrices are scipy sparse objects written with ``np.save``; reading them unpickles the file,
        which can run code from it. Off by default (a clear error then); set True only for trusted files.

    Example
    -------
    >>> adata = authors_bundle("AML", 1, root="~/data/scMEDAL")                       # doctest: +SKIP
    >>> model = sm.SCMEDAL(adata, batch_key="batch", labels_key="celltype",
    ...                    split_key="split")                                    # doctest: +SKIP
    """
    key = _dataset_key(dataset)
    name = _split_name(split)
    if files is not None:
        folder = _local(files)
        if not _is_split_dir(folder):
            raise InputError(f"{folder!r} has no train/, val/ and test/ folders; pass the {name} folder.")
    else:
        base = _local(root) if root is not None else os.path.join(resolve_cache_dir(), "authors_bundle")
        if not os.path.isdir(base):
            raise InputError(f"No authors' bundle at {base!r}. Download it from {BUNDLE_URL}, extract it "
                             "there (or anywhere, then pass root=), or pass files= a split_k folder.")
        folder = _find_split_dir(key, name, base)
    parts = [_read_part(folder, part, allow_pickle) for part in BUNDLE_PARTS]
    genes = parts[0].var_names
    if any(not p.var_names.equals(genes) for p in parts[1:]):
        raise InputError(f"{folder}: train, val and test list different genes.")
    adata = anndata.concat(parts, merge="same")
    adata.obs["split"] = pd.Categorical(adata.obs["split"], categories=list(BUNDLE_PARTS))
    if not adata.obs_names.is_unique:
        raise InputError(f"{folder}: original_index repeats across train/val/test; "
                         "the split is not a partition.")
    for col in ("batch", "celltype"):
        if col in adata.obs.columns:
            adata.obs[col] = pd.Categorical(adata.obs[col].astype(str))
        else:
            log.warning("%s: meta.csv has no %r column.", folder, col)
    adata.uns["dataset"] = _dataset_info(key, f"authors' bundle doi:{BUNDLE_DOI}, {name}",
                                         "log-normalised HVGs (authors' preprocessing)")
    log.info("%s %s: %s", key, name, adata.obs["split"].value_counts().to_dict())
    return adata


# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------

PAPER_DATASETS = {"AML": aml_vangalen, "ASD": asd_velmeshev, "HH": healthy_heart}


def _dataset_key(name: str) -> str:
    key = str(name).upper()
    if key not in PAPER_DATASETS:
        raise InputError(f"Unknown paper dataset {name!r}; choose one of {sorted(PAPER_DATASETS)}.")
    return key


def load_paper_dataset(name: str, **kw) -> anndata.AnnData:
    """Load a paper dataset by name (``"AML"``, ``"ASD"`` or ``"HH"``, any case); ``kw`` go to its loader.

    >>> adata = load_paper_dataset("ASD", cache_dir="/data/cache")         # doctest: +SKIP
    """
    return PAPER_DATASETS[_dataset_key(name)](**kw)
