"""``scmedal-lite apply``: a trained model on new cells, whose new batches get their own random effects.

Usage::

    scmedal-lite apply MODEL_DIR NEW.h5ad --batch-key KEY --out DIR [--labels-key K]
                       [--counterfactuals B1,B2] [--max-epochs N] [--seed S] [--overwrite] [--quiet | --verbose]

``MODEL_DIR`` is a saved model (``model.save``, or ``model/`` of a ``scmedal-lite run`` folder), ``NEW.h5ad`` the
new cells. Both are only read. Steps:

1. Checks before any heavy work (exit status 2, one line naming the problem and the fix): the model folder,
   the batch column, every model gene present in the file, ``--labels-key``, the counterfactual targets,
   the output folder.
2. The same preprocessing as at training: raw counts (:func:`scmedal_lite.validate.looks_like_counts`) are
   normalised to 10,000 per cell over all the file's genes and log1p-transformed, as :func:`scmedal_lite.pp.prepare`
   does; log-normalised values are used as they are. Then the model's genes are taken, in its order, and the
   model scales them with the min-max values it fitted at training (``model.minmax``). No QC filter: every
   cell of the file gets a latent.
3. Batches the model does not know get their random effects estimated from their cells
   (:meth:`scmedal_lite.SCMEDAL.add_batches`; every trained weight stays frozen). Batches it knows keep the
   effects learnt at training (no refit), and the report checks they look like themselves: per known batch,
   the RE reconstruction error with the batch's own effect against the mean of all effects (own worse than
   the mean suggests a name collision: cells of another batch under a known name). A file holding only known
   batches is not an error: there is nothing to estimate, and the latents, scores and counterfactuals are still
   what the user asked for (new cells of the reference batches are the common case); the report says so.
4. ``DIR`` receives::

       latents.h5ad          a copy of NEW.h5ad (as read) with obsm["X_scMEDAL_FE"], obsm["X_scMEDAL_RE"]
       scores.csv            batch mixing of both latents (sm.metrics: ASW, kNN same-batch fraction, ...);
                             cell-type scores with --labels-key; empty with one batch
       counterfactuals.h5    with --counterfactuals: the cells as if measured in each named batch
       model/                the model with the new batches added (``sm.SCMEDAL.load``)
       report.md, apply.json what was done: new and known batches, cells, genes, seconds, checks

``DIR`` is written whole or not at all (built in a hidden temporary folder beside it and swapped in at the end);
a non-empty ``DIR`` is refused unless ``--overwrite``. Used by :mod:`scmedal_lite.cli`.

Example
-------
>>> from scmedal_lite import cli
>>> cli.main(["apply", "runs/covid/model", "new_donors.h5ad", "--batch-key", "sample_id",
...           "--out", "runs/new_donors"])                                   # doctest: +SKIP
0
"""

from __future__ import annotations

import json
import logging
import os
import time

import pandas as pd

from .validate import InputError

log = logging.getLogger(__name__)

#: The batch scores written to ``scores.csv`` (and the cell-type scores with ``--labels-key``).
BATCH_SCORES = ("asw", "batch_asw_scib", "knn_inv_simpson", "knn_batch_fraction", "knn_batch_fraction_expected")
LABEL_SCORES = ("celltype_asw_scib", "nmi", "ari")
OUTPUTS = ("latents.h5ad", "scores.csv", "model", "report.md", "apply.json")


def add_parser(sub) -> None:
    """The ``apply`` sub-command's arguments."""
    p = sub.add_parser("apply", help="apply a saved model to new cells; new batches get their own effects",
                       description="Apply a saved scMEDAL model to NEW.h5ad: estimate the random effects of the "
                                   "batches it has not seen, write latents, scores, counterfactuals, the updated "
                                   "model and a report to --out.")
    p.add_argument("model", metavar="MODEL_DIR", help="a saved model (model.save, or model/ of a `run` folder)")
    p.add_argument("data", metavar="NEW.h5ad", help="the new cells (only read, never modified)")
    p.add_argument("--batch-key", required=True, help="obs column of the batch in NEW.h5ad")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must be empty or absent)")
    p.add_argument("--labels-key", default=None, help="obs column of the cell type: adds cell-type scores")
    p.add_argument("--counterfactuals", default=None, metavar="B1,B2",
                   help="comma-separated batches (known or new) to write the cells' counterfactuals for")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="epochs when estimating the new batches' effects (default: the package's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("--quiet", "-q", action="store_true", help="print only errors (no progress, no bars)")
    loud.add_argument("--verbose", "-v", action="store_true", help="also the package's log messages (stderr)")


