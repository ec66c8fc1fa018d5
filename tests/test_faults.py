"""Nothing is lost, results are reproducible: runs killed (SIGKILL) during training and during output writing.

* A training run in a subprocess (on a backed, read-only AnnData) is killed half-way through writing FE epoch
  3's checkpoint (weights written, optimiser state not); ``train(checkpoint_dir=...)`` resumes it here, crashes
  again half-way through RE epoch 3's checkpoint, resumes again: the result is **bitwise identical** to an
  uninterrupted in-memory run (same epochs, history, latents, scores).
* Rerunning a finished checkpointed run changes nothing; same seed, same data: same latents and scores.
* A subprocess killed while it writes a counterfactual file and while it saves a model leaves the old
  outputs intact (never a torn file or folder); rerunning gives complete, correct outputs.
* The input files are never modified (sha256 before / after everything, including the killed runs).

Everything is tiny (300 cells x 30 genes, hidden [16], 5 epochs of 4 minibatches).
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import h5py
import numpy as np
import pandas as pd
import pytest

import scmedal_lite as sm

ARCH = dict(hidden=[16], latent_dim=4, seed=0)
TRAIN = dict(max_epochs=5, batch_size=64, patience=50, progress=False)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def start(script, *args):
    """Run ``script`` in a fresh Python (same interpreter, this checkout); stdout is a pipe of text lines."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    errors = tempfile.TemporaryFile("w+")          # a file, not a pipe: TensorFlow's logs never block the child
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=errors, text=True)
    proc.errors = errors
    return proc


def wait_for(proc, *markers, timeout=300):
    """Wait until ``proc`` has printed every line in ``markers`` (any order); fail with its stderr if it exits
    first or takes longer than ``timeout`` seconds."""
    seen = getattr(proc, "seen", None)
    if seen is None:
        seen = proc.seen = []

        def read():
            for line in proc.stdout:
                seen.append(line.strip())
        threading.Thread(target=read, daemon=True).start()
    deadline = time.time() + timeout
    while not set(markers) <= set(seen):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"subprocess ended or hung before {markers} (rc {proc.wait()}, printed {seen}):\n"
                        f"{stderr_of(proc)}")
        time.sleep(0.05)


def stderr_of(proc):
    proc.errors.seek(0)
    return proc.errors.read()[-3000:]


def kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


# A training run killed (by the parent, SIGKILL) in the middle of writing FE epoch 3's checkpoint: that epoch's
# weights file is written, its optimiser state and state.json are not.
TRAIN_AND_HANG = """
    import sys, time, anndata, numpy as np
    import scmedal_lite as sm
    path, ckpt = sys.argv[1], sys.argv[2]
    savez, calls = np.savez, {"n": 0}
    def slow_savez(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            print("TORN", flush=True)
            time.sleep(600)
        return savez(*args, **kwargs)
    np.savez = slow_savez
    adata = anndata.read_h5ad(path, backed="r")      # read-only on disk
    sm.SCMEDAL(adata, "batch", "celltype", **%(arch)r).train(checkpoint_dir=ckpt, **%(train)r)
    print("FINISHED", flush=True)
""" % {"arch": ARCH, "train": TRAIN}  # noqa: UP031  (a script template; its braces are code)

# Saves a model over an existing one and streams counterfactuals over an existing file, in two threads that
# block half-way (weights written, setup.json not; 5 chunks written, not all): the parent kills it there.
# It imports at once (in parallel with the other work) and starts when the file ``go`` appears.
WRITE_AND_HANG = """
    import os, sys, threading, time, anndata
    import scmedal_lite as sm
    from scmedal_lite.model import SCMEDAL
    path, model_dir, out_model, out_cf, go = sys.argv[1:6]
    while not os.path.exists(go):
        time.sleep(0.05)
    adata = anndata.read_h5ad(path)
    model = SCMEDAL.load(model_dir, adata)
    big = anndata.concat([adata] * 20, index_unique="-")        # 6,000 cells x 3 batches
    setup = SCMEDAL._setup
    def slow_setup(self):
        print("SAVE_MID", flush=True)
        time.sleep(600)
        return setup(self)
    SCMEDAL._setup = slow_setup
    chunks = SCMEDAL.iter_counterfactuals
    def slow_chunks(self, *args, **kwargs):
        for i, item in enumerate(chunks(self, *args, **kwargs)):
            if i == 5:
                print("CF_MID", flush=True)
                time.sleep(600)
            yield item
    SCMEDAL.iter_counterfactuals = slow_chunks
    threading.Thread(target=model.save, args=(out_model,), kwargs={"overwrite": True}, daemon=True).start()
    threading.Thread(target=model.write_counterfactuals, args=(out_cf, big), daemon=True,
                     kwargs={"chunk_size": 500, "progress": False}).start()
    time.sleep(600)
"""


