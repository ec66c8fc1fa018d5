"""Input checks that turn bad input into a clear error before anything heavy starts.

Every check raises :class:`InputError` (a ``ValueError``) whose message names the problem and the fix.
``book/bad_inputs.md`` lists every bad input and the message it gets.

Example
-------
>>> check_obs_key(adata, "donor", role="batch_key")     # doctest: +SKIP
InputError: batch_key 'donor' is not a column of adata.obs; columns are: ['sample_id', 'cond_group', ...]
>>> as_int("max_epochs", "50")                         # papermill and the CLI pass strings
50
"""

from __future__ import annotations

import ast
import math
import numbers
import os
import warnings

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

MIN_CELLS_PER_BATCH = 10

#: Largest seed: ``keras.utils.set_random_seed`` seeds NumPy's legacy generator, which takes 32 bits.
MAX_SEED = 2**32 - 1

#: ``backed`` modes :func:`read_h5ad` accepts: in memory, or read-only on disk (never ``"r+"``).
READ_MODES = (None, "r")

_BLOCK_ROWS = 8192          # rows read at a time when scanning a matrix for NaN / negative values
_SAMPLE_VALUES = 200_000    # values looked at to guess counts versus log-normalised data


class InputError(ValueError):
    """Bad input: the message says what is wrong and how to fix it."""


# ---------------------------------------------------------------------------------------------- files

def read_h5ad(path, *, backed: str | None = None) -> AnnData:
    """Read an ``.h5ad`` file without ever writing to it, with clear errors for a missing, wrong-type,
    unreadable or empty file. ``backed="r"`` leaves ``X`` on disk (read-only); ``"r+"`` is refused."""
    import anndata

    if backed not in READ_MODES:
        raise InputError(f"backed must be None (read into memory) or 'r' (read-only on disk), got {backed!r}; "
                         "scmedal_lite never opens your data for writing.")
    try:
        path = os.fspath(path)
    except TypeError:
        raise InputError(f"path must be a file path (str), got {type(path).__name__}: {path!r}.") from None
    if not os.path.exists(path):
        raise InputError(f"File not found: {path!r}. Check the path (relative paths start at {os.getcwd()!r}).")
    if os.path.isdir(path) or not path.lower().endswith(".h5ad"):
        raise InputError(f"{path!r} is not an .h5ad file. Convert it first, e.g. "
                         "`sc.read_10x_mtx(...).write_h5ad('data.h5ad')` or `anndata.read_csv(...)`.")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path!r} is an empty file (0 bytes); was it written completely?")
    try:
        adata = anndata.read_h5ad(path, backed=backed)
    except Exception as err:  # h5py/anndata raise many types for corrupt files
        raise InputError(f"Could not read {path!r} as AnnData ({type(err).__name__}: {err}). "
                         "Is the file complete and written by anndata?") from err
    check_adata(adata)
    return adata


# ---------------------------------------------------------------------------------------------- matrices