# ------------------------------------------------------------------------------------------ checks

def model_folder(model_dir: str) -> str:
    """``model_dir`` itself when it holds ``setup.json``; else its one sub-folder that does (``model/`` of a
    ``scmedal-lite run`` output holds the shared model as ``scmedal-<fingerprint>/``)."""
    if os.path.isdir(model_dir) and not os.path.exists(os.path.join(model_dir, "setup.json")):
        found = sorted(e.path for e in os.scandir(model_dir)
                       if e.is_dir() and os.path.exists(os.path.join(e.path, "setup.json")))
        if len(found) == 1:
            return found[0]
    return model_dir


def read_setup(model_dir: str) -> dict:
    """The saved model's ``setup.json`` (genes, batches, keys), read without TensorFlow."""
    path = os.path.join(model_dir, "setup.json")
    if not os.path.isdir(model_dir) or not os.path.exists(path):
        raise InputError(f"MODEL_DIR {model_dir!r} is not a saved model (no setup.json); pass the folder "
                         "model.save wrote, or model/ of a `scmedal-lite run` output.")
    try:
        with open(path, encoding="utf-8") as f:
            setup = json.load(f)
        genes, known, trained = list(setup["genes"]), list(setup["batch_categories"]), dict(setup["trained"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path} is unreadable or corrupt ({err}); save the model again.") from None
    missing = [k.upper() for k in ("fe", "re") if k not in trained]
    if missing:
        raise InputError(f"The model at {model_dir!r} has no trained {' and '.join(missing)} network; apply needs "
                         "both: train it with model.train(which=('fe', 're')) and save it again.")
    return {"genes": genes, "batches": known, "layer": setup.get("layer")}


def _check_genes(genes: pd.Index, model_genes: list, data: str) -> None:
    missing = pd.Index(model_genes).difference(genes)
    if len(missing):
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise InputError(f"{len(missing)} of the model's {len(model_genes)} genes are missing from {data} "
                         f"({shown}); the file needs every gene the model was trained on, with the same names "
                         "(the same annotation; all genes, or at least the model's).")
    if not genes.is_unique:
        raise InputError(f"{data} has duplicate gene names; make them unique (adata.var_names_make_unique()) "
                         "and write the file again.")


def check_inputs(args) -> dict:
    """Everything that can be checked before TensorFlow starts; raises :class:`InputError`."""
    from .cli import check_out
    from .validate import as_int, check_obs_key, read_h5ad

    data, model_dir = os.path.abspath(args.data), model_folder(os.path.abspath(args.model))
    if args.max_epochs is not None:
        as_int("--max-epochs", args.max_epochs, minimum=1)
    as_int("--seed", args.seed, minimum=0)
    setup = read_setup(model_dir)
    out = check_out(args, {"input file": (data, args.data), "MODEL_DIR": (model_dir, args.model)})
    adata = read_h5ad(data, backed="r")
    try:
        check_obs_key(adata, args.batch_key, role="--batch-key")
        if args.labels_key is not None:
            check_obs_key(adata, args.labels_key, role="--labels-key")
        if setup["layer"] is not None and setup["layer"] not in adata.layers:
            raise InputError(f"The model reads layer {setup['layer']!r}, which {args.data} lacks; add that "
                             "layer (log-normalised expression) to the file.")
        _check_genes(pd.Index(adata.var_names.astype(str)), setup["genes"], args.data)
        batches = adata.obs[args.batch_key].astype(str)
        n_obs, n_vars = adata.n_obs, adata.n_vars
    finally:
        if getattr(adata, "file", None) is not None:
            adata.file.close()
    present = sorted(pd.unique(batches))
    known = [b for b in present if b in set(setup["batches"])]
    new = [b for b in present if b not in set(setup["batches"])]
    targets = _targets(args.counterfactuals, setup["batches"] + new)
    return {"data": data, "model_dir": model_dir, "out": out, "n_obs": n_obs, "n_vars": n_vars,
            "known": known, "new": new, "targets": targets, "setup": setup,
            "cells_per_batch": batches.value_counts().to_dict()}


def _targets(text, valid: list) -> list:
    if text is None:
        return []
    targets = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in targets if t not in set(valid)]
    if unknown or not targets:
        raise InputError(f"--counterfactuals: {unknown or 'no batch'} is not a batch of the model or of the file; "
                         f"choose among {valid[:8]}{' ...' if len(valid) > 8 else ''} ({len(valid)} in all).")
    return targets


