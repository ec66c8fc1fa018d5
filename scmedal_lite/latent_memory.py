"""A memory of recent training latents, for the FE terms that look beyond the minibatch.

A minibatch of 512 cells holds about 8 cells of each of COVID's 63 samples: too few to say what a cell's
neighbourhood looks like across batches. :class:`LatentMemory` keeps the latents (and batches) of the last
``size`` training cells the FE network encoded, written after every step with no gradient, and answers two
questions about a minibatch's cells (book/method.md, "The mixing preset"):

- :meth:`LatentMemory.same_batch_mean`: the mean of a cell's latent and those of its ``m`` nearest remembered
  latents *of its own batch*, which the set-level adversary reads (``fe_design["adversary_set"]``): a batch
  that shifts a whole neighbourhood is easier to name from a set than from one noisy cell;
- :meth:`LatentMemory.batch_share`: the share of a cell's own batch among its ``k`` nearest remembered latents
  of any batch, against which the local mixing term measures a cell's neighbours (``fe_design["mix_reach"]``,
  :func:`reach_neighbours`): a neighbourhood is pushed to hold no more of a cell's batch than the wider region
  around it, not the data's overall batch frequencies (which cell types held in different proportions by the
  batches cannot reach).

Both read a :meth:`LatentMemory.look_up` of the minibatch, computed once per training step.

It is training state only: not a weight of the network, not saved with the model, and not read by
:meth:`encode`; training checkpoints hold it (:class:`scmedal_lite.training.Checkpointer`), so a resumed run
is bitwise identical to an unbroken one.

Example
-------
>>> import numpy as np
>>> memory = LatentMemory(size=4, width=2, n_batches=2)
>>> memory.remember(np.array([[0, 0], [0, 1], [5, 5]], "float32"), np.eye(2, dtype="float32")[[0, 1, 1]])
>>> near = memory.look_up(np.array([[0, 0.2]], "float32"), np.eye(2, dtype="float32")[[0]])
>>> np.asarray(memory.batch_share(near, k=2)).round(2).tolist()      # its 2 nearest: one of each batch
[0.5]
"""

from __future__ import annotations

import math

import tensorflow as tf
from keras import ops

#: Squared distance given to memory rows that must not be chosen (empty rows, another batch's rows).
_FAR = 1e9

#: The most remembered latents :meth:`LatentMemory.batch_share` counts per cell. A wider neighbourhood (few
#: batches make it wide: 8,410 of 16,384 latents with 3 batches) is counted on every ``s``-th remembered latent
#: (:func:`counting_stride`), which bounds the cost of its search; every data set measured for the ``"mixing"``
#: preset stays below it (400 on COVID's 63 samples, 202 and 1,009 on the pancreas atlas) and counts exactly.
MAX_COUNTED = 1024


def reach_neighbours(reach: float, rows: int, n_batches: int) -> int:
    """How many remembered latents make a cell's neighbourhood for the local mixing term: ``reach`` times the
    rows an average batch holds in a memory of ``rows`` (at least 1, at most ``rows``). Above 1, a batch that sits
    apart from the others still finds other batches among a cell's neighbours, so the term pushes it to mix;
    below 1 such a batch looks mixed already (its neighbourhoods hold only itself) and is left apart.

    >>> reach_neighbours(1.54, 16384, 63), reach_neighbours(1.54, 2620, 20), reach_neighbours(1.54, 100, 1)
    (400, 202, 100)
    """
    return int(min(rows, max(1, round(reach * rows / n_batches))))


def counting_stride(k: int) -> int:
    """Every how many remembered latents :meth:`LatentMemory.batch_share` reads to count a neighbourhood of
    ``k``: 1 up to :data:`MAX_COUNTED`, above it the smallest stride that counts at most that many. The memory's
    rows follow the training cells' shuffled order, so every ``s``-th row is a random subset of them, and the
    share of a batch among its ``k / s`` nearest estimates the share among the ``k`` nearest of all rows.

    >>> counting_stride(400), counting_stride(1024), counting_stride(1025), counting_stride(8410)
    (1, 1, 2, 9)
    """
    return max(1, math.ceil(k / MAX_COUNTED))


