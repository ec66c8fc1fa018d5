"""The paper's mixed-effects classifier (MEC, method.md §1.9, §5): does a latent predict a cell's condition?

The reported MEC is a random forest; nothing about the classifier itself is mixed-effects: the "mixed effects"
are in the features. For each feature set (a fixed-effects latent ``X`` alone, or ``X`` next to the scMEDAL-RE
latent, "X + RE"), :func:`mec` standardises the features (``StandardScaler`` fit on the training cells), fits
``RandomForestClassifier(n_estimators=100, random_state=42)`` on the training cells and reports accuracy and
balanced accuracy on the test cells, next to the chance level of a ``DummyClassifier(strategy="stratified",
random_state=42)``. :func:`cross_validate_mec` repeats that over folds, training a fresh scMEDAL per fold,
and :func:`summarize_mec` gives the mean and t-based 95 % interval over folds, as the paper's Table 1.

Why the "+ RE" gains of the paper are largely batch identity
------------------------------------------------------------
The paper's targets (AML patient group, ASD diagnosis, HH tissue region) are **functions of the batch**:
every cell of a batch (a patient, a donor, a sample from one region) has the same target value. Its splits are
cell-level, so every batch has training cells, and the RE latent is computed **from the cell's true batch
one-hot** (the RE encoder is conditioned on it). The RE latent therefore carries the batch identity almost
verbatim, and a random forest that recognises the batch has learned the target for that batch from the
training cells of that very batch: a lookup table. The +30 to +60 points the paper reports for "X + RE"
(e.g. ~99.9 % on AML) mostly measure that lookup, not a biological signal the RE network found.

The leave-batches-out scheme (``scheme="batches"``) removes the lookup: whole batches are held out (test
batches are never seen in training, neither by scMEDAL nor by the forest), and the RE latent of an unseen
batch can only use the unseen-batch rule (``unseen="mean"``: the average of the known batches' random effects;
``"prior"``: no random effect). It measures what the question really is: does the latent let us predict the
condition of a **new** donor or sample? Expect much smaller numbers, close to chance when there are few
batches per level, and little or no gain from adding RE.

Example
-------
>>> import scmedal_lite as sm
>>> from scmedal_lite import classify
>>> table = classify.cross_validate_mec(adata, batch_key="batch", labels_key="celltype",     # doctest: +SKIP
...                                     condition_key="condition", scheme="batches", n_folds=5)
>>> classify.summarize_mec(table)                                                             # doctest: +SKIP
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from ._settings import settings
from .pp import SPLIT_KEY, cell_folds, split_masks
from .validate import InputError, as_int, as_mask, check_choice, check_obs_key

log = logging.getLogger(__name__)

__all__ = ["mec", "mixed_effects_classification", "batch_folds", "is_batch_level", "scheme_folds",
           "leave_batches_out_validation", "batch_fold_plan", "split_batch_fold", "cross_validate_mec",
           "summarize_mec", "CHANCE", "ESTIMATED", "METRICS", "SCHEMES", "VALIDATIONS"]

#: Name of the feature set whose rows hold the stratified-dummy chance level.
CHANCE = "chance"
#: Metrics :func:`mec` reports.
METRICS = ("accuracy", "balanced_accuracy")
#: Fold schemes of :func:`cross_validate_mec`.
SCHEMES = ("cells", "batches")
#: Where a leave-batches-out fold's validation cells come from (:func:`split_batch_fold`): a held-out group of
#: batches, or a share of the training batches' own cells.
VALIDATIONS = ("batches", "cells")
#: With ``validation="cells"``, one in this many of the training batches' cells validates (a quarter: the
#: 60/20 of the paper's cell-level rotation among the cells that are not tested).
CELL_VALIDATION_FOLDS = 4
#: The RE latent is appended to each fixed-effects latent under this suffix.
RE_SUFFIX = " + RE"
#: Feature set of :func:`cross_validate_mec` with ``estimate_new_batches``: FE next to the RE latent computed
#: with the held-out batches' own, estimated random effects.
ESTIMATED = "scMEDAL-FE + RE (estimated)"


# ----------------------------------------------------------------------------------------------------------
# the classifier
# ----------------------------------------------------------------------------------------------------------


def _feature_items(features) -> list[tuple[str, np.ndarray]]:
    items = list(features.items()) if isinstance(features, Mapping) else list(features)
    if not items:
        raise InputError("features is empty; give {name: array (cells x d)} or [(name, array), ...].")
    out, seen = [], set()
    for item in items:
        try:
            name, X = item
        except (TypeError, ValueError):
            raise InputError("features must be a dict {name: array} or a list of (name, array) pairs.") \
                from None
        name = str(name)
        if name in seen or name == CHANCE:
            raise InputError(f"Feature set name {name!r} is duplicated or reserved.")
        seen.add(name)
        X = np.asarray(X, dtype="float64")
        if X.ndim == 1:
            X = X[:, None]
        if X.ndim != 2:
            raise InputError(f"Feature set {name!r} must be cells x d, got shape {X.shape}.")
        if not np.isfinite(X).all():
            raise InputError(f"Feature set {name!r} holds NaN or infinite values.")
        out.append((name, X))
    return out


def mec(features, y, train_mask, test_mask, *, seed: int = 42, n_estimators: int = 100,
        n_jobs: int = 1) -> pd.DataFrame:
    """The paper's MEC: a random forest per feature set, scored on the test cells.

    Parameters
    ----------
    features
        ``{name: array (n_cells, d)}`` or a list of ``(name, array)`` pairs, all over the same cells.
    y
        The target of every cell (any labels; compared as strings).
    train_mask, test_mask
        Boolean masks over the cells: fit on ``train_mask``, score on ``test_mask``.
    seed
        ``random_state`` of the forest and of the chance classifier (42, the paper's).
    n_estimators, n_jobs
        Trees (100, the paper's) and worker processes of the forest.

    Notes
    -----
    For each feature set: ``StandardScaler`` fit on the training cells,
    ``RandomForestClassifier(n_estimators, random_state=seed)`` fit on the scaled training cells, accuracy and
    balanced accuracy on the test cells. The chance level is a
    ``DummyClassifier(strategy="stratified", random_state=seed)`` fit on the training targets, reported once as
    feature set ``"chance"``.

    Returns
    -------
    pandas.DataFrame
        Tidy: ``features, split, metric, value`` (``split`` is ``"test"``; metrics ``accuracy``,
        ``balanced_accuracy``), one row per feature set and metric, then the chance rows.
    """
    y = np.asarray(pd.Series(np.asarray(y).ravel(), dtype=object))
    n = y.shape[0]
    if pd.isna(y).any():
        raise InputError(f"The target has {int(pd.isna(y).sum())} missing values; drop those cells first.")
    y = y.astype(str)
    train = as_mask("train_mask", train_mask, n)
    test = as_mask("test_mask", test_mask, n)
    if (train & test).any():
        raise InputError(f"{int((train & test).sum())} cells are in both train_mask and test_mask.")
    items = _feature_items(features)
    for name, X in items:
        if X.shape[0] != n:
            raise InputError(f"Feature set {name!r} has {X.shape[0]} rows; the target has {n}.")
    seed = as_int("seed", seed, minimum=0)
    rows = []

    def score(name, predicted):
        with warnings.catch_warnings():       # classes seen only in test/only in predictions: a valid result
            warnings.filterwarnings("ignore", category=UserWarning)
            rows.append((name, "test", "accuracy", float(accuracy_score(y[test], predicted))))
            rows.append((name, "test", "balanced_accuracy",
                         float(balanced_accuracy_score(y[test], predicted))))

    for name, X in items:
        scaler = StandardScaler().fit(X[train])
        forest = RandomForestClassifier(n_estimators=as_int("n_estimators", n_estimators, minimum=1),
                                        random_state=seed, n_jobs=int(n_jobs))
        forest.fit(scaler.transform(X[train]), y[train])
        score(name, forest.predict(scaler.transform(X[test])))
    dummy = DummyClassifier(strategy="stratified", random_state=seed)
    dummy.fit(np.zeros((int(train.sum()), 1)), y[train])
    score(CHANCE, dummy.predict(np.zeros((int(test.sum()), 1))))
    return pd.DataFrame(rows, columns=["features", "split", "metric", "value"])


def mixed_effects_classification(model, adata: AnnData | None = None, *, condition_key: str,
                                 fe_latents: Mapping[str, np.ndarray] | None = None,
                                 re_latent: np.ndarray | None = None, split_key: str = SPLIT_KEY,
                                 unseen: str = "mean", re_alone: bool = False, seed: int = 42,
                                 n_jobs: int = 1) -> pd.DataFrame:
    """MEC with a trained :class:`~scmedal_lite.SCMEDAL`: each fixed-effects latent alone and next to RE.

    ``fe_latents`` maps names to ``(n_cells, d)`` latents of ``adata``'s cells (default
    ``{"scMEDAL-FE": model.get_latent("fe", adata)}``; add baselines, e.g. from
    :func:`scmedal_lite.baselines.run_baselines`). ``re_latent`` defaults to ``model.get_latent("re", adata,
    unseen=unseen)``: cells of batches the model never saw follow the ``unseen`` rule. When the model has no
    trained RE network and no ``re_latent`` is given, only the ``X`` feature sets are run (with a warning).
    ``re_alone=True`` adds the RE latent alone as a feature set. Train and test cells come from
    ``adata.obs[split_key]``; the target from ``adata.obs[condition_key]``. ``adata`` defaults to the model's.

    Returns :func:`mec`'s tidy table, feature sets ``name`` and ``name + RE`` for each latent (then ``RE``
    when asked, and ``chance``).
    """
    adata = model.adata if adata is None else adata
    check_obs_key(adata, condition_key, role="condition_key")
    masks = split_masks(adata, split_key=split_key, require=("train", "test"))
    train, test = masks["train"], masks["test"]
    if fe_latents is None:
        fe_latents = {"scMEDAL-FE": model.get_latent("fe", adata)}
    if re_latent is None:
        if "re" in getattr(model, "networks", {}):
            re_latent = model.get_latent("re", adata, unseen=unseen)
        else:
            warnings.warn("The model has no trained RE network; running MEC on the X feature sets only.",
                          UserWarning, stacklevel=2)
    features = []
    for name, X in fe_latents.items():
        X = np.asarray(X)
        features.append((str(name), X))
        if re_latent is not None:
            R = np.asarray(re_latent)
            if R.shape[0] != X.shape[0]:
                raise InputError(f"re_latent has {R.shape[0]} rows; {name!r} has {X.shape[0]}.")
            features.append((f"{name}{RE_SUFFIX}", np.concatenate([X, R], axis=1)))
    if re_alone and re_latent is not None:
        features.append(("RE", np.asarray(re_latent)))
    return mec(features, adata.obs[condition_key].to_numpy(), train, test, seed=seed, n_jobs=n_jobs)


# ----------------------------------------------------------------------------------------------------------
# leave-batches-out folds
# ----------------------------------------------------------------------------------------------------------


def _batch_levels(adata: AnnData, batch_key: str, stratify_key: str | None) -> pd.Series:
    """The stratification level of each batch (its most frequent value of ``stratify_key``)."""
    batches = adata.obs[batch_key].astype(str)
    if stratify_key is None:
        return pd.Series("all", index=pd.Index(sorted(batches.unique()), name=batch_key))
    check_obs_key(adata, stratify_key, role="stratify_key")
    table = pd.crosstab(batches, adata.obs[stratify_key].astype(str))
    level = table.idxmax(axis=1)
    if (table.gt(0).sum(axis=1) > 1).any():
        log.info("stratify_key %r varies within some batches; each batch is stratified by its most frequent "
                 "value", stratify_key)
    return level.sort_index()


def is_batch_level(adata: AnnData, batch_key: str, key: str, share: float = 0.9) -> bool:
    """Whether ``obs[key]`` is a property of the batch (a condition, a donor group): in every batch, its most
    frequent value covers at least ``share`` of the cells. A cell type is not, and stratifying batches by their
    most frequent cell type would be meaningless.

    >>> import anndata, pandas as pd
    >>> obs = pd.DataFrame({"b": list("aaabbb"), "cond": list("xxxyyy"), "type": list("tuvtuv")}, index=list("012345"))
    >>> a = anndata.AnnData(obs=obs)
    >>> is_batch_level(a, "b", "cond"), is_batch_level(a, "b", "type")
    (True, False)
    """
    check_obs_key(adata, key, role="key")
    table = pd.crosstab(adata.obs[batch_key].astype(str), adata.obs[key].astype(str))
    return bool((table.max(axis=1) >= share * table.sum(axis=1)).all())


def batch_folds(adata: AnnData, batch_key: str, n_folds: int = 5, stratify_key: str | None = None,
                seed: int = 0, validation: str = "batches") -> pd.Series:
    """Partition the batches into ``n_folds`` groups for leave-batches-out cross-validation.

    Fold ``k`` uses test = group ``k``, validation = group ``k + 1 (mod n_folds)``, training = the other
    groups, so every batch is a test batch in exactly one fold and test batches are never training batches.
    With ``stratify_key`` (e.g. the condition), each level's batches (shuffled, seeded) are spread over the
    groups, evenly spaced round the cycle of folds so that **every level keeps training batches in every
    fold**; levels are placed to keep the groups' sizes balanced. A batch's level is its most frequent
    value of ``stratify_key`` (meant for batch-level columns: condition, donor group, tissue).

    Raises :class:`InputError` if ``n_folds < 3`` (the rotation leaves no training group), if there are fewer
    batches than folds, or if some level has too few batches to keep one in training in every fold (a level
    needs at least 2 batches, and 3 when ``n_folds`` is 3 or its batches cannot be spread apart). With
    ``validation="cells"`` (:func:`split_batch_fold`: the validation cells come from the training batches)
    only the test group is held out, and 2 batches per level always suffice; the groups are the same.

    Returns
    -------
    pandas.Series
        The group (0..n_folds-1) of each batch, indexed by batch name (str), named ``"fold"``.
    """
    n_folds = as_int("n_folds", n_folds, minimum=1)
    check_choice("validation", validation, VALIDATIONS)
    if n_folds < 3:
        raise InputError(f"n_folds must be >= 3 for the test/validation/train rotation (test = group k, "
                         f"validation = group k+1, train = the rest); got {n_folds}.")
    check_obs_key(adata, batch_key, role="batch_key")
    levels = _batch_levels(adata, batch_key, stratify_key)
    if len(levels) < n_folds:
        raise InputError(f"{len(levels)} batches in {batch_key!r} cannot fill {n_folds} folds; use "
                         f"n_folds <= {len(levels)}.")
    rng = np.random.default_rng(as_int("seed", seed, minimum=0))
    sizes = np.zeros(n_folds, dtype=int)
    group = pd.Series(-1, index=levels.index, name="fold", dtype=int)
    by_level = {lv: sorted(levels.index[levels == lv]) for lv in levels.unique()}
    # The largest levels first: they constrain the balance most.
    for lv in sorted(by_level, key=lambda v: (-len(by_level[v]), str(v))):
        members = list(rng.permutation(by_level[lv]))
        m = len(members)
        if m >= n_folds:
            slots = np.arange(m) % n_folds
        else:                                     # spread apart round the cycle of folds
            slots = np.floor(np.arange(m) * n_folds / m).astype(int)
        best, best_offsets = None, []
        for offset in range(n_folds):
            new = sizes + np.bincount((slots + offset) % n_folds, minlength=n_folds)
            key = (int(new.max()), float(new.var()))
            if best is None or key < best:
                best, best_offsets = key, [offset]
            elif key == best:
                best_offsets.append(offset)
        offset = int(rng.choice(best_offsets))
        assigned = (slots + offset) % n_folds
        group[members] = assigned
        sizes += np.bincount(assigned, minlength=n_folds)
    empty = [k for k in range(n_folds) if sizes[k] == 0]
    if empty:
        raise InputError(f"Folds {empty} got no batch; use fewer folds.")
    for k, in_train in enumerate(_training_batches(group, n_folds, 2 if validation == "batches" else 1)):
        missing = sorted(set(levels) - set(levels[in_train]))
        if missing:
            counts = {str(lv): len(by_level[lv]) for lv in missing}
            raise InputError(f"With {n_folds} leave-batches-out folds, level(s) {counts} (number of "
                             f"batches) of {stratify_key!r} would have no training batch in fold {k}. Each "
                             "level needs at least 2 batches (3 when n_folds is 3); use fewer folds or merge "
                             "levels.")
    return group


def _training_batches(group: pd.Series, n_folds: int, held: int) -> list[pd.Index]:
    """Per fold ``k``, the batches that train when groups ``k .. k + held - 1`` are held out (2: test and
    validation groups; 1: the test group only)."""
    return [group.index[~group.isin({(k + i) % n_folds for i in range(held)})] for k in range(n_folds)]


def scheme_folds(scheme: str, n_folds: int, n_batches: int) -> int:
    """Folds to define for ``scheme``: ``n_folds`` for ``"cells"``; for ``"batches"`` at most one per batch,
    ``min(n_folds, n_batches)``, so that data with fewer batches than ``n_folds`` is still cross-validated
    leave-batches-out (each batch the test set of one fold). :func:`batch_folds` still refuses fewer than 3.

    >>> scheme_folds("cells", 5, 4), scheme_folds("batches", 5, 4), scheme_folds("batches", 5, 63)
    (5, 4, 5)
    """
    check_choice("scheme", scheme, SCHEMES)
    n_folds = as_int("n_folds", n_folds, minimum=1)
    return n_folds if scheme == "cells" else min(n_folds, as_int("n_batches", n_batches, minimum=1))


def leave_batches_out_validation(folds: pd.Series, n_folds: int) -> str:
    """Where the validation cells of leave-batches-out folds come from: ``"batches"`` (the next group of
    batches, the rotation of :func:`batch_folds`) when every fold still keeps at least two training batches,
    else ``"cells"`` (a share of the training batches' own cells, :func:`split_batch_fold`). With 3 batches and
    3 folds, holding out a validation batch as well would leave one training batch, and the networks need two.

    >>> folds = pd.Series([0, 1, 2], index=["a", "b", "c"], name="fold")
    >>> leave_batches_out_validation(folds, 3), leave_batches_out_validation(pd.Series([0, 1, 2, 3]), 4)
    ('cells', 'batches')
    """
    n_folds = as_int("n_folds", n_folds, minimum=3)
    return "batches" if min(len(t) for t in _training_batches(folds, n_folds, 2)) >= 2 else "cells"


def batch_fold_plan(adata: AnnData, *, batch_key: str, condition_key: str, n_folds: int,
                    seed: int = 0) -> tuple[pd.Series, str]:
    """The leave-batches-out folds :func:`cross_validate_mec` runs: the groups of :func:`batch_folds`
    (stratified by ``condition_key`` when it is a property of the batch, :func:`is_batch_level`) and where
    their validation cells come from: held-out batches (``"batches"``) unless that would leave a fold fewer
    than two training batches (:func:`leave_batches_out_validation`) or a level none, then the training
    batches' own cells (``"cells"``). Raises :class:`InputError` when the batches cannot be split so (fewer
    than 3, fewer than ``n_folds``, or a level with a single batch).
    """
    stratify = condition_key if is_batch_level(adata, batch_key, condition_key) else None
    groups = batch_folds(adata, batch_key, n_folds, stratify, seed, validation="cells")
    levels = _batch_levels(adata, batch_key, stratify)
    rotation_keeps_levels = all(set(levels[t]) == set(levels) for t in _training_batches(groups, n_folds, 2))
    return groups, leave_batches_out_validation(groups, n_folds) if rotation_keeps_levels else "cells"


def split_batch_fold(adata: AnnData, *, batch_key: str, fold: int, n_folds: int = 5,
                     stratify_key: str | None = None, seed: int = 0, key_added: str = SPLIT_KEY,
                     folds: pd.Series | None = None, validation: str = "batches") -> pd.Series:
    """Write the leave-batches-out split of ``fold`` to ``adata.obs[key_added]`` (train / val / test).

    Groups from :func:`batch_folds` (or ``folds``, made with the same ``n_folds``, when given): test = group
    ``fold``. With ``validation="batches"``, validation = group ``fold + 1 (mod n_folds)`` and training = the
    rest. With ``"cells"`` (for few batches, :func:`leave_batches_out_validation`), every batch but the test
    group trains, and one in :data:`CELL_VALIDATION_FOLDS` of their cells (seeded, stratified by batch)
    validates instead. Test batches are never seen in either. Returns the new column.
    """
    n_folds = as_int("n_folds", n_folds, minimum=3)
    check_choice("validation", validation, VALIDATIONS)
    folds = batch_folds(adata, batch_key, n_folds, stratify_key, seed) if folds is None else folds
    if int(folds.max()) >= n_folds:
        raise InputError(f"folds has groups up to {int(folds.max())}; pass the n_folds it was made with.")
    fold = as_int("fold", fold, minimum=0)
    if fold >= n_folds:
        raise InputError(f"fold must be in 0..{n_folds - 1}, got {fold}.")
    group = adata.obs[batch_key].astype(str).map(folds)
    if group.isna().any():
        raise InputError("Some batches of adata have no fold; recompute the folds on this AnnData.")
    group = group.to_numpy(dtype=int)
    if validation == "batches":
        split = np.where(group == fold, "test", np.where(group == (fold + 1) % n_folds, "val", "train"))
    else:
        split = np.where(group == fold, "test", "train").astype(object)
        seen = np.flatnonzero(group != fold)
        share = cell_folds(adata[seen], batch_key=batch_key, n_folds=CELL_VALIDATION_FOLDS,
                           seed=as_int("seed", seed, minimum=0))
        split[seen[share == fold % CELL_VALIDATION_FOLDS]] = "val"
    adata.obs[key_added] = pd.Categorical(split, categories=["train", "val", "test"])
    return adata.obs[key_added]


# ----------------------------------------------------------------------------------------------------------
# cross-validation
# ----------------------------------------------------------------------------------------------------------


def _light_copy(adata: AnnData) -> AnnData:
    """A new AnnData sharing ``X`` and layers with ``adata``, with its own ``obs`` (for a per-fold split)."""
    return AnnData(X=adata.X, obs=adata.obs.copy(), var=adata.var.copy(),
                   layers={k: v for k, v in adata.layers.items()})


def cross_validate_mec(adata: AnnData, *, batch_key: str, labels_key: str | None, condition_key: str,
                       scheme: str = "cells", n_folds: int = 5, folds: Sequence[int] | None = None,
                       seed: int = 42, train_kwargs: dict | None = None, model_kwargs: dict | None = None,
                       baselines: Sequence[str] = ("pca",), baseline_options: dict | None = None,
                       unseen: str = "mean", estimate_new_batches: bool | dict = False, mec_seed: int = 42,
                       n_jobs: int = 1, progress: bool | None = None) -> pd.DataFrame:
    """MEC over folds: per fold, a new split, a new scMEDAL, its FE and RE latents and baselines, then MEC.

    Parameters
    ----------
    adata
        Log-normalised cells (after :func:`scmedal_lite.pp.prepare`); not modified.
    batch_key, labels_key
        Batch and cell-type columns (as for :class:`~scmedal_lite.SCMEDAL`).
    condition_key
        The column MEC predicts (e.g. the condition).
    scheme
        ``"cells"``: the paper's cell-level rotation (:func:`scmedal_lite.pp.split_cells` with ``fold=k``);
        every batch is in train, val and test. ``"batches"``: leave-batches-out (:func:`batch_fold_plan`: the
        groups of :func:`batch_folds`, stratified by ``condition_key`` where it is a property of the batch; with
        too few batches to hold out a validation group as well, the validation cells come from the training
        batches); test batches are never seen, and their RE latents use the ``unseen`` rule.
    n_folds, folds
        Number of folds (>= 3 for the test/val/train rotation) and which of them to run (default all).
    seed
        Seed of the splits, the models (unless ``model_kwargs`` has ``seed``) and the baselines.
    train_kwargs, model_kwargs
        Passed to :meth:`SCMEDAL.train` (``progress=False`` unless given) and to :class:`SCMEDAL` (e.g.
        ``hidden``, ``latent_dim``, ``preset``).
    baselines, baseline_options
        Baseline methods (:data:`scmedal_lite.baselines.METHODS`) run on the model's scaled input with the
        fold's training mask, and their per-method options (see
        :func:`~scmedal_lite.baselines.run_baselines`).
    unseen, mec_seed, n_jobs
        The RE unseen-batch rule; ``random_state`` of the forest and chance (42, paper); forest workers.
    estimate_new_batches
        ``"batches"`` scheme only: also estimate the held-out (validation and test) batches' own random effects
        from their cells, without their labels or conditions (:meth:`SCMEDAL.add_batches`; a dict is passed to
        it, e.g. ``{"max_epochs": 20}``), and add the feature set :data:`ESTIMATED` (FE next to that RE latent;
        the training cells' RE latents are unchanged). The ``unseen`` rule's rows stay for reference.
    progress
        A progress bar over the folds (stderr); None: :data:`scmedal_lite.settings` ``.progress``.

    Returns
    -------
    pandas.DataFrame
        Tidy: ``fold, scheme, features, split, metric, value``; feature sets ``scMEDAL-FE``, each baseline
        (``PCA``, ``Harmony``, ...), each with ``+ RE``, and ``chance`` (and :data:`ESTIMATED`).
    """
    from . import baselines as _baselines
    from .model import SCMEDAL, UnseenBatchWarning
    from .pp import split_cells

    check_choice("scheme", scheme, SCHEMES)
    check_choice("unseen", unseen, ("mean", "prior"))
    check_obs_key(adata, condition_key, role="condition_key")
    n_folds = as_int("n_folds", n_folds, minimum=1)
    if n_folds < 3:
        raise InputError(f"n_folds must be >= 3 for the test/validation/train rotation; got {n_folds}. "
                         "To run fewer folds, pass folds=[0, 1].")
    folds = list(range(n_folds)) if folds is None else [as_int("fold", f, minimum=0) for f in folds]
    if any(f >= n_folds for f in folds):
        raise InputError(f"folds must be in 0..{n_folds - 1}, got {folds}.")
    baselines = [baselines] if isinstance(baselines, str) else list(baselines)
    unknown = [m for m in baselines if str(m).lower() not in _baselines.METHODS]
    if unknown:
        raise InputError(f"Unknown baseline(s) {unknown}; valid names are {list(_baselines.METHODS)}.")
    seed = as_int("seed", seed, minimum=0)
    model_kwargs = {"seed": seed, **(model_kwargs or {})}
    train_kwargs = {"progress": False, **(train_kwargs or {})}
    if scheme == "batches":
        groups, validation = batch_fold_plan(adata, batch_key=batch_key, condition_key=condition_key,
                                             n_folds=n_folds, seed=seed)
    else:
        groups, validation = None, None

    iterator = folds
    if settings.resolve_progress(progress):
        from tqdm.auto import tqdm
        iterator = tqdm(folds, desc=f"MEC ({scheme})", unit="fold")
    tables = []
    for k in iterator:
        a = _light_copy(adata)
        if scheme == "cells":
            split_cells(a, batch_key=batch_key, labels_key=labels_key, fold=k, n_folds=n_folds, seed=seed)
        else:
            split_batch_fold(a, batch_key=batch_key, fold=k, n_folds=n_folds, folds=groups, validation=validation,
                             seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnseenBatchWarning)     # expected: held-out batches in val / test
            model = SCMEDAL(a, batch_key, labels_key, **model_kwargs).train(**train_kwargs)
            fe = model.get_latent("fe", a)
            re = model.get_latent("re", a, unseen=unseen)
        latents = {"scMEDAL-FE": fe}
        if baselines:
            emb = _baselines.run_baselines(a, batch_key=batch_key, labels_key=labels_key, methods=baselines,
                                           x=model.scale(a), train_mask=model.train_mask, seed=seed,
                                           options=baseline_options)
            latents.update({_baselines.DISPLAY_NAMES.get(m, m): e for m, e in emb.items()})
        table = mixed_effects_classification(model, a, condition_key=condition_key, fe_latents=latents,
                                             re_latent=re, seed=mec_seed, n_jobs=n_jobs)
        if estimate_new_batches and scheme == "batches":
            table = pd.concat([table, _estimated_rows(model, a, fe, condition_key, estimate_new_batches, seed,
                                                      mec_seed, n_jobs)], ignore_index=True)
        table.insert(0, "scheme", scheme)
        table.insert(0, "fold", k)
        tables.append(table)
        log.info("MEC %s fold %d done", scheme, k)
    return pd.concat(tables, ignore_index=True)


def _estimated_rows(model, a, fe, condition_key, options, seed, mec_seed, n_jobs) -> pd.DataFrame:
    """MEC rows of :data:`ESTIMATED`: the held-out batches' effects estimated by ``add_batches`` on their cells."""
    batches = a.obs[model.batch_key].astype(str)
    new = ~batches.isin(model.batch_categories).to_numpy()
    # only the RE latent is used here: the FE network's new effects (its decoder's) are not fitted
    options = {"seed": seed, "progress": False, "which": ("re",), **(options if isinstance(options, dict) else {})}
    model.add_batches(a[new].copy(), **options)
    re = model.get_latent("re", a)
    masks = split_masks(a, require=("train", "test"))
    table = mec([(ESTIMATED, np.concatenate([fe, re], axis=1))], a.obs[condition_key].to_numpy(), masks["train"],
                masks["test"], seed=mec_seed, n_jobs=n_jobs)
    return table[table["features"] == ESTIMATED]


def summarize_mec(table: pd.DataFrame, *, confidence: float = 0.95) -> pd.DataFrame:
    """Mean and t-based interval over folds per (scheme, features, split, metric), as the paper's Table 1.

    Uses :func:`scmedal_lite.metrics.summarize_folds`: ``n, mean, std, sem, ci_low, ci_high`` (``mean ±
    t(0.975, n-1) · sem`` for 95 %). Grouping columns absent from ``table`` are skipped.
    """
    from .metrics import summarize_folds

    by = [c for c in ("scheme", "features", "split", "metric") if c in table.columns]
    if "features" not in by or "metric" not in by:
        raise InputError(f"table needs 'features' and 'metric' columns; it has {list(table.columns)}.")
    return summarize_folds(table, by=by, confidence=confidence)