def check_adata(adata, *, expect: str | None = None, layer: str | None = None, in_memory: bool = False) -> None:
    """Check ``adata`` is a non-empty AnnData with unique gene names and finite, non-negative values.

    The values checked are ``adata.layers[layer]`` (``X`` when ``layer`` is None), all of them (backed
    matrices are read in blocks of rows). ``expect`` is ``"counts"`` (raw integer counts), ``"log"``
    (log-normalised) or ``None`` (no check): values that look unlike it give a ``UserWarning``.
    ``in_memory=True`` refuses a backed AnnData (for steps that change the data in place).
    """
    if not isinstance(adata, AnnData):
        raise InputError(f"Expected an AnnData object, got {type(adata).__name__}. "
                         "Read your file with scmedal_lite.read_h5ad(path) or anndata.read_h5ad(path).")
    check_choice("expect", expect, (None, "counts", "log"))
    if in_memory and adata.isbacked:
        raise InputError("This step changes the data in place and needs them in memory; the AnnData is backed "
                         f"by {str(adata.filename)!r} (read-only). Use adata = adata.to_memory() first; the file "
                         "itself is never modified.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"The AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes); "
                         "subset it to a non-empty selection.")
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise InputError(f"Duplicate gene names, e.g. {dup}. Call adata.var_names_make_unique() first.")
    if layer is not None:
        if layer not in adata.layers:
            raise InputError(f"layer {layer!r} is not in adata.layers; layers are: {list(adata.layers)}.")
        X, where = adata.layers[layer], f"adata.layers[{layer!r}]"
    else:
        X, where = adata.X, "adata.X"
    if X is None:
        raise InputError(f"{where} is empty (None); put the expression matrix in X or pass layer=.")
    values = _scan_values(X, where)
    if values.size == 0 or expect is None:
        return
    counts = looks_like_counts(values)
    if expect == "counts" and not counts:
        warnings.warn(f"{where} does not look like raw counts (non-integer or small values): it may be "
                      "normalised or log-transformed already. sm.pp.prepare normalises and log-transforms; "
                      "skip it if your data are log-normalised.", UserWarning, stacklevel=3)
    if expect == "log" and counts:
        warnings.warn(f"{where} looks like raw counts (integers, max > 20), but scMEDAL expects "
                      "log-normalised expression. Run sm.pp.prepare(adata) first, or pass layer= a "
                      "log-normalised layer.", UserWarning, stacklevel=3)


def looks_like_counts(data) -> bool:
    """True when ``data`` look like raw counts: non-negative integers with a maximum above 20.

    ``data`` is an AnnData (its ``X``), a matrix (dense, sparse or backed) or an array of values. Only the first
    200,000 stored values are looked at (sparse: the non-zeros). Small integers (max <= 20) are undecided and
    count as not counts. One definition for the whole package: :func:`check_adata` warns with it, and
    :func:`scmedal_lite.tutorial.load_data` decides with it whether to run :func:`scmedal_lite.pp.prepare`.
    """
    values = _sample_values(data.X if isinstance(data, AnnData) else data).astype("float64")
    return bool(values.size and (values >= 0).all() and np.allclose(values, np.round(values))
                and values.max() > 20)


def _sample_values(X, n: int = _SAMPLE_VALUES) -> np.ndarray:
    """The first ``n`` stored values of ``X`` (read block by block, so a large or backed matrix is not read whole)."""
    sample, kept = [], 0
    for block in _row_blocks(X):
        part = np.asarray(block).ravel()[: n - kept]
        sample.append(part)
        kept += part.size
        if kept >= n:
            break
    return np.concatenate(sample) if sample else np.zeros(0)


def _row_blocks(X):
    """The stored values of ``X`` block by block (sparse: the non-zeros; backed: read ``_BLOCK_ROWS`` rows
    at a time, so memory stays bounded)."""
    if sparse.issparse(X):
        yield X.data
        return
    n = X.shape[0] if len(getattr(X, "shape", ())) else 0
    for start in range(0, max(n, 1), _BLOCK_ROWS):
        block = X[start:start + _BLOCK_ROWS]
        yield block.data if sparse.issparse(block) else np.asarray(block)


def _scan_values(X, where: str) -> np.ndarray:
    """Check every value of ``X`` is a finite, non-negative number; returns a sample for :func:`looks_like_counts`."""
    sample, kept = [], 0
    for block in _row_blocks(X):
        block = np.asarray(block)
        if block.dtype.kind not in "biuf":
            raise InputError(f"{where} has dtype {block.dtype}; expression values must be numbers "
                             f"(convert with {where} = {where}.astype('float32')).")
        if block.dtype.kind == "f":
            bad = ~np.isfinite(block)
            if bad.any():
                raise InputError(f"{where} contains NaN or infinite values (at least {int(bad.sum())}); "
                                 "remove or impute them first (e.g. adata.X = np.nan_to_num(adata.X)).")
        if block.size and block.min() < 0:
            raise InputError(f"{where} contains negative values (min {float(block.min()):.4g}): it looks already "
                             "scaled or centred. scMEDAL needs counts (for sm.pp.prepare) or log-normalised "
                             "expression (>= 0); use the unscaled data, e.g. adata.raw or a counts layer.")
        if kept < _SAMPLE_VALUES:
            part = block.ravel()[: _SAMPLE_VALUES - kept]
            sample.append(part)
            kept += part.size
    return np.concatenate(sample).astype("float64") if sample else np.zeros(0)


