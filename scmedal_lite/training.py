"""The training loop: compiled steps, seeded minibatches, early stopping on a real validation loss, progress bar,
and checkpoints that let an interrupted run resume exactly where it stopped. :class:`TrainSettings` holds what
a training run is asked to do (and what the model records of it).

It replaces ``keras.Model.fit`` for three reasons: minibatches can be drawn from sparse or backed matrices
without densifying everything; minibatch order depends only on ``(seed, epoch)``, so a resumed run is identical
to an unbroken one; and early stopping watches a loss the networks really log.

Example
-------
>>> history, best = fit_network(net, (x_train, z_train), (x_val, z_val), epochs=50, seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from .io import atomic_write, write_json, write_npz
from .rows import to_dense
from .validate import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """What one network's training is asked to do; ``dataclasses.asdict`` of it is what
    :attr:`scmedal_lite.SCMEDAL.trained` records (next to ``epochs_run``, ``best_epoch`` and ``seconds``)."""

    max_epochs: int
    batch_size: int
    learning_rate: float
    early_stopping: bool
    patience: int
    seed: int


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and the Keras backend, and make TensorFlow ops deterministic unless
    ``sm.settings.deterministic`` is False.

    Same seed, same data, same machine: identical weights, latents and scores.
    """
    from ._settings import settings

    keras.utils.set_random_seed(int(seed))
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()


def take_rows(source, index: np.ndarray) -> np.ndarray:
    """Rows ``index`` of a dense array, a sparse matrix or a row source with ``__getitem__`` (dense float32)."""
    return np.asarray(to_dense(source[index]), dtype="float32")


def _prefetched(sources, indices):
    """Yield minibatches, reading the next one in a background thread while the current one trains
    (overlaps disk reads and densifying with computation)."""
    from concurrent.futures import ThreadPoolExecutor

    def read(index):
        return tuple(take_rows(a, index) for a in sources)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, indices[0]) if indices else None
        for k in range(len(indices)):
            batch = pending.result()
            pending = pool.submit(read, indices[k + 1]) if k + 1 < len(indices) else None
            yield batch


def _n_rows(arrays):
    return arrays[0].shape[0]


class Checkpointer:
    """Saves everything needed to resume after every epoch: weights (with random-generator states), optimiser
    state, history, early-stopping state and the FE network's memory of training latents (when it has one:
    :class:`~scmedal_lite.latent_memory.LatentMemory`, training state that is not a weight). Each file is
    written atomically; ``state.json`` last."""

    def __init__(self, folder: str, net: keras.Model):
        self.folder, self.net = folder, net
        os.makedirs(folder, exist_ok=True)

    def _path(self, name):
        return os.path.join(self.folder, name)

    def _rng_states(self):
        """Random-generator states (keras SeedGenerator): in ``net.variables`` but not in the weights file."""
        weights = {id(w) for w in self.net.weights}
        return [v for v in self.net.variables if id(v) not in weights]

    def _memory_variables(self):
        """The memory's variables (latents, batches, write position), or none without a memory."""
        memory = getattr(self.net, "memory", None)
        return [] if memory is None else [memory.latents, memory.batches, memory.pointer]

    def save(self, epoch: int, history: list[dict], stopper: EarlyStopper) -> None:
        # Files are named by epoch and state.json (written last) names them: a run killed between two writes
        # leaves state.json pointing at the previous epoch's complete pair, never at a mix of two epochs.
        weights, arrays_file = f"weights-{epoch}.weights.h5", f"state-{epoch}.npz"
        with atomic_write(self._path(weights)) as tmp:
            _save_weights(self.net, tmp)
        arrays = {f"o{i}_{j}": keras.ops.convert_to_numpy(v)
                  for i, opt in enumerate(self.net.optimizers) for j, v in enumerate(opt.variables)}
        if stopper.best_weights is not None:
            arrays.update({f"best_{j}": w for j, w in enumerate(stopper.best_weights)})
        arrays.update({f"rng_{j}": keras.ops.convert_to_numpy(v) for j, v in enumerate(self._rng_states())})
        arrays.update({f"memory_{j}": v.numpy() for j, v in enumerate(self._memory_variables())})
        write_npz(self._path(arrays_file), **arrays)
        write_json(self._path("state.json"), {"epochs_done": epoch, "history": history, "best": stopper.best,
                                              "best_epoch": stopper.best_epoch, "wait": stopper.wait,
                                              "counted": stopper.counted,
                                              "weights": weights, "arrays": arrays_file}, indent=None)
        for name in os.listdir(self.folder):          # the previous epoch's pair, now superseded
            if name.startswith(("weights-", "state-")) and name not in (weights, arrays_file):
                os.remove(self._path(name))

    def restore(self, stopper: EarlyStopper) -> tuple[int, list[dict]]:
        """Load the last checkpoint if there is one; returns (epochs done, history so far).

        The network must be compiled (its ``compile`` builds the optimisers whose state is restored)."""
        if not os.path.exists(self._path("state.json")):
            return 0, []
        with open(self._path("state.json")) as f:
            state = json.load(f)
        self.net.load_weights(self._path(state.get("weights", "weights.weights.h5")))
        saved = np.load(self._path(state.get("arrays", "state.npz")), allow_pickle=False)
        for i, opt in enumerate(self.net.optimizers):
            for j, var in enumerate(opt.variables):
                var.assign(saved[f"o{i}_{j}"])
        for j, var in enumerate(self._rng_states()):
            if f"rng_{j}" in saved:
                var.assign(saved[f"rng_{j}"])
        for j, var in enumerate(self._memory_variables()):
            if f"memory_{j}" in saved:
                if saved[f"memory_{j}"].shape != tuple(var.shape):
                    raise InputError(f"The checkpoint in {self.folder} holds a memory of training latents of "
                                     f"shape {saved[f'memory_{j}'].shape}, this run's is {tuple(var.shape)}: it "
                                     f"was written for other training cells. Use a new checkpoint_dir.")
                var.assign(saved[f"memory_{j}"])
        stopper.best, stopper.best_epoch, stopper.wait = state["best"], state["best_epoch"], state["wait"]
        stopper.counted = state.get("counted", stopper.best)
        best = [saved[f"best_{j}"] for j in range(len(self.net.weights)) if f"best_{j}" in saved]
        stopper.best_weights = best or None
        log.info("resumed from %s after %d epochs", self.folder, state["epochs_done"])
        return int(state["epochs_done"]), list(state["history"])


