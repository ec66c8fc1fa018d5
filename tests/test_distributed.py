"""Data-parallel training with a tf.distribute strategy over two logical CPU devices (in a subprocess,
because logical devices must be configured before TensorFlow starts)."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import scmedal_lite as sm
    a = sm.datasets.synthetic(n_cells=600, n_genes=40, n_batches=3, seed=0)
    sm.pp.prepare(a, batch_key="batch")
    kw = dict(hidden=[32, 16], latent_dim=4, seed=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    m2 = sm.SCMEDAL(a, "batch", "celltype", **kw).train(max_epochs=40, strategy=strategy, progress=False)
    m1 = sm.SCMEDAL(a, "batch", "celltype", **kw).train(max_epochs=40, progress=False)
    for kind in ("fe", "re"):
        h1, h2 = m1.history[kind], m2.history[kind]
        assert h2["val_recon_loss"].iloc[-1] < 0.7 * h2["val_recon_loss"].iloc[0], (kind, h2)
        ratio = h2["val_recon_loss"].iloc[-1] / h1["val_recon_loss"].iloc[-1]
        print(kind, "recon ratio 2-replica / 1-device", round(float(ratio), 3))
        assert 0.5 < ratio < 2.0
        assert np.isfinite(m2.get_latent(kind)).all()
    print("OK")
""")


@pytest.mark.slow
def test_mirrored_strategy_on_two_cpu_devices():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