# ---------------------------------------------------------------------------------------------- obs columns

def check_obs_key(adata: AnnData, key: str, *, role: str, allow_missing: bool = False) -> None:
    """Check that ``key`` is an ``obs`` column without missing values."""
    if not isinstance(key, str):
        raise InputError(f"{role} must be a column name (str), got {type(key).__name__}: {key!r}.")
    if key not in adata.obs.columns:
        raise InputError(f"{role} {key!r} is not a column of adata.obs; columns are: "
                         f"{list(adata.obs.columns)}.")
    missing = int(pd.isna(adata.obs[key]).sum())
    if missing and not allow_missing:
        raise InputError(f"{role} {key!r} has {missing} missing values; drop those cells "
                         f"(adata = adata[adata.obs[{key!r}].notna()].copy()) or fill them.")


def check_batches(adata: AnnData, batch_key: str, *, min_cells: int = MIN_CELLS_PER_BATCH) -> pd.Series:
    """Check there are at least two batches and each has at least ``min_cells`` cells; returns the counts."""
    check_obs_key(adata, batch_key, role="batch_key")
    counts = adata.obs[batch_key].astype(str).value_counts()
    if len(counts) < 2:
        raise InputError(f"batch_key {batch_key!r} has a single batch ({counts.index[0]!r}); scMEDAL models "
                         "variation between batches and needs at least two. Choose another batch column.")
    small = counts[counts < min_cells]
    if len(small):
        raise InputError(f"Batches with fewer than {min_cells} cells in {batch_key!r}: "
                         f"{small.to_dict()}. Drop them (adata = adata[~adata.obs[{batch_key!r}].isin(...)]) "
                         "or merge them with another batch.")
    return counts


# ---------------------------------------------------------------------------------------------- parameters

def check_choice(name: str, value, choices) -> None:
    try:
        ok = bool(value in choices)
    except (TypeError, ValueError):        # unhashable value, or an array compared element-wise
        ok = False
    if not ok:
        raise InputError(f"{name} must be one of {list(choices)}, got {value!r}.")


def as_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Parse an integer parameter (papermill passes strings: ``"50"``, ``"5e2"``, ``"50.0"``) and check its range.

    Returns the int, or raises :class:`InputError`; never another exception.
    """
    out = None
    if isinstance(value, (bool, np.bool_)):
        out = None
    elif isinstance(value, numbers.Integral):
        out = int(value)
    elif isinstance(value, (str, bytes)):
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        try:
            out = int(text)                # exact for long digit strings
        except ValueError:
            out = _whole_number(text)
    elif isinstance(value, numbers.Real):
        out = _whole_number(value)
    if out is None:
        raise InputError(f"{name} must be an integer, got {value!r}.")
    if minimum is not None and out < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {out}.")
    if maximum is not None and out > maximum:
        raise InputError(f"{name} must be <= {maximum}, got {out}.")
    return out


def _whole_number(value) -> int | None:
    """``value`` as an int when it is a finite whole number (``5.0``, ``"5e2"``), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def as_seed(name: str, value) -> int:
    """A random seed: an integer in ``0 .. 2**32 - 1``."""
    return as_int(name, value, minimum=0, maximum=MAX_SEED)