def _save_weights(net, path):
    tmp = path + ".weights.h5"          # Keras insists on the suffix
    net.save_weights(tmp)
    os.replace(tmp, path)


class EarlyStopper:
    """Stop when ``monitor`` has not improved for ``patience`` epochs; keep the best weights in memory.

    ``min_improvement`` (a fraction, 0 by default): only a value below ``(1 - min_improvement)`` times the last
    counted value resets the patience; the best weights are still those of the lowest value seen. With 0 any
    new best counts.

    >>> stopper = EarlyStopper(patience=2, monitor="val_loss", enabled=False, min_improvement=0.01)
    >>> [stopper.update(e, {"val_loss": v}, None) for e, v in enumerate([1.0, 0.995, 0.994], 1)]
    [False, False, False]
    >>> stopper.best_epoch, stopper.wait
    (3, 2)
    """

    def __init__(self, patience: int, monitor: str = "val_loss", enabled: bool = True,
                 min_improvement: float = 0.0):
        self.patience, self.monitor, self.enabled = patience, monitor, enabled
        self.min_improvement = float(min_improvement)
        self.best, self.best_epoch, self.wait, self.best_weights = float("inf"), 0, 0, None
        self.counted = float("inf")       # the last value that reset the patience

    def update(self, epoch: int, logs: dict, net: keras.Model) -> bool:
        """Record ``logs`` of ``epoch`` (1-based); returns True when training should stop."""
        value = logs[self.monitor]
        if not np.isfinite(value):
            raise FloatingPointError(f"{self.monitor} became {value} at epoch {epoch}; lower the learning rate.")
        if value < self.best:
            self.best, self.best_epoch = float(value), epoch
            if self.enabled:
                self.best_weights = [keras.ops.convert_to_numpy(w).copy() for w in net.weights]
        threshold = self.counted - self.min_improvement * abs(self.counted) if np.isfinite(self.counted) else np.inf
        if value < threshold:
            self.counted, self.wait = float(value), 0
            return False
        self.wait += 1
        return self.enabled and self.wait >= self.patience

    def restore_best(self, net: keras.Model) -> None:
        if self.enabled and self.best_weights is not None:
            for w, value in zip(net.weights, self.best_weights):
                w.assign(value)