class LatentMemory:
    """A ring buffer of the last ``size`` training latents (``width`` wide) and their batches (one-hot over
    ``n_batches``). Empty rows (before ``size`` cells were written) are never chosen as neighbours.

    Its variables are TensorFlow variables held outside Keras's tracking, so they are not among the network's
    weights (early stopping's restore, saving and :meth:`scmedal_lite.SCMEDAL.add_batches` ignore them; the
    training checkpoints save them).
    """

    def __init__(self, size: int, width: int, n_batches: int):
        self.size = int(size)
        self.latents = tf.Variable(tf.zeros((self.size, width)), trainable=False, name="memory_latents")
        self.batches = tf.Variable(tf.zeros((self.size, n_batches)), trainable=False, name="memory_batches")
        self.pointer = tf.Variable(0, trainable=False, name="memory_pointer")

    def look_up(self, h, z) -> dict:
        """What :meth:`same_batch_mean` and :meth:`batch_share` read about the cells ``h`` (cells × width,
        float32; pass ``stop_gradient(h)``) of batches ``z`` (one-hot rows): ``"d2"``, the squared distances to
        every remembered latent (:data:`_FAR` for the empty rows), and ``"same"``, whether each remembered
        latent is of the cell's batch (1.0 or 0.0)."""
        mem = ops.convert_to_tensor(self.latents)
        sq = ops.sum(ops.square(h), axis=1, keepdims=True)
        d2 = ops.maximum(sq + ops.sum(ops.square(mem), axis=1)[None, :] - 2.0 * ops.matmul(h, ops.transpose(mem)),
                         0.0)
        filled = ops.sum(ops.abs(ops.convert_to_tensor(self.batches)), axis=1)[None, :] > 0
        same = ops.matmul(ops.cast(z, "float32"), ops.transpose(ops.convert_to_tensor(self.batches)))
        return {"d2": ops.where(filled, d2, _FAR), "same": same}

    def same_batch_mean(self, h, near: dict, m: int):
        """The mean of each cell's latent ``h`` and its ``m`` nearest remembered latents of its own batch
        (``near``: :meth:`look_up` of ``h``). Fewer when fewer are remembered; the gradient reaches ``h``
        only."""
        neg, idx = tf.math.top_k(-ops.stop_gradient(ops.where(near["same"] > 0, near["d2"], _FAR)), k=m)
        valid = ops.cast(neg > -_FAR / 10, "float32")
        summed = ops.sum(tf.gather(ops.convert_to_tensor(self.latents), idx) * valid[:, :, None], axis=1)
        return (h + summed) / (1.0 + ops.sum(valid, axis=1, keepdims=True))

    def batch_share(self, near: dict, k: int, stride: int | None = None):
        """The share of each cell's own batch among its ``k`` nearest remembered latents of any batch (``near``:
        :meth:`look_up`); ``1 / n_batches`` until ``k`` latents are remembered. No gradient. ``stride`` (default
        :func:`counting_stride` of ``k``, 1 up to :data:`MAX_COUNTED`): above 1, the ``round(k / stride)``
        nearest among every ``stride``-th row are counted."""
        d2, same = near["d2"], near["same"]
        stride = counting_stride(k) if stride is None else int(stride)
        if stride > 1:
            d2, same, k = d2[:, ::stride], same[:, ::stride], max(1, round(k / stride))
        neg, idx = tf.math.top_k(-ops.stop_gradient(d2), k=k)
        valid = ops.cast(neg > -_FAR / 10, "float32")
        counts = ops.sum(tf.gather(same, idx, batch_dims=1) * valid, axis=1)
        n_valid = ops.sum(valid, axis=1)
        uniform = ops.ones_like(counts) / float(self.batches.shape[1])
        return ops.stop_gradient(ops.where(n_valid >= float(k), counts / ops.maximum(n_valid, 1.0), uniform))

    def remember(self, h, z) -> None:
        """Write the latents ``h`` and batches ``z`` of a minibatch over the oldest rows."""
        n = ops.shape(h)[0]
        rows = ((self.pointer + tf.range(n)) % self.size)[:, None]
        self.latents.scatter_nd_update(rows, ops.cast(ops.stop_gradient(h), "float32"))
        self.batches.scatter_nd_update(rows, ops.cast(z, "float32"))
        self.pointer.assign((self.pointer + n) % self.size)
