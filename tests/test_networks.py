"""Network-level tests: the adversary step touches only adversary weights; losses as specified."""

import keras
import numpy as np
import pytest

from precision import sum_atol
from scmedal_lite.metrics import knn_same_batch_fraction
from scmedal_lite.networks import (
    AutoEncoder,
    FixedEffectsAE,
    RandomEffectsAE,
    _batch_means_share,
    _neighbour_keeping_loss,
    _soft_same_batch_fraction,
)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.random((64, 20)).astype("float32")
    z = np.eye(3, dtype="float32")[rng.integers(0, 3, 64)]
    return x, z


def snapshot(weights):
    return [np.asarray(w).copy() for w in weights]


def changed(before, weights):
    return [not np.allclose(b, np.asarray(w)) for b, w in zip(before, weights)]


def test_adversary_step_updates_only_the_adversary(data):
    x, z = data
    net = FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4)
    net.build()
    net.compile(keras.optimizers.Adam(1e-2), keras.optimizers.Adam(1e-2))
    adv = net.adversary.trainable_weights
    ae = net._ae_weights()
    adv_before, ae_before = snapshot(adv), snapshot(ae)
    net.adversary_step(x, z)
    assert all(changed(adv_before, adv))
    assert not any(changed(ae_before, ae))


def test_compile_builds_each_optimiser_on_its_own_weights():
    """FE: the autoencoder's Adam has slots for the non-adversary weights only, the adversary's for the
    adversary's; RE and AE: for all trainable weights. Nothing outside compile builds an optimiser."""
    def slots(optimizer):                     # Adam: iterations and learning rate, then 2 slots per weight
        return (len(optimizer.variables) - 2) // 2

    fe = FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4)
    fe.compile(learning_rate=1e-2)                   # builds the network too
    assert fe.optimizer.built and fe.adv_optimizer.built
    assert slots(fe.optimizer) == len(fe._ae_weights()) < len(fe.trainable_weights)
    assert slots(fe.adv_optimizer) == len(fe.adversary.trainable_weights)
    assert fe.optimizers == [fe.optimizer, fe.adv_optimizer]
    assert float(fe.optimizer.learning_rate) == pytest.approx(1e-2)
    re = RandomEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, seed=0)
    re.compile()
    assert slots(re.optimizer) == len(re.trainable_weights) and re.optimizers == [re.optimizer]


def test_fit_network_sets_grad_scale_for_a_strategy_and_restores_it():
    import tensorflow as tf

    from scmedal_lite.training import fit_network

    x = np.random.default_rng(0).random((32, 6)).astype("float32")
    net = AutoEncoder(6, hidden=(4,), latent_dim=2)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        net.compile()
    net.grad_scale = 0.5                             # whatever it was before the run comes back after it
    seen = []

    def stop(epoch, logs):
        seen.append(net.grad_scale)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_network(net, (x,), (x,), epochs=3, batch_size=16, progress=False, strategy=strategy, on_epoch_end=stop)
    assert seen == [1.0 / strategy.num_replicas_in_sync] and net.grad_scale == 0.5


def test_fit_network_logs_per_epoch_means_and_matches_the_keras_reset(monkeypatch):
    """The loop's compiled metric reset gives the validation log its own mean, and the same run as Keras's reset."""
    from scmedal_lite import training

    x = np.random.default_rng(0).random((40, 6)).astype("float32")

    def fit():
        training.seed_everything(0)
        net = AutoEncoder(6, hidden=(4,), latent_dim=2)
        net.compile(keras.optimizers.Adam(1e-2))
        history, _ = training.fit_network(net, (x,), (x[:10],), epochs=4, batch_size=16, progress=False,
                                          early_stopping=False)
        return net, history

    net, history = fit()
    training.metrics_resetter(net)()
    fresh = float(net.test_step(((x[:10],),))["loss"])       # the validation cells alone, final weights
    assert np.isclose(history["val_loss"].iloc[-1], fresh, rtol=1e-5)
    monkeypatch.setattr(training, "metrics_resetter", lambda net: net.reset_metrics)
    net_keras, history_keras = fit()
    assert history.drop(columns="seconds").equals(history_keras.drop(columns="seconds"))
    assert all(np.array_equal(a, b) for a, b in zip(net.get_weights(), net_keras.get_weights()))


