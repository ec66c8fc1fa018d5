"""The ``"mixing"`` preset and the FE designs it switches on (book/method.md, "The mixing preset"): the memory of
recent training latents, the set-level adversary, the neighbourhood-measured mixing term, the
counterfactual-consistency term, the learning rate's decay and early stopping from the warm-up's end."""

import math

import numpy as np
import pytest
from test_model import SMALL, planted_batches

import scmedal_lite as sm
from scmedal_lite.latent_memory import MAX_COUNTED, LatentMemory, counting_stride, reach_neighbours
from scmedal_lite.metrics import knn_same_batch_fraction

ONE_HOT = np.eye(3, dtype="float32")


def test_memory_overwrites_its_oldest_rows_and_never_picks_an_empty_one():
    memory = LatentMemory(size=3, width=1, n_batches=3)
    near = memory.look_up(np.zeros((1, 1), "float32"), ONE_HOT[[0]])
    assert np.all(np.asarray(near["d2"]) >= 1e8)                   # nothing remembered yet
    np.testing.assert_allclose(memory.batch_share(near, k=2), [1 / 3], rtol=1e-6)
    memory.remember(np.array([[1.0], [2.0]], "float32"), ONE_HOT[[0, 1]])
    memory.remember(np.array([[3.0], [4.0]], "float32"), ONE_HOT[[2, 0]])      # 4 rows into 3: the first goes
    assert sorted(np.asarray(memory.latents)[:, 0].tolist()) == [2.0, 3.0, 4.0]
    assert int(memory.pointer.numpy()) == 1


def test_memory_set_mean_reads_only_the_cells_own_batch_and_make_up_any_batch():
    memory = LatentMemory(size=8, width=1, n_batches=3)
    memory.remember(np.array([[0.1], [0.2], [0.3], [9.0]], "float32"), ONE_HOT[[1, 1, 2, 0]])
    h, z = np.array([[0.0], [0.0]], "float32"), ONE_HOT[[0, 1]]
    near = memory.look_up(h, z)
    # batch 0's one remembered latent is far (9.0), but it is the only one of its batch: (0 + 9) / 2
    np.testing.assert_allclose(np.asarray(memory.same_batch_mean(h, near, m=2))[:, 0], [4.5, 0.1], rtol=1e-6)
    # the 3 nearest of either cell: two of batch 1, one of batch 2; none of batch 0
    np.testing.assert_allclose(memory.batch_share(near, k=3), [0, 2 / 3], rtol=1e-6)


def test_a_wide_neighbourhood_is_counted_on_every_stride_th_remembered_latent():
    """Few batches make the mixing term's neighbourhood wide (1.54 x the rows per batch: 8,410 of 16,384 with 3
    batches); above MAX_COUNTED it is counted on every s-th row, which bounds the search's cost, while every
    neighbourhood up to MAX_COUNTED (COVID's 63 samples: 400; the pancreas atlas: 202 and 1,009) stays exact."""
    memory = LatentMemory(size=6, width=1, n_batches=3)
    # rows 0..5 at distances 0..5 from the cell; batches 0, 1, 0, 2, 1, 1
    memory.remember(np.arange(6, dtype="float32")[:, None], ONE_HOT[[0, 1, 0, 2, 1, 1]])
    near = memory.look_up(np.zeros((1, 1), "float32"), ONE_HOT[[0]])
    np.testing.assert_allclose(memory.batch_share(near, k=4), [2 / 4], rtol=1e-6)       # rows 0-3: 0, 1, 0, 2
    # stride 2 reads rows 0, 2, 4 (batches 0, 0, 1); k = 4 becomes its 2 nearest there: rows 0 and 2
    np.testing.assert_allclose(memory.batch_share(near, k=4, stride=2), [1.0], rtol=1e-6)
    # stride 3 reads rows 0 and 3 (batches 0, 2); round(6 / 3) = 2 nearest
    np.testing.assert_allclose(memory.batch_share(near, k=6, stride=3), [0.5], rtol=1e-6)
    for rows, batches in [(16384, 63), (2620, 20), (2620, 4)]:
        assert counting_stride(reach_neighbours(1.54, rows, batches)) == 1
    for batches in (1, 2, 3, 8):
        k = reach_neighbours(1.54, 16384, batches)
        stride = counting_stride(k)
        assert stride > 1 and round(k / stride) <= MAX_COUNTED < round(k / (stride - 1))


