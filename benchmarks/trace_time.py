"""What the FE training step costs to trace: the adversary's updates in a ``tf.while_loop`` against unrolled.

The default FE network updates its adversary 5 times per autoencoder step. Unrolled, the traced graph holds five
copies of the adversary's forward, backward and Adam update; in a ``tf.while_loop`` it holds one. Both give
identical weights (``tests/test_networks.py::test_adversary_loop_gives_the_unrolled_updates``). Every new
model, classification fold and ``add_batches`` call traces its steps again, so the trace is paid often.

Each variant runs in a fresh process (nothing cached between them), alternating, ``--rounds`` times: the first
call of the compiled train step (trace plus one step, 512 cells x 2,000 genes, 63 batches, the default FE) and
the median of the next 20 steps. Writes ``benchmarks/results/trace_time.{json,md}``.

    .venv/bin/python benchmarks/trace_time.py [--rounds 3]
"""

import argparse
import os
import statistics
import time

from fresh_process import alternate, machine, report, write

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("while_loop", "unrolled")


def measure(variant: str) -> dict:
    """One fresh-process measurement of ``variant`` (printed as JSON by ``--worker``)."""
    import numpy as np
    import tensorflow as tf

    from scmedal_lite import networks, training
    from scmedal_lite.presets import get_preset

    if variant == "unrolled":                       # the path taken under a tf.distribute strategy
        tf.distribute.has_strategy = lambda: True
    rng = np.random.default_rng(0)
    x = rng.random((1024, 2000), dtype=np.float32)
    z = np.eye(63, dtype="float32")[rng.integers(0, 63, 1024)]
    preset = get_preset("default")
    config = {"hidden": [512, 132], "latent_dim": 50, "fe": preset["fe"], "fe_design": preset["fe_design"],
              "fec_head": False}
    training.seed_everything(0)
    net = networks.build_network("fe", config, n_genes=2000, n_batches=63, seed=0)
    net.compile(learning_rate=1e-3)
    step = training.traced_once(net.train_step)
    tic = time.perf_counter()
    step(((x[:512], z[:512]),))
    first = time.perf_counter() - tic
    times = []
    for i in range(20):
        half = slice((i % 2) * 512, (i % 2 + 1) * 512)
        tic = time.perf_counter()
        logs = step(((x[half], z[half]),))
        float(logs["loss"])
        times.append(time.perf_counter() - tic)
    return {"first_call_s": first, "step_ms": 1000 * statistics.median(times), "loss": float(logs["loss"])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "trace_time"))
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        report(measure(args.worker))
        return
    load = {"start": list(os.getloadavg())}
    runs = alternate(__file__, VARIANTS, args.rounds)
    load["end"] = list(os.getloadavg())
    summary = {v: {"first_call_s_median": round(statistics.median(r["first_call_s"] for r in runs[v]), 2),
                   "step_ms_median": round(statistics.median(r["step_ms"] for r in runs[v]), 1),
                   "final_loss": runs[v][-1]["loss"], "rounds": runs[v]} for v in VARIANTS}
    ratio = summary["unrolled"]["first_call_s_median"] / summary["while_loop"]["first_call_s_median"]
    result = {"command": f"python benchmarks/trace_time.py --rounds {args.rounds}", "machine": machine(load),
              "variants": summary, "first_call_unrolled_over_while_loop": round(ratio, 2),
              "same_loss": summary["unrolled"]["final_loss"] == summary["while_loop"]["final_loss"]}
    write(args.out, result, "FE train step: tracing cost of the adversary loop",
          f"Command: `{result['command']}`; {os.cpu_count()} CPUs, load average {load}. Fresh process per "
          "measurement, variants alternating; medians over rounds.",
          ["adversary updates", "first call (trace + 1 step), s", "step, ms (median of 20)"],
          [[v, summary[v]["first_call_s_median"], summary[v]["step_ms_median"]] for v in VARIANTS],
          f"First call: unrolled / while_loop = {ratio:.2f}. Same final loss in both: {result['same_loss']}.")


if __name__ == "__main__":
    main()