def _stop(proc):
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """counts.h5ad (raw counts) -> read, prepare, split -> prepared.h5ad (log-normalised), with their hashes.

    The split has 256 training cells, so every minibatch of 64 is full (fewer graph traces: a faster test)."""
    root = tmp_path_factory.mktemp("faults")
    counts = sm.datasets.synthetic(n_cells=300, n_genes=30, n_batches=3, n_celltypes=3, seed=2)
    counts.write_h5ad(root / "counts.h5ad")
    hashes = {"counts": sha256(root / "counts.h5ad")}
    adata = sm.read_h5ad(root / "counts.h5ad")
    sm.pp.prepare(adata, batch_key="batch")
    split = np.where(np.random.default_rng(0).permutation(adata.n_obs) < 256, "train", "val")
    adata.obs["split"] = pd.Categorical(split)
    adata.write_h5ad(root / "prepared.h5ad")
    hashes["prepared"] = sha256(root / "prepared.h5ad")
    return root, hashes, adata


@pytest.fixture(scope="module")
def killed_training(files):
    """Start the run that will be killed now, so that it trains while the reference trains in this process."""
    root, _, _ = files
    proc = start(TRAIN_AND_HANG, root / "prepared.h5ad", root / "ckpt_killed")
    yield proc
    _stop(proc)


@pytest.fixture(scope="module")
def writer(files):
    """Start (and let import) the process that will be killed while it writes outputs."""
    root, _, _ = files
    proc = start(WRITE_AND_HANG, root / "prepared.h5ad", root / "model", root / "out_model", root / "out_cf.h5",
                 root / "go")
    yield proc
    _stop(proc)


@pytest.fixture(scope="module")
def reference(files, killed_training, writer):
    """The uninterrupted run (in memory, this process): model, latents, saved model, counterfactual file."""
    root, _, adata = files
    model = sm.SCMEDAL(adata, "batch", "celltype", **ARCH).train(checkpoint_dir=root / "ckpt_ref", **TRAIN)
    latents = {k: model.get_latent(k) for k in ("fe", "re")}
    model.save(root / "model")
    model.write_counterfactuals(root / "cf.h5", adata, progress=False)
    return model, latents


def losses(history):
    """A history without its wall-clock columns (seconds per epoch differ from run to run)."""
    return history.drop(columns=[c for c in history.columns if "second" in c or "time" in c])


def scores(latents, adata):
    emb = {f"scMEDAL-{k.upper()}": v for k, v in latents.items()}
    return sm.metrics.score_embeddings(emb, adata.obs["batch"].to_numpy(), adata.obs["celltype"].to_numpy(),
                                       metrics=["asw", "batch_asw_scib", "knn_inv_simpson", "knn_batch_fraction"])


class Crash(Exception):
    pass


