"""The user-facing scMEDAL model on AnnData: set up, train, latents, reconstructions, counterfactuals, save/load.

Example
-------
>>> import scmedal_lite as sm
>>> adata = sm.datasets.covid_pbmc()
>>> sm.pp.prepare(adata, batch_key="sample_id")
>>> model = sm.SCMEDAL(adata, batch_key="sample_id", labels_key="celltype_coarse")
>>> model.train(seed=0)                                   # FE and RE, early stopping on the validation loss
>>> adata.obsm["X_scMEDAL_FE"] = model.get_latent("fe")   # batch-invariant
>>> adata.obsm["X_scMEDAL_RE"] = model.get_latent("re")   # batch-specific
>>> cf = model.counterfactual(adata[:500], batch="B2_HGR0000042_T0")   # as if measured in that sample
>>> model.save("runs/covid"); again = sm.SCMEDAL.load("runs/covid", adata)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace

import anndata
import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from . import __version__
from .io import atomic_dir, atomic_write
from .networks import NETWORKS, build_network
from .pp import SPLIT_KEY, invert_minmax, split_masks
from .presets import ARCHITECTURE, PAPER_FE_DESIGN, get_preset
from .rows import OneHotRows, ScaledRows, stream_minmax
from .training import TrainSettings, fit_network, seed_everything, steps_per_epoch, traced_once
from .validate import (
    InputError,
    as_bool,
    as_float,
    as_int,
    as_int_list,
    as_seed,
    check_adata,
    check_batches,
    check_choice,
    check_fe_combination,
    check_obs_key,
    check_setup,
    parse_fe_design,
    parse_re_design,
    parse_settings,
)

log = logging.getLogger(__name__)

#: Rules for cells of batches the model does not know: ``"mean"`` (the average of the known batches' effects),
#: ``"prior"`` (no effect), ``"predict"`` (the known batches' effects weighted by the RE batch head's probabilities
#: that the cell belongs to each, the ARMED rule). :meth:`SCMEDAL.add_batches` estimates new batches instead.
UNSEEN_RULES = ("mean", "prior", "predict")
#: Counterfactual modes: ``"fe"`` decodes the batch-invariant FE latent with the target batch's random effects
#: (needs the FE network's random-effects decoder, the default); ``"full"`` (the paper's) and ``"decoder"`` swap
#: the batch in the RE network; ``"auto"`` is ``"fe"`` when possible, else ``"full"``.
CF_MODES = ("auto", "fe", "full", "decoder")
SETUP_FILE = "setup.json"
#: Optimisation steps :meth:`SCMEDAL.add_batches` allows by default (few parameters, a high learning rate).
NEW_BATCH_STEPS = 500
#: Patience of that fit in optimisation steps (at least 10 epochs). Its validation loss bottoms out within about
#: 100-250 steps on the COVID data (chapter 2, minibatches of 512: FE at step 102, RE at 222 of 500), so 100 more
#: steps without a better loss ends it; the best weights are restored, so a longer patience gives the same
#: result, later.
NEW_BATCH_PATIENCE_STEPS = 100
#: Format of ``setup.json`` this version writes. Format 1 (scmedal_lite 0.1.0 before the redesign) named the
#: fitted min-max values ``scaling``; format 2 names them ``minmax``. Both are read.
FORMAT_VERSION = 2
READ_FORMATS = (1, 2)


class UnseenBatchWarning(UserWarning):
    """Cells from batches the RE network never saw were encoded with the unseen-batch rule."""


#: Principal axes that the FE network's neighbour-keeping term measures within-batch neighbourhoods in.
KEEP_COMPONENTS, KEEP_MAX_CELLS = 50, 20_000
#: The smallest minibatch :func:`fitted_batch_size` gives the RE network.
MIN_FITTED_BATCH = 32


def fitted_batch_size(n_train: int, batch_size: int, min_steps_per_epoch: int | None) -> int:
    """The RE network's minibatch under the step budget: ``batch_size``, or the largest power of two (at least
    ``MIN_FITTED_BATCH``) that gives an epoch at least ``min_steps_per_epoch`` optimisation steps.

    A budget of optimisation steps spent in minibatches of half the data takes few steps per pass: on 1,028
    training COVID cells, minibatches of 512 (3 steps an epoch) left RE's latent without batch structure after
    its 2,000 steps. Uses the number of training cells only, no labels (book/method.md, "The RE network's
    minibatch on small data").

    >>> fitted_batch_size(18_320, 512, 8), fitted_batch_size(1_028, 512, 8), fitted_batch_size(1_028, 512, None)
    (512, 128, 512)
    """
    if not min_steps_per_epoch or n_train >= batch_size * min_steps_per_epoch:
        return int(batch_size)
    fitted = 2 ** int(math.floor(math.log2(max(1.0, n_train / min_steps_per_epoch))))
    return int(min(batch_size, max(MIN_FITTED_BATCH, fitted)))


#: Training cells below which FE's ``w_keep`` defaults to the schedule's ``small_data_w_keep``: the line where the
#: default RE minibatch starts to shrink (8 steps of 512 cells an epoch; :func:`fitted_batch_size`).
SMALL_DATA_CELLS = 4096


def small_data_keep(n_train: int, schedule: dict) -> float:
    """FE's default ``w_keep`` for ``n_train`` training cells: the schedule's ``small_data_w_keep`` below
    :data:`SMALL_DATA_CELLS`, else 0. Uses the number of training cells only, no labels.

    On small data the default FE takes hundreds of passes over the same cells, and its mixing term and
    adversary can merge cell types that the batches hold in different proportions (the pancreas atlas, a
    2,000-cell COVID draw); the neighbour-keeping guard prevents it (book/method.md, "The guard on small data").

    >>> small_data_keep(1_027, {"small_data_w_keep": 100.0}), small_data_keep(18_320, {"small_data_w_keep": 100.0})
    (100.0, 0.0)
    """
    weight = schedule.get("small_data_w_keep")
    return float(weight) if weight and n_train < SMALL_DATA_CELLS else 0.0


def _seeded_subsample(n: int, max_cells: int, seed: int) -> np.ndarray:
    """Sorted positions of at most ``max_cells`` of ``n`` rows: all of them, or a seeded draw without replacement."""
    return np.arange(n) if n <= max_cells else np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False))


def principal_axes(rows, *, n_components: int = KEEP_COMPONENTS, max_cells: int = KEEP_MAX_CELLS,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, components)`` of the first principal axes of ``rows`` (cells × genes, anything indexable by
    row positions, e.g. :class:`scmedal_lite.rows.ScaledRows`), fitted on at most ``max_cells`` seeded cells.
    ``components`` is genes × axes.

    >>> x = np.random.default_rng(0).normal(size=(100, 8)).astype("float32")
    >>> [a.shape for a in principal_axes(x, n_components=3)]
    [(8,), (8, 3)]
    """
    from sklearn.decomposition import PCA

    x = np.asarray(rows[_seeded_subsample(len(rows), max_cells, seed)], dtype=np.float32)
    k = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
    pca = PCA(k, svd_solver="randomized" if k < min(x.shape) // 2 else "full", random_state=seed).fit(x)
    return pca.mean_.astype(np.float32), pca.components_.T.astype(np.float32)


def gene_moments(rows, *, max_cells: int = KEEP_MAX_CELLS, seed: int = 0,
                 chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene ``(mean, standard deviation)`` of ``rows`` (cells × genes, anything indexable by row positions),
    over at most ``max_cells`` seeded cells, read ``chunk_size`` rows at a time.

    >>> x = np.array([[0, 1], [2, 1]], "float32")
    >>> [m.tolist() for m in gene_moments(x)]
    [[1.0, 1.0], [1.0, 0.0]]
    """
    pick = _seeded_subsample(len(rows), max_cells, seed)
    total = np.zeros(rows[pick[:1]].shape[1], np.float64)
    squares = np.zeros_like(total)
    for start in range(0, len(pick), chunk_size):
        block = np.asarray(rows[pick[start:start + chunk_size]], dtype=np.float64)
        total += block.sum(axis=0)
        squares += np.square(block).sum(axis=0)
    mean = total / len(pick)
    std = np.sqrt(np.maximum(squares / len(pick) - np.square(mean), 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


class SCMEDAL:
    """scMEDAL: a fixed-effects (batch-invariant) and a random-effects (batch-specific) autoencoder.

    Parameters
    ----------
    adata
        Cells × genes, log-normalised (run :func:`scmedal_lite.pp.prepare` on counts first). Any of dense,
        sparse or backed (``backed="r"``) AnnData. Never modified.
    batch_key
        ``obs`` column of the batch (the random-effect grouping: sample, donor, ...).
    labels_key
        Optional ``obs`` column of a biological label (cell type); needed for ``fec=True``.
    layer
        Layer holding log-normalised expression; ``None`` uses ``X``.
    split_key
        ``obs`` column with values train / val / test (see :func:`scmedal_lite.pp.split_cells` and
        :func:`~scmedal_lite.pp.split_batches`). If the column is absent, a seeded 10 % of the cells is held
        out for validation. Only training cells fit the scaling and the weights; only batches with training
        cells are "known" to the RE network.
    preset
        ``"default"`` or one of the paper's ``"paper"``, ``"AML"``, ``"ASD"``, ``"HH"`` (:mod:`~scmedal_lite.presets`).
    scaling
        ``"global"``: the paper's single min–max over the training matrix; ``"gene"``: per-gene min–max.
    fec
        Add the paper's FEC cell-type head (Dense 2 → softmax) to the FE network: ``True`` with the preset's
        FEC loss weights, or a dict of changes to them, e.g. ``fec={"w_class": 3}`` (the head is then on).
    quirks
        ``"faithful"`` (default) keeps the authors' double SELU in the RE decoder and their inverted
        posterior-scale initialisation; ``"clean"`` fixes both.
    kl
        ``"mc"`` (paper) or ``"exact"`` KL divergence in the random-effects layers.
    precision
        ``"float32"`` (default) or ``"bfloat16"``: mixed precision (float32 weights, bfloat16 compute). On CPUs
        with AMX/AVX512-BF16 units (recent Xeons) and on GPUs it trains several times faster; elsewhere it can
        be slower. Results differ slightly from float32.
    seed
        Seed of the validation hold-out and of the networks.
    **overrides
        Changes to the preset: ``fe``, ``re`` (loss weights; the FEC head's go through ``fec``), ``schedule``,
        ``fe_design`` (e.g.
        ``{"weight_average": 0.99}``: the FE autoencoder's weights become their moving average at every
        epoch's end; see :class:`~scmedal_lite.networks.FixedEffectsAE`), ``re_design``
        (``{"output_init": "data"}`` starts the RE network's output at the training data's per-gene mean and
        s.d. instead of the authors' unit variance, the default ``"paper"``), ``hidden``, ``latent_dim``.
        E.g. ``SCMEDAL(adata, "sample", fe={"w_keep": 100})``, or
        ``schedule={"re_min_steps_per_epoch": None}`` to train RE in minibatches of 512 cells on any data.
        On small data (below 4,096 training cells) FE's ``w_keep`` defaults to the schedule's
        ``small_data_w_keep`` (100; :func:`small_data_keep`): ``fe={"w_keep": 0}`` or
        ``schedule={"small_data_w_keep": 0}`` turns the guard off.
    """

    def __init__(self, adata: anndata.AnnData, batch_key: str, labels_key: str | None = None, *,
                 layer: str | None = None, split_key: str = SPLIT_KEY, preset: str = "default",
                 scaling: str = "global", fec: bool | dict = False, quirks: str = "faithful", kl: str = "mc",
                 precision: str = "float32", seed: int = 0, **overrides):
        check_adata(adata, expect="log", layer=layer)      # warns when the values look like raw counts
        check_choice("scaling", scaling, ("global", "gene"))
        check_choice("quirks", quirks, ("faithful", "clean"))
        check_choice("kl", kl, ("mc", "exact"))
        check_choice("precision", precision, ("float32", "bfloat16"))
        if labels_key is not None:
            check_obs_key(adata, labels_key, role="labels_key")
        if isinstance(fec, dict):               # the FEC head's loss weights: the head is on
            overrides, fec = {**overrides, "fec": fec}, True
        fec = as_bool("fec", fec)
        if fec and labels_key is None:
            raise InputError("fec=True needs labels_key (the cell-type column the FEC head predicts).")
        check_batches(adata, batch_key)
        settings = get_preset(preset)
        unknown = set(overrides) - {"fe", "fe_design", "fec", "re", "re_design", "schedule", "hidden", "latent_dim"}
        if unknown:
            raise InputError(f"Unknown settings {sorted(unknown)}; valid: fe, fe_design, re, re_design, "
                             "schedule, hidden, latent_dim (the FEC head's loss weights: fec={...}).")
        for part in ("fe", "fec", "re", "schedule"):
            settings[part].update(parse_settings(part, overrides.get(part), settings[part]))
        chosen = overrides.get("schedule") or {}
        if "batch_size" in chosen and "re_min_steps_per_epoch" not in chosen:
            settings["schedule"]["re_min_steps_per_epoch"] = None      # a batch size the user sets is used as is
        settings["fe_design"].update(parse_fe_design(overrides.get("fe_design")))
        settings["re_design"].update(parse_re_design(overrides.get("re_design")))
        design = {**PAPER_FE_DESIGN, **settings["fe_design"]}
        check_fe_combination(design, settings["fec"] if fec else settings["fe"])
        self.adata = adata
        self.batch_key, self.labels_key, self.layer = batch_key, labels_key, layer
        self.var_names = pd.Index(adata.var_names.astype(str))
        self.seed = as_seed("seed", seed)
        self.config = {
            "preset": preset, "scaling": scaling, "fec_head": bool(fec), "quirks": quirks, "kl": kl,
            "precision": precision,
            "hidden": as_int_list("hidden", overrides.get("hidden", ARCHITECTURE["hidden"])),
            "latent_dim": as_int("latent_dim", overrides.get("latent_dim", ARCHITECTURE["latent_dim"]), minimum=1),
            **{k: settings[k] for k in ("fe", "fe_design", "fec", "re", "re_design", "schedule")},
        }
        self.train_mask, self.val_mask = self._split_masks(adata, split_key)
        keep = small_data_keep(int(self.train_mask.sum()), settings["schedule"])
        for part in ("fe", "fec"):                     # the guard on small data, unless w_keep is given
            if keep and "w_keep" in settings[part] and "w_keep" not in (overrides.get(part) or {}):
                settings[part]["w_keep"] = keep
        batches = adata.obs[batch_key].astype(str).to_numpy()
        self.batch_categories = sorted(pd.unique(batches[self.train_mask]))
        if len(self.batch_categories) < 2:
            raise InputError(f"The training cells cover a single batch of {batch_key!r}; at least two are needed.")
        self.label_categories = (sorted(pd.unique(adata.obs[labels_key].astype(str)))
                                 if labels_key is not None else None)
        self.minmax = stream_minmax(self._matrix(adata), np.flatnonzero(self.train_mask), mode=scaling)
        self.networks: dict[str, keras.Model] = {}
        self.history: dict[str, pd.DataFrame] = {}
        self.trained: dict[str, dict] = {}

    # ------------------------------------------------------------------ setup helpers
    def _split_masks(self, adata, split_key):
        """Training and validation masks: ``obs[split_key]``, or a seeded 10 % hold-out without that column."""
        masks = split_masks(adata, split_key=split_key, require=("train", "val"), holdout_seed=self.seed)
        return masks["train"], masks["val"]

    def _matrix(self, adata):
        """The expression matrix (dense, sparse or backed), not read into memory."""
        return adata.layers[self.layer] if self.layer is not None else adata.X

    def _columns(self, adata) -> np.ndarray | None:
        """Column positions of the model's genes in ``adata`` (None when they already match)."""
        if adata is not getattr(self, "adata", None):
            check_adata(adata, layer=self.layer)    # apply-time data: same checks as at set-up (NaN, empty, ...)
        names = pd.Index(adata.var_names.astype(str))
        if names.equals(self.var_names):
            return None
        missing = self.var_names.difference(names)
        if len(missing):
            raise InputError(f"{len(missing)} of the model's {len(self.var_names)} genes are missing from this "
                             f"AnnData, e.g. {list(missing[:10])}. Use the same genes the model was set up "
                             "with (same preprocessing and HVG selection).")
        if not names.is_unique:
            raise InputError("Duplicate gene names; call adata.var_names_make_unique() first.")
        return names.get_indexer(self.var_names)

    def rows(self, adata, rows: np.ndarray | None = None) -> ScaledRows:
        """A lazy, scaled view of ``adata``'s cells (all, or positions ``rows``) for streaming minibatches."""
        rows = np.arange(adata.n_obs) if rows is None else np.asarray(rows)
        return ScaledRows(self._matrix(adata), rows, self.minmax, self._columns(adata))

    def scale(self, adata=None) -> np.ndarray:
        """The min–max-scaled input the networks see (cells × model genes), dense float32."""
        return self.rows(self.adata if adata is None else adata).dense()

    def _batch_codes(self, batches, unseen: str = "mean") -> np.ndarray:
        """Position of each cell's batch in ``batch_categories``; -1 (with a warning) for unseen batches."""
        check_choice("unseen", unseen, UNSEEN_RULES)
        batches = np.asarray(batches, dtype=str)
        codes = pd.Index(self.batch_categories).get_indexer(batches)
        if (codes < 0).any():
            new = sorted({str(b) for b in batches[codes < 0]})     # plain str: no np.str_('...') in the message
            warnings.warn(f"{(codes < 0).sum()} cells come from {len(new)} batches the model never saw "
                          f"({new[:5]}{'...' if len(new) > 5 else ''}); their random effects use the "
                          f"'{unseen}' rule.", UnseenBatchWarning, stacklevel=4)
        return codes

    def _unseen_row(self, unseen):
        K = len(self.batch_categories)
        return np.full(K, 0.0 if unseen == "prior" else 1.0 / K, dtype="float32")

    def design(self, batches, *, unseen: str = "mean") -> np.ndarray:
        """One-hot batch design ``z`` for the RE network; batches it never saw follow the unseen rule.

        ``unseen="mean"`` uses the average of the known batches' random effects (``z = 1/K``);
        ``"prior"`` uses the prior mean, i.e. no random effect (``z = 0``); ``"predict"`` needs the cells
        (:meth:`get_latent` and :meth:`get_reconstruction` apply it) and starts here from ``"mean"``. Emits
        :class:`UnseenBatchWarning`. Batches added with :meth:`add_batches` are known.
        """
        codes = self._batch_codes(batches, unseen)
        return OneHotRows(codes, len(self.batch_categories), self._unseen_row(unseen))[np.arange(len(codes))]

    def _cell_design(self, obs, x, unseen: str) -> np.ndarray:
        """The batch design of a chunk of cells; with ``unseen="predict"``, unseen cells' rows are the RE batch
        head's probabilities (from their RE latent under the mean design) over the known batches."""
        batches = obs[self.batch_key].astype(str).to_numpy()
        z = self.design(batches, unseen=unseen)
        new = pd.Index(self.batch_categories).get_indexer(batches) < 0
        if unseen == "predict" and new.any():
            net = self._net("re")
            head = self._compiled("re:batch_probabilities",
                                  lambda x_, z_: net.batch_head(net.encode(x_, z_, training=False), training=False))
            z[new] = np.asarray(head(x[new], z[new]))
        return z

    # ------------------------------------------------------------------ networks
    def _build(self, kind: str) -> keras.Model:
        """Build network ``kind`` for this model's genes, batches, labels and configuration."""
        return build_network(kind, self.config, n_genes=len(self.var_names), n_batches=len(self.batch_categories),
                             n_labels=len(self.label_categories) if self.label_categories else None,
                             seed=self.seed)

    def _inputs(self, kind, adata, mask, unseen="mean"):
        """Row sources (streamed, never densified whole) for the network ``kind`` on cells ``mask``."""
        rows = np.flatnonzero(mask)
        x = self.rows(adata, rows)
        if kind == "ae":
            return (x,)
        obs = adata.obs.iloc[rows]
        codes = self._batch_codes(obs[self.batch_key].astype(str).to_numpy(), unseen)
        z = OneHotRows(codes, len(self.batch_categories), self._unseen_row(unseen))
        if kind == "fe" and self.config["fec_head"]:
            labels = pd.Index(self.label_categories).get_indexer(obs[self.labels_key].astype(str).to_numpy())
            return (x, z, OneHotRows(labels, len(self.label_categories)))
        return (x, z)

    # ------------------------------------------------------------------ training
    def epochs_for(self, n_train: int, batch_size: int) -> int:
        """The default epoch budget: ``max_steps`` optimisation steps, at least ``min_epochs``, at most 1000.

        A fixed epoch count gives small data sets almost no steps; a step budget suits every size.
        """
        sched = self.config["schedule"]
        if sched.get("max_epochs"):
            return int(sched["max_epochs"])
        steps = steps_per_epoch(n_train, batch_size)
        return int(min(1000, max(sched["min_epochs"], math.ceil(sched["max_steps"] / steps))))

    def train(self, max_epochs: int | None = None, *, which: Sequence[str] = ("fe", "re"),
              early_stopping: bool = True, faithful: bool = False, patience: int | None = None,
              batch_size: int | None = None, learning_rate: float | None = None, seed: int | None = None,
              progress: bool | None = None, checkpoint_dir: str | None = None, strategy=None,
              on_epoch_end=None, jit_compile: bool = False) -> SCMEDAL:
        """Train the networks named in ``which`` (``"fe"``, ``"re"``, ``"ae"``; default FE then RE).

        Early stopping watches a validation loss each network really logs (``net.monitor``: ``val_loss``, the
        total, except the default FE's ``val_recon_loss``; ``fe_design["stop_on"]``), and restores the best
        weights. Its default patience is the preset's ``patience`` epochs or ``patience_steps``
        optimisation steps, whichever is longer (small data sets have few steps per epoch). ``faithful=True``
        reproduces the authors' code instead: FE and RE train all ``max_epochs`` and keep the final weights
        (their early stopping watched a metric that did not exist).
        ``max_epochs=None`` takes the preset's budget (see :meth:`epochs_for`) in minibatches of the
        schedule's ``batch_size``; RE's shrink on small data until an epoch has at least the schedule's
        ``re_min_steps_per_epoch`` steps (default 8, so below 4,096 training cells; :func:`fitted_batch_size`;
        a ``batch_size`` given here or in ``schedule=`` is used as is); the plain AE, a baseline for
        FE, then trains at most as many epochs as this model's FE trained to the weights it kept (its best
        epoch: the same optimisation steps as the FE latent, a fair comparison at no extra cost; before issue
        13 it took the whole budget, then FE's epochs run, patience included). With ``checkpoint_dir`` the
        state is saved after every epoch and an interrupted call resumes from it. ``strategy``: a
        ``tf.distribute`` strategy (e.g. ``tf.distribute.MirroredStrategy()`` over several GPUs) for
        data-parallel training; each minibatch of ``batch_size`` cells is split across its replicas.
        ``on_epoch_end(kind, epoch, logs)``, if given, runs after every epoch (e.g. to monitor a score);
        returning True stops that network's training. ``progress``: a progress bar per network (None:
        ``sm.settings.progress``). ``jit_compile=True`` compiles the training steps with
        XLA: 20-30 % faster epochs on the full COVID data on an AVX-512 Xeon after a slower first epoch, but
        twice as slow on an AVX2 EPYC, and slower on the 1,713-cell draw even where its steps are faster
        (benchmarks/results/speed.json, xla_small_data.md; the book's "Performance and scale" page): time it
        on your data and processor before turning it on.
        Returns ``self``.
        """
        if self.adata is None:
            raise InputError("This model was loaded without data; load it with SCMEDAL.load(path, adata) "
                             "to train it.")
        faithful, progress = as_bool("faithful", faithful), _progress(progress)
        which = [which] if isinstance(which, str) else list(which)
        for kind in which:
            check_choice("which", kind, NETWORKS)
        jit_compile = as_bool("jit_compile", jit_compile)
        settings_of = {kind: self._settings(max_epochs, batch_size, learning_rate, early_stopping, patience, seed,
                                            kind=kind) for kind in which}
        for kind in which:
            settings = settings_of[kind]
            stops = settings.early_stopping and not (faithful and kind in ("fe", "re"))
            budget = settings.max_epochs
            if kind == "ae" and max_epochs is None and "fe" in self.trained:
                budget = min(budget, self._fe_epochs_kept())             # the comparison's fair budget
            self._train_one(kind, replace(settings, early_stopping=stops, max_epochs=budget), progress=progress,
                            checkpoint_dir=checkpoint_dir, strategy=strategy, on_epoch_end=on_epoch_end,
                            jit_compile=jit_compile)
        return self

    def _fe_epochs_kept(self) -> int:
        """The epochs FE trained to the weights it kept: its best epoch (early stopping restores it), else
        (a model saved before best epochs were recorded) the epochs it ran."""
        info = self.trained["fe"]
        return int(info.get("best_epoch") or info["epochs_run"])

    def _settings(self, max_epochs, batch_size, learning_rate, early_stopping, patience, seed, *,
                  kind: str = "fe") -> TrainSettings:
        """The checked settings of :meth:`train` for network ``kind``, with the preset's schedule filling what
        is not given."""
        sched = self.config["schedule"]
        n_train = int(self.train_mask.sum())
        step_budget = max_epochs is None and not sched.get("max_epochs")
        batch_size = self._minibatch(kind, n_train, batch_size, step_budget)
        lr = as_float("learning_rate", sched["learning_rate"] if learning_rate is None else learning_rate,
                      minimum=0.0, exclusive=True)
        early_stopping = as_bool("early_stopping", early_stopping)
        if patience is None:
            steps = steps_per_epoch(n_train, batch_size)
            patience_steps = sched.get("patience_steps", 0)
            if kind == "fe" and sched.get("fe_patience_steps") is not None:
                patience_steps = sched["fe_patience_steps"]
            patience = max(sched["patience"], math.ceil(patience_steps / steps))
        patience = as_int("patience", patience, minimum=1)
        seed = self.seed if seed is None else as_seed("seed", seed)
        epochs = as_int("max_epochs", max_epochs if max_epochs is not None else self.epochs_for(n_train, batch_size),
                        minimum=1)
        return TrainSettings(max_epochs=epochs, batch_size=batch_size, learning_rate=lr,
                             early_stopping=early_stopping, patience=patience, seed=seed)

    def _minibatch(self, kind: str, n_train: int, batch_size: int | None, step_budget: bool) -> int:
        """``batch_size`` when given, else the schedule's; RE's fitted to ``n_train`` cells under a step budget
        (:func:`fitted_batch_size`). Used by :meth:`train` and :meth:`add_batches`."""
        if batch_size is None:
            sched = self.config["schedule"]
            batch_size = sched["batch_size"]
            if kind == "re" and step_budget:
                batch_size = fitted_batch_size(n_train, batch_size, sched.get("re_min_steps_per_epoch"))
        return as_int("batch_size", batch_size, minimum=1)

    @staticmethod
    def _set_training_references(net, train, seed: int) -> None:
        """What ``net`` takes from its training inputs ``train`` before it trains: the principal axes of the
        neighbour-keeping term (FE with ``w_keep``) and the per-gene moments of the output (RE with
        ``output_init="data"``); nothing for the other networks."""
        if getattr(net, "w_keep", 0) > 0:
            net.set_keep_reference(*principal_axes(train[0], seed=seed))
        if getattr(net, "output_init", "paper") == "data":
            net.set_output_moments(*gene_moments(train[0], seed=seed))

    def _fit_memory_designs(self, net, settings: TrainSettings, epoch_steps: int) -> int:
        """Size the FE designs that depend on the run (book/method.md, "The mixing preset"): the memory
        (``memory_size`` latents or the training cells, whichever is fewer, with the local mixing term's reach
        in it), the learning rate's decay (the run's budget in steps) and the first epoch early stopping counts
        (``stop_from``). Returns that epoch (1: from the start)."""
        if getattr(net, "uses_memory", False):
            net.size_memory(min(int(self.train_mask.sum()), net.memory_size))
        if getattr(net, "lr_decay_to", 1.0) < 1:
            net.lr_decay_steps = settings.max_epochs * epoch_steps
        if getattr(net, "stop_from", "start") == "warmup_end" and net.mix_warmup_steps > 0:
            return math.ceil(net.mix_warmup_steps / epoch_steps)
        return 1

    def _train_one(self, kind: str, settings: TrainSettings, *, progress: bool, checkpoint_dir: str | None,
                   strategy, on_epoch_end, jit_compile: bool) -> None:
        seed_everything(settings.seed)
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        with scope:
            net = self._build(kind)
            epoch_steps = steps_per_epoch(int(self.train_mask.sum()), settings.batch_size)
            if getattr(net, "weight_average", 0) > 0:         # the average is written into the weights each epoch
                net.average_every = epoch_steps
            if getattr(net, "w_mix", 0) > 0 and net.mix_warmup > 0:     # a share of this run's budget, in steps
                net.mix_warmup_steps = round(net.mix_warmup * settings.max_epochs * epoch_steps)
            if getattr(net, "kl_warmup", 0) > 0:                          # the same, for the latent's KL term
                net.kl_warmup_steps = round(net.kl_warmup * settings.max_epochs * epoch_steps)
            count_from = self._fit_memory_designs(net, settings, epoch_steps)
            net.compile(learning_rate=settings.learning_rate)      # builds its optimisers on its weights
        train = self._inputs(kind, self.adata, self.train_mask)
        val = self._inputs(kind, self.adata, self.val_mask)
        self._set_training_references(net, train, settings.seed)
        folder = os.path.join(checkpoint_dir, kind) if checkpoint_dir else None
        previous = self.networks.get(kind)
        self.networks[kind] = net          # usable from on_epoch_end while it trains
        start = time.perf_counter()
        try:
            history, best = fit_network(net, train, val, epochs=settings.max_epochs, batch_size=settings.batch_size,
                                        seed=settings.seed, early_stopping=settings.early_stopping,
                                        patience=settings.patience, progress=progress, label=kind.upper(),
                                        checkpoint_dir=folder, strategy=strategy, jit_compile=jit_compile,
                                        monitor=net.monitor, min_improvement=net.min_improvement,
                                        count_from_epoch=count_from,
                                        on_epoch_end=None if on_epoch_end is None else
                                        (lambda epoch, logs: on_epoch_end(kind, epoch, logs)))
        except BaseException:
            if previous is None:
                self.networks.pop(kind, None)
            else:
                self.networks[kind] = previous
            raise
        elapsed = time.perf_counter() - start
        self.history[kind] = history
        self.trained[kind] = {"epochs_run": int(history.index[-1]), "best_epoch": best, "seconds": elapsed,
                              **asdict(settings)}
        log.info("%s: %d epochs in %.1f s (best epoch %d)", kind, len(history), elapsed, best)

    # ------------------------------------------------------------------ new batches
    def add_batches(self, adata: anndata.AnnData, *, max_epochs: int | None = None, learning_rate: float = 1e-2,
                    batch_size: int | None = None, patience: int | None = None, seed: int | None = None,
                    progress: bool | None = None, which: Sequence[str] = ("fe", "re")) -> SCMEDAL:
        """Learn the random effects of ``adata``'s batches that the model does not know, from their cells.

        Every network whose layers depend on the batches is rebuilt for the known plus the new batches with
        all trained weights copied; then only the new batches' random effects (posterior means and scales of
        every random-effect layer, and the RE batch head's new outputs) are fitted on the new cells with the
        training loss (reconstruction, batch head, KL; :mod:`scmedal_lite.new_batches`). Shared weights,
        BatchNorm statistics and the known batches' effects stay bit-identical. No labels are needed. A seeded
        10 % of each new batch's cells is held out for early stopping (all cells when a batch has fewer than 50):
        the fit runs at most :data:`NEW_BATCH_STEPS` steps (or ``max_epochs``) and stops after ``patience`` epochs
        without a better validation loss (default: :data:`NEW_BATCH_PATIENCE_STEPS` steps, at least 10 epochs).
        Minibatches hold ``batch_size`` cells (default 512; under the step budget RE's shrink on few new cells,
        as in :meth:`train`: :func:`fitted_batch_size`).
        Afterwards the new batches are known: :meth:`get_latent` uses their effects (no
        :class:`UnseenBatchWarning`), they are valid counterfactual targets, and :meth:`save` keeps them.

        ``which`` names the networks whose new effects are fitted (default both). A trained network left out is
        still extended to the new batches, with no effect for them (the prior mean), and costs no fitting:
        ``which=("re",)`` when only the RE latent of the new cells is wanted (the FE latent never reads the
        batch; only the FE decoder, i.e. ``"fe"``-mode counterfactuals and FE reconstructions, would use the
        effects it skips). Each network's fit is seeded on its own, so the RE fit is the same either way.

        ``adata`` must hold only new batches (a batch name the model knows is refused: rename it, or pass only
        the new cells). Returns ``self``.

        Example
        -------
        >>> model = sm.SCMEDAL.load("runs/reference", reference)             # doctest: +SKIP
        >>> model.add_batches(new_cells)                                      # doctest: +SKIP
        >>> model.counterfactual(cells, batch="new_donor_7")                  # doctest: +SKIP
        """
        from .new_batches import NewBatchFitter, extend_network

        check_adata(adata, layer=self.layer)
        check_obs_key(adata, self.batch_key, role="batch_key")
        self._columns(adata)
        batches = adata.obs[self.batch_key].astype(str).to_numpy()
        known = sorted(set(batches) & set(self.batch_categories))
        if known:
            raise InputError(f"{len(known)} batches of this data are already known to the model, e.g. {known[:5]}; "
                             "add_batches learns batches the model has not seen. Pass only the new batches' cells, "
                             f"or rename them (e.g. adata.obs[{self.batch_key!r}] = 'new_' + ...).")
        which = [which] if isinstance(which, str) else list(which)
        for kind in which:
            check_choice("which", kind, ("fe", "re"))
        trainable = [k for k in ("fe", "re") if k in self.networks]
        if not trainable:
            raise InputError("Train the model (model.train()) before adding batches.")
        seed = self.seed if seed is None else as_seed("seed", seed)
        new = sorted(pd.unique(batches))
        n_known, old_categories = len(self.batch_categories), list(self.batch_categories)
        self.batch_categories = old_categories + new
        rebuilt, histories = {}, {}
        try:
            for kind in trainable:
                seed_everything(seed)
                net = self._build(kind)
                masks = extend_network(self.networks[kind], net, n_known)
                rebuilt[kind] = net
                if kind not in which or (kind == "fe" and not net.has_random_effects):
                    continue                   # not asked for, or the paper's FE: no random effects to learn
                fitter = NewBatchFitter(net, masks, n_known, name=f"new_batches_{kind}")
                fitter.compile(learning_rate=as_float("learning_rate", learning_rate, minimum=0.0, exclusive=True))
                histories[kind] = self._fit_new(fitter, kind, adata, max_epochs, batch_size, patience, seed,
                                                _progress(progress))
        except BaseException:
            self.batch_categories = old_categories
            raise
        self.networks.update(rebuilt)
        self.__dict__.pop("_fn_cache", None)
        for kind, (history, best, seconds, batch_size_used) in histories.items():
            self.history[f"{kind}_new_batches"] = history
            self.trained[kind].setdefault("added_batches", []).append(
                {"batches": new, "cells": int(adata.n_obs), "epochs_run": int(history.index[-1]),
                 "best_epoch": best, "seconds": seconds, "seed": seed, "batch_size": batch_size_used})
        log.info("added %d batches: %s", len(new), new[:5])
        return self

    def _fit_new(self, fitter, kind, adata, max_epochs, batch_size, patience, seed, progress):
        """Fit ``fitter`` on ``adata``'s cells (train / a seeded 10 % per batch held out); (history, best, s,
        minibatch size)."""
        batches = adata.obs[self.batch_key].astype(str).to_numpy()
        rng = np.random.default_rng(seed)
        val = np.zeros(adata.n_obs, bool)
        for b in pd.unique(batches):
            idx = np.flatnonzero(batches == b)
            if len(idx) >= 50:
                val[rng.choice(idx, max(1, len(idx) // 10), replace=False)] = True
        train = ~val if val.any() else np.ones(adata.n_obs, bool)
        val = val if val.any() else train
        sources = {name: self._inputs("re", adata, mask) for name, mask in (("train", train), ("val", val))}
        n_train = int(train.sum())
        batch_size = self._minibatch(kind, n_train, batch_size, step_budget=max_epochs is None)
        steps = steps_per_epoch(n_train, batch_size)
        epochs = (as_int("max_epochs", max_epochs, minimum=1) if max_epochs is not None else
                  max(10, math.ceil(NEW_BATCH_STEPS / steps)))
        patience = patience or max(10, math.ceil(NEW_BATCH_PATIENCE_STEPS / steps))
        start = time.perf_counter()
        history, best = fit_network(fitter, sources["train"], sources["val"], epochs=epochs, batch_size=batch_size,
                                    seed=seed, patience=patience, progress=progress,
                                    label=f"{kind.upper()} new batches")
        return history, best, time.perf_counter() - start, batch_size

    # ------------------------------------------------------------------ outputs
    def _net(self, kind):
        if isinstance(kind, anndata.AnnData):
            raise InputError("The network kind comes first, as in get_latent: get_reconstruction(kind, adata), "
                             "e.g. model.get_reconstruction('re', adata).")
        check_choice("kind", kind, NETWORKS)
        if kind not in self.networks:
            raise InputError(f"The {kind.upper()} network is not trained yet; call model.train(which=[{kind!r}]).")
        return self.networks[kind]

    def _chunks(self, adata, chunk_size):
        """Yield ``(obs, scaled x)`` for consecutive chunks of cells."""
        source = self.rows(adata)
        chunk_size = as_int("chunk_size", chunk_size, minimum=1)
        for start in range(0, adata.n_obs, chunk_size):
            stop = min(start + chunk_size, adata.n_obs)
            yield adata.obs.iloc[start:stop], source[np.arange(start, stop)]

    def _predict(self, fn, adata, chunk_size, needs_z=False, unseen="mean"):
        """``fn`` over consecutive chunks of scaled cells; with ``needs_z`` also the batch design: each cell's
        own (``True`` or ``"design"``; missing or new batches follow ``unseen``) or none at all (``"none"``)."""
        adata = self.adata if adata is None else adata
        if needs_z and needs_z != "none":          # each cell's batch is needed (missing or new: the unseen rule)
            check_obs_key(adata, self.batch_key, role="batch_key", allow_missing=True)
        out = []
        for obs, x in self._chunks(adata, chunk_size):
            if needs_z:
                z = (np.zeros((x.shape[0], len(self.batch_categories)), "float32") if needs_z == "none" else
                     self._cell_design(obs, x, unseen))
                out.append(np.asarray(fn(x, z)))
            else:
                out.append(np.asarray(fn(x)))
        return np.concatenate(out, axis=0) if out else np.zeros((0, 0), "float32")

    def get_latent(self, kind: str = "fe", adata: anndata.AnnData | None = None, *, unseen: str = "mean",
                   chunk_size: int = 8192) -> np.ndarray:
        """Latent coordinates (cells × latent_dim) of ``adata`` (default: the setup data).

        ``"fe"``: batch-invariant; ``"re"``: batch-specific, computed with each cell's own batch (posterior
        means, BatchNorm moving averages); cells of batches the model never saw follow ``unseen``.
        """
        net = self._net(kind)
        if kind == "re":
            fn = self._compiled("re:encode", lambda x, z: net.encode(x, z, training=False))
            return self._predict(fn, adata, chunk_size, True, unseen)
        return self._predict(self._compiled(f"{kind}:encode", lambda x: net.encode(x, training=False)),
                             adata, chunk_size)

    def get_reconstruction(self, kind: str = "fe", adata: anndata.AnnData | None = None, *, scaled: bool = False,
                           unseen: str = "mean", random_effects: bool = True, chunk_size: int = 8192) -> np.ndarray:
        """Reconstructed expression (cells × genes) of ``adata`` (default: the setup data) by network ``kind``,
        in log-normalised units, or in the scaled units with ``scaled=True``. RE reconstructions, and FE ones
        with the random-effects decoder, use each cell's own batch (unseen batches: the ``unseen`` rule);
        ``random_effects=False`` leaves the random effects at their prior mean (none): for the FE network the
        fixed-effects reconstruction, free of any batch's effect. Arguments in the order of
        :meth:`get_latent`: ``get_reconstruction("re", adata)``."""
        net = self._net(kind)
        if kind == "re" or self._fe_has_random_effects(kind):
            fn = self._compiled(f"{kind}:call", lambda x, z: net((x, z), training=False))
            recon = self._predict(fn, adata, chunk_size, "design" if random_effects else "none", unseen)
        else:
            recon = self._predict(self._compiled(f"{kind}:call", lambda x: net(x, training=False)), adata,
                                  chunk_size)
        return recon if scaled else invert_minmax(recon, self.minmax)

    def _fe_has_random_effects(self, kind="fe") -> bool:
        return kind == "fe" and "fe" in self.networks and getattr(self.networks["fe"], "has_random_effects", False)

    def _compiled(self, name, fn):
        """Cache of compiled (graph-mode) inference functions, each traced once for any number of cells."""
        cache = self.__dict__.setdefault("_fn_cache", {})
        key = (name, id(self.networks.get(name.split(":")[0])))
        if key not in cache:
            cache[key] = traced_once(fn)
        return cache[key]

    def _resolve_mode(self, mode: str) -> str:
        check_choice("mode", mode, CF_MODES)
        if mode == "auto":
            return "fe" if self._fe_has_random_effects() else "full"
        if mode == "fe" and not self._fe_has_random_effects():
            raise InputError("mode='fe' decodes the FE latent with the target batch's random effects, which needs "
                             "an FE network with the random-effects decoder (the default preset's; this model has "
                             f"{'no trained FE network' if 'fe' not in self.networks else 'the paper tied decoder'}"
                             "). Use mode='full' (the paper's RE swap) or train the default FE network.")
        return mode

    def _target_design(self, batches) -> list[str]:
        batches = list(self.batch_categories if batches is None else
                       ([batches] if isinstance(batches, str) else batches))
        unknown = [b for b in batches if b not in self.batch_categories]
        if unknown:
            raise InputError(f"Target batches {unknown[:5]} are unknown to the model; counterfactuals are only "
                             f"defined for the {len(self.batch_categories)} batches it knows "
                             f"(model.batch_categories).")
        return batches

    def _counterfactual_fns(self, mode):
        """``(prepare(x, obs) -> state, decode(state, z_b) -> values)`` for a resolved ``mode``."""
        if mode == "fe":
            net = self._net("fe")
            encode = self._compiled("fe:encode", lambda x: net.encode(x, training=False))
            decode = self._compiled("fe:decode", lambda h, z: net.decode(h, z, training=False))
            return (lambda x, obs: encode(x)), decode
        net = self._net("re")
        encode = self._compiled("re:encode", lambda x, z: net.encode(x, z, training=False))
        decode = self._compiled("re:decode", lambda h, z: net.decode(h, z, training=False))
        if mode == "decoder":             # the cell's own latent, computed once per chunk
            return (lambda x, obs: encode(x, self.design(obs[self.batch_key].astype(str).to_numpy()))), decode
        return (lambda x, obs: x), (lambda x, z: decode(encode(x, z), z))

    def _one_hot(self, batch, n):
        z = np.zeros((n, len(self.batch_categories)), "float32")
        z[:, self.batch_categories.index(batch)] = 1.0
        return z

    def iter_counterfactuals(self, adata: anndata.AnnData, batches: Sequence[str] | None = None, *,
                             mode: str = "auto", scaled: bool = False, chunk_size: int = 4096,
                             progress: bool | None = False) -> Iterator[tuple[str, slice, np.ndarray]]:
        """Yield ``(target_batch, cell_slice, values)`` chunks of counterfactual expression.

        Memory is bounded by ``chunk_size × genes`` whatever the number of cells × batches. Modes
        (:data:`CF_MODES`): ``"fe"`` keeps the cell's batch-invariant FE latent and decodes it with the target
        batch's random effects (the default, ``"auto"``, when the FE network has its random-effects decoder);
        ``"full"`` swaps the batch in the RE network's encoder and decoder (the authors'); ``"decoder"`` keeps the
        cell's own RE latent and swaps the batch in the RE decoder only. The paper's two RE modes fail on data
        with a known answer (book/method.md, "How far can counterfactuals be trusted").
        """
        mode = self._resolve_mode(mode)
        batches = self._target_design(batches)
        if mode == "decoder":
            check_obs_key(adata, self.batch_key, role="batch_key", allow_missing=True)
        prepare, decode = self._counterfactual_fns(mode)
        bar = _maybe_tqdm(_progress(progress), total=len(batches) * adata.n_obs, desc="counterfactuals",
                          unit="cell")
        start = 0
        for obs, x in self._chunks(adata, chunk_size):
            state = prepare(x, obs)
            for b in batches:
                values = np.asarray(decode(state, self._one_hot(b, x.shape[0])))
                yield b, slice(start, start + x.shape[0]), values if scaled else invert_minmax(values, self.minmax)
                if bar is not None:
                    bar.update(x.shape[0])
            start += x.shape[0]
        if bar is not None:
            bar.close()

    def _counterfactual_interval(self, adata, batch, *, n_samples, interval, scaled, chunk_size, seed):
        """Lower and upper quantiles of the ``"fe"`` counterfactual over ``n_samples`` posterior draws of the
        target batch's random effects (every decoder layer), for ``adata``'s cells."""
        net = self._net("fe")
        encode = self._compiled("fe:encode", lambda x: net.encode(x, training=False))
        draw = self._compiled("fe:draw", lambda h, z: net.decode(h, z, training=False, sample=True))
        q = [(1 - interval) / 2, (1 + interval) / 2]
        lower = np.empty((adata.n_obs, len(self.var_names)), "float32")
        upper = np.empty_like(lower)
        with _seeded_random_effects(net, seed):
            start = 0
            for _, x in self._chunks(adata, chunk_size):
                h, z = encode(x), self._one_hot(batch, x.shape[0])
                draws = np.stack([np.asarray(draw(h, z)) for _ in range(n_samples)])
                if not scaled:
                    draws = invert_minmax(draws, self.minmax)
                lo, hi = np.quantile(draws, q, axis=0)
                lower[start:start + x.shape[0]], upper[start:start + x.shape[0]] = lo, hi
                start += x.shape[0]
        return lower, upper

    def counterfactual(self, adata: anndata.AnnData, batch: str | Sequence[str], *, mode: str = "auto",
                       scaled: bool = False, chunk_size: int = 4096, n_samples: int = 0, interval: float = 0.9,
                       seed: int = 0) -> anndata.AnnData:
        """Expression of ``adata``'s cells as if measured in ``batch`` (an AnnData with the same genes).

        ``X`` is in log-normalised units (``scaled=True``: the networks' min–max units); modes as in
        :meth:`iter_counterfactuals`. ``obs`` keeps the cells' annotations and adds ``target_batch``. Several
        batches stack their results (cells × batches rows, ``obs_names`` suffixed ``-<batch>``); for many cells ×
        batches prefer :meth:`iter_counterfactuals` or :meth:`write_counterfactuals`, whose memory stays bounded.

        Uncertainty (mode ``"fe"``): with ``n_samples > 0`` the target batch's random effects are drawn
        ``n_samples`` times from their posteriors, and ``layers["lower"]`` / ``layers["upper"]`` hold the
        central ``interval`` of the resulting counterfactuals (seeded by ``seed``; the training random state is
        left as it was). ``X`` stays the counterfactual at the posterior means.

        Example
        -------
        >>> cf = model.counterfactual(adata[:200], batch="B2_HGR0000042_T0", n_samples=50)   # doctest: +SKIP
        >>> (cf.layers["upper"] - cf.layers["lower"]).mean()                                 # doctest: +SKIP
        """
        resolved = self._resolve_mode(mode)
        n_samples = as_int("n_samples", n_samples, minimum=0)
        interval = as_float("interval", interval, minimum=0.0, exclusive=True)
        if interval >= 1:
            raise InputError(f"interval must be below 1 (e.g. 0.9 for a 90 % interval), got {interval}.")
        if n_samples and resolved != "fe":
            raise InputError("Counterfactual intervals (n_samples > 0) come from the FE network's random-effects "
                             f"decoder (mode='fe'); mode={mode!r} resolves to {resolved!r}.")
        batches = [batch] if isinstance(batch, str) else list(batch)
        blocks = {b: np.empty((adata.n_obs, len(self.var_names)), "float32") for b in batches}
        for b, cells, values in self.iter_counterfactuals(adata, batches, mode=resolved, scaled=scaled,
                                                          chunk_size=chunk_size):
            blocks[b][cells] = values
        parts = []
        for b in batches:
            obs = adata.obs.copy()
            obs["target_batch"] = b
            if len(batches) > 1:
                obs.index = [f"{i}-{b}" for i in obs.index]
            part = anndata.AnnData(blocks[b], obs=obs, var=pd.DataFrame(index=self.var_names))
            if n_samples:
                part.layers["lower"], part.layers["upper"] = self._counterfactual_interval(
                    adata, b, n_samples=n_samples, interval=interval, scaled=scaled, chunk_size=chunk_size,
                    seed=seed)
            parts.append(part)
        out = parts[0] if len(parts) == 1 else anndata.concat(parts, merge="same")
        out.obs["target_batch"] = pd.Categorical(out.obs["target_batch"], categories=batches)
        out.uns["scmedal_counterfactual"] = {"mode": resolved, "scaled": bool(scaled), "batch_key": self.batch_key,
                                             "n_samples": n_samples, "interval": interval if n_samples else None}
        return out

    def write_counterfactuals(self, path: str, adata: anndata.AnnData, batches: Sequence[str] | None = None, *,
                              mode: str = "auto", scaled: bool = False, chunk_size: int = 4096,
                              progress: bool | None = None) -> str:
        """Stream counterfactuals to an HDF5 file: dataset ``counterfactuals`` (batches × cells × genes) plus
        ``batches``, ``cells`` and ``genes``. Written whole or not at all (temporary name, then renamed)."""
        import h5py

        self._columns(adata)                      # fail early if genes are missing
        batches = self._target_design(batches)
        mode = self._resolve_mode(mode)
        with atomic_write(path) as tmp:
            with h5py.File(tmp, "w") as f:
                dset = f.create_dataset("counterfactuals", (len(batches), adata.n_obs, len(self.var_names)),
                                        dtype="float32",
                                        chunks=(1, min(adata.n_obs, 1024), len(self.var_names)))
                f["batches"] = np.asarray(batches, dtype="S")
                f["cells"] = np.asarray(adata.obs_names, dtype="S")
                f["genes"] = np.asarray(self.var_names, dtype="S")
                f.attrs.update(mode=mode, scaled=scaled)
                for b, cells, values in self.iter_counterfactuals(adata, batches, mode=mode, scaled=scaled,
                                                                  chunk_size=chunk_size, progress=progress):
                    dset[batches.index(b), cells] = values
        return path

    # ------------------------------------------------------------------ random effects
    def random_effects(self) -> pd.DataFrame:
        """Posterior means and s.d. of every random-effect layer, summarised per batch (tidy table).

        Columns: ``layer`` (e.g. ``encoder/csb_0/gamma``), ``batch``, ``mean_abs`` (mean absolute posterior mean over
        units), ``mean_sd`` (mean posterior s.d.).
        """
        net = self._net("re")
        rows = []
        for part in (net.encoder, net.decoder):
            for csb in part.csb:
                for name, re_layer in (("gamma", csb.gamma), ("beta", csb.beta)):
                    loc = keras.ops.convert_to_numpy(re_layer.loc)
                    sd = keras.ops.convert_to_numpy(re_layer.posterior_scale())
                    for k, b in enumerate(self.batch_categories):
                        rows.append({"layer": f"{part.name}/{csb.name}/{name}", "batch": b,
                                     "mean_abs": float(np.abs(loc[k]).mean()), "mean_sd": float(sd[k].mean())})
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ save / load
    def _setup(self) -> dict:
        return {"format_version": FORMAT_VERSION, "scmedal_lite_version": __version__,
                "keras_version": keras.__version__, "tensorflow_version": tf.__version__,
                "batch_key": self.batch_key, "labels_key": self.labels_key, "layer": self.layer,
                "genes": self.var_names.tolist(), "batch_categories": self.batch_categories,
                "label_categories": self.label_categories, "minmax": self.minmax, "config": self.config,
                "seed": self.seed, "trained": self.trained}

    def save(self, path: str, *, overwrite: bool = False) -> str:
        """Save to a directory: ``<kind>.weights.h5`` per trained network, ``setup.json`` (genes, batches,
        scaling, hyperparameters, versions) and ``history_<kind>.csv``. No pickle. Written whole or not at all."""
        if not self.networks:
            raise InputError("Nothing to save: train the model first.")
        with atomic_dir(path, overwrite=overwrite) as tmp:
            for kind, net in self.networks.items():
                net.save_weights(os.path.join(tmp, f"{kind}.weights.h5"))
                self.history[kind].to_csv(os.path.join(tmp, f"history_{kind}.csv"))
            with open(os.path.join(tmp, SETUP_FILE), "w") as f:
                json.dump(self._setup(), f, indent=1)
        return path

    @classmethod
    def load(cls, path: str, adata: anndata.AnnData | None = None, *,
             split_key: str = SPLIT_KEY) -> SCMEDAL:
        """Load a model saved with :meth:`save`. With ``adata``, checks that its genes match the model's and
        restores the train / validation masks from ``obs[split_key]`` (as at set-up), so it can train again.

        Without ``adata`` the model can still apply itself to any AnnData with the right genes.
        """
        setup_path = os.path.join(path, SETUP_FILE)
        if not os.path.isdir(path):
            raise InputError(f"No saved model at {path!r} (not a directory).")
        if not os.path.exists(setup_path):
            raise InputError(f"{path!r} is not a complete saved model: {SETUP_FILE} is missing. "
                             "Was the save interrupted? Save the model again.")
        try:
            with open(setup_path, encoding="utf-8") as f:
                setup = json.load(f)
        except (ValueError, RecursionError) as err:     # JSONDecodeError, UnicodeDecodeError, deep nesting
            raise InputError(f"{setup_path} is corrupt ({err}); save the model again.") from None
        if not isinstance(setup, dict):
            check_setup(setup, path, NETWORKS)       # raises: not a saved model
        if setup.get("format_version") not in READ_FORMATS:
            raise InputError(f"{path!r} was saved in format {setup.get('format_version')!r} by scmedal_lite "
                             f"{setup.get('scmedal_lite_version')!r}; this version ({__version__}) reads formats "
                             f"{list(READ_FORMATS)}. Retrain, or install the version that saved it.")
        if setup["format_version"] == 1 and "scaling" in setup:
            setup["minmax"] = setup.pop("scaling")          # format 1's name of the fitted min-max values
        check_setup(setup, path, NETWORKS)           # unexpected content is refused, never interpreted
        self = cls.__new__(cls)
        self.batch_key, self.labels_key, self.layer = setup["batch_key"], setup["labels_key"], setup["layer"]
        self.var_names = pd.Index(setup["genes"])
        self.batch_categories, self.label_categories = setup["batch_categories"], setup["label_categories"]
        self.minmax, self.config, self.seed = setup["minmax"], setup["config"], setup["seed"]
        self.trained = setup["trained"]
        self.adata = None
        if adata is not None:
            check_adata(adata)
            self._columns(adata)           # raises if genes are missing
            self.adata = adata
        self.train_mask, self.val_mask = (self._split_masks(adata, split_key) if adata is not None
                                          else (None, None))
        self.networks, self.history = {}, {}
        for kind in setup["trained"]:
            weights = os.path.join(path, f"{kind}.weights.h5")
            if not os.path.exists(weights):
                raise InputError(f"{path!r} is incomplete: {kind}.weights.h5 is missing. Save the model again.")
            net = self._build(kind)
            try:
                net.load_weights(weights)
            except Exception as err:
                raise InputError(f"Could not load {weights} ({type(err).__name__}: {err}); the file is corrupt or "
                                 "from an incompatible architecture. Save the model again.") from None
            self.networks[kind] = net
            hist = os.path.join(path, f"history_{kind}.csv")
            self.history[kind] = pd.read_csv(hist, index_col=0) if os.path.exists(hist) else pd.DataFrame()
        return self

    def __repr__(self):
        trained = ", ".join(f"{k.upper()} {v['epochs_run']} epochs" for k, v in self.trained.items())
        labels = ("" if self.labels_key is None
                  else f", {len(self.label_categories)} labels of {self.labels_key!r}")
        cells = f"{self.adata.n_obs} cells, " if self.adata is not None else "no data, "
        return (f"SCMEDAL({cells}{len(self.var_names)} genes, {len(self.batch_categories)} batches of "
                f"{self.batch_key!r}{labels}, preset {self.config['preset']!r}; {trained or 'untrained'})")

    def view_setup(self) -> None:
        """Print the keys, batches, labels, genes, split and training state
        (:func:`scmedal_lite.tl.setup_summary`)."""
        from .tl import setup_summary

        print(setup_summary(self))

    def add_latent(self, kind: str = "fe", adata: anndata.AnnData | None = None, *,
                   key_added: str | None = None, **kwargs):
        """``adata.obsm[key_added]`` = :meth:`get_latent` (default key ``X_scMEDAL_FE`` / ``X_scMEDAL_RE``),
        with settings and versions in ``uns["scmedal"]``: :func:`scmedal_lite.tl.latent`, from the model."""
        from .tl import latent

        return latent(self, adata, kind, key_added=key_added, **kwargs)


def _progress(progress) -> bool:
    from ._settings import settings

    return settings.resolve_progress(progress)


@contextlib.contextmanager
def _seeded_random_effects(net, seed):
    """Seed the random-effect layers' generators of ``net`` from ``seed`` for a block of posterior draws, and
    put their states back afterwards (so sampling never changes what a later training run draws)."""
    from .layers import RandomEffects

    layers_ = [layer for layer in net._flatten_layers() if isinstance(layer, RandomEffects)]
    saved = [keras.ops.convert_to_numpy(layer.seed_generator.state) for layer in layers_]
    try:
        for i, layer in enumerate(layers_):
            layer.seed_generator.state.assign(np.asarray([int(seed), i + 1], dtype=saved[i].dtype))
        yield
    finally:
        for layer, state in zip(layers_, saved):
            layer.seed_generator.state.assign(state)


def _maybe_tqdm(enabled, **kwargs):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(**kwargs)