def test_fe_designs_that_cannot_work_together_are_refused_with_the_fix(synth):
    cases = [({"fe_design": {"adversary_set": 4, "adversary_input": "all"}}, "adversary_input"),
             ({"fe_design": {"mix_reach": 0.02, "adversary_pass": "separate"}}, "adversary_pass"),
             ({"fe": {"w_cycle": 10}, "fe_design": {"decoder": "tied"}}, "random_effects"),
             ({"fe_design": {"lr_decay_to": 1.5}}, "at most 1"),
             ({"fe_design": {"mix_reach": -1.0}}, "mix_reach"),
             ({"fe_design": {"adversary_set": -1}}, "adversary_set"),
             ({"fe_design": {"stop_from": "middle"}}, "stop_from"),
             ({"schedule": {"fe_patience_steps": -5}}, "fe_patience_steps")]
    for overrides, message in cases:
        with pytest.raises(sm.InputError, match=message):
            sm.SCMEDAL(synth, "batch", "celltype", **overrides)
    for name in ("default", "paper"):                              # everything off outside the preset
        design, fe = sm.presets.PRESETS[name]["fe_design"], sm.presets.PRESETS[name]["fe"]
        assert design.get("adversary_set", 0) == 0 and design.get("mix_reach", 0) == 0
        assert design.get("lr_decay_to", 1) == 1 and fe.get("w_cycle", 0) == 0


def test_mixing_preset_mixes_planted_batches_and_sizes_its_designs_by_the_data():
    """Known answer: 8 batches with strong planted shifts in 3 cell types. The preset's FE brings the test cells'
    same-batch neighbours close to their value under perfect mixing (measured: 0.144 against 0.123) and keeps
    the cell types apart; its designs are sized by the run: a memory of one latent per training cell (16,384
    rows would hold stale copies of each), the make-up's reach from the rows per batch (a reach below a
    batch's rows left the batches apart: 0.75), the learning rate's decay over the budget (it ends at 5 %),
    the whole budget trained, the best epoch from the warm-up's end on."""
    adata, test, batch, cell_type = planted_batches(n_cells=1200, n_batches=8)
    model = sm.SCMEDAL(adata, "batch", "celltype", preset="mixing", seed=0, fe={"w_keep": 0}, **SMALL)
    model.train(max_epochs=200, which=("fe",), progress=False)
    net, history = model.networks["fe"], model.history["fe"]
    n_train = int(model.train_mask.sum())
    steps = sm.training.steps_per_epoch(n_train, 512)
    assert net.mix_reach_neighbours == round(1.54 * n_train / 8)
    assert len(history) == 200                                      # FE's patience is its whole budget
    assert float(net.optimizer.learning_rate.numpy()) == pytest.approx(0.05 * 1e-3, rel=1e-3)
    assert model.trained["fe"]["best_epoch"] >= math.ceil(net.mix_warmup_steps / steps)
    assert history["cycle_loss"].iloc[-1] > 0 and history["mix_loss"].iloc[-1] >= 0
    assert np.count_nonzero(np.asarray(net.memory.batches).sum(axis=1)) == n_train
    z = model.get_latent("fe")[test]
    knn, expected = knn_same_batch_fraction(z, batch)
    assert knn < expected + 0.04, (knn, expected)
    assert knn_same_batch_fraction(z, cell_type)[0] > 0.97


def test_mixing_model_saves_and_loads_with_the_same_latent(tmp_path):
    adata, *_ = planted_batches(n_cells=600, n_batches=4)
    model = sm.SCMEDAL(adata, "batch", "celltype", preset="mixing", seed=0, **SMALL)
    model.train(max_epochs=3, which=("fe",), progress=False)
    model.save(tmp_path / "mixing")
    again = sm.SCMEDAL.load(tmp_path / "mixing", adata)
    assert again.config["fe_design"]["adversary_set"] == 8
    np.testing.assert_array_equal(again.get_latent("fe"), model.get_latent("fe"))


def test_interrupted_mixing_run_resumes_bitwise_identical(tmp_path):
    """The memory of training latents is saved with each checkpoint: a run stopped after epoch 3 and resumed
    gives the uninterrupted run's latent exactly (with the memory started empty it did not)."""
    adata, *_ = planted_batches(n_cells=600, n_batches=4)

    def model():
        return sm.SCMEDAL(adata, "batch", "celltype", preset="mixing", seed=0, **SMALL)

    reference = model().train(max_epochs=6, which=("fe",), progress=False)

    def crash(kind, epoch, logs):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model().train(max_epochs=6, which=("fe",), progress=False, checkpoint_dir=tmp_path, on_epoch_end=crash)
    resumed = model().train(max_epochs=6, which=("fe",), progress=False, checkpoint_dir=tmp_path)
    assert len(resumed.history["fe"]) == 6
    np.testing.assert_array_equal(np.asarray(resumed.networks["fe"].memory.latents),
                                  np.asarray(reference.networks["fe"].memory.latents))
    np.testing.assert_array_equal(resumed.get_latent("fe"), reference.get_latent("fe"))
    other, *_ = planted_batches(n_cells=400, n_batches=4)          # fewer training cells: another memory
    with pytest.raises(sm.InputError, match="new checkpoint_dir"):
        sm.SCMEDAL(other, "batch", "celltype", preset="mixing", seed=0, **SMALL).train(
            max_epochs=6, which=("fe",), progress=False, checkpoint_dir=tmp_path)