def as_float(name: str, value, *, minimum: float | None = None, exclusive: bool = False,
             maximum: float | None = None) -> float:
    """Parse a float parameter (strings accepted) and check it is finite and in range.

    Returns the float, or raises :class:`InputError`; never another exception.
    """
    try:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, bytes, numbers.Real)):
            raise TypeError
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(out):
        raise InputError(f"{name} must be finite, got {value!r}.")
    if minimum is not None and (out <= minimum if exclusive else out < minimum):
        raise InputError(f"{name} must be {'>' if exclusive else '>='} {minimum}, got {out}.")
    if maximum is not None and out > maximum:
        raise InputError(f"{name} must be <= {maximum}, got {out}.")
    return out


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def as_bool(name: str, value) -> bool:
    """Parse a boolean parameter; accepts true/false/yes/no/on/off/1/0 strings (papermill, CLI)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise InputError(f"{name} must be true or false, got {value!r}.")


def as_mask(name: str, value, n: int, *, all_if_none: bool = False) -> np.ndarray:
    """A boolean mask with one entry per cell (``n`` cells) that selects at least one cell.

    ``None`` selects every cell with ``all_if_none=True`` (and is refused otherwise)."""
    if value is None and all_if_none:
        return np.ones(n, dtype=bool)
    m = np.asarray(value)
    if m.dtype != bool or m.shape != (n,):
        raise InputError(f"{name} must be a boolean array with one entry per cell ({n}); "
                         f"got dtype {m.dtype}, shape {m.shape}.")
    if not m.any():
        raise InputError(f"{name} selects no cells.")
    return m


def as_names(value) -> list[str]:
    """A list of names (str) from one name or a sequence of names."""
    return [value] if isinstance(value, str) else [str(v) for v in value]


def as_int_list(name: str, value, *, minimum: int | None = 1) -> list[int]:
    """A list of integers from a list / tuple, or from text such as ``"512,132"`` or ``"[512, 132]"``."""
    items = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", "(")):
            try:
                items = ast.literal_eval(text)          # literals only: never runs code
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                raise InputError(f"{name} must be a list of integers such as [512, 132], got {value!r}.") from None
        else:
            items = [t for t in text.replace(";", ",").split(",") if t.strip()]
    if isinstance(items, (int, np.integer)) and not isinstance(items, bool):
        items = [items]
    if not isinstance(items, (list, tuple, np.ndarray)) or len(items) == 0:
        raise InputError(f"{name} must be a non-empty list of integers such as [512, 132], got {value!r}.")
    return [as_int(f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(items)]


#: Keys and types of the ``schedule`` part of a preset (see :mod:`scmedal_lite.presets`).
SCHEDULE_TYPES = {"learning_rate": "float>0", "batch_size": "int>=1", "max_epochs": "int>=1|None",
                  "max_steps": "int>=1|None", "min_epochs": "int>=1", "patience": "int>=1",
                  "patience_steps": "int>=0", "re_min_steps_per_epoch": "int>=1|None",
                  "small_data_w_keep": "float>=0|None", "fe_patience_steps": "int>=0|None"}


def parse_settings(part: str, values, defaults: dict) -> dict:
    """Check user overrides of one preset part (``fe``, ``fec``, ``re``: loss weights >= 0; ``schedule``).

    Unknown keys are refused (they would otherwise fail deep inside training); values may be strings.
    """
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(f"{part} must be a dict of settings, e.g. {{{next(iter(defaults))!r}: ...}}; "
                         f"got {type(values).__name__}: {values!r}.")
    allowed = set(defaults) | (set(SCHEDULE_TYPES) if part == "schedule" else set())
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise InputError(f"Unknown {part} settings {unknown}; valid: {sorted(allowed)}.")
    out = {}
    for key, v in values.items():
        label = f"{part}[{key!r}]"
        kind = SCHEDULE_TYPES.get(key, "float>=0") if part == "schedule" else "float>=0"
        if kind.endswith("|None") and (v is None or (isinstance(v, str) and v.strip().lower() in ("", "none"))):
            out[key] = None
        elif kind.startswith("int"):
            out[key] = as_int(label, v, minimum=int(kind.split(">=")[1].split("|")[0]))
        elif kind == "float>0":
            out[key] = as_float(label, v, minimum=0.0, exclusive=True)
        else:
            out[key] = as_float(label, v, minimum=0.0)
    return out


#: The FE design settings that take a value in [0, 1), and what that value means (for the error message).
_FE_DESIGN_FRACTIONS = {
    "stop_min_improvement": "a fraction, e.g. 0.003 for 0.3 %; 0 counts any new best",
    "mix_warmup": "a fraction of the training budget, e.g. 0.5 for its first half; 0 applies w_mix from the "
                  "first step",
    "weight_average": "a moving average's momentum, e.g. 0.99; 0 turns it off",
    "kl_warmup": "a fraction of the training budget, e.g. 0.5 for its first half; 0 applies the variational "
                 "latent's KL term at full weight from the first step",
}
#: The FE design settings that take an integer, and their smallest value.
_FE_DESIGN_INTEGERS = {"adversary_steps": 1, "mix_neighbours": 1, "adversary_set": 0, "memory_size": 1}


def parse_fe_design(values) -> dict:
    """Check user overrides of the FE network's design (``decoder``, ``adversary_input``, ``generator_loss``,
    ``adversary_pass``, ``stop_on``, ``stop_from``: one of their choices; ``adversary_steps``, ``mix_neighbours``,
    ``memory_size``: an integer >= 1; ``adversary_set``: an integer >= 0; ``mix_reach``: a number >= 0, 0 for
    off; ``weight_average``: a momentum in [0, 1), 0 for off; ``stop_min_improvement``, ``mix_warmup``: a
    fraction in [0, 1); ``kl_warmup``: the same, for the variational latent's KL term;
    ``lr_decay_to``: a fraction in [0, 1]). Values may be strings."""
    from .presets import FE_DESIGN_CHOICES

    if values is None:
        return {}
    allowed = [*FE_DESIGN_CHOICES, *_FE_DESIGN_INTEGERS, *_FE_DESIGN_FRACTIONS, "lr_decay_to", "mix_reach"]
    if not isinstance(values, dict):
        raise InputError(f"fe_design must be a dict with some of {allowed}; got {type(values).__name__}.")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise InputError(f"Unknown fe_design settings {unknown}; valid: {allowed}.")
    out = {}
    for key, value in values.items():
        if key in _FE_DESIGN_INTEGERS:
            out[key] = as_int(f"fe_design[{key!r}]", value, minimum=_FE_DESIGN_INTEGERS[key])
        elif key == "mix_reach":
            out[key] = as_float(f"fe_design[{key!r}]", value, minimum=0.0)
        elif key == "lr_decay_to":
            out[key] = as_float(f"fe_design[{key!r}]", value, minimum=0.0)
            if out[key] > 1:
                raise InputError(f"fe_design['lr_decay_to'] is the learning rate's final share, at most 1 "
                                 f"(1: no decay; e.g. 0.05 ends at 5 %); got {value!r}.")
        elif key in _FE_DESIGN_FRACTIONS:
            out[key] = as_float(f"fe_design[{key!r}]", value, minimum=0.0)
            if out[key] >= 1:
                raise InputError(f"fe_design[{key!r}] must be below 1 ({_FE_DESIGN_FRACTIONS[key]}); "
                                 f"got {value!r}.")
        else:
            check_choice(f"fe_design[{key!r}]", value, FE_DESIGN_CHOICES[key])
            out[key] = value
    return out


def check_fe_combination(design: dict, weights: dict) -> None:
    """Refuse FE designs and weights that cannot work together (:class:`scmedal_lite.networks.FixedEffectsAE`),
    naming the setting to change: ``design`` is a full ``fe_design``, ``weights`` the ``fe`` (or ``fec``) weights."""
    if design.get("adversary_set", 0) > 0 and design.get("adversary_input") != "latent":
        raise InputError("fe_design['adversary_set'] needs fe_design['adversary_input'] = 'latent' (the memory "
                         "holds latents); set it, or adversary_set = 0.")
    if ((design.get("adversary_set", 0) > 0 or design.get("mix_reach", 0) > 0)
            and design.get("adversary_pass") != "shared"):
        raise InputError("fe_design['adversary_set'] and ['mix_reach'] need fe_design['adversary_pass'] = "
                         "'shared' (the memory is written from the step's one encoder pass); set it, or turn "
                         "them off (0).")
    if design.get("kl_warmup", 0) > 0 and design.get("latent", "point") != "variational":
        raise InputError("fe_design['kl_warmup'] warms up the variational latent's KL term: it needs "
                         "fe_design['latent'] = 'variational'; set it, or kl_warmup = 0.")
    if weights.get("w_cycle", 0) > 0 and design.get("decoder") != "random_effects":
        raise InputError("w_cycle needs fe_design['decoder'] = 'random_effects' (the counterfactual comes from "
                         "its random effects); set it, or w_cycle = 0.")


def parse_re_design(values) -> dict:
    """Check user overrides of the RE network's design (``output_init``: ``"paper"`` or ``"data"``)."""
    from .presets import RE_DESIGN_CHOICES

    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(f"re_design must be a dict with some of {list(RE_DESIGN_CHOICES)}, e.g. "
                         f"{{'output_init': 'paper'}}; got {type(values).__name__}.")
    unknown = sorted(set(values) - set(RE_DESIGN_CHOICES))
    if unknown:
        raise InputError(f"Unknown re_design settings {unknown}; valid: {list(RE_DESIGN_CHOICES)}.")
    for key, value in values.items():
        check_choice(f"re_design[{key!r}]", value, RE_DESIGN_CHOICES[key])
    return dict(values)


