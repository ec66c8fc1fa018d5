"""The Keras networks of scMEDAL: a plain autoencoder, the fixed-effects (FE) adversarial autoencoder and the
random-effects (RE) Bayesian autoencoder.

These are low-level building blocks; most users want :class:`scmedal_lite.SCMEDAL`, which prepares the data,
trains these networks and returns AnnData. :func:`build_network` makes one from a model's configuration (the
kind, ``"fe"``, ``"re"`` or ``"ae"``, picks the builder in :data:`BUILDERS`; a new kind is one more entry there).
Each network's ``compile`` creates and builds its own optimisers; nothing outside this module does. Layer code
uses ``keras.ops``; the custom training steps use TensorFlow's ``GradientTape`` (the project's backend).

Example
-------
>>> import numpy as np
>>> net = FixedEffectsAE(n_genes=20, n_batches=3, hidden=(16, 8), latent_dim=4)
>>> x = np.random.rand(10, 20).astype("float32"); z = np.eye(3, dtype="float32")[np.arange(10) % 3]
>>> net.encode(x).shape
(10, 4)
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from .latent_memory import LatentMemory, reach_neighbours
from .layers import ClusterScaleBias, TiedDenseTranspose
from .optim import FusedAdam
from .presets import ARCHITECTURE, PAPER_FE_DESIGN, PAPER_RE_DESIGN
from .validate import check_choice, check_fe_combination

#: Learning rate of the optimisers ``compile`` creates when none is given (the paper's Adam 1e-4).
DEFAULT_LEARNING_RATE = 1e-4


def _f32(t):
    return ops.cast(t, "float32")


def _cce(y, p):
    """Mean categorical cross-entropy, computed in float32 (also under a mixed-precision policy)."""
    return ops.mean(keras.losses.categorical_crossentropy(_f32(y), _f32(p)))


def _mse(x, x_hat):
    return ops.mean(ops.square(_f32(x) - _f32(x_hat)))


def _mean_of(losses):
    return ops.mean(ops.stack([_f32(v) for v in losses])) if losses else 0.0


def _confusion(p):
    """Cross-entropy of the adversary's prediction ``p`` against the uniform distribution over batches:
    ``-mean_k log p_k``. Its minimum, ``log K``, is reached only when the adversary cannot tell the batches
    apart, so minimising it mixes batches (unlike maximising the adversary's cross-entropy, which is
    unbounded and is also achieved by a latent that keeps the batches apart under permuted labels)."""
    return -ops.mean(ops.mean(ops.log(ops.clip(_f32(p), 1e-7, 1.0)), axis=-1))


def _squared_distances(points):
    """Pairwise squared Euclidean distances between the rows of ``points`` (never below 0)."""
    sq = ops.sum(ops.square(points), axis=1, keepdims=True)
    return ops.maximum(sq + ops.transpose(sq) - 2.0 * ops.matmul(points, ops.transpose(points)), 0.0)


def _soft_same_batch_fraction(latent, z, k: int):
    """Soft, differentiable kNN same-batch fraction of a minibatch's latent, averaged over its cells
    (:func:`_soft_same_batch_fractions`, the per-cell values).

    >>> import numpy as np
    >>> lat = np.array([[0.0], [0.1], [5.0], [5.1]], "float32")
    >>> same, apart = np.eye(2, dtype="float32")[[0, 0, 1, 1]], np.eye(2, dtype="float32")[[0, 1, 0, 1]]
    >>> [round(float(_soft_same_batch_fraction(lat, z, k=1)), 2) for z in (same, apart)]
    [1.0, 0.0]
    """
    return ops.mean(_soft_same_batch_fractions(latent, z, k))


def _soft_same_batch_fractions(latent, z, k: int):
    """Soft, differentiable kNN same-batch fraction of each cell of a minibatch's latent.

    Each cell weighs the other cells of the minibatch by ``softmax(-d² / d²_k)``, where ``d²_k`` is its squared
    distance to its ``k``-th nearest neighbour (held constant for the gradient), and sums the weights of those
    from its own batch (``z``: one-hot rows). It is the smooth counterpart of
    :func:`scmedal_lite.metrics.knn_same_batch_fraction`: about ``sum_b p_b²`` when the batches are mixed
    locally, 1 when each cell's neighbours all share its batch. Minimising it moves each cell's nearest
    neighbours towards other batches, which an adversary that must name a cell's batch from its latent alone
    does not see (it can be near chance while neighbourhoods stay batch-specific).

    >>> import numpy as np
    >>> lat = np.array([[0.0], [0.1], [5.0], [5.1]], "float32")
    >>> np.asarray(_soft_same_batch_fractions(lat, np.eye(2, dtype="float32")[[0, 0, 1, 0]], k=1)).round(2)
    array([1., 1., 0., 0.], dtype=float32)
    """
    latent, z = _f32(latent), _f32(z)
    n = ops.shape(latent)[0]
    d2 = _squared_distances(latent) + ops.eye(n, dtype="float32") * 1e9     # a cell is not its own neighbour
    k_eff = tf.maximum(1, tf.minimum(k, n - 1))                      # small last minibatches
    kth = ops.stop_gradient(-tf.math.top_k(-d2, k=k_eff).values[:, -1:])
    weights = tf.nn.softmax(-d2 / ops.maximum(kth, 1e-6), axis=1)
    return ops.sum(weights * ops.matmul(z, ops.transpose(z)), axis=1)


def _batch_means_share(latent, z):
    """Share of a minibatch latent's variance that its batches' means explain: ``R²`` of every latent dimension
    regressed on the batch (``z``: one-hot rows), pooled over dimensions, in ``[0, 1]``.

    It is what a linear batch effect leaves behind, the quantity scIB's principal-component regression scores
    (weighted by each component's variance). The adversary and the local-mixing term can both be satisfied by a
    latent whose batches still sit a little apart along its widest directions; this term pulls each batch's mean
    towards the minibatch's. With few cells per batch in a minibatch the batch means are noisy, so even a
    latent with no batch effect scores about ``(batches - 1) / (cells - 1)``.

    >>> import numpy as np
    >>> lat = np.array([[0.0], [1.0], [0.0], [1.0]], "float32")
    >>> shifted, mixed = np.eye(2, dtype="float32")[[0, 1, 0, 1]], np.eye(2, dtype="float32")[[0, 0, 1, 1]]
    >>> [round(float(_batch_means_share(lat, z)), 2) for z in (shifted, mixed)]
    [1.0, 0.0]
    """
    latent, z = _f32(latent), _f32(z)
    centred = latent - ops.mean(latent, axis=0, keepdims=True)
    counts = ops.sum(z, axis=0)
    means = ops.matmul(ops.transpose(z), centred) / ops.maximum(counts, 1.0)[:, None]
    between = ops.sum(counts[:, None] * ops.square(means))
    return between / (ops.sum(ops.square(centred)) + 1e-6)


def _neighbour_keeping_loss(x, latent, z, k: int):
    """How far a minibatch's latent moved each cell's within-batch neighbours: the mean KL divergence between
    each cell's soft neighbour distribution over the other cells *of its own batch* in the input ``x`` and the
    same distribution in the ``latent``.

    Distributions are ``softmax(-(d - d_1) / (d_k - d_1))`` over same-batch cells, ``d_1`` and ``d_k`` being the
    distances to the nearest and the ``k``-th nearest of them (fewer when the minibatch holds fewer; held
    constant for the gradient), so that each cell spreads its weight over about ``k`` neighbours in both spaces
    however much distances concentrate in the input's many dimensions (as UMAP calibrates its graph). Cells with
    no other cell of their batch in the minibatch are left out. A batch effect shifts a batch as a whole, so
    the neighbours a cell has within its own batch are a label-free witness of its biology: the mixing term
    moves neighbourhoods across batches, this term keeps those within each batch, so mixing cannot merge
    distinct cell types without paying for it. 0 when every batch's neighbourhoods are kept exactly.

    >>> import numpy as np
    >>> x = np.array([[0.0], [1.0], [3.0], [0.0], [1.0], [3.0]], "float32")
    >>> z = np.eye(2, dtype="float32")[[0, 0, 0, 1, 1, 1]]
    >>> kept, swapped = x * 2, x[[2, 1, 0, 5, 4, 3]]
    >>> round(float(_neighbour_keeping_loss(x, kept, z, k=1)), 3)
    0.0
    >>> float(_neighbour_keeping_loss(x, swapped, z, k=1)) > 1
    True
    """
    x, latent, z = _f32(x), _f32(latent), _f32(z)
    n = ops.shape(latent)[0]
    same = ops.matmul(z, ops.transpose(z)) * (1.0 - ops.eye(n, dtype="float32"))
    valid = ops.cast(ops.sum(same, axis=1) > 0, "float32")
    k_eff = tf.maximum(1, tf.minimum(k, n - 1))

    def log_neighbours(points):
        d = ops.where(same > 0, ops.sqrt(ops.maximum(_squared_distances(points), 1e-12)), 1e9)
        nearest = ops.stop_gradient(-tf.math.top_k(-d, k=k_eff).values)  # ascending; 1e9 past the batch's cells
        first = nearest[:, :1]
        kth = ops.max(ops.where(nearest < 1e8, nearest, 0.0), axis=1, keepdims=True)
        logits = ops.where(same > 0, -(d - first) / ops.maximum(kth - first, 1e-6), -1e9)
        return tf.nn.log_softmax(logits, axis=1)

    log_p = ops.stop_gradient(log_neighbours(x))
    kl = ops.sum(ops.exp(log_p) * same * (log_p - log_neighbours(latent)), axis=1)
    return ops.sum(kl * valid) / ops.maximum(ops.sum(valid), 1.0)


def _accuracy(y, p):
    return ops.mean(ops.cast(ops.argmax(y, -1) == ops.argmax(p, -1), "float32"))


class Encoder(layers.Layer):
    """Dense → BatchNorm → SELU blocks, then a SELU latent layer. Returns every block's activation."""

    def __init__(self, hidden=(512, 132), latent_dim=50, batch_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.dense = [layers.Dense(u, name=f"dense_{i}") for i, u in enumerate(hidden)]
        self.norms = [layers.BatchNormalization(name=f"bn_{i}") if batch_norm else None
                      for i in range(len(hidden))]
        self.latent = layers.Dense(latent_dim, activation="selu", name="latent")

    def build(self, input_shape):
        width = input_shape[-1]
        for dense, norm in zip(self.dense, self.norms):
            dense.build((None, width))
            width = dense.units
            if norm is not None:
                norm.build((None, width))
        self.latent.build((None, width))

    def call(self, x, training=False):
        acts = []
        for dense, norm in zip(self.dense, self.norms):
            x = dense(x)
            if norm is not None:
                x = norm(x, training=training)
            x = ops.selu(x)
            acts.append(x)
        acts.append(self.latent(x))
        return acts


class TiedDecoder(layers.Layer):
    """Mirror of an :class:`Encoder` that reuses its transposed kernels (SELU hidden, linear output)."""

    def __init__(self, encoder: Encoder, n_genes: int, **kwargs):
        super().__init__(**kwargs)
        sources = [encoder.latent, *reversed(encoder.dense)]
        widths = [d.units for d in reversed(encoder.dense)] + [n_genes]
        acts = ["selu"] * (len(sources) - 1) + [None]
        self.blocks = [TiedDenseTranspose(src, units, activation=act, name=f"tied_{i}")
                       for i, (src, units, act) in enumerate(zip(sources, widths, acts))]

    def build(self, input_shape):
        for block in self.blocks:
            block.build(None)

    def call(self, h):
        for block in self.blocks:
            h = block(h)
        return h


class RandomEffectsTiedDecoder(layers.Layer):
    """The FE network's mixed-effects decoder: the mirror of an :class:`Encoder` (its transposed kernels, as
    :class:`TiedDecoder`), with the batch's random scale and shift after every layer.

    Layer ``i``: ``h <- act(pre_i * (1 + gamma_i(z)) + beta_i(z))`` with ``pre_i = W_i^T h + b_i`` (SELU, linear at
    the output) and ``gamma_i``, ``beta_i`` variational random effects (:class:`ClusterScaleBias` without
    normalisation). Decoding one latent with another batch's ``z`` moves it by that batch's effects only:
    this is the counterfactual of :meth:`scmedal_lite.SCMEDAL.counterfactual` (``mode="fe"``).
    """

    def __init__(self, encoder: Encoder, n_genes: int, n_batches: int, *, seed=None, re_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        sources = [encoder.latent, *reversed(encoder.dense)]
        widths = [d.units for d in reversed(encoder.dense)] + [n_genes]
        self.blocks = [TiedDenseTranspose(src, units, name=f"tied_{i}")
                       for i, (src, units) in enumerate(zip(sources, widths))]
        base = 500 if seed is None else int(seed) + 500
        self.csb = [ClusterScaleBias(u, n_batches, seed=None if seed is None else base + 10 * i,
                                     re_kwargs=re_kwargs, normalize=False, name=f"re_{i}")
                    for i, u in enumerate(widths)]
        self.n_batches = n_batches

    def build(self, input_shapes):
        for block, csb in zip(self.blocks, self.csb):
            block.build(None)
            csb.build([(None, block.units), (None, self.n_batches)])

    def call(self, inputs, training=False, sample=None):
        h, z = inputs
        last = len(self.blocks) - 1
        for i, (block, csb) in enumerate(zip(self.blocks, self.csb)):
            h = csb([block(h), z], training=training, sample=sample)
            if i < last:
                h = ops.selu(h)
        return h


def _mlp_head(units, n_out, activation, name):
    return keras.Sequential(
        [layers.Dense(u, activation=activation) for u in units] + [layers.Dense(n_out, activation="softmax")],
        name=name)


class _TrackedModel(keras.Model):
    """Base with named ``Mean`` trackers; subclasses list their loss names in ``loss_names``."""

    loss_names: tuple[str, ...] = ("loss",)
    #: Multiplies the loss before differentiation; data-parallel training sets it to 1/replicas because
    #: replica gradients are summed.
    grad_scale: float = 1.0
    #: The validation log early stopping watches (:func:`scmedal_lite.training.fit_network`).
    monitor: str = "val_loss"
    #: The fraction by which it must improve to reset the patience (:class:`scmedal_lite.training.EarlyStopper`).
    min_improvement: float = 0.0

    def _init_trackers(self):
        self.trackers = {n: keras.metrics.Mean(name=n) for n in self.loss_names}

    def compile(self, optimizer=None, *, learning_rate: float = DEFAULT_LEARNING_RATE, **kwargs):
        """Attach the optimiser (default :class:`~scmedal_lite.optim.FusedAdam` ``(learning_rate)``, Keras's Adam
        with one fused kernel per weight) and build it on the weights it updates.

        Builds the network first if needed. Other keyword arguments go to ``keras.Model.compile``.
        """
        if optimizer is None:
            optimizer = FusedAdam(learning_rate)
        super().compile(optimizer=optimizer, **kwargs)
        if not self.built:
            self.build()
        self._build_optimizers()

    def _build_optimizers(self):
        self.optimizer.build(self.trainable_variables)

    @property
    def optimizers(self) -> list:
        """Every optimiser of the network, in a fixed order (checkpoints save and restore their state)."""
        return [self.optimizer]

    @property
    def metrics(self):
        return list(self.trackers.values())

    def _record(self, inputs, values):
        """Accumulate this batch's values, weighted by its number of cells; return the running means."""
        n = ops.cast(ops.shape(inputs[0])[0], "float32")
        for name, value in values.items():
            self.trackers[name].update_state(value, sample_weight=n)
        return {n: t.result() for n, t in self.trackers.items()}

    def loss_terms(self, inputs, training):
        """Dict of named loss terms for a minibatch; ``"loss"`` is the objective."""
        raise NotImplementedError

    def train_step(self, data):
        """One optimiser step on ``loss`` over all trainable weights (FE overrides this)."""
        inputs = data[0]
        with tf.GradientTape() as tape:
            out = self.loss_terms(inputs, True)
            scaled = out["loss"] * self.grad_scale
        grads = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return self._record(inputs, out)

    def test_step(self, data):
        return self._record(data[0], self.loss_terms(data[0], False))


class AutoEncoder(_TrackedModel):
    """Baseline autoencoder: BN-SELU encoder 512-132-50, tied decoder, linear output, MSE loss.

    With ``n_labels`` it becomes the paper's AEC: a latent classifier Dense(2, ReLU) → softmax, loss
    ``w_recon·MSE + w_class·CE``. Inputs are ``(x,)`` or ``(x, y_onehot)``.
    """

    loss_names = ("loss", "recon_loss")

    def __init__(self, n_genes, hidden=(512, 132), latent_dim=50, n_labels=None, w_recon=1.0, w_class=0.1,
                 **kwargs):
        super().__init__(**kwargs)
        self.encoder = Encoder(hidden, latent_dim, name="encoder")
        self.decoder = TiedDecoder(self.encoder, n_genes, name="decoder")
        self.n_genes, self.w_recon, self.w_class = n_genes, w_recon, w_class
        self.classifier = _mlp_head((2,), n_labels, "relu", "classifier") if n_labels else None
        if self.classifier is not None:
            self.loss_names = self.loss_names + ("class_loss",)
        self._init_trackers()

    def build(self, input_shape=None):
        self.encoder.build((None, self.n_genes))
        self.decoder.build((None, self.encoder.latent.units))
        if self.classifier is not None:
            self.classifier.build((None, self.encoder.latent.units))
        self.built = True

    def encode(self, x, training=False):
        return self.encoder(x, training=training)[-1]

    def call(self, inputs, training=False):
        x = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        return self.decoder(self.encode(x, training))

    def loss_terms(self, inputs, training):
        x = inputs[0]
        latent = self.encode(x, training)
        recon = _mse(x, self.decoder(latent))
        out = {"recon_loss": recon}
        total = self.w_recon * recon
        if self.classifier is not None:
            out["class_loss"] = _cce(inputs[1], self.classifier(latent, training=training))
            total = total + self.w_class * out["class_loss"]
        out["loss"] = total
        return out


class FixedEffectsAE(AutoEncoder):
    """scMEDAL-FE: the autoencoder trained against a batch adversary (domain-adversarial AE).

    Each training step first updates the adversary alone (``adversary_steps`` times) on ``CE(z, adv(h))``, then
    the autoencoder on ``w_recon·MSE(x, x̂) + w_gen·G(adv(h))`` (``+ w_class·CE(y, ŷ)`` with a cell-type head,
    the paper's FEC). Two Adam optimisers: ``self.optimizer`` (autoencoder) and ``self.adv_optimizer``.

    The design options (``SCMEDAL.config["fe_design"]``; the paper's in brackets):

    - ``decoder``: ``"tied"`` [paper] reconstructs from the latent alone; ``"random_effects"`` adds the batch's
      random scale and shift after every decoder layer (:class:`RandomEffectsTiedDecoder`), so the latent need
      not carry the batch to reconstruct it, and the same latent decoded with another batch gives that cell's
      counterfactual. Its KL terms (mean over layers) join the loss.
    - ``adversary_input``: ``"all"`` [paper] concatenates every encoder activation; ``"latent"`` only the latent.
    - ``generator_loss``: ``"negative_ce"`` [paper], ``G = -CE(z, adv)``, unbounded (the total loss goes
      negative) and also minimised by a latent that separates batches under permuted labels;
      ``"confusion"``, ``G = CE(uniform, adv)``, minimal only when the adversary cannot tell batches apart.
    - ``adversary_steps``: adversary updates per autoencoder update [1].
    - ``adversary_pass``: ``"separate"`` [paper] runs the encoder once for the adversary's updates and again
      for the autoencoder's; ``"shared"`` runs it once per step, inside the autoencoder's tape, and the
      adversary's updates read that pass's activations (the same values: the adversary's updates do not touch
      the encoder). One encoder forward pass less per step, and batch normalisation's moving statistics are
      updated once per step instead of twice.
    - ``stop_on``: what early stopping watches on the validation cells (:attr:`monitor`): ``"loss"`` [paper],
      the total, or ``"recon_loss"``. The total's adversarial part scores the latent against the adversary of
      the moment, which is weak early on, so the total can favour an epoch before the batches were mixed.
    - ``stop_min_improvement``: the fraction by which the watched loss must beat the last value that counted
      to reset early stopping's patience [0: any new best]; the best weights restored are still the lowest
      loss's (:class:`scmedal_lite.training.EarlyStopper`).
    - ``mix_warmup``: the fraction of the training budget over which ``w_mix`` rises linearly from 0 [0: full
      weight from the first step]. :meth:`scmedal_lite.SCMEDAL.train` turns it into
      :attr:`mix_warmup_steps` (the fraction times the run's epochs times its steps per epoch).

    - ``latent``: ``"point"`` [paper] is a deterministic latent; ``"variational"`` makes it the mean of a
      Gaussian (its log-variance read from the last hidden layer) and decodes a draw from it while training,
      adding ``KL(q ‖ N(0, I))`` weighted as in the ELBO of a Gaussian decoder whose variance is the
      reconstruction's current error: ``w_recon · 2·MSE / genes`` (MSE held constant), so no new weight is
      chosen. The embedding, the adversary and the mixing term read the mean. Logged as ``latent_kl``.
    - ``kl_warmup`` (with ``latent="variational"``): the fraction of the training budget over which the KL
      term's weight rises linearly from 0 [0: full weight from the first step], as scVI warms its KL term up.
      At the first steps the reconstruction's error, and with it the calibrated weight, is largest; in stop
      58's probe the latent kept without a warm-up had collapsed to the prior (book/method.md, "FE as a
      conditional VAE"). Measured there, the warm-up did not make the latent mix.
      :meth:`scmedal_lite.SCMEDAL.train` turns it into :attr:`kl_warmup_steps`.

    ``w_mix`` (0 in the paper) adds ``w_mix·S`` to the autoencoder's training loss, where ``S`` is the soft kNN
    same-batch fraction of the minibatch's latents (:func:`_soft_same_batch_fraction`, ``mix_neighbours``
    neighbours): the adversary removes what names a cell's batch, this term what keeps its neighbours in its
    batch. Logged as ``mix_loss`` (training only, 0 on validation cells, like ``kl``).

    ``w_keep`` (0 by default and in the paper) adds ``w_keep·K``, where ``K`` is how far the latent moved each
    cell's neighbours *within its own batch* (:func:`_neighbour_keeping_loss`), measured against the space set
    by :meth:`set_keep_reference` (:meth:`scmedal_lite.SCMEDAL.train` sets the training cells' first 50
    principal axes): a label-free guard against mixing that merges cell types whose batches hold them in
    different proportions. Logged as ``keep_loss`` (training only).

    ``w_center`` (0 by default and in the paper) adds ``w_center·C``, where ``C`` is the share of the
    minibatch latent's variance explained by its batches' means (:func:`_batch_means_share`): the linear batch
    effect the adversary and the mixing term leave along the latent's widest directions. Logged as
    ``center_loss`` (training only).

    The memory-based designs (all off in the default and the paper; on in the ``"mixing"`` preset; book/method.md,
    "The mixing preset") keep the latents of the last ``memory_size`` training cells
    (:class:`~scmedal_lite.latent_memory.LatentMemory`, written after every step, no gradient through it):

    - ``adversary_set``: ``m > 0`` makes the adversary (its updates and the confusion term alike) read the mean
      of a cell's latent and its ``m`` nearest remembered latents of its own batch instead of the latent alone
      (needs ``adversary_input="latent"``); 0 [paper] reads the latent.
    - ``mix_reach``: ``r > 0`` measures the mixing term against each cell's neighbourhood: the term becomes the
      mean over cells of ``max(0, S_i - c_i)``, where ``S_i`` is the cell's soft same-batch fraction in the
      minibatch and ``c_i`` the share of its batch among its :attr:`mix_reach_neighbours` nearest remembered
      latents: ``r`` times the memory's rows per batch (:meth:`size_memory`; the memory holds
      ``min(training cells, memory_size)`` rows), counted on every ``s``-th row when that is more than
      :data:`~scmedal_lite.latent_memory.MAX_COUNTED` (few batches; :meth:`LatentMemory.batch_share`). With
      ``r > 1`` a
      neighbourhood always reaches beyond a batch of average size, so a batch held apart is pushed to mix; a
      neighbourhood is pushed to hold no more of the cell's batch than the region around it does, not the
      data's overall frequencies. 0 [paper]: ``S`` alone.

    ``w_cycle`` (0 by default and in the paper; needs ``decoder="random_effects"``) adds ``w_cycle·R``, where ``R``
    is the counterfactual-consistency term: ``mean_i |h(x_i) - h(x_i + D_i)|²`` over the latent's variance (held
    constant), ``D_i`` being the change this network's random-effects decoder predicts for cell ``i`` moved from its
    batch to the batch of the minibatch's previous cell (posterior means, no gradient through ``D``). A latent
    that does not move when a cell's expression is moved to another batch is what FE promises. It rises with the
    mixing term's warm-up. Logged as ``cycle_loss`` (training only).

    ``lr_decay_to`` (1 [paper]: a constant learning rate): below 1 the autoencoder's learning rate follows a
    cosine decay to ``lr_decay_to`` times its start over :attr:`lr_decay_steps` steps (set by
    :meth:`scmedal_lite.SCMEDAL.train` to the run's budget); the adversary's stays constant. ``stop_from``:
    ``"start"`` [paper] or ``"warmup_end"``, from when early stopping records a best and counts its patience
    (:meth:`scmedal_lite.SCMEDAL.train` turns the warm-up's end into an epoch for
    :func:`scmedal_lite.training.fit_network`).

    ``weight_average`` (0 by default and in the paper; opt-in e.g. 0.99) keeps an exponential moving average of
    the autoencoder's weights over its steps (momentum ``weight_average``) and, every ``average_every`` steps
    (:meth:`scmedal_lite.SCMEDAL.train` sets one epoch), replaces the weights by it (Keras's optimizer EMA). So
    validation, early stopping and the saved model see averaged weights. The adversary is not averaged: it keeps
    up with an autoencoder that moves more slowly and more smoothly.

    Inputs are ``(x, z)`` or ``(x, z, y)``. Logged: ``loss`` (total), ``recon_loss``, ``adv_loss`` (the adversary's
    cross-entropy), ``adv_acc``, with the random-effects decoder ``kl``, and with a head ``class_loss`` and
    ``class_acc`` (separate metrics, unlike the paper's code).
    """

    loss_names = ("loss", "recon_loss", "adv_loss", "adv_acc")
    DECODERS = ("tied", "random_effects")
    ADVERSARY_INPUTS = ("all", "latent")
    GENERATOR_LOSSES = ("negative_ce", "confusion")
    ADVERSARY_PASSES = ("separate", "shared")
    STOP_ON = ("loss", "recon_loss")
    STOP_FROM = ("start", "warmup_end")
    LATENTS = ("point", "variational")

    def __init__(self, n_genes, n_batches, hidden=(512, 132), latent_dim=50, n_labels=None, w_recon=1000.0,
                 w_gen=1.0, w_class=1.0, adversary_hidden=None, *, decoder="tied", adversary_input="all",
                 generator_loss="negative_ce", adversary_steps=1, adversary_pass="separate", stop_on="loss",
                 stop_min_improvement=0.0, mix_warmup=0.0,
                 w_mix=0.0, mix_neighbours=5,
                 w_keep=0.0, w_center=0.0, weight_average=0.0, average_every=None, seed=None, re_kwargs=None,
                 adversary_set=0, memory_size=16384, mix_reach=0.0, lr_decay_to=1.0, stop_from="start",
                 w_cycle=0.0, latent="point", kl_warmup=0.0, **kwargs):
        super().__init__(n_genes, hidden, latent_dim, n_labels=n_labels, w_recon=w_recon, w_class=w_class,
                         **kwargs)
        check_choice("decoder", decoder, self.DECODERS)
        check_choice("adversary_input", adversary_input, self.ADVERSARY_INPUTS)
        check_choice("generator_loss", generator_loss, self.GENERATOR_LOSSES)
        check_choice("adversary_pass", adversary_pass, self.ADVERSARY_PASSES)
        check_choice("stop_on", stop_on, self.STOP_ON)
        check_choice("stop_from", stop_from, self.STOP_FROM)
        check_choice("latent", latent, self.LATENTS)
        self.adversary_set, self.memory_size = int(adversary_set), int(memory_size)
        self.mix_reach, self.w_cycle = float(mix_reach), float(w_cycle)
        self.lr_decay_to, self.stop_from = float(lr_decay_to), stop_from
        check_fe_combination({"adversary_set": self.adversary_set, "mix_reach": self.mix_reach,
                              "adversary_input": adversary_input, "adversary_pass": adversary_pass,
                              "decoder": decoder, "latent": latent, "kl_warmup": kl_warmup}, {"w_cycle": self.w_cycle})
        self.memory = None                 # a LatentMemory, made by size_memory() when uses_memory
        self.mix_reach_neighbours = 0      # set with the memory (size_memory) when mix_reach > 0
        self.lr_decay_steps = 0            # set before compile (SCMEDAL.train) when lr_decay_to < 1
        self.monitor = f"val_{stop_on}"
        self.min_improvement = float(stop_min_improvement)
        self.n_batches, self.w_gen = n_batches, w_gen
        self.decoder_kind, self.adversary_input, self.generator_loss = decoder, adversary_input, generator_loss
        self.adversary_steps, self.adversary_pass = int(adversary_steps), adversary_pass
        self.w_mix, self.mix_neighbours = float(w_mix), int(mix_neighbours)
        self.mix_warmup = float(mix_warmup)
        self.mix_warmup_steps = 0          # set before training (SCMEDAL.train); 0: w_mix from the first step
        if self.w_mix > 0:
            self.loss_names = self.loss_names + ("mix_loss",)
        self.w_keep = float(w_keep)
        if self.w_keep > 0:
            self.loss_names = self.loss_names + ("keep_loss",)
        self.keep_reference = None
        self.weight_average = float(weight_average)
        if not 0 <= self.weight_average < 1:
            raise ValueError(f"weight_average must be in [0, 1), got {weight_average!r}")
        self.average_every = average_every
        self.w_center = float(w_center)
        if self.w_center > 0:
            self.loss_names = self.loss_names + ("center_loss",)
        if self.w_cycle > 0:
            self.loss_names = self.loss_names + ("cycle_loss",)
        if decoder == "random_effects":
            self.decoder = RandomEffectsTiedDecoder(self.encoder, n_genes, n_batches, seed=seed,
                                                    re_kwargs=re_kwargs, name="decoder")
            self.loss_names = self.loss_names + ("kl",)
        self.adversary = _mlp_head(adversary_hidden or hidden, n_batches, "relu", "adversary")
        if n_labels:
            self.loss_names = self.loss_names + ("class_loss", "class_acc")
        self.latent_kind = latent
        self.kl_warmup = float(kl_warmup)
        self.kl_warmup_steps = 0           # set before training (SCMEDAL.train); 0: the KL's full weight at once
        if latent == "variational":
            self.latent_logvar = layers.Dense(latent_dim, name="latent_logvar")
            self.latent_noise = keras.random.SeedGenerator(seed)
            self.loss_names = self.loss_names + ("latent_kl",)
        self._init_trackers()
        self.adv_optimizer = None

    @property
    def has_random_effects(self) -> bool:
        """True when the decoder carries the batch's random effects (counterfactuals from the FE latent)."""
        return self.decoder_kind == "random_effects"

    @property
    def uses_memory(self) -> bool:
        """True when a design reads the memory of recent training latents (``adversary_set``, ``mix_reach``)."""
        return self.adversary_set > 0 or self.mix_reach > 0

    def size_memory(self, rows: int) -> None:
        """A new, empty memory of ``rows`` latents, and the local mixing term's reach in it
        (:func:`~scmedal_lite.latent_memory.reach_neighbours`). :meth:`build` makes one of ``memory_size`` rows;
        :meth:`scmedal_lite.SCMEDAL.train` makes it ``memory_size`` or the training cells, whichever is fewer,
        so that it never holds stale copies of the same cell."""
        self.memory = LatentMemory(int(rows), self.encoder.latent.units, self.n_batches)
        if self.mix_reach > 0:
            self.mix_reach_neighbours = reach_neighbours(self.mix_reach, self.memory.size, self.n_batches)

    def build(self, input_shape=None):
        if self.has_random_effects:
            self.encoder.build((None, self.n_genes))
            self.decoder.build(None)
            if self.classifier is not None:
                self.classifier.build((None, self.encoder.latent.units))
            self.built = True
        else:
            super().build(input_shape)
        if self.latent_kind == "variational":
            self.latent_logvar.build((None, self.encoder.dense[-1].units))
        width = self.encoder.latent.units
        if self.uses_memory and self.memory is None:
            self.size_memory(self.memory_size)
        if self.adversary_input == "all":
            width += sum(d.units for d in self.encoder.dense)
        self.adversary.build((None, width))

    def compile(self, optimizer=None, adv_optimizer=None, *, learning_rate: float = DEFAULT_LEARNING_RATE,
                **kwargs):
        """Attach both optimisers (default :class:`~scmedal_lite.optim.FusedAdam` ``(learning_rate)`` each) and
        build each on its own weights:
        ``optimizer`` on the autoencoder's (every trainable weight but the adversary's), ``adv_optimizer`` on
        the adversary's. With ``weight_average`` the autoencoder's default optimiser also keeps the moving
        average of its weights and writes it into them every ``average_every`` steps."""
        if optimizer is None and self.weight_average > 0:
            if not self.average_every:
                raise ValueError("weight_average needs average_every (steps between the writes of the average "
                                 "into the weights; SCMEDAL.train sets one epoch)")
            optimizer = FusedAdam(self._ae_learning_rate(learning_rate), use_ema=True, ema_momentum=self.weight_average,
                                  ema_overwrite_frequency=int(self.average_every))
        elif optimizer is None:
            optimizer = FusedAdam(self._ae_learning_rate(learning_rate))
        self.adv_optimizer = adv_optimizer if adv_optimizer is not None else FusedAdam(learning_rate)
        super().compile(optimizer, learning_rate=learning_rate, **kwargs)

    def _ae_learning_rate(self, learning_rate):
        """``learning_rate``, or its cosine decay to ``lr_decay_to`` times it over :attr:`lr_decay_steps`."""
        if self.lr_decay_to >= 1:
            return learning_rate
        if self.lr_decay_steps <= 0:
            raise ValueError("lr_decay_to < 1 needs lr_decay_steps (the steps of the decay; SCMEDAL.train sets "
                             "the run's budget)")
        return keras.optimizers.schedules.CosineDecay(learning_rate, int(self.lr_decay_steps),
                                                      alpha=self.lr_decay_to)

    def _build_optimizers(self):
        self.adv_optimizer.build(self.adversary.trainable_variables)
        self.optimizer.build(self._ae_weights())

    @property
    def optimizers(self) -> list:
        return [self.optimizer, self.adv_optimizer]

    def decode(self, latent, z=None, training=False, sample=None):
        """Expression from a latent; with the random-effects decoder, in batch(es) ``z`` (one-hot rows)."""
        if self.has_random_effects:
            return self.decoder([latent, z], training=training, sample=sample)
        return self.decoder(latent)

    def call(self, inputs, training=False):
        x = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        z = inputs[1] if isinstance(inputs, (tuple, list)) and len(inputs) > 1 else None
        return self.decode(self.encode(x, training), z, training)

    def _adversary_features(self, acts):
        return ops.concatenate(acts, axis=-1) if self.adversary_input == "all" else acts[-1]

    def _adversary_input(self, x, training):
        return self._adversary_features(self.encoder(x, training=training))

    def _generator(self, z, z_pred):
        return _confusion(z_pred) if self.generator_loss == "confusion" else -_cce(z, z_pred)

    def loss_terms(self, inputs, training, acts=None, near=None, view=None):
        """The loss terms of a minibatch; ``acts``: the encoder's activations of ``inputs[0]`` if already run;
        ``near``: the memory's look-up of their latents (:meth:`LatentMemory.look_up`) and ``view``: what the
        adversary reads (:meth:`_adversary_view`), if already computed."""
        x, z = inputs[0], inputs[1]
        acts = self.encoder(x, training=training) if acts is None else acts
        if self.uses_memory and near is None:
            near = self.memory.look_up(ops.stop_gradient(_f32(acts[-1])), z)
        decoded, kl = acts[-1], None
        if self.latent_kind == "variational":
            decoded, kl = self._variational(acts, training)
        recon = _mse(x, self.decode(decoded, z, training))
        if view is None:
            view = self._adversary_view(self._adversary_features(acts), near)
        z_pred = self.adversary(view, training=False)
        out = {"recon_loss": recon, "adv_loss": _cce(z, z_pred), "adv_acc": _accuracy(z, z_pred)}
        total = self.w_recon * recon + self.w_gen * self._generator(z, z_pred)
        if self.has_random_effects:
            out["kl"] = _mean_of(list(self.decoder.losses)) if training else ops.zeros((), "float32")
            total = total + out["kl"]
        if kl is not None:
            # the ELBO of a Gaussian decoder whose variance is the reconstruction's error (a calibrated
            # decoder), rescaled so that its reconstruction part is w_recon * MSE: KL * w_recon * 2 MSE / genes
            out["latent_kl"] = kl
            weight = self.w_recon * 2.0 * ops.stop_gradient(recon) / float(self.n_genes)
            total = total + self._ramp(training, self.kl_warmup_steps) * weight * kl
        if self.w_mix > 0:
            out["mix_loss"] = (self._mixing(acts[-1], z, near) if training else ops.zeros((), "float32"))
            total = total + self._mix_weight(training) * out["mix_loss"]
        if self.w_cycle > 0:
            out["cycle_loss"] = (self._cycle(x, acts[-1], z) if training else ops.zeros((), "float32"))
            ramp = self._mix_weight(training) / self.w_mix if self.w_mix > 0 else 1.0
            total = total + self.w_cycle * ramp * out["cycle_loss"]
        if self.w_keep > 0:
            out["keep_loss"] = (_neighbour_keeping_loss(self._keep_space(x), acts[-1], z, self.mix_neighbours)
                                if training else ops.zeros((), "float32"))
            total = total + self.w_keep * out["keep_loss"]
        if self.w_center > 0:
            out["center_loss"] = (_batch_means_share(acts[-1], z) if training else ops.zeros((), "float32"))
            total = total + self.w_center * out["center_loss"]
        if self.classifier is not None:
            y_pred = self.classifier(acts[-1], training=training)
            out["class_loss"] = _cce(inputs[2], y_pred)
            out["class_acc"] = _accuracy(inputs[2], y_pred)
            total = total + self.w_class * out["class_loss"]
        out["loss"] = total
        return out

    def _variational(self, acts, training):
        """``latent="variational"``: the latent is the mean of a Gaussian whose log-variance is read from the
        last hidden layer. Returns what the decoder reads (a draw while training, the mean otherwise) and the
        KL divergence from N(0, I), summed over dimensions and averaged over cells."""
        mean = _f32(acts[-1])
        logvar = _f32(self.latent_logvar(acts[-2]))
        kl = ops.mean(0.5 * ops.sum(ops.square(mean) + ops.exp(logvar) - 1.0 - logvar, axis=1))
        if not training:
            return acts[-1], kl
        noise = keras.random.normal(ops.shape(mean), seed=self.latent_noise)
        return mean + ops.exp(0.5 * logvar) * noise, kl

    def _adversary_view(self, features, near):
        """What the adversary reads: ``features``, or with ``adversary_set`` their set-level mean
        (:meth:`LatentMemory.same_batch_mean`)."""
        if self.adversary_set <= 0:
            return features
        return self.memory.same_batch_mean(_f32(features), near, self.adversary_set)

    def _mixing(self, latent, z, near):
        """The mixing term: the soft same-batch fraction, or with ``mix_reach`` its excess over each cell's
        neighbourhood's share of the cell's batch."""
        if self.mix_reach <= 0:
            return _soft_same_batch_fraction(latent, z, self.mix_neighbours)
        local_share = self.memory.batch_share(near, self.mix_reach_neighbours)
        return ops.mean(ops.relu(_soft_same_batch_fractions(latent, z, self.mix_neighbours) - local_share))

    def _cycle(self, x, latent, z):
        """The counterfactual-consistency term (see the class docstring): the latent's squared move when the
        cell's expression is moved to the previous cell's batch, over the latent's variance."""
        h, zf = _f32(latent), _f32(z)
        fixed = ops.stop_gradient(h)
        other = tf.roll(zf, shift=1, axis=0)          # another cell's batch: the batches' frequencies kept
        shift = ops.stop_gradient(_f32(self.decode(fixed, other, training=False))
                                  - _f32(self.decode(fixed, zf, training=False)))
        moved = _f32(self.encoder(_f32(x) + shift, training=True)[-1])
        spread = ops.stop_gradient(ops.mean(ops.sum(ops.square(fixed - ops.mean(fixed, axis=0, keepdims=True)),
                                                    axis=1))) + 1e-6
        return ops.mean(ops.sum(ops.square(h - moved), axis=1)) / spread

    def _mix_weight(self, training):
        """``w_mix``, scaled by ``min(1, steps taken / mix_warmup_steps)`` while training when a warm-up is set."""
        return self.w_mix * self._ramp(training, self.mix_warmup_steps)

    def _ramp(self, training, steps):
        """A warm-up's factor: ``min(1, steps taken / steps)`` while training, 1 otherwise or when ``steps`` is 0."""
        if not training or steps <= 0:
            return 1.0
        taken = ops.cast(self.optimizer.iterations, "float32")
        return ops.minimum(1.0, taken / float(steps))

    def set_keep_reference(self, mean, components):
        """The space whose within-batch neighbourhoods the ``w_keep`` term preserves: ``(x - mean) @ components``
        (genes × dimensions; e.g. the training cells' principal axes). Without it, the input itself."""
        self.keep_reference = (ops.convert_to_tensor(np.asarray(mean, "float32")),
                               ops.convert_to_tensor(np.asarray(components, "float32")))

    def _keep_space(self, x):
        if self.keep_reference is None:
            return x
        mean, components = self.keep_reference
        return ops.matmul(_f32(x) - mean, components)

    def _ae_weights(self):
        adv = {id(v) for v in self.adversary.trainable_weights}
        return [v for v in self.trainable_weights if id(v) not in adv]

    def adversary_step(self, x, z, features=None):
        """``adversary_steps`` updates of the adversary alone on one minibatch; ``features``: its input already
        computed from the encoder's activations (:meth:`_adversary_features`), else the encoder runs once here,
        outside the tape. Returns the last loss. The updates run in a ``tf.while_loop``, not unrolled: the same
        arithmetic (identical weights), a graph that does not grow with ``adversary_steps``, and a training
        step that traces in about two thirds of the time with the default five steps. Under a
        ``tf.distribute`` strategy they are unrolled (its optimiser updates cannot run inside a loop)."""
        h = ops.stop_gradient(self._adversary_input(x, True) if features is None else features)
        weights = self.adversary.trainable_weights

        def update(step, _):
            with tf.GradientTape() as tape:
                loss = _cce(z, self.adversary(h, training=True))
                scaled = loss * self.grad_scale
            self.adv_optimizer.apply_gradients(zip(tape.gradient(scaled, weights), weights))
            return step + 1, loss

        if self.adversary_steps == 1 or tf.distribute.has_strategy():     # no merge_call inside a while_loop
            loss = None
            for i in range(self.adversary_steps):
                _, loss = update(i, loss)
            return loss
        return tf.while_loop(lambda step, _: step < self.adversary_steps, update,
                             (tf.constant(0), tf.constant(0.0)))[1]

    def train_step(self, data):
        """The adversary's updates, then the autoencoder's (``adversary_pass``: one encoder pass or two)."""
        inputs = data[0]
        weights = self._ae_weights()
        acts = None
        if self.adversary_pass == "separate":
            self.adversary_step(inputs[0], inputs[1])
        with tf.GradientTape() as tape:
            near = view = None
            if self.adversary_pass == "shared":
                acts = self.encoder(inputs[0], training=True)
                if self.uses_memory:
                    near = self.memory.look_up(ops.stop_gradient(_f32(acts[-1])), inputs[1])
                view = self._adversary_view(self._adversary_features(acts), near)   # once: the adversary's
                with tape.stop_recording():                                        # updates and the AE's loss
                    self.adversary_step(inputs[0], inputs[1], features=view)
            out = self.loss_terms(inputs, True, acts=acts, near=near, view=view)
            scaled = out["loss"] * self.grad_scale
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, weights), weights))
        if self.uses_memory:
            self.memory.remember(acts[-1], inputs[1])
        return self._record(inputs, out)