def test_autoencoder_step_leaves_the_adversary_alone(data):
    x, z = data
    net = FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4)
    net.build()
    net.compile(keras.optimizers.Adam(1e-2), keras.optimizers.Adam(1e-2))
    weights = net._ae_weights()
    before = snapshot(weights)
    with_adv = snapshot(net.adversary.trainable_weights)
    import tensorflow as tf
    with tf.GradientTape() as tape:
        loss = net.loss_terms((x, z), True)["loss"]
    net.optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
    assert any(changed(before, weights))
    assert not any(changed(with_adv, net.adversary.trainable_weights))


def test_fe_loss_is_recon_minus_adversary(data):
    x, z = data
    net = FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, w_recon=7.0, w_gen=2.0)
    net.build()
    out = net.loss_terms((x, z), False)
    recon, adv = float(out["recon_loss"]), float(out["adv_loss"])
    # a float32 difference that may cancel: judged against the size of its terms (tests/precision.py)
    assert float(out["loss"]) == pytest.approx(7.0 * recon - 2.0 * adv, rel=0, abs=sum_atol(7 * recon, 2 * adv))


def test_the_variational_latents_kl_is_weighted_as_a_calibrated_gaussian_decoders_elbo(data):
    """latent="variational": the KL of N(mean, exp(logvar)) from N(0, I), computed by hand from the layers,
    joins the loss at w_recon * 2 * MSE / genes; on validation cells the decoder reads the mean (no draw), so
    the loss is the same twice, while training draws."""
    x, z = data
    net = FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, w_recon=7.0, w_gen=2.0, latent="variational", seed=0)
    net.build()
    out = net.loss_terms((x, z), False)
    recon, adv, kl = float(out["recon_loss"]), float(out["adv_loss"]), float(out["latent_kl"])
    acts = net.encoder(x, training=False)
    mean, logvar = np.asarray(acts[-1]), np.asarray(net.latent_logvar(acts[-2]))
    by_hand = np.mean(0.5 * np.sum(mean ** 2 + np.exp(logvar) - 1 - logvar, axis=1))
    assert kl == pytest.approx(by_hand, rel=1e-5) and kl > 0
    expected = 7.0 * recon - 2.0 * adv + 7.0 * 2 * recon / 20 * kl
    bound = sum_atol(7 * recon, 2 * adv, 7 * 2 * recon / 20 * kl, n=3)
    assert float(out["loss"]) == pytest.approx(expected, rel=0, abs=bound)
    assert float(net.loss_terms((x, z), False)["loss"]) == float(out["loss"])
    point = FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, seed=0)
    point.build()
    decoded, _ = net._variational(acts, training=True)
    assert not np.allclose(np.asarray(decoded), mean) and "latent_kl" not in point.loss_names
    with pytest.raises(ValueError, match="latent"):
        FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, latent="gaussian")


def test_the_variational_latents_kl_warms_up_with_the_steps_taken(data):
    """kl_warmup: while training, the KL term's weight is min(1, steps taken / kl_warmup_steps) times the
    calibrated weight (0 at the first step, half at half the warm-up, full after it); validation cells get the
    full weight; a warm-up without a variational latent is refused."""
    x, z = data
    net = FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, w_recon=7.0, w_gen=2.0, latent="variational",
                         kl_warmup=0.5, seed=0)
    net.build()
    net.compile()
    net.kl_warmup_steps = 10
    for taken, share in [(0, 0.0), (5, 0.5), (10, 1.0), (40, 1.0)]:
        net.optimizer.iterations.assign(taken)
        out = net.loss_terms((x, z), True)
        recon, adv, kl = float(out["recon_loss"]), float(out["adv_loss"]), float(out["latent_kl"])
        expected = 7.0 * recon - 2.0 * adv + share * 7.0 * 2 * recon / 20 * kl
        bound = sum_atol(7 * recon, 2 * adv, 7 * 2 * recon / 20 * kl, n=3)
        assert float(out["loss"]) == pytest.approx(expected, rel=0, abs=bound), taken
    net.optimizer.iterations.assign(0)
    out = net.loss_terms((x, z), False)
    recon, adv, kl = float(out["recon_loss"]), float(out["adv_loss"]), float(out["latent_kl"])
    assert float(out["loss"]) == pytest.approx(7.0 * recon - 2.0 * adv + 7.0 * 2 * recon / 20 * kl, rel=0,
                                               abs=sum_atol(7 * recon, 2 * adv, 7 * 2 * recon / 20 * kl, n=3))
    with pytest.raises(ValueError, match="kl_warmup"):
        FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, kl_warmup=0.5)