# ---------------------------------------------------------------------------------------------- saved models

#: ``setup.json`` fields and their JSON types; :func:`check_setup` refuses anything else.
SETUP_FIELDS = {"format_version": int, "batch_key": str, "labels_key": (str, type(None)),
                "layer": (str, type(None)), "genes": list, "batch_categories": list,
                "label_categories": (list, type(None)), "minmax": dict, "config": dict, "seed": int,
                "trained": dict}


def check_setup(setup, path: str, kinds) -> None:
    """Check a saved model's ``setup.json`` (already parsed as JSON, which never runs code) has the fields,
    types and network names this version writes; anything unexpected is an :class:`InputError`."""
    where = f"{path!r} (setup.json)"
    if not isinstance(setup, dict):
        raise InputError(f"{where} is not a saved scmedal_lite model: it holds a {type(setup).__name__}, "
                         "not an object. Save the model again.")
    for key, kind in SETUP_FIELDS.items():
        if key not in setup:
            raise InputError(f"{where} is incomplete: field {key!r} is missing. Save the model again.")
        if not isinstance(setup[key], kind) or isinstance(setup[key], bool):
            raise InputError(f"{where} is malformed: {key!r} has type {type(setup[key]).__name__}. "
                             "Save the model again.")
    for key in ("genes", "batch_categories"):
        if not all(isinstance(g, str) for g in setup[key]) or len(set(setup[key])) != len(setup[key]):
            raise InputError(f"{where} is malformed: {key!r} must be a list of distinct strings.")
    if len(setup["batch_categories"]) < 2 or not setup["genes"]:
        raise InputError(f"{where} is malformed: it needs genes and at least two batches.")
    unknown = sorted(set(setup["trained"]) - set(kinds))
    if unknown:
        raise InputError(f"{where} names unknown networks {unknown}; valid: {list(kinds)}. Save the model again.")
    if not all(isinstance(info, dict) for info in setup["trained"].values()):
        raise InputError(f"{where} is malformed: 'trained' must map network names to objects.")
    cfg = setup["config"]
    try:
        as_int_list("config['hidden']", cfg["hidden"])
        as_int("config['latent_dim']", cfg["latent_dim"], minimum=1)
        for part in ("fe", "fec", "re", "schedule"):
            if not isinstance(cfg[part], dict):
                raise InputError(f"config[{part!r}] must be an object")
    except (KeyError, TypeError, InputError) as err:
        raise InputError(f"{where} is malformed: config is not what this version writes ({err}). "
                         "Save the model again.") from None
    minmax = setup["minmax"]
    if minmax.get("mode") not in ("global", "gene") or not all(
            isinstance(minmax.get(k), list) and all(isinstance(v, (int, float)) for v in minmax[k])
            for k in ("min", "max")):
        raise InputError(f"{where} is malformed: minmax must be {{'mode', 'min', 'max'}} numbers.")
    n = 1 if minmax["mode"] == "global" else len(setup["genes"])
    if len(minmax["min"]) != n or len(minmax["max"]) != n:
        raise InputError(f"{where} is malformed: minmax has {len(minmax['min'])} values, expected {n}.")