# ------------------------------------------------------------------------------------------ the work

def prepared(adata, batch_key: str, model_batch_key: str, layer: str | None):
    """The cells as the model reads them: counts normalised and log1p'd over all genes (as ``sm.pp.prepare``),
    log-normalised values as they are; the batch under the model's column name. A new AnnData; ``adata`` is
    left as it is. Returns (AnnData, how it was prepared)."""
    import anndata
    import scanpy as sc

    from .pp import TARGET_SUM
    from .validate import looks_like_counts

    matrix = adata.layers[layer] if layer is not None else adata.X
    obs = pd.DataFrame({model_batch_key: adata.obs[batch_key].astype(str).to_numpy()}, index=adata.obs_names)
    work = anndata.AnnData(matrix.copy(), obs=obs, var=pd.DataFrame(index=adata.var_names.astype(str)))
    if layer is None and looks_like_counts(work):
        sc.pp.normalize_total(work, target_sum=TARGET_SUM)
        sc.pp.log1p(work)
        how = f"counts: normalize_total({TARGET_SUM:g}) and log1p over all {work.n_vars} genes, then the model's genes"
    else:
        how = "log-normalised: used as is (the model's genes)"
    if layer is not None:
        work = anndata.AnnData(work.X, obs=work.obs, var=work.var, layers={layer: work.X})
    return work, how


def known_batch_check(model, work, known: list) -> pd.DataFrame:
    """Per known batch present: reconstruction MSE (scaled units) with the batch's own effect and with the mean
    of all effects, by the FE network's random-effects decoder (the RE network for the paper's FE, which has
    none). Own worse than the mean hints that the cells are not that batch's."""
    import warnings

    from .model import UnseenBatchWarning

    columns = ["batch", "cells", "network", "mse_own_effect", "mse_mean_effect", "consistent"]
    if not known:
        return pd.DataFrame(columns=columns)
    kind = "fe" if model._fe_has_random_effects() else "re"
    cells = work[work.obs[model.batch_key].isin(known).to_numpy()]
    x = model.scale(cells)
    own = ((model.get_reconstruction(kind, cells, scaled=True) - x) ** 2).mean(1)
    renamed = cells.copy()
    renamed.obs[model.batch_key] = "__unseen__"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnseenBatchWarning)
        mean = ((model.get_reconstruction(kind, renamed, scaled=True, unseen="mean") - x) ** 2).mean(1)
    b = cells.obs[model.batch_key].to_numpy()
    table = pd.DataFrame([{"batch": k, "cells": int((b == k).sum()), "network": kind.upper(),
                           "mse_own_effect": float(own[b == k].mean()), "mse_mean_effect": float(mean[b == k].mean())}
                          for k in known], columns=columns[:-1])
    table["consistent"] = table["mse_own_effect"] <= table["mse_mean_effect"]
    return table


