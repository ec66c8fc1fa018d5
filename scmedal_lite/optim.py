"""Adam with one fused kernel per weight: the optimiser every network's ``compile`` creates by default.

``keras.optimizers.Adam`` updates each weight with about ten TensorFlow operations (the moments, their bias
correction, the step), each a pass over the weight, plus a dozen scalar operations per weight for the bias
correction. :class:`FusedAdam` computes the bias-corrected step size once per update and hands each weight to
TensorFlow's ``ResourceApplyAdam`` kernel, which applies the same formula in one pass:

    m ← m + (g − m)(1 − β₁);  v ← v + (g² − v)(1 − β₂);  w ← w − α m / (√v + ε),  α = lr √(1 − β₂ᵗ) / (1 − β₁ᵗ)

The arithmetic is Keras's, so a run agrees with one under ``keras.optimizers.Adam`` to float32 rounding (not
bit for bit) and is as deterministic. The graph of a training step is smaller, so it traces in less time: about
0.5 s less per network on a 2-core machine, which counts because every model, cross-validation fold and
``add_batches`` call traces its own (chapter 4's cross-validation on 1,713 cells: 1.13x faster). A step's
arithmetic is the same, so steps themselves are about as fast (``benchmarks/fused_adam.py``). Everything else
is Keras's: EMA (``use_ema``), clipping, the iteration counter and the saved state. AMSGrad, a
``tf.distribute`` strategy and non-TensorFlow backends take Keras's own update.

>>> import keras, numpy as np
>>> w = keras.Variable(np.ones(3, "float32"))
>>> opt = FusedAdam(0.1); opt.build([w])
>>> _ = opt.apply_gradients([(np.ones(3, "float32"), w)])
>>> [round(float(x), 4) for x in keras.ops.convert_to_numpy(w)]
[0.9, 0.9, 0.9]
"""

from __future__ import annotations

import keras
import tensorflow as tf


class FusedAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` (same arguments and state) whose per-weight update is one fused kernel."""

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if self.amsgrad or tf.distribute.has_strategy() or keras.backend.backend() != "tensorflow":
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        step = tf.cast(self.iterations + 1, "float32")
        beta_1, beta_2 = tf.constant(self.beta_1, "float32"), tf.constant(self.beta_2, "float32")
        scalars = {"beta1_power": tf.pow(beta_1, step), "beta2_power": tf.pow(beta_2, step),
                   "lr": tf.cast(learning_rate, "float32"), "beta1": beta_1, "beta2": beta_2,
                   "epsilon": tf.constant(self.epsilon, "float32")}
        for grad, variable in zip(grads, trainable_variables):
            index = self._get_variable_index(variable)
            dtype = variable.dtype
            tf.raw_ops.ResourceApplyAdam(
                var=_handle(variable), m=_handle(self._momentums[index]), v=_handle(self._velocities[index]),
                grad=tf.cast(grad, dtype), **{k: tf.cast(v, dtype) for k, v in scalars.items()})


def _handle(variable):
    """The resource handle of a Keras (or TensorFlow) variable."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle
