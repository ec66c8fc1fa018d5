"""Keras 3 layers used by the scMEDAL networks, written with ``keras.ops`` only.

- :class:`TiedDenseTranspose`: a dense layer that reuses the transpose of another layer's kernel.
- :class:`RandomEffects`: a variational, bias-free dense layer on the one-hot batch design ``z``;
  its output is the (sampled) row of a weight matrix ``U`` for each cell's batch.
- :class:`ClusterScaleBias`: ``BN(x) * (1 + gamma(z)) + beta(z)``, with ``gamma`` and ``beta`` random effects.

Example
-------
>>> import numpy as np, keras
>>> re = RandomEffects(units=4, n_batches=3, seed=0)
>>> z = keras.ops.one_hot(np.array([0, 2]), 3)
>>> re(z, training=False).shape          # posterior means at inference
(2, 4)
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from .validate import InputError


def _softplus_inverse(y: float) -> float:
    return float(np.log(np.expm1(y)))


@keras.saving.register_keras_serializable(package="scmedal_lite")
class TiedDenseTranspose(keras.layers.Layer):
    """Dense layer whose kernel is the transpose of ``source``'s kernel, with its own zero-initialised bias.

    ``source`` must be built before this layer is called. Only the bias is a new weight; gradients
    flow into the shared kernel from both uses.
    """

    def __init__(self, source: keras.layers.Dense, units: int, activation=None, **kwargs):
        super().__init__(**kwargs)
        object.__setattr__(self, "source", source)    # not tracked: its kernel belongs to the encoder
        self.units = units
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    def call(self, inputs):
        kernel_t = ops.transpose(self.source.kernel)
        return self.activation(ops.matmul(inputs, kernel_t) + self.bias)


@keras.saving.register_keras_serializable(package="scmedal_lite")
class RandomEffects(keras.layers.Layer):
    """Variational random effects ``z @ U`` with a factorised Normal posterior and a fixed Normal prior.

    Parameters
    ----------
    units
        Width of the output (one random effect per unit and batch).
    n_batches
        Number of known batches (columns of the one-hot ``z``).
    prior_scale
        Standard deviation of the fixed ``N(0, prior_scale**2)`` prior (paper: 0.25).
    post_loc_init_scale
        Standard deviation of the Normal initialiser of the posterior means (paper: 0.1).
    kl_weight
        Weight of the KL term, summed over all ``n_batches * units`` weights (paper: 1e-5).
    kl
        ``"mc"``: single-sample Monte-Carlo estimate ``log q(w) - log p(w)`` at the sample used in the
        forward pass (the paper's); ``"exact"``: closed-form KL between Normals.
    scale_init
        ``"faithful"``: posterior s.d. initialised as in the authors' code, softplus of a uniform draw in
        ``[softplus^-1(0.01) + softplus^-1(0.005), softplus^-1(0.01)]`` (an inverted range, s.d. 6e-5..0.01);
        ``"clean"``: s.d. uniform in ``[0.005, 0.01]``, as the code apparently intended.
    seed
        Seed of the layer's own random stream (weight sampling and initialisation).

    In training mode one weight matrix is sampled per minibatch; at inference the posterior means are used.
    The KL term is added with ``add_loss`` on every training call.
    """

    def __init__(self, units: int, n_batches: int, *, prior_scale: float = 0.25,
                 post_loc_init_scale: float = 0.1, kl_weight: float = 1e-5, kl: str = "mc",
                 scale_init: str = "faithful", seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if kl not in ("mc", "exact"):
            raise InputError(f"kl must be 'mc' or 'exact', got {kl!r}")
        if scale_init not in ("faithful", "clean"):
            raise InputError(f"scale_init must be 'faithful' or 'clean', got {scale_init!r}")
        self.units, self.n_batches = int(units), int(n_batches)
        self.prior_scale, self.post_loc_init_scale = float(prior_scale), float(post_loc_init_scale)
        self.kl_weight, self.kl, self.scale_init, self.seed = float(kl_weight), kl, scale_init, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        shape = (self.n_batches, self.units)
        init_seed = None if self.seed is None else self.seed + 1
        self.loc = self.add_weight(
            name="loc", shape=shape,
            initializer=keras.initializers.RandomNormal(stddev=self.post_loc_init_scale, seed=init_seed))
        lo = _softplus_inverse(0.01)
        if self.scale_init == "faithful":
            a, b = lo + _softplus_inverse(0.005), lo      # the authors' [min, min + range] with range < 0
        else:
            a, b = _softplus_inverse(0.005), lo
        self.rho = self.add_weight(
            name="rho", shape=shape,
            initializer=keras.initializers.RandomUniform(minval=a, maxval=b,
                                                         seed=None if init_seed is None else init_seed + 1))

    def posterior_scale(self):
        """Posterior standard deviations, ``1e-5 + softplus(rho)``, shape (n_batches, units)."""
        return 1e-5 + ops.softplus(self.rho)

    def _kl(self, w, scale):
        prior_var = self.prior_scale ** 2
        if self.kl == "exact":
            kl = (ops.log(self.prior_scale / scale)
                  + (ops.square(scale) + ops.square(self.loc)) / (2.0 * prior_var) - 0.5)
        else:
            log_q = -ops.log(scale) - 0.5 * ops.square((w - self.loc) / scale)
            log_p = -math.log(self.prior_scale) - 0.5 * ops.square(w) / prior_var
            kl = log_q - log_p          # the 0.5*log(2*pi) constants cancel
        return self.kl_weight * ops.sum(ops.cast(kl, "float32"))

    def call(self, z, training=False, sample=None):
        """``z @ w``: ``w`` is one posterior draw when ``sample`` (default: when training), else the posterior
        means. The KL term is added only when training."""
        sample = training if sample is None else sample
        if sample:
            scale = self.posterior_scale()
            eps = keras.random.normal(ops.shape(self.loc), dtype=scale.dtype, seed=self.seed_generator)
            w = self.loc + scale * eps
            if training:
                self.add_loss(self._kl(w, scale))
        else:
            w = self.loc
        return ops.matmul(ops.cast(z, w.dtype), w)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, n_batches=self.n_batches, prior_scale=self.prior_scale,
                   post_loc_init_scale=self.post_loc_init_scale, kl_weight=self.kl_weight, kl=self.kl,
                   scale_init=self.scale_init, seed=self.seed)
        return cfg


@keras.saving.register_keras_serializable(package="scmedal_lite")
class ClusterScaleBias(keras.layers.Layer):
    """Cluster scale-and-bias block: ``BN(x) * (1 + gamma(z)) + beta(z)``.

    ``gamma`` and ``beta`` are :class:`RandomEffects` of width ``units``; each contributes one KL term.
    ``normalize=False`` drops the batch normalisation (``x * (1 + gamma(z)) + beta(z)``, as in the FE
    network's random-effects decoder). Call as ``block([x, z], training=...)``; ``sample=True`` draws the
    random effects from their posteriors outside training (counterfactual intervals).
    """

    def __init__(self, units: int, n_batches: int, *, seed: int | None = None, re_kwargs=None,
                 normalize: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.units, self.n_batches, self.seed, self.normalize = int(units), int(n_batches), seed, bool(normalize)
        self.re_kwargs = dict(re_kwargs or {})
        s = None if seed is None else int(seed)
        self.norm = keras.layers.BatchNormalization(name="bn") if self.normalize else None
        self.gamma = RandomEffects(units, n_batches, seed=s, name="gamma", **self.re_kwargs)
        self.beta = RandomEffects(units, n_batches, seed=None if s is None else s + 7, name="beta",
                                  **self.re_kwargs)

    def build(self, input_shapes):
        x_shape, z_shape = input_shapes
        if self.norm is not None:
            self.norm.build(x_shape)
        self.gamma.build(z_shape)
        self.beta.build(z_shape)

    def call(self, inputs, training=False, sample=None):
        x, z = inputs
        if self.norm is not None:
            x = self.norm(x, training=training)
        return (x * (1.0 + self.gamma(z, training=training, sample=sample))
                + self.beta(z, training=training, sample=sample))

    def random_effect_layers(self) -> dict:
        """The block's two :class:`RandomEffects` layers by name (``gamma``: scale, ``beta``: shift)."""
        return {"gamma": self.gamma, "beta": self.beta}

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, n_batches=self.n_batches, seed=self.seed, re_kwargs=self.re_kwargs,
                   normalize=self.normalize)
        return cfg