def test_soft_same_batch_fraction_tracks_the_knn_fraction():
    """Known answers: batches apart -> 1, interleaved -> 0, random -> near sum p_b^2; it follows the hard kNN
    fraction it smooths, and minibatches smaller than k+1 cells (an epoch's last) still give a value."""
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 4, 400)
    z = np.eye(4, dtype="float32")[batch]
    apart = (rng.normal(size=(400, 5)) + 20 * batch[:, None]).astype("float32")
    mixed = rng.normal(size=(400, 5)).astype("float32")
    line = np.repeat(np.arange(200), 2)[:, None].astype("float32") * 10 + np.tile([0, 0.01], 200)[:, None]
    alternating = np.eye(2, dtype="float32")[np.tile([0, 1], 200)]
    soft = {name: float(_soft_same_batch_fraction(lat, zz, k=k))
            for name, lat, zz, k in [("apart", apart, z, 15), ("mixed", mixed, z, 15), ("pairs", line, alternating, 1)]}
    assert soft["apart"] > 0.99
    assert soft["pairs"] < 0.05                    # each cell's nearest neighbour is from the other batch
    expected = knn_same_batch_fraction(mixed, batch, k=15)[1]
    assert abs(soft["mixed"] - expected) < 0.05, (soft, expected)
    partly = mixed + 1.5 * batch[:, None].astype("float32")
    assert soft["mixed"] < float(_soft_same_batch_fraction(partly, z, k=15)) < soft["apart"]
    for n in (1, 2, 5):
        assert 0.0 <= float(_soft_same_batch_fraction(mixed[:n], z[:n], k=15)) <= 1.0


def test_batch_means_share_is_the_variance_batches_explain():
    """Known answers: the R² of the latent on the batch. Batches shifted apart by ``s`` along one axis of
    unit-variance noise explain ``s²/4 / (1 + s²/4)`` of that axis (two equal batches); no shift explains only
    the sampling noise of the batch means; it does not depend on the latent's scale or offset."""
    rng = np.random.default_rng(2)
    batch = np.repeat([0, 1], 2000)
    z = np.eye(2, dtype="float32")[batch]
    noise = rng.normal(size=(4000, 1))
    for b in (0, 1):                                     # exactly mean 0 and variance 1 within each batch
        noise[batch == b] = (noise[batch == b] - noise[batch == b].mean()) / noise[batch == b].std()
    noise = noise.astype("float32")
    for s in (0.0, 1.0, 4.0):
        lat = noise + s * batch[:, None].astype("float32")
        expected = (s * s / 4) / (1 + s * s / 4)
        assert float(_batch_means_share(lat, z)) == pytest.approx(expected, abs=1e-4), s
        assert float(_batch_means_share(10 * lat + 3, z)) == pytest.approx(float(_batch_means_share(lat, z)),
                                                                           rel=1e-4)
    two_dims = np.concatenate([noise, noise + 4.0 * batch[:, None]], axis=1)   # one of two dimensions shifted
    assert 0.3 < float(_batch_means_share(two_dims, z)) < 0.8


