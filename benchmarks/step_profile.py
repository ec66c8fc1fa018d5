"""Where one RE or FE training step spends its time: the full step against ablated copies of it.

One compiled train step (512 cells x 1,000 genes, 63 batches) of scMEDAL-RE and -FE, timed for several
variants built in one process and timed round-robin (each round runs every variant for 10 steps), so the
ratios hold on a noisy shared machine. The ablations switch parts of the RE network off to price them; they
are measurement devices, not models anyone should train:

- ``re``: the real RE step (graph mode, float32);
- ``re_xla``: the same step compiled with XLA (``jit_compile=True``);
- ``re_bfloat16``: mixed bfloat16;
- ``re_posterior_means``: no weight sampling (the random effects use their posterior means while training);
- ``re_batchnorm_only``: the cluster scale-and-bias blocks reduced to their BatchNorm (no random effects);
- ``re_dense_only``: neither BatchNorm nor random effects; only the dense layers remain;
- ``fe`` / ``fe_xla``: the FE step of the paper's design (``preset="paper"``: one adversary update on every
  encoder activation, tied decoder), as the authors' code trains it;
- ``fe_default``: the package's default FE step (five adversary updates on the latent, the random-effects
  decoder, the local-mixing term; ``book/method.md``, "What the default changes");
- ``fe_default_adv1`` / ``fe_default_tied`` / ``fe_default_nomix``: the default with one adversary update, with
  the plain tied decoder, and without the mixing term, to price each of them.

The dense floating-point work of a step (forward and backward) and the machine's matmul rate, measured in the
same run (as ``speed.py`` measures them), give the time a perfect implementation would need.
Writes ``benchmarks/results/step_profile.json``.

    .venv/bin/python benchmarks/step_profile.py [--rounds 9]
"""

import argparse
import contextlib
import os
import platform
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from fresh_process import processor
from speed import fe_cell_flops, matmul_rates, re_cell_flops  # benchmarks/speed.py, next to this script

from scmedal_lite import layers as L
from scmedal_lite.io import write_json
from scmedal_lite.networks import FixedEffectsAE, RandomEffectsAE, build_network
from scmedal_lite.presets import get_preset
from scmedal_lite.training import seed_everything

HERE = os.path.dirname(os.path.abspath(__file__))
CELLS, GENES, BATCHES = 512, 1000, 63
#: The default FE's ablations: changes to the default preset's ``fe_design`` and ``fe`` weights.
FE_DEFAULT_VARIANTS = {"fe_default": ({}, {}), "fe_default_adv1": ({"adversary_steps": 1}, {}),
                       "fe_default_tied": ({"decoder": "tied"}, {}), "fe_default_nomix": ({}, {"w_mix": 0.0})}


@contextlib.contextmanager
def patched(cls, name, func):
    """Temporarily replace ``cls.name`` (held while the step is traced; the traced graph keeps the change)."""
    original = getattr(cls, name)
    setattr(cls, name, func)
    try:
        yield
    finally:
        setattr(cls, name, original)


def ablation(variant):
    if variant == "re_posterior_means":
        call = L.RandomEffects.call
        return patched(L.RandomEffects, "call",
                       lambda self, z, training=False, **_: call(self, z, training=False))
    if variant == "re_batchnorm_only":
        return patched(L.ClusterScaleBias, "call",
                       lambda self, inputs, training=False, **_: self.norm(inputs[0], training=training))
    if variant == "re_dense_only":
        return patched(L.ClusterScaleBias, "call", lambda self, inputs, training=False, **_: inputs[0])
    return contextlib.nullcontext()