class _RandomEffectsBlocks(layers.Layer):
    """Base of the RE encoder and decoder: ``Dense → ClusterScaleBias(z)`` blocks, SELU between them.

    Subclasses create ``self.dense`` and ``self.csb`` (one block each, same length, in that order: the
    creation order fixes the seeded initial weights) and may add layers after the blocks (:meth:`_build_tail`).
    """

    @staticmethod
    def _csb_blocks(widths, n_batches, seed, offset, re_kwargs):
        """One :class:`ClusterScaleBias` per width; block ``i`` is seeded ``seed + offset + 10 i``."""
        return [ClusterScaleBias(u, n_batches, seed=None if seed is None else seed + offset + 10 * i,
                                 re_kwargs=re_kwargs, name=f"csb_{i}") for i, u in enumerate(widths)]

    def build(self, input_shapes):
        (_, width), z_shape = input_shapes
        for dense, csb in zip(self.dense, self.csb):
            dense.build((None, width))
            width = dense.units
            csb.build([(None, width), z_shape])
        self._build_tail(width)

    def _build_tail(self, width):
        """Build the layers that follow the blocks (input width ``width``); none by default."""

    def _blocks(self, h, z, training, selu_last=True, sample=None):
        last = len(self.dense) - 1
        for i, (dense, csb) in enumerate(zip(self.dense, self.csb)):
            h = csb([dense(h), z], training=training, sample=sample)
            if selu_last or i < last:
                h = ops.selu(h)
        return h