def scores(fe, re, batches, labels=None, seed: int = 0) -> tuple[pd.DataFrame, str]:
    """``sm.metrics`` scores of both latents; (table, a note when some could not be computed)."""
    from .metrics import score_embeddings

    columns = ["embedding", "metric", "label", "value"]
    if len(pd.unique(batches)) < 2:
        return pd.DataFrame(columns=columns), "one batch in the file: no batch-mixing scores"
    note = ""
    if labels is not None and len(pd.unique(labels)) < 2:
        labels, note = None, "one cell type in the file: no cell-type scores"
    chosen = list(BATCH_SCORES) + (list(LABEL_SCORES) if labels is not None else [])
    table = score_embeddings({"scMEDAL-FE": fe, "scMEDAL-RE": re}, batches, labels, metrics=chosen, seed=seed)
    return table, note


def execute(args, checked: dict, tmp: str, say) -> dict:
    """Load, prepare, estimate, write every output into ``tmp``; returns what the report says."""
    from . import tl
    from .io import write_csv, write_h5ad
    from .model import SCMEDAL
    from .validate import read_h5ad

    timings, t0 = {}, time.perf_counter()
    model = SCMEDAL.load(checked["model_dir"])
    adata = read_h5ad(checked["data"])                      # the copy that becomes latents.h5ad
    work, how = prepared(adata, args.batch_key, model.batch_key, model.layer)
    timings["load_and_prepare"] = time.perf_counter() - t0
    new_cells = work.obs[model.batch_key].isin(checked["new"]).to_numpy()
    if checked["new"]:
        say(f"estimating the random effects of {len(checked['new'])} new batch(es) from {int(new_cells.sum())} cells")
        t = time.perf_counter()
        model.add_batches(work[new_cells].copy(), max_epochs=args.max_epochs, seed=args.seed,
                          progress=not args.quiet)
        timings["add_batches"] = time.perf_counter() - t
    t = time.perf_counter()
    check = known_batch_check(model, work, checked["known"])
    fe, re = model.get_latent("fe", work), model.get_latent("re", work)
    adata.obsm["X_scMEDAL_FE"], adata.obsm["X_scMEDAL_RE"] = fe.astype("float32"), re.astype("float32")
    tl.record(adata, model, latents={"X_scMEDAL_FE": {"kind": "fe"}, "X_scMEDAL_RE": {"kind": "re"}},
              applied={"new_batches": checked["new"], "known_batches": checked["known"]})
    labels = adata.obs[args.labels_key].astype(str).to_numpy() if args.labels_key else None
    table, note = scores(fe, re, work.obs[model.batch_key].to_numpy(), labels, seed=args.seed)
    timings["latents_and_scores"] = time.perf_counter() - t
    write_h5ad(os.path.join(tmp, "latents.h5ad"), adata)
    write_csv(os.path.join(tmp, "scores.csv"), table)
    if checked["targets"]:
        say(f"writing counterfactuals for {len(checked['targets'])} batch(es)")
        t = time.perf_counter()
        model.write_counterfactuals(os.path.join(tmp, "counterfactuals.h5"), work, checked["targets"],
                                    progress=not args.quiet)
        timings["counterfactuals"] = time.perf_counter() - t
    model.save(os.path.join(tmp, "model"))
    timings = {k: round(v, 1) for k, v in timings.items()}
    return {"prepared": how, "genes": len(model.var_names), "check": check, "scores": table,
            "scores_note": note, "seconds": timings, "model_batches": len(model.batch_categories)}


def _fmt(table: pd.DataFrame) -> str:
    if table.empty:
        return "(none)\n"
    return table.to_markdown(index=False, floatfmt=".4g") + "\n"