def test_neighbour_keeping_loss_sees_within_batch_neighbours_only():
    """Known answers: 0 when each batch's neighbourhoods are kept (any per-batch shift or global scaling), large
    when cells swap places within their batch; moving whole batches relative to each other costs nothing;
    cells alone in their batch in the minibatch are left out."""
    rng = np.random.default_rng(1)
    batch = np.repeat([0, 1, 2], 40)
    z = np.eye(3, dtype="float32")[batch]
    x = rng.normal(size=(120, 10)).astype("float32")
    shifted = x[:, :4] * 3 + 50 * batch[:, None]                       # batches moved apart: kept within
    scrambled = np.concatenate([rng.permutation(x[batch == b, :4]) for b in range(3)])
    kept = float(_neighbour_keeping_loss(x, x[:, :4] * 3, z, k=5))
    assert float(_neighbour_keeping_loss(x, shifted, z, k=5)) == pytest.approx(kept, abs=1e-4)
    assert float(_neighbour_keeping_loss(x, scrambled, z, k=5)) > kept + 1.0
    assert float(_neighbour_keeping_loss(x, x, z, k=5)) == pytest.approx(0.0, abs=1e-5)
    lonely = np.eye(3, dtype="float32")[[0, 0, 0, 1, 2]]             # batches 1 and 2: one cell each
    assert np.isfinite(float(_neighbour_keeping_loss(x[:5], x[:5, :2], lonely, k=5)))


@pytest.mark.parametrize("weight, term", [("w_mix", "mix_loss"), ("w_keep", "keep_loss"),
                                          ("w_center", "center_loss")])
def test_fe_extra_term_is_logged_and_only_in_training(data, weight, term):
    """The local-mixing (w_mix), neighbour-keeping (w_keep) and batch-centring (w_center) terms: logged, added to
    the training loss with their weight, 0 on validation cells."""
    x, z = data
    plain = FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, seed=0)
    extra = FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, seed=0, **{weight: 10.0})
    for net in (plain, extra):
        net.build()
    extra.set_weights(plain.get_weights())
    assert term in extra.loss_names and term not in plain.loss_names
    train, base = extra.loss_terms((x, z), True), plain.loss_terms((x, z), True)
    value = float(train[term])
    assert value > 0.0
    if term in ("mix_loss", "center_loss"):
        assert value < 1.0                               # a fraction
    # the batch-norm statistics in training mode are the same: only the extra term differs
    assert float(train["loss"]) == pytest.approx(float(base["loss"]) + 10.0 * value, rel=1e-5)
    assert float(extra.loss_terms((x, z), False)[term]) == 0.0
    if term == "keep_loss":
        # measured in a reference space when one is set: the projection changes the value
        extra.set_keep_reference(x.mean(0), np.eye(20, dtype="float32")[:, :2])
        assert float(extra.loss_terms((x, z), True)[term]) != pytest.approx(value, rel=1e-3)


def test_mix_warmup_scales_the_mixing_term_by_the_steps_taken(data):
    """With ``mix_warmup_steps`` the training loss carries ``w_mix · min(1, steps / warm-up) · S``: nothing at the
    first step, half at mid-warm-up, all of it after; before SCMEDAL.train sets a warm-up, the full weight."""
    x, z = data
    net = FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, seed=0, w_mix=10.0, mix_warmup=0.5)
    net.build()
    net.compile()
    full = net.loss_terms((x, z), True)
    assert net.mix_warmup_steps == 0                      # SCMEDAL.train sets it; 0 keeps w_mix from step one
    net.mix_warmup_steps = 10
    no_mix = float(full["loss"]) - 10.0 * float(full["mix_loss"])
    for taken, share in ((0, 0.0), (5, 0.5), (10, 1.0), (25, 1.0)):
        net.optimizer.iterations.assign(taken)
        out = net.loss_terms((x, z), True)
        assert float(out["mix_loss"]) == pytest.approx(float(full["mix_loss"]), rel=1e-6)
        assert float(out["loss"]) == pytest.approx(no_mix + share * 10.0 * float(full["mix_loss"]), rel=1e-5)


def test_adversary_loop_gives_the_unrolled_updates(data, monkeypatch):
    """The adversary's updates run in a tf.while_loop: the same weights as the same updates unrolled (the path
    taken under a tf.distribute strategy)."""
    import tensorflow as tf
    x, z = data
    nets = []
    for unrolled in (False, True):
        monkeypatch.setattr(tf.distribute, "has_strategy", lambda unrolled=unrolled: unrolled)
        keras.utils.set_random_seed(0)
        net = FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, seed=0, adversary_steps=3)
        net.build()
        # Keras's Adam on both paths: under a strategy the default FusedAdam takes Keras's update (test_optim)
        net.compile(keras.optimizers.Adam(1e-2), keras.optimizers.Adam(1e-2))
        step = tf.function(net.train_step, autograph=False)
        for _ in range(3):
            step(((x, z),))
        ops = {op.type for op in step.get_concrete_function(((x, z),)).graph.get_operations()}
        assert ("While" in ops or "StatelessWhile" in ops) != unrolled
        nets.append(snapshot(net.weights))
    for a, b in zip(*nets):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("adversary_input", ["latent", "all"])
