"""Scratch probes of the FE network, switched on by ``SCMEDAL_PROBE`` when this folder is on ``PYTHONPATH``
(Python imports ``sitecustomize`` at start-up, so the benchmark's worker processes get the probe too).
Not part of the package: each probe patches one piece of :mod:`scmedal_lite` to test why the FE network,
trained as a conditional VAE (``fe={"w_gen": 0, "w_mix": 0}, fe_design={"latent": "variational"}``), keeps
the batch in its latent where scVI on the same input does not (book/method.md, "Stop 58").

- ``untied``: the decoder's layers get kernels of their own instead of the encoder's transposed ones.
- ``library``: the decoder's output is a softmax over genes times the cell's observed total (scVI's
  library size, on the networks' scaled input).
- ``covariates``: each decoder layer adds the batch's own shift (a plain weight per batch and unit, as scVI's
  one-hot covariates) instead of the batch's random scale and shift (no scale, no draw, no KL term).
- ``per_gene``: the reconstruction's gradient weighs each gene by the inverse of its squared error in the
  minibatch (a Gaussian decoder with a variance per gene, as scVI's ``dispersion="gene"``); its value stays
  the MSE, so the variational latent's KL weight is unchanged.

Example::

    PYTHONPATH=benchmarks/probes SCMEDAL_PROBE=untied python benchmarks/integration.py --datasets pancreas \\
        --methods fe --overrides '{"fe": {"w_gen": 0, "w_mix": 0}, "fe_design": {"latent": "variational"}}'
"""

import os

PROBE = os.environ.get("SCMEDAL_PROBE", "")
if PROBE not in ("", "untied", "library", "covariates", "per_gene"):
    raise SystemExit(f"SCMEDAL_PROBE must be one of untied, library, covariates, per_gene; got {PROBE!r}")

if PROBE == "untied":
    import keras
    from keras import ops

    import scmedal_lite.layers as layers

    def _build(self, input_shape):
        self.own_kernel = self.add_weight(name="own_kernel", shape=(self.source.units, self.units),
                                          initializer=keras.initializers.GlorotUniform(seed=1234 + self.units))
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    def _call(self, inputs):
        return self.activation(ops.matmul(inputs, self.own_kernel) + self.bias)

    layers.TiedDenseTranspose.build, layers.TiedDenseTranspose.call = _build, _call

elif PROBE == "library":
    from keras import ops

    import scmedal_lite.networks as networks

    _totals = {}
    _encode, _decode = networks.Encoder.call, networks.RandomEffectsTiedDecoder.call

    def _encoder_call(self, x, training=False):
        _totals["last"] = ops.sum(ops.cast(x, "float32"), axis=1, keepdims=True)
        return _encode(self, x, training)

    def _decoder_call(self, inputs, training=False, sample=None):
        return ops.softmax(_decode(self, inputs, training, sample), axis=-1) * _totals["last"]

    networks.Encoder.call, networks.RandomEffectsTiedDecoder.call = _encoder_call, _decoder_call

elif PROBE == "covariates":
    from keras import ops

    import scmedal_lite.layers as layers

    def _shift_only(self, inputs, training=False, sample=None):
        x, z = inputs
        if self.norm is not None:
            x = self.norm(x, training=training)
        return x + ops.matmul(ops.cast(z, self.beta.loc.dtype), self.beta.loc)

    layers.ClusterScaleBias.call = _shift_only

elif PROBE == "per_gene":
    from keras import ops

    import scmedal_lite.networks as networks

    def _per_gene_mse(x, x_hat):
        err = ops.square(networks._f32(x) - networks._f32(x_hat))
        mse = ops.stop_gradient(ops.mean(err))
        gene_var = ops.stop_gradient(ops.mean(err, axis=0)) + 0.1 * mse      # floored: no gene weighs > 10/MSE
        weighted = ops.mean(err / gene_var)
        return mse * weighted / ops.stop_gradient(weighted)

    networks._mse = _per_gene_mse