class RandomEffectsEncoder(_RandomEffectsBlocks):
    """``x → Dense → CSB(z) → SELU`` blocks, then a SELU latent layer (no random effect on the latent)."""

    def __init__(self, n_batches, hidden=(512, 132), latent_dim=50, seed=None, re_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        self.dense = [layers.Dense(u, name=f"dense_{i}") for i, u in enumerate(hidden)]
        self.csb = self._csb_blocks(hidden, n_batches, seed, 0, re_kwargs)
        self.latent = layers.Dense(latent_dim, activation="selu", name="latent")

    def _build_tail(self, width):
        self.latent.build((None, width))

    def call(self, inputs, training=False, sample=None):
        x, z = inputs
        return self.latent(self._blocks(x, z, training, sample=sample))


class RandomEffectsDecoder(_RandomEffectsBlocks):
    """Untied decoder with a CSB block after every dense layer, output included.

    ``double_selu=True`` reproduces the authors' quirk (hidden Dense layers already SELU-activated, then
    SELU again after the block); ``False`` applies SELU once, after the block.
    """

    def __init__(self, n_genes, n_batches, hidden=(132, 512), double_selu=True, seed=None, re_kwargs=None,
                 **kwargs):
        super().__init__(**kwargs)
        inner = "selu" if double_selu else None
        self.dense = [layers.Dense(u, activation=inner, name=f"dense_{i}") for i, u in enumerate(hidden)]
        self.dense.append(layers.Dense(n_genes, name="output"))
        self.csb = self._csb_blocks([*hidden, n_genes], n_batches, seed, 100, re_kwargs)

    def call(self, inputs, training=False, sample=None):
        h, z = inputs
        return self._blocks(h, z, training, selu_last=False, sample=sample)


class RandomEffectsAE(_TrackedModel):
    """scMEDAL-RE: Bayesian autoencoder whose layers carry batch-specific random scales and biases.

    Loss: ``w_recon·MSE + w_clus·CE(z, head(latent)) + mean(encoder KLs) + mean(decoder KLs)``; the batch head
    (Dense 5 ReLU → softmax) is trained to *predict* the batch. Validation losses exclude the KL, as in the
    paper, but the reported ``loss`` always matches the training objective's deterministic part.
    Inputs are ``(x, z)``; ``z`` may be a one-hot row, all zeros (prior mean: no random effect), or any
    convex combination of one-hot rows (e.g. the mean over known batches).
    ``output_init``: ``"paper"`` (the output block's BatchNorm starts at scale 1, shift 0) or ``"data"`` (the
    trainer calls :meth:`set_output_moments` with the training data's per-gene moments first).
    """

    loss_names = ("loss", "recon_loss", "batch_loss", "batch_acc", "kl")

    def __init__(self, n_genes, n_batches, hidden=(512, 132), latent_dim=50, w_recon=110.0, w_clus=0.1,
                 double_selu=True, seed=None, re_kwargs=None, output_init="paper", **kwargs):
        super().__init__(**kwargs)
        self.n_genes, self.n_batches, self.output_init = n_genes, n_batches, output_init
        self.w_recon, self.w_clus = w_recon, w_clus
        self.encoder = RandomEffectsEncoder(n_batches, hidden, latent_dim, seed=seed, re_kwargs=re_kwargs,
                                            name="encoder")
        self.decoder = RandomEffectsDecoder(n_genes, n_batches, tuple(reversed(hidden)), double_selu,
                                            seed=seed, re_kwargs=re_kwargs, name="decoder")
        self.batch_head = _mlp_head((5,), n_batches, "relu", "batch_head")
        self.latent_dim = latent_dim
        self._init_trackers()

    def build(self, input_shape=None):
        x_shape, z_shape = (None, self.n_genes), (None, self.n_batches)
        self.encoder.build([x_shape, z_shape])
        self.decoder.build([(None, self.latent_dim), z_shape])
        self.batch_head.build((None, self.latent_dim))
        self.built = True

    def set_output_moments(self, mean, std):
        """Start the output block's BatchNorm at the data's per-gene ``mean`` (its shift) and ``std`` (its
        scale), so that the first reconstructions have the data's location and spread.

        The paper's initialisation (scale 1, shift 0) gives every gene unit variance while the min-max scaled
        data vary by about 0.1, so the reconstruction error starts near 1 and falls only as fast as Adam can
        shrink the scale (~1e-3 per step): about 1,000 steps. With ``output_init="data"`` (opt-in:
        ``SCMEDAL(..., re_design={"output_init": "data"})``), :meth:`SCMEDAL.train` calls this with the training
        cells' moments and removes that wait.
        """
        norm = self.decoder.csb[-1].norm
        norm.gamma.assign(np.asarray(std, "float32").reshape(norm.gamma.shape))
        norm.beta.assign(np.asarray(mean, "float32").reshape(norm.beta.shape))

    def encode(self, x, z, training=False, sample=None):
        return self.encoder([x, z], training=training, sample=sample)

    def decode(self, latent, z, training=False, sample=None):
        return self.decoder([latent, z], training=training, sample=sample)

    def call(self, inputs, training=False):
        x, z = inputs[0], inputs[1]
        return self.decode(self.encode(x, z, training), z, training)

    def loss_terms(self, inputs, training):
        x, z = inputs[0], inputs[1]
        latent = self.encode(x, z, training)
        kl_enc = list(self.encoder.losses) if training else []
        recon = self.decode(latent, z, training)
        kl_dec = list(self.decoder.losses) if training else []
        z_pred = self.batch_head(latent, training=training)
        out = {"recon_loss": _mse(x, recon), "batch_loss": _cce(z, z_pred),
               "batch_acc": ops.mean(ops.cast(ops.argmax(z, -1) == ops.argmax(z_pred, -1), "float32"))}
        out["kl"] = _mean_of(kl_enc) + _mean_of(kl_dec)
        out["loss"] = self.w_recon * out["recon_loss"] + self.w_clus * out["batch_loss"] + out["kl"]
        return out


# ---------------------------------------------------------------------------------------------- factory

def _architecture(config) -> dict:
    return dict(hidden=tuple(config["hidden"]), latent_dim=config["latent_dim"])


#: Settings of the random effects in the FE network's random-effects decoder: the RE network's prior and KL
#: weight, the exact Gaussian KL, the intended (not the authors' inverted) posterior-scale initialisation, and
#: posterior means that start at the prior mean (no effect until the data show one).
FE_DECODER_RANDOM_EFFECTS = {"kl": "exact", "scale_init": "clean", "post_loc_init_scale": 0.0}


def _fixed_effects(config, n_genes, n_batches, n_labels, seed):
    weights = config["fec"] if config["fec_head"] else config["fe"]
    design = {**PAPER_FE_DESIGN, **config.get("fe_design", {})}     # saved before fe_design: the paper's
    re_kwargs = {"prior_scale": ARCHITECTURE["prior_scale"], "kl_weight": ARCHITECTURE["kl_weight"],
                 "post_loc_init_scale": ARCHITECTURE["post_loc_init_scale"], **FE_DECODER_RANDOM_EFFECTS}
    return FixedEffectsAE(n_genes, n_batches, n_labels=n_labels if config["fec_head"] else None,
                          name="scmedal_fe", seed=seed, re_kwargs=re_kwargs, **design, **_architecture(config),
                          **weights)


def _random_effects(config, n_genes, n_batches, n_labels, seed):
    re_kwargs = {"prior_scale": ARCHITECTURE["prior_scale"], "kl_weight": ARCHITECTURE["kl_weight"],
                 "post_loc_init_scale": ARCHITECTURE["post_loc_init_scale"], "kl": config["kl"],
                 "scale_init": config["quirks"]}
    design = {**PAPER_RE_DESIGN, **config.get("re_design", {})}     # saved before re_design: the paper's
    return RandomEffectsAE(n_genes, n_batches, double_selu=config["quirks"] == "faithful", seed=seed,
                           re_kwargs=re_kwargs, name="scmedal_re", **_architecture(config), **config["re"],
                           **design)


def _autoencoder(config, n_genes, n_batches, n_labels, seed):
    return AutoEncoder(n_genes, name="autoencoder", **_architecture(config))


#: Builders by kind: ``builder(config, n_genes, n_batches, n_labels, seed) -> unbuilt network``.
BUILDERS = {"fe": _fixed_effects, "re": _random_effects, "ae": _autoencoder}
#: The kinds of network :func:`build_network` makes (fixed effects, random effects, plain autoencoder).
NETWORKS = tuple(BUILDERS)


def build_network(kind: str, config: dict, *, n_genes: int, n_batches: int, n_labels: int | None = None,
                  seed: int | None = None) -> keras.Model:
    """Build network ``kind`` (one of :data:`NETWORKS`) from a model configuration (``SCMEDAL.config``:
    ``hidden``, ``latent_dim``, the loss weights ``fe`` / ``fec`` / ``re``, ``fec_head``, ``quirks``, ``kl``,
    ``precision``). ``n_labels`` sizes the FEC head (used only with ``fec_head``); ``seed`` seeds the RE
    layers. The weights are created under the configured precision (float32 or mixed bfloat16).

    Example
    -------
    >>> import numpy as np
    >>> config = {"hidden": [16], "latent_dim": 4, "fe": {"w_recon": 1000.0, "w_gen": 1.0}, "fec_head": False}
    >>> build_network("fe", config, n_genes=20, n_batches=3).encode(np.zeros((2, 20), "float32")).shape
    (2, 4)
    """
    check_choice("kind", kind, NETWORKS)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if config.get("precision") == "bfloat16" else "float32")
    try:
        net = BUILDERS[kind](config, n_genes, n_batches, n_labels, seed)
        net.build()
        return net
    finally:
        keras.config.set_dtype_policy(previous)