def test_run_killed_twice_resumes_bitwise_identical(files, killed_training, reference, monkeypatch):
    """SIGKILL while FE epoch 3's checkpoint is half written (other process, backed data); resume here; crash
    again while RE epoch 3's checkpoint is half written; resume again: identical to the uninterrupted run."""
    root, _, adata = files
    ref_model, ref_latents = reference
    ckpt = root / "ckpt_killed"
    wait_for(killed_training, "TORN")
    kill(killed_training)
    assert json.load(open(ckpt / "fe" / "state.json"))["epochs_done"] == 2
    assert (ckpt / "fe" / "weights-3.weights.h5").exists()          # epoch 3's weights: written, not committed
    assert not (ckpt / "re").exists()

    real_savez, calls = np.savez, {"n": 0}

    def savez(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == (TRAIN["max_epochs"] - 2) + 3:              # FE epochs 3..5 done, then RE epoch 3
            raise Crash
        return real_savez(*args, **kwargs)

    backed = sm.read_h5ad(root / "prepared.h5ad", backed="r")          # resume on the backed file
    monkeypatch.setattr(np, "savez", savez)
    with pytest.raises(Crash):
        sm.SCMEDAL(backed, "batch", "celltype", **ARCH).train(checkpoint_dir=ckpt, **TRAIN)
    monkeypatch.setattr(np, "savez", real_savez)
    assert json.load(open(ckpt / "fe" / "state.json"))["epochs_done"] == TRAIN["max_epochs"]
    assert json.load(open(ckpt / "re" / "state.json"))["epochs_done"] == 2

    resumed = sm.SCMEDAL(backed, "batch", "celltype", **ARCH).train(checkpoint_dir=ckpt, **TRAIN)
    for kind in ("fe", "re"):
        assert resumed.trained[kind]["epochs_run"] == ref_model.trained[kind]["epochs_run"] == TRAIN["max_epochs"]
        assert resumed.trained[kind]["best_epoch"] == ref_model.trained[kind]["best_epoch"]
        pd.testing.assert_frame_equal(losses(resumed.history[kind]), losses(ref_model.history[kind]))
        np.testing.assert_array_equal(resumed.get_latent(kind, adata), ref_latents[kind])   # bitwise
    pd.testing.assert_frame_equal(scores({k: resumed.get_latent(k) for k in ("fe", "re")}, adata),
                                  scores(ref_latents, adata))
    assert sorted(os.listdir(ckpt / "re")) == ["state-5.npz", "state.json", "weights-5.weights.h5"]


def test_same_seed_same_scores_and_rerun_on_a_finished_checkpoint_changes_nothing(files, reference):
    root, _, adata = files
    ref_model, ref_latents = reference
    np.testing.assert_array_equal(ref_model.get_latent("re"), ref_latents["re"])      # inference is deterministic
    pd.testing.assert_frame_equal(scores(ref_latents, adata), scores(ref_latents, adata))
    again = sm.SCMEDAL(adata, "batch", "celltype", **ARCH).train(checkpoint_dir=root / "ckpt_ref", **TRAIN)
    for kind in ("fe", "re"):
        np.testing.assert_array_equal(again.get_latent(kind), ref_latents[kind])
        pd.testing.assert_frame_equal(losses(again.history[kind]), losses(ref_model.history[kind]))


def test_kill_while_saving_model_and_writing_counterfactuals_loses_nothing(files, reference, writer):
    root, hashes, adata = files
    ref_model, ref_latents = reference
    out_model, out_cf = root / "out_model", root / "out_cf.h5"
    ref_model.save(out_model)                                        # the "old" outputs a rerun replaces
    ref_model.write_counterfactuals(out_cf, adata[:50], ["batch0"], progress=False)
    old_setup, old_cf = sha256(out_model / "setup.json"), sha256(out_cf)

    (root / "go").touch()
    wait_for(writer, "SAVE_MID", "CF_MID")
    leftovers = sorted(p.name for p in root.iterdir() if p.name.endswith(".tmp"))
    assert any(n.startswith(".out_model.") for n in leftovers) and any(n.startswith(".out_cf.h5.") for n in leftovers)
    kill(writer)

    # The targets are the old, complete versions: never a torn file or a folder without setup.json.
    assert sha256(out_model / "setup.json") == old_setup
    old = sm.SCMEDAL.load(out_model, adata)
    np.testing.assert_array_equal(old.get_latent("fe"), ref_latents["fe"])
    assert sha256(out_cf) == old_cf
    with h5py.File(out_cf) as f:
        assert f["counterfactuals"].shape == (1, 50, adata.n_vars)
    # What a kill leaves behind is hidden temporaries only, never read; a rerun writes complete outputs.
    assert all(n.startswith(".") for n in os.listdir(root) if n.endswith(".tmp"))
    ref_model.save(out_model, overwrite=True)
    path = ref_model.write_counterfactuals(out_cf, adata, progress=False)
    again = sm.SCMEDAL.load(out_model, adata)
    np.testing.assert_array_equal(again.get_latent("re"), ref_latents["re"])
    with h5py.File(path) as f:
        values, batches = f["counterfactuals"][:], [b.decode() for b in f["batches"][:]]
    assert batches == ref_model.batch_categories
    for i, b in enumerate(batches):
        np.testing.assert_array_equal(values[i], ref_model.counterfactual(adata, b).X)   # same chunks: bitwise
    with h5py.File(root / "cf.h5") as f:                             # the reference run's file is complete too
        np.testing.assert_array_equal(f["counterfactuals"][:], values)


def test_existing_outputs_are_not_overwritten_without_the_flag(files, reference):
    root, _, _ = files
    ref_model, _ = reference
    with pytest.raises(sm.InputError, match="already exists; pass overwrite=True"):
        ref_model.save(root / "model")
    (root / "not_empty").mkdir()
    (root / "not_empty" / "notes.txt").write_text("mine")
    with pytest.raises(sm.InputError, match="already exists"):
        ref_model.save(root / "not_empty")
    assert (root / "not_empty" / "notes.txt").read_text() == "mine"


def test_input_files_never_modified(files, reference):
    """Runs last in this module: read, prepare, train (killed, resumed, torn), save, counterfactuals are done."""
    root, hashes, _ = files
    assert sha256(root / "counts.h5ad") == hashes["counts"]
    assert sha256(root / "prepared.h5ad") == hashes["prepared"]


def test_rerun_after_early_stopping_does_not_train_further(tmp_path):
    """A checkpointed run that stopped early is finished: running it again must not add epochs."""
    import keras

    from scmedal_lite.networks import AutoEncoder
    from scmedal_lite.training import fit_network, seed_everything

    x = np.random.default_rng(0).random((64, 6)).astype("float32")

    def run():
        seed_everything(0)
        net = AutoEncoder(6, hidden=(4,), latent_dim=2)
        net.build()
        net.compile(optimizer=keras.optimizers.Adam(0.3))
        history, best = fit_network(net, (x[:48],), (x[48:],), epochs=40, batch_size=48, patience=1,
                                    progress=False, checkpoint_dir=str(tmp_path / "ckpt"))
        return history, best, [w.numpy() for w in net.weights]

    first, best, weights = run()
    assert len(first) < 40                                            # it did stop early
    again, best_again, weights_again = run()
    assert len(again) == len(first) and best_again == best
    pd.testing.assert_frame_equal(losses(again), losses(first))
    for a, b in zip(weights, weights_again):
        np.testing.assert_array_equal(a, b)