def traced_once(fn, jit_compile: bool = False):
    """``fn`` as a ``tf.function`` traced once for any number of rows.

    The first call fixes the input signature with the row axis of every argument left open, so the smaller
    last minibatch of an epoch, the validation chunks and the last inference chunk reuse the same graph instead
    of tracing another one (a trace costs about a second on a 2-core machine, and every model, fold and
    ``add_batches`` call starts new ones). Traced without autograph: ``fn`` must have no tensor-dependent
    Python control flow (the networks' train, test and inference steps have none), so there is nothing to
    convert, no source to re-read, the same graph, and about a fifth less tracing time. Later calls go to the
    traced graph directly (its concrete function), skipping ``tf.function``'s signature lookup, about 0.6 ms a
    call: on small data, where a step takes 20 ms, that is a few per cent of training.

    >>> square = traced_once(lambda x: x * x)
    >>> [square(np.ones((n, 3), "float32")).shape[0] for n in (4, 2)]
    [4, 2]
    """
    compiled = None

    def call(*args):
        nonlocal compiled
        if compiled is None:
            spec = open_rows_signature(args)
            compiled = tf.function(fn, input_signature=spec, jit_compile=jit_compile,
                                   autograph=False).get_concrete_function(*spec)
        return compiled(*args)
    return call


def open_rows_signature(args) -> list:
    """The input signature of ``args`` (nested arrays) with every row axis left open: one trace for any rows."""
    return tf.nest.map_structure(lambda a: tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)), list(args))


def metrics_resetter(net: keras.Model):
    """A function that sets every metric of ``net`` back to zero in one compiled call.

    ``keras.Model.reset_metrics`` assigns each metric variable eagerly, about 2 ms for a network's half-dozen
    running means: twice an epoch, that is 6 % of an epoch of three 20 ms steps on small data. Only for metrics
    whose reset state is all zeros, as :class:`keras.metrics.Mean`'s (the networks' loss trackers); with any
    other metric, ``net.reset_metrics`` itself.

    >>> from scmedal_lite.networks import AutoEncoder
    >>> net = AutoEncoder(n_genes=4, hidden=(3,), latent_dim=2); net.compile(optimizer="adam")
    >>> logs = net.test_step(((np.ones((5, 4), "float32"),),)); float(net.trackers["loss"].count)
    5.0
    >>> metrics_resetter(net)(); float(net.trackers["loss"].count)
    0.0
    """
    if not all(isinstance(metric, keras.metrics.Mean) for metric in net.metrics):
        return net.reset_metrics
    variables = [v for metric in net.metrics for v in metric.variables]

    @tf.function(autograph=False)
    def reset():
        for v in variables:
            v.assign(tf.zeros(v.shape, v.dtype))
    return reset


def _steps(net, strategy, jit_compile):
    """Compiled train and test steps; with a ``tf.distribute`` strategy each minibatch is split over replicas."""
    if strategy is None:
        return traced_once(net.train_step, jit_compile), traced_once(net.test_step, jit_compile)
    n = strategy.num_replicas_in_sync

    def distributed(step):
        @tf.function(reduce_retracing=True)
        def run(per_replica):
            logs = strategy.run(step, args=((per_replica,),))
            return {k: strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}

        def call(data):
            arrays = data[0]
            per_replica = strategy.experimental_distribute_values_from_function(
                lambda ctx: tuple(a[ctx.replica_id_in_sync_group::n] for a in arrays))
            return run(per_replica)
        return call

    return distributed(net.train_step), distributed(net.test_step)


#: A rest smaller than this fraction of a minibatch joins the epoch's last full minibatch (:func:`minibatch_bounds`).
#: 0, Keras's rule, is the default: ``benchmarks/last_minibatch.py`` measured 0.5 and did not keep it.
SMALL_REST = 0.0


