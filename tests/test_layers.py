"""Unit tests of the layers: KL sign and scale, posterior means at inference, tied weights, scale-bias algebra."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from precision import chain_rtol
from scmedal_lite.layers import ClusterScaleBias, RandomEffects, TiedDenseTranspose


def onehot(idx, k):
    return np.eye(k, dtype="float32")[np.asarray(idx)]


def test_inference_uses_posterior_means():
    layer = RandomEffects(3, 4, seed=0)
    z = onehot([0, 1, 3, 3], 4)
    out = np.asarray(layer(z, training=False))
    np.testing.assert_allclose(out, np.asarray(layer.loc)[[0, 1, 3, 3]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layer(z, training=False)), out)     # deterministic
    assert not layer.losses                                                    # no KL at inference


def test_training_samples_one_weight_matrix_per_call():
    layer = RandomEffects(5, 2, seed=0, scale_init="clean")
    z = onehot([0, 0, 1], 2)
    a, b = np.asarray(layer(z, training=True)), np.asarray(layer(z, training=True))
    assert not np.allclose(a, b)                 # a new sample each call
    np.testing.assert_allclose(a[0], a[1])       # the same sample for every cell of a minibatch
    assert np.abs(a - np.asarray(layer.loc)[[0, 0, 1]]).max() < 0.1


def test_zero_design_gives_zero_effect():
    layer = RandomEffects(3, 4, seed=0)
    assert np.allclose(np.asarray(layer(np.zeros((2, 4), "float32"))), 0.0)


def test_exact_kl_matches_closed_form():
    layer = RandomEffects(2, 3, seed=0, kl="exact", kl_weight=1.0, prior_scale=0.25)
    layer(onehot([0], 3), training=True)
    kl = float(layer.losses[0])
    mu, sd = np.asarray(layer.loc), np.asarray(layer.posterior_scale())
    expected = np.sum(np.log(0.25 / sd) + (sd ** 2 + mu ** 2) / (2 * 0.25 ** 2) - 0.5)
    assert kl == pytest.approx(expected, rel=1e-4)
    assert kl > 0


def test_mc_kl_is_unbiased_and_weighted():
    layer = RandomEffects(4, 3, seed=0, kl="mc", kl_weight=1.0, scale_init="clean")
    exact = RandomEffects(4, 3, seed=0, kl="exact", kl_weight=1.0, scale_init="clean")
    z = onehot([1], 3)
    layer(z), exact(z)
    exact.loc.assign(layer.loc)
    exact.rho.assign(layer.rho)
    samples = []
    for _ in range(400):
        layer(z, training=True)
        samples.append(float(layer.losses[0]))
    exact(z, training=True)
    assert np.mean(samples) == pytest.approx(float(exact.losses[0]), rel=0.02)
    weighted = RandomEffects(4, 3, seed=0, kl="exact", kl_weight=1e-5, scale_init="clean")
    weighted(z)
    weighted.loc.assign(layer.loc)
    weighted.rho.assign(layer.rho)
    weighted(z, training=True)
    assert float(weighted.losses[0]) == pytest.approx(1e-5 * float(exact.losses[0]), rel=1e-4)


def test_kl_is_zero_when_posterior_equals_prior():
    layer = RandomEffects(3, 2, seed=0, kl="exact", kl_weight=1.0, prior_scale=0.25)
    layer(onehot([0], 2))
    layer.loc.assign(np.zeros((2, 3), "float32"))
    layer.rho.assign(np.full((2, 3), math.log(math.expm1(0.25 - 1e-5)), "float32"))
    layer(onehot([0], 2), training=True)
    assert abs(float(layer.losses[0])) < 1e-4


@pytest.mark.parametrize("mode,lo,hi", [("faithful", 6e-5, 0.0101), ("clean", 0.005, 0.0101)])
def test_posterior_scale_initialisation(mode, lo, hi):
    layer = RandomEffects(200, 10, seed=0, scale_init=mode)
    layer(onehot([0], 10))
    sd = np.asarray(layer.posterior_scale())
    assert sd.min() >= lo and sd.max() <= hi
    if mode == "faithful":
        assert sd.min() < 0.001               # the authors' inverted range reaches far below 0.005


def test_tied_decoder_shares_the_kernel():
    dense = keras.layers.Dense(4)
    dense.build((None, 6))
    tied = TiedDenseTranspose(dense, 6)
    h = np.random.default_rng(0).random((3, 4)).astype("float32")
    out = np.asarray(tied(h))
    kernel = np.asarray(dense.kernel)
    # TensorFlow's product against NumPy's: length-4 dot products, judged against the size of their terms
    np.testing.assert_allclose(out, h @ kernel.T, rtol=chain_rtol(4),
                               atol=chain_rtol(4) * float((np.abs(h) @ np.abs(kernel).T).max()))
    assert len(tied.trainable_weights) == 1 and np.allclose(np.asarray(tied.bias), 0)
    dense.kernel.assign(np.ones((6, 4), "float32"))
    np.testing.assert_allclose(np.asarray(tied(h)), h @ np.ones((4, 6)), rtol=chain_rtol(4))


def test_cluster_scale_bias_algebra():
    block = ClusterScaleBias(3, 2, seed=0)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    z = onehot([0, 1, 1, 0, 1], 2)
    out = np.asarray(block([x, z], training=False))
    normed = np.asarray(block.norm(x, training=False))
    gamma, beta = np.asarray(block.gamma.loc), np.asarray(block.beta.loc)
    b = np.array([0, 1, 1, 0, 1])
    np.testing.assert_allclose(out, normed * (1 + gamma[b]) + beta[b], rtol=1e-5, atol=1e-6)
    block([x, z], training=True)
    assert len(block.losses) == 2 and all(float(v) > 0 for v in block.losses)


def test_layers_round_trip_through_keras_saving(tmp_path):
    inp_x, inp_z = keras.Input((3,)), keras.Input((2,))
    out = ClusterScaleBias(3, 2, seed=0)([inp_x, inp_z])
    model = keras.Model([inp_x, inp_z], out)
    x = np.random.default_rng(1).random((4, 3)).astype("float32")
    z = onehot([0, 1, 0, 1], 2)
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(again([x, z])), np.asarray(model([x, z])), rtol=1e-6)
    assert ops.shape(again([x, z])) == (4, 3)