def build_step(variant, data):
    """Build, compile and trace the train step of ``variant``; return the compiled step."""
    seed_everything(0)
    keras.config.set_dtype_policy("mixed_bfloat16" if variant.endswith("bfloat16") else "float32")
    with ablation(variant):
        if variant in FE_DEFAULT_VARIANTS:
            net = build_network("fe", fe_default_config(variant), n_genes=GENES, n_batches=BATCHES, seed=0)
            net.compile(learning_rate=1e-3)
        elif variant.startswith("fe"):
            net = FixedEffectsAE(GENES, BATCHES)
            net.compile(learning_rate=1e-3)
        else:
            net = RandomEffectsAE(GENES, BATCHES, seed=0)
            net.compile(learning_rate=1e-3)
        step = tf.function(net.train_step, jit_compile=variant.endswith("xla"))
        for _ in range(3):                               # trace (and compile) under the patch
            float(step(data)["loss"])
    keras.config.set_dtype_policy("float32")
    return step


def fe_default_config(variant):
    """The network configuration of a default-FE ``variant``: the default preset with the variant's changes."""
    preset, (design, weights) = get_preset("default"), FE_DEFAULT_VARIANTS[variant]
    return {"hidden": [512, 132], "latent_dim": 50, "fe": {**preset["fe"], **weights},
            "fe_design": {**preset["fe_design"], **design}, "fec_head": False}


def step_flops(kind):
    """Dense floating-point work of one training step of ``kind`` (forward and backward), as speed.py counts it
    (:func:`speed.fe_cell_flops` for FE: the paper's design for ``fe``, else the variant's configuration;
    :func:`speed.re_cell_flops` for RE)."""
    if kind.startswith("fe"):
        config = fe_default_config(kind) if kind in FE_DEFAULT_VARIANTS else get_preset("paper")
        return CELLS * fe_cell_flops(GENES, BATCHES, config, CELLS)[0]
    return CELLS * re_cell_flops(GENES, BATCHES)[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "step_profile"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.random((CELLS, GENES), dtype=np.float32)
    z = np.eye(BATCHES, dtype=np.float32)[rng.integers(0, BATCHES, CELLS)]
    data = ((tf.constant(x), tf.constant(z)),)
    variants = ["re", "re_xla", "re_bfloat16", "re_posterior_means", "re_batchnorm_only", "re_dense_only",
                "fe", "fe_xla", *FE_DEFAULT_VARIANTS]
    steps = {v: build_step(v, data) for v in variants}
    times = {v: [] for v in variants}
    rates = []
    for _ in range(args.rounds):
        rates.append(matmul_rates()["tf_float32"])
        for v in variants:
            t = time.perf_counter()
            for _ in range(10):
                out = steps[v](data)
            float(out["loss"])
            times[v].append((time.perf_counter() - t) / 10 * 1000)
    rate = float(np.median(rates))
    rows = {}
    for v in variants:
        ms = float(np.median(times[v]))
        kind = v if v in FE_DEFAULT_VARIANTS else v[:2]
        ideal = step_flops(kind) / rate / 1e6
        rows[v] = {"ms_per_step_median": round(ms, 2), "ms_all_rounds": [round(t, 2) for t in times[v]],
                   "vs_re": round(ms / np.median(times["re"]), 3),
                   "vs_fe": round(ms / np.median(times["fe"]), 3),
                   "dense_gflop_per_step": round(step_flops(kind) / 1e9, 2),
                   "ideal_ms_at_matmul_rate": round(ideal, 2), "fraction_of_matmul_rate": round(ideal / ms, 3)}
    result = {"command": " ".join(["python benchmarks/step_profile.py", *sys.argv[1:]]),
              "machine": {"processor": processor(), "cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average": os.getloadavg(),
                          "tensorflow": tf.__version__, "keras": keras.__version__},
              "tf_float32_matmul_gflops": round(rate, 1), "steps": rows}
    write_json(args.out + ".json", result)
    print(f"matmul {rate:.0f} GFLOP/s")
    for v, r in rows.items():
        print(f"{v:20s} {r['ms_per_step_median']:6.1f} ms  x{r['vs_re']:.2f} of RE  "
              f"{100 * r['fraction_of_matmul_rate']:.0f}% of matmul rate")


if __name__ == "__main__":
    main()