def test_shared_encoder_pass_gives_the_separate_passes_weights(data, adversary_input):
    """``adversary_pass="shared"`` runs the encoder once per step: the adversary's and the autoencoder's updates
    are those of the paper's two passes (the same activations), and batch normalisation's moving statistics take
    one update per step instead of two (moving = m·moving + (1 − m)·batch statistic, applied once)."""
    import tensorflow as tf
    x, z = data
    nets = {}
    for adversary_pass in ("separate", "shared"):
        keras.utils.set_random_seed(0)
        net = FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, seed=0, adversary_steps=2,
                             adversary_input=adversary_input, adversary_pass=adversary_pass)
        net.compile(keras.optimizers.Adam(1e-2), keras.optimizers.Adam(1e-2))
        tf.function(net.train_step, autograph=False)(((x, z),))
        nets[adversary_pass] = net
    separate, shared = nets["separate"], nets["shared"]
    for a, b in zip(snapshot(separate.trainable_weights), snapshot(shared.trainable_weights)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    norm = shared.encoder.norms[0]
    assert norm is not None and float(np.abs(np.asarray(norm.moving_mean)).max()) > 0
    # from a zero moving mean: one update leaves (1 - m)·mean, two leave (1 - m)·mean·(1 + m)
    np.testing.assert_allclose(np.asarray(separate.encoder.norms[0].moving_mean),
                               np.asarray(norm.moving_mean) * (1 + norm.momentum), rtol=1e-5, atol=1e-7)


def test_fe_tied_decoder_has_no_kernels_of_its_own():
    net = FixedEffectsAE(20, 3, hidden=(16, 8), latent_dim=4)
    net.build()
    names = [w.path for w in net.decoder.trainable_weights]
    assert names and all(n.endswith("bias") for n in names)


def test_re_loss_has_mean_kl_and_no_kl_at_validation(data):
    x, z = data
    net = RandomEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, w_recon=110.0, w_clus=0.1, seed=0)
    net.build()
    train = net.loss_terms((x, z), True)
    assert float(train["kl"]) > 0
    assert len(net.encoder.losses) == 4 and len(net.decoder.losses) == 6     # 2 per CSB block
    expected_kl = np.mean([float(v) for v in net.encoder.losses]) + np.mean([float(v) for v in net.decoder.losses])
    # means of 4 and 6 float32 terms, recomputed in float64
    assert float(train["kl"]) == pytest.approx(expected_kl, rel=0, abs=sum_atol(expected_kl, n=10))
    val = net.loss_terms((x, z), False)
    assert float(val["kl"]) == 0.0
    recon, batch = 110 * float(val["recon_loss"]), 0.1 * float(val["batch_loss"])
    assert float(val["loss"]) == pytest.approx(recon + batch, rel=0, abs=sum_atol(recon, batch))


def test_re_double_selu_switch(data):
    x, z = data
    a = RandomEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, double_selu=True, seed=0)
    b = RandomEffectsAE(20, 3, hidden=(16, 8), latent_dim=4, double_selu=False, seed=0)
    a.build(), b.build()
    assert a.decoder.dense[0].activation.__name__ == "selu"
    assert b.decoder.dense[0].activation.__name__ == "linear"


def test_autoencoder_trains_down(data):
    x, _ = data
    net = AutoEncoder(20, hidden=(16, 8), latent_dim=4)
    net.build()
    net.compile(keras.optimizers.Adam(1e-2))
    first = float(net.loss_terms((x,), False)["loss"])
    for _ in range(50):
        net.train_step(((x,),))
    assert float(net.loss_terms((x,), False)["loss"]) < first
