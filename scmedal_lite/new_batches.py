"""New batches get their own random effects, estimated from their (unlabelled) cells with every other weight frozen.

A linear mixed model predicts for a new group by estimating that group's random effect from the group's data
(its BLUP). The networks do the same here: a network built for the known plus the new batches receives every
weight of the trained one, and only the new batches' rows of each random-effect layer (posterior means and
scales) are fitted, on the new cells, with the training loss: reconstruction, the RE network's batch head and
the KL divergence to the prior. Gradients of everything else are zero, so with Adam the shared weights, the
BatchNorm statistics (the networks run in inference mode) and the known batches' effects come out bit-identical.
The batch heads' output units for the new batches (of the RE batch head; the FE adversary's stay as initialised,
it is not used after training) are the only other new parameters fitted.

Used by :meth:`scmedal_lite.SCMEDAL.add_batches`.

Example
-------
>>> new_net = build(...)                                   # doctest: +SKIP  (known + new batches)
>>> masks = extend_network(old_net, new_net, n_known=63)   # doctest: +SKIP  copies weights; new rows to fit
>>> history, best = fit_network(NewBatchFitter(new_net, masks), train, val, epochs=100)   # doctest: +SKIP
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from .layers import RandomEffects
from .networks import FixedEffectsAE, RandomEffectsAE, _cce, _mse, _TrackedModel


def random_effect_layers(layer) -> list[RandomEffects]:
    """Every :class:`RandomEffects` layer inside ``layer``, in a fixed order."""
    return [sub for sub in layer._flatten_layers() if isinstance(sub, RandomEffects)]


def _new_part(old_shape, new_shape, n_known: int) -> np.ndarray | None:
    """Boolean mask of the entries of a weight that belong to the new batches, or None if it has none."""
    if tuple(old_shape) == tuple(new_shape):
        return None
    mask = np.zeros(new_shape, bool)
    axis = next(i for i, (a, b) in enumerate(zip(old_shape, new_shape)) if a != b)
    index = [slice(None)] * len(new_shape)
    index[axis] = slice(n_known, None)
    mask[tuple(index)] = True
    return mask


def extend_network(old: keras.Model, new: keras.Model, n_known: int) -> dict:
    """Copy every weight of ``old`` (trained on ``n_known`` batches) into ``new`` (built for more batches, same
    architecture). Entries for the new batches keep ``new``'s initial values, except the posterior means of the
    random effects, which start at the prior mean (0). Returns ``{variable path: mask of its new entries}``."""
    masks = {}
    if len(old.weights) != len(new.weights):
        raise ValueError(f"architectures differ: {len(old.weights)} vs {len(new.weights)} weights")
    for w_old, w_new in zip(old.weights, new.weights):           # same construction order, same positions
        old_value = keras.ops.convert_to_numpy(w_old)
        if len(old_value.shape) != len(w_new.shape) or sum(
                a != b for a, b in zip(old_value.shape, w_new.shape)) > 1:
            raise ValueError(f"architectures differ at {w_new.path}: {old_value.shape} vs {tuple(w_new.shape)}")
        mask = _new_part(old_value.shape, tuple(w_new.shape), n_known)
        if mask is None:
            w_new.assign(old_value)
            continue
        value = keras.ops.convert_to_numpy(w_new).copy()
        if w_new.path.endswith("/loc"):
            value[mask] = 0.0
        value[~mask] = old_value.ravel()
        w_new.assign(value)
        masks[w_new.path] = mask
    return masks


def _kl_new_rows(layer: RandomEffects, n_known: int):
    """Closed-form KL (times the layer's weight) of the new batches' posteriors against the prior."""
    loc, scale = layer.loc[n_known:], layer.posterior_scale()[n_known:]
    var = layer.prior_scale ** 2
    kl = ops.log(layer.prior_scale / scale) + (ops.square(scale) + ops.square(loc)) / (2.0 * var) - 0.5
    return layer.kl_weight * ops.sum(kl)


class NewBatchFitter(_TrackedModel):
    """Fits the new batches' entries of ``net`` (an FE network with the random-effects decoder, or an RE
    network) on cells of the new batches; inputs are ``(x, z)``. Training draws the random effects from their
    posteriors (the reparameterised Monte-Carlo loss of training) with BatchNorm in inference mode; validation
    uses the posterior means. ``loss`` = ``w_recon·MSE`` (+ ``w_clus·CE`` of the RE batch head) + KL."""

    loss_names = ("loss", "recon_loss", "kl")

    def __init__(self, net, masks: dict, n_known: int, **kwargs):
        super().__init__(**kwargs)
        self.net, self.n_known = net, int(n_known)
        self.is_re = isinstance(net, RandomEffectsAE)
        if not self.is_re and not (isinstance(net, FixedEffectsAE) and net.has_random_effects):
            raise TypeError("only networks with random effects can learn new batches")
        learnable = {id(v) for layer in random_effect_layers(net) for v in (layer.loc, layer.rho)}
        if self.is_re:
            learnable |= {id(v) for v in net.batch_head.trainable_variables}
        by_path = {v.path: v for v in net.trainable_variables}     # (the FE adversary is not fitted)
        paths = [p for p in masks if p in by_path and id(by_path[p]) in learnable]
        self.fitted = [by_path[p] for p in paths]
        self.masks = [tf.constant(masks[p], dtype=tf.float32) for p in paths]
        parts = (net.encoder, net.decoder) if self.is_re else (net.decoder,)
        self.kl_groups = [random_effect_layers(p) for p in parts]
        if self.is_re:
            self.loss_names = self.loss_names + ("batch_loss",)
        self._init_trackers()

    def _build_optimizers(self):
        self.optimizer.build(self.fitted)

    def build(self, input_shape=None):
        self.built = True

    def loss_terms(self, inputs, training):
        x, z = inputs[0], inputs[1]
        net, sample = self.net, bool(training)
        if self.is_re:
            latent = net.encode(x, z, training=False, sample=sample)
            recon = net.decode(latent, z, training=False, sample=sample)
        else:
            latent = net.encode(x, training=False)
            recon = net.decode(latent, z, training=False, sample=sample)
        out = {"recon_loss": _mse(x, recon)}
        total = net.w_recon * out["recon_loss"]
        if self.is_re:
            out["batch_loss"] = _cce(z, net.batch_head(latent, training=False))
            total = total + net.w_clus * out["batch_loss"]
        out["kl"] = sum(ops.mean(ops.stack([_kl_new_rows(layer, self.n_known) for layer in group]))
                        for group in self.kl_groups)
        out["loss"] = total + (out["kl"] if training else 0.0)
        return out

    def train_step(self, data):
        inputs = data[0]
        with tf.GradientTape() as tape:
            out = self.loss_terms(inputs, True)
        grads = tape.gradient(out["loss"], self.fitted)
        grads = [g * m for g, m in zip(grads, self.masks)]
        self.optimizer.apply_gradients(zip(grads, self.fitted))
        return self._record(inputs, out)