def report(checked: dict, done: dict, command: str, seconds: float, digest: str) -> tuple[str, dict]:
    """``report.md`` (text) and ``apply.json`` (dict)."""
    from . import __version__
    from .provenance import versions

    check = done["check"]
    suspicious = check.loc[~check["consistent"], "batch"].tolist() if len(check) else []
    info = {"command": command, "scmedal_lite_version": __version__, "input": checked["data"],
            "input_sha256": digest, "model": checked["model_dir"], "cells": checked["n_obs"],
            "genes_in_file": checked["n_vars"], "genes_used": done["genes"], "prepared": done["prepared"],
            "new_batches": checked["new"], "known_batches": checked["known"],
            "cells_per_batch": checked["cells_per_batch"], "counterfactual_targets": checked["targets"],
            "known_batch_check": check.to_dict(orient="records"), "known_batches_suspicious": suspicious,
            "scores_note": done["scores_note"], "seconds": done["seconds"], "seconds_total": round(seconds, 1),
            "versions": versions()}
    new = checked["new"]
    lines = [f"# scmedal-lite apply: {os.path.basename(checked['data'])}", "", f"`{command}`", "",
             f"- cells: {checked['n_obs']}; genes: {done['genes']} of the model, of {checked['n_vars']} in the file",
             f"- preprocessing: {done['prepared']}",
             f"- new batches ({len(new)}): {', '.join(new) or 'none, nothing to estimate'}"
             + (f" - random effects estimated in {done['seconds'].get('add_batches', 0):.1f} s, every trained "
                "weight frozen" if new else ""),
             f"- known batches ({len(checked['known'])}): {', '.join(checked['known']) or 'none'}"
             + (" - treated as known: the effects learnt at training are used, not refit" if checked["known"]
                else ""),
             f"- the saved model in model/ knows {done['model_batches']} batches",
             f"- counterfactual targets: {', '.join(checked['targets']) or 'none'}",
             f"- seconds: {round(seconds, 1)} in all; {done['seconds']}", ""]
    if len(check):
        lines += ["## Known batches: do their cells look like them?", "",
                  "Reconstruction MSE (scaled units) with each batch's own effect and with the mean of all "
                  "effects (column network). Own worse than the mean suggests cells of another batch under a "
                  "known name; rename them to have their effects estimated.", "", _fmt(check)]
        if suspicious:
            lines += [f"**Check these batches:** {', '.join(suspicious)}.", ""]
    wide = (done["scores"].pivot_table(index="embedding", columns=["label", "metric"], values="value").round(4)
            if len(done["scores"]) else pd.DataFrame())
    lines += ["## Scores (scores.csv)", "", done["scores_note"] or "sm.metrics on both latents, all cells.", "",
              wide.to_markdown() + "\n" if len(wide) else "(none)\n"]
    return "\n".join(lines), info


def _command(args) -> str:
    import shlex

    parts = ["scmedal-lite", "apply", args.model, args.data, "--batch-key", args.batch_key, "--out", args.out]
    for flag, value in (("--labels-key", args.labels_key), ("--counterfactuals", args.counterfactuals),
                        ("--max-epochs", args.max_epochs)):
        if value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts + ["--seed", str(args.seed)])


def main(args) -> int:
    """The ``apply`` command; returns the exit status (0, 1 failed, 2 bad input)."""
    from .cli import EXIT_BAD_INPUT, EXIT_FAILED, _error, _RunFailed, _say, sha256

    try:
        checked = check_inputs(args)
    except InputError as err:
        return _error(str(err).replace("\n", " "), EXIT_BAD_INPUT)
    from .io import atomic_dir, write_json, write_text

    started, digest = time.perf_counter(), sha256(checked["data"])
    _say(args, f"scmedal-lite apply: {checked['data']} ({checked['n_obs']} cells; {len(checked['new'])} new, "
               f"{len(checked['known'])} known batches) -> {checked['out']}")
    try:
        with atomic_dir(checked["out"], overwrite=args.overwrite) as tmp:
            done = execute(args, checked, tmp, lambda m: _say(args, m))
            if sha256(checked["data"]) != digest:      # the input must never change
                raise _RunFailed(f"the input file {checked['data']} changed during the run; results discarded.")
            text, info = report(checked, done, _command(args), time.perf_counter() - started, digest)
            write_text(os.path.join(tmp, "report.md"), text)
            write_json(os.path.join(tmp, "apply.json"), info)
    except _RunFailed as err:
        return _error(str(err), EXIT_FAILED)
    except InputError as err:
        return _error(str(err).replace("\n", " "), EXIT_BAD_INPUT)
    _say(args, f"wrote {checked['out']} in {time.perf_counter() - started:.0f} s; report: "
               f"{os.path.join(checked['out'], 'report.md')}")
    return 0
