"""AnnData in and out, scanpy-style (``sm.tl``): a trained model's latents written into ``obsm``, with the model's
settings and the software versions under ``uns["scmedal"]``.

Example
-------
>>> import scmedal_lite as sm
>>> sm.tl.latent(model, adata, kind="fe")            # adata.obsm["X_scMEDAL_FE"]          # doctest: +SKIP
>>> sm.tl.latent(model, adata, kind="re")            # adata.obsm["X_scMEDAL_RE"]          # doctest: +SKIP
>>> adata.uns["scmedal"]["versions"]["tensorflow"]                                         # doctest: +SKIP
'2.21.0'
>>> sc.pp.neighbors(adata, use_rep="X_scMEDAL_FE"); sc.tl.umap(adata)                     # doctest: +SKIP

``model.add_latent(kind, adata, key_added=...)`` is the same call from the model. Everything written under
``uns["scmedal"]`` can be saved with ``adata.write_h5ad`` (``None`` values are left out).
"""

from __future__ import annotations

import logging

import numpy as np

from .validate import InputError, check_choice

log = logging.getLogger(__name__)

__all__ = ["latent", "record", "setup_summary", "KEYS", "UNS_KEY"]

#: The ``obsm`` key each network's latent goes to by default.
KEYS = {"fe": "X_scMEDAL_FE", "re": "X_scMEDAL_RE", "ae": "X_scMEDAL_AE"}
#: Where the settings and versions go in ``uns``.
UNS_KEY = "scmedal"


def latent(model, adata=None, kind: str = "fe", *, key_added: str | None = None, unseen: str = "mean",
           chunk_size: int = 8192, copy: bool = False):
    """Write network ``kind``'s latent of ``adata``'s cells to ``adata.obsm[key_added]`` and the model's settings
    and the software versions to ``adata.uns["scmedal"]`` (:func:`record`).

    Parameters
    ----------
    model
        A trained :class:`scmedal_lite.SCMEDAL`.
    adata
        The cells (same genes as the model); None: the data the model was set up with.
    kind
        ``"fe"`` (batch-invariant), ``"re"`` (batch-specific) or ``"ae"``.
    key_added
        The ``obsm`` key; default ``"X_scMEDAL_FE"``, ``"X_scMEDAL_RE"`` or ``"X_scMEDAL_AE"`` (:data:`KEYS`).
    unseen, chunk_size
        Passed to :meth:`scmedal_lite.SCMEDAL.get_latent`.
    copy
        Return a copy of ``adata`` with the latent instead of writing into ``adata``.

    Returns
    -------
    anndata.AnnData or None
        The copy with ``copy=True``, else None (``adata`` is modified in place, as scanpy's ``tl`` functions do).
    """
    check_choice("kind", kind, tuple(KEYS))
    if adata is None:
        adata = model.adata
        if adata is None:
            raise InputError("This model was loaded without data: pass the AnnData, "
                             "sm.tl.latent(model, adata, kind=...).")
    key = KEYS[kind] if key_added is None else str(key_added)
    values = model.get_latent(kind, adata, unseen=unseen, chunk_size=chunk_size)
    if copy:
        adata = adata.copy()
    adata.obsm[key] = np.asarray(values, dtype="float32")
    record(adata, model, latents={key: {"kind": kind, "unseen": unseen}})
    log.info("wrote obsm[%r]: %d cells x %d dimensions (%s)", key, *values.shape, kind.upper())
    return adata if copy else None


def record(adata, model=None, *, latents: dict | None = None, **extra) -> dict:
    """Write (or update) ``adata.uns["scmedal"]``: the package and dependency versions
    (:func:`scmedal_lite.provenance.versions`), the model's keys, genes, batches, configuration and training
    state, the ``obsm`` keys written (``latents``) and any ``extra`` entries. Returns that dictionary."""
    from .provenance import versions

    entry = dict(adata.uns.get(UNS_KEY, {}))
    entry["versions"] = versions()
    if model is not None:
        entry["model"] = _model_settings(model)
    if latents:
        entry["latents"] = {**dict(entry.get("latents", {})), **latents}
    entry.update(extra)
    adata.uns[UNS_KEY] = _h5ad_safe(entry)
    return adata.uns[UNS_KEY]


def _model_settings(model) -> dict:
    return {"batch_key": model.batch_key, "labels_key": model.labels_key, "layer": model.layer,
            "n_genes": len(model.var_names), "batch_categories": list(model.batch_categories),
            "seed": model.seed, "config": model.config, "trained": model.trained}


def _h5ad_safe(value):
    """A copy ``write_h5ad`` can store: None left out, tuples as lists, NumPy scalars as Python values."""
    if isinstance(value, dict):
        return {str(k): _h5ad_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        items = [_h5ad_safe(v) for v in value if v is not None]
        if any(isinstance(v, (dict, list)) for v in items):
            return {str(i): v for i, v in enumerate(items)}
        return items
    if isinstance(value, np.generic):
        return value.item()
    return value


def setup_summary(model) -> str:
    """What :meth:`scmedal_lite.SCMEDAL.view_setup` prints: keys, batches, labels, genes, split and training."""
    cfg = model.config
    source = f"layer {model.layer!r}" if model.layer else "adata.X"
    lines = [f"SCMEDAL set up on {len(model.var_names)} genes ({source})"]
    batches = list(model.batch_categories)
    shown = ", ".join(batches[:5]) + (", ..." if len(batches) > 5 else "")
    lines.append(f"  batch_key   {model.batch_key!r}: {len(batches)} training batches ({shown})")
    if model.labels_key is not None:
        labels = list(model.label_categories or [])
        lines.append(f"  labels_key  {model.labels_key!r}: {len(labels)} labels ({', '.join(labels[:5])}"
                     f"{', ...' if len(labels) > 5 else ''})")
    else:
        lines.append("  labels_key  None")
    if model.adata is not None and model.train_mask is not None:
        lines.append(f"  cells       {model.adata.n_obs}: {int(model.train_mask.sum())} train, "
                     f"{int(model.val_mask.sum())} validation")
    else:
        lines.append("  cells       (loaded without data)")
    lines.append(f"  networks    preset {cfg['preset']!r}, hidden {cfg['hidden']}, latent {cfg['latent_dim']}, "
                 f"scaling {cfg['scaling']!r}, precision {cfg['precision']!r}, seed {model.seed}")
    if not model.trained:
        lines.append("  trained     nothing yet (model.train())")
    for kind, info in model.trained.items():
        best = info.get("best_epoch")
        lines.append(f"  trained     {kind.upper()}: {info.get('epochs_run')} of {info.get('max_epochs')} epochs"
                     f"{'' if best is None else f', best epoch {best}'}, {float(info.get('seconds', 0)):.0f} s")
    return "\n".join(lines)
