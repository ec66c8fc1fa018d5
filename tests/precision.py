"""Float32 tolerances for comparing two results that reached the same numbers by different arithmetic paths.

What the package promises (``book/method.md``, "Reproducibility"):

- **bitwise** equality on one machine when the path is the same: same seed, same settings, same chunking, a
  resume from a checkpoint. Tests of that use ``assert_array_equal``.
- **float32 precision** across paths that reorder the arithmetic: another chunk or batch size, XLA against
  graph mode, another number of threads, another processor (AVX2 and AVX-512 kernels block matrix products
  differently). Tests of that use the tolerances below, never a hand-picked ``rtol=1e-5``.

Where the bound comes from: a float32 dot product of length ``n`` computed in any order has an error of at
most ``gamma_n * sum|x_i y_i|`` with ``gamma_n ~ n * u`` and ``u = eps / 2`` (Higham, *Accuracy and Stability
of Numerical Algorithms*, section 3.1). Two different summation orders can each sit at that bound with
opposite signs, so they may differ by ``n * eps`` relative to the *scale* of the terms (not to the result,
which can be close to zero after cancellation: hence an absolute part too). Through a chain of layers the
first-order errors add up: the chain's bound is ``eps * sum(fan_ins)``. The Higham bound is a worst case; real
differences are usually ``sqrt(n)`` times smaller, so the tolerance is honest without being loose.
"""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)          # 1.19e-7


def chain_rtol(*fan_ins: int) -> float:
    """Relative bound for results of a chain of float32 dot products of lengths ``fan_ins``."""
    return EPS32 * float(sum(int(n) for n in fan_ins))


def network_fan_ins(n_genes: int, hidden, latent_dim: int, n_batches: int = 0) -> list[int]:
    """Fan-ins of an encoder ``n_genes -> hidden -> latent`` plus its mirrored decoder; with ``n_batches``,
    one more product of that length per dense layer (the random-effects rows ``z @ U`` of the RE network)."""
    widths = [int(n_genes), *map(int, hidden), int(latent_dim)]
    encoder = widths[:-1]                         # each layer's input width
    decoder = list(reversed(widths[1:]))
    extra = [int(n_batches)] * (len(encoder) + len(decoder)) if n_batches else []
    return encoder + decoder + extra


def model_tolerance(model, scale: float = 1.0) -> dict:
    """``rtol``/``atol`` for outputs of ``model``'s networks computed along two different paths.

    ``scale`` is the size of the compared values (e.g. the span of the min-max scaling for outputs in
    log-normalised units), so an element near zero after cancellation is judged against the scale of the
    computation, not against its own tiny value.
    """
    cfg = model.config
    rtol = chain_rtol(*network_fan_ins(len(model.var_names), cfg["hidden"], cfg["latent_dim"],
                                       len(model.batch_categories)))
    return {"rtol": rtol, "atol": rtol * float(scale)}


def sum_atol(*terms: float, n: int = 2) -> float:
    """Absolute bound for a float32 sum of ``n`` terms (weights included) with magnitudes ``terms``."""
    return EPS32 * n * float(sum(abs(t) for t in terms))
