"""FusedAdam: Keras's Adam update in one kernel per weight, the default optimiser of every network."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from scmedal_lite.networks import AutoEncoder, FixedEffectsAE, RandomEffectsAE
from scmedal_lite.optim import FusedAdam


def run(optimizer, steps=6, seed=0):
    """Weights of two variables after ``steps`` updates with seeded gradients, applied in a traced function."""
    rng = np.random.default_rng(seed)
    weights = [keras.Variable(rng.normal(size=(7, 5)).astype("float32")),
               keras.Variable(rng.normal(size=(5,)).astype("float32"))]
    optimizer.build(weights)
    apply = tf.function(lambda grads: optimizer.apply_gradients(zip(grads, weights)), autograph=False)
    for _ in range(steps):
        apply([tf.constant(rng.normal(size=w.shape).astype("float32")) for w in weights])
    return [keras.ops.convert_to_numpy(w) for w in weights], int(optimizer.iterations)


@pytest.mark.parametrize("options", [{}, {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 2},
                                     {"clipnorm": 0.5}])
def test_fused_adam_gives_keras_adam_updates(options):
    (fused, n_fused), (reference, n_reference) = (run(cls(0.05, **options))
                                                  for cls in (FusedAdam, keras.optimizers.Adam))
    assert n_fused == n_reference == 6
    assert not np.allclose(fused[0], run(FusedAdam(0.05), steps=0)[0][0])      # the weights did move
    for a, b in zip(fused, reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fused_adam_traces_fewer_operations_per_weight():
    def graph_ops(optimizer):
        weights = [keras.Variable(np.ones((4, 3), "float32")) for _ in range(10)]
        optimizer.build(weights)
        fn = tf.function(lambda: optimizer.apply_gradients(zip([tf.ones((4, 3))] * 10, weights)), autograph=False)
        return len(fn.get_concrete_function().graph.get_operations())

    fused, keras_adam = graph_ops(FusedAdam(1e-3)), graph_ops(keras.optimizers.Adam(1e-3))
    assert fused < 0.6 * keras_adam, (fused, keras_adam)


def test_amsgrad_takes_keras_update():
    fused, reference = (run(cls(0.05, amsgrad=True))[0] for cls in (FusedAdam, keras.optimizers.Adam))
    for a, b in zip(fused, reference):
        np.testing.assert_array_equal(a, b)


def test_every_network_compiles_with_fused_adam_by_default():
    fe = FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4)
    fe.compile(learning_rate=1e-2)
    re = RandomEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, seed=0)
    re.compile()
    ae = AutoEncoder(20, hidden=(16, 8), latent_dim=4)
    ae.compile()
    for optimizer in (fe.optimizer, fe.adv_optimizer, re.optimizer, ae.optimizer):
        assert type(optimizer) is FusedAdam
    given = keras.optimizers.SGD(0.1)
    ae2 = AutoEncoder(20, hidden=(16, 8), latent_dim=4)
    ae2.compile(given)
    assert ae2.optimizer is given