def minibatch_bounds(n: int, batch_size: int, small_rest: float | None = None) -> list[tuple[int, int]]:
    """``(start, stop)`` of an epoch's minibatches over ``n`` shuffled rows: ``batch_size`` rows each, then one
    with the rest. A rest smaller than ``small_rest`` (default :data:`SMALL_REST`) of a minibatch joins the last
    full one instead. Every count of steps per epoch in the package comes from here (:func:`steps_per_epoch`).

    >>> minibatch_bounds(1028, 512), minibatch_bounds(1028, 512, small_rest=0.5)
    ([(0, 512), (512, 1024), (1024, 1028)], [(0, 512), (512, 1028)])
    """
    n, batch_size = int(n), int(batch_size)
    small_rest = SMALL_REST if small_rest is None else float(small_rest)
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < small_rest * batch_size:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimisation steps in an epoch over ``n`` rows (:func:`minibatch_bounds`; at least 1).

    >>> steps_per_epoch(1028, 512), steps_per_epoch(18_320, 512)
    (3, 36)
    """
    return max(1, len(minibatch_bounds(n, batch_size)))


def _epoch(net, steps, train, val, order, batch_size, eval_batch_size) -> dict:
    """One pass over the training minibatches (in ``order``), then the validation chunks; returns the logs."""
    train_step, test_step, reset_metrics = steps
    tic = time.perf_counter()
    reset_metrics()
    batches = [np.sort(order[start:stop]) for start, stop in minibatch_bounds(len(order), batch_size)]
    for batch in _prefetched(train, batches):
        logs = train_step((batch,))
    logs = {k: float(v) for k, v in logs.items()}
    reset_metrics()
    n_val = _n_rows(val)
    for i in range(0, n_val, eval_batch_size):
        index = np.arange(i, min(i + eval_batch_size, n_val))
        val_logs = test_step((tuple(take_rows(a, index) for a in val),))
    logs.update({f"val_{k}": float(v) for k, v in val_logs.items()})
    logs["seconds"] = time.perf_counter() - tic
    return logs


def _progress_bar(enabled, epochs, start, label):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=epochs, initial=start, desc=f"{label} epochs".strip(), unit="epoch")


def fit_network(net: keras.Model, train: Sequence, val: Sequence, *, epochs: int, batch_size: int = 512,
                seed: int = 0, early_stopping: bool = True, patience: int = 30, progress: bool = True,
                label: str = "", checkpoint_dir: str | None = None, jit_compile: bool = False,
                eval_batch_size: int = 2048, strategy=None, on_epoch_end=None,
                monitor: str = "val_loss", min_improvement: float = 0.0,
                count_from_epoch: int = 1) -> tuple[pd.DataFrame, int]:
    """Train a compiled scmedal_lite network; returns (per-epoch history, best epoch).

    With ``strategy`` (a ``tf.distribute`` strategy whose scope built and compiled ``net``), every minibatch
    is split across the replicas and their gradients are summed (data parallelism on several GPUs or CPU
    devices): ``net.grad_scale`` is set to 1/replicas for the run and restored afterwards, whatever happens.
    ``train`` and ``val`` are tuples of row sources (dense arrays, sparse matrices, or objects with
    ``shape`` and ``__getitem__(index_array)``) in the order the network's ``train_step`` expects.
    ``on_epoch_end(epoch, logs)`` is called after each epoch; returning True stops training.
    Epoch ``e`` shuffles with ``np.random.default_rng([seed, e])``. With ``early_stopping`` the best weights
    by ``monitor`` (a validation log, e.g. ``val_recon_loss``) are restored at the end; otherwise the final
    weights are kept. ``min_improvement``: the fraction by which a value must beat the last one that counted
    to reset the patience (:class:`EarlyStopper`); before epoch ``count_from_epoch`` early stopping neither
    records a best nor counts its patience (the weights kept are from that epoch on). Validation runs in chunks
    of ``eval_batch_size`` cells: with training minibatches, these chunks (not the number of cells) set the
    working memory (8,192-cell chunks took about 300 MB more than 2,048-cell ones; benchmarks/scaling.py).
    """
    # under a strategy the metric variables are distributed: Keras's own reset assigns them correctly
    steps = (*_steps(net, strategy, jit_compile), metrics_resetter(net) if strategy is None else net.reset_metrics)
    stopper = EarlyStopper(patience, monitor, enabled=early_stopping, min_improvement=min_improvement)
    ckpt = Checkpointer(checkpoint_dir, net) if checkpoint_dir else None
    start, history = ckpt.restore(stopper) if ckpt else (0, [])
    if stopper.enabled and stopper.wait >= stopper.patience:     # the checkpointed run had stopped early
        start = max(start, epochs)
    bar = _progress_bar(progress, epochs, start, label)
    grad_scale = net.grad_scale
    net.grad_scale = grad_scale if strategy is None else 1.0 / strategy.num_replicas_in_sync
    try:
        for epoch in range(start + 1, epochs + 1):
            order = np.random.default_rng([seed, epoch]).permutation(_n_rows(train))
            logs = _epoch(net, steps, train, val, order, batch_size, eval_batch_size)
            history.append(logs)
            stop = stopper.update(epoch, logs, net) if epoch >= count_from_epoch else False
            if ckpt:
                ckpt.save(epoch, history, stopper)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4g}", val_loss=f"{logs['val_loss']:.4g}", refresh=False)
            if (on_epoch_end is not None and on_epoch_end(epoch, logs)) or stop:
                break
    finally:
        net.grad_scale = grad_scale
        if bar is not None:
            bar.close()
    stopper.restore_best(net)
    frame = pd.DataFrame(history, index=pd.RangeIndex(1, len(history) + 1, name="epoch"))
    best = stopper.best_epoch if early_stopping else len(history)
    return frame, best
