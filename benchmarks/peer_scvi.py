"""scMEDAL-FE and -RE against scVI: seconds per epoch and time to the early-stopping point, one run, one machine.

Same real data (COVID PBMC, 1,000 HVGs, batch = sample_id) and the same fold-0 60/20/20 split for all three:
scMEDAL trains on the log-normalised, min-max scaled matrix; scVI on the raw counts of the same genes
(``layers["counts"]``), with the train / validation cells handed to it through ``external_indexing``.
Each model runs with its own defaults, as a user would call it:

- scMEDAL FE / RE: ``SCMEDAL(...).train()`` (batch 512, Adam 1e-3, step budget, early stopping on ``val_loss``);
- scVI: ``SCVI(adata).train(early_stopping=True)`` (batch 128, Adam 1e-3, scVI's max-epochs heuristic,
  early stopping on the validation ELBO with patience 45). scVI does not stop early by default; the flag is
  needed to have an early-stopping point at all.

Both test-split batch and cell-type ASW are reported so the times are read next to what they bought.
scVI is an optional extra: ``pip install torch==2.13.0`` (the CPU build; see toolchain notes) then
``pip install scvi-tools``. ``OMP_WAIT_POLICY=PASSIVE`` is set before torch loads: without it PyTorch runs
4-6x slower on these shared machines. Writes ``benchmarks/results/peer_scvi.{json,md}``.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/peer_scvi.py
"""

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import scmedal_lite as sm  # noqa: E402
from scmedal_lite.io import write_json, write_text  # noqa: E402
from scmedal_lite.metrics import score_embeddings  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def train_scvi(adata, train_idx, val_idx, test_idx, seed, max_epochs=None):
    """Train scVI with its defaults plus early stopping; return the fitted model and per-epoch wall times."""
    import scvi
    import torch
    from lightning.pytorch.callbacks import Callback

    class EpochClock(Callback):
        def __init__(self):
            self.starts, self.end = [], None

        def on_train_epoch_start(self, trainer, module):
            self.starts.append(time.perf_counter())

        def on_train_end(self, trainer, module):
            self.end = time.perf_counter()

    scvi.settings.seed = seed
    scvi.settings.progress_bar_style = "tqdm"
    data = adata.copy()
    scvi.model.SCVI.setup_anndata(data, layer="counts", batch_key="sample_id")
    model = scvi.model.SCVI(data)
    clock = EpochClock()
    t0 = time.perf_counter()
    model.train(max_epochs=max_epochs, early_stopping=True, accelerator="cpu", enable_progress_bar=False,
                datasplitter_kwargs={"external_indexing": [train_idx, val_idx, test_idx]},
                callbacks=[clock])
    total = time.perf_counter() - t0
    marks = clock.starts + [clock.end]
    per_epoch = np.diff(marks)
    history = model.history
    val_elbo = history["elbo_validation"]["elbo_validation"].to_numpy() if "elbo_validation" in history else []
    info = {
        "epochs_run": len(clock.starts),
        "max_epochs": int(model.trainer.max_epochs) if getattr(model, "trainer", None) else None,
        "best_epoch": int(np.argmin(val_elbo)) + 1 if len(val_elbo) else None,
        "seconds": total,
        "seconds_per_epoch_median": float(np.median(per_epoch[1:] if len(per_epoch) > 1 else per_epoch)),
        "batch_size": 128,
        "torch": torch.__version__, "scvi_tools": scvi.__version__, "torch_threads": torch.get_num_threads(),
    }
    latent = model.get_latent_representation(data[test_idx])
    return latent, info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scvi-max-epochs", type=int, default=None,
                    help="cap scVI's epochs (default: scVI's own heuristic)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "peer_scvi"))
    args = ap.parse_args()
    try:
        import scvi  # noqa: F401  (only checks the optional extra is there)
    except ImportError as err:
        raise SystemExit("scVI is an optional extra: `pip install torch==2.13.0` (CPU build) then "
                         f"`pip install scvi-tools` into this environment ({err}).") from err

    adata = sm.datasets.covid_pbmc()
    sm.pp.prepare(adata, batch_key="sample_id")
    sm.pp.split_cells(adata, batch_key="sample_id", labels_key="celltype_coarse", fold=0)
    split = adata.obs["split"].to_numpy()
    train_idx, val_idx, test_idx = (np.flatnonzero(split == s) for s in ("train", "val", "test"))

    rows, latents = {}, {}
    model = sm.SCMEDAL(adata, "sample_id", "celltype_coarse", seed=args.seed)
    for kind in ("fe", "re"):
        model.train(which=(kind,), seed=args.seed, progress=False)
        hist = model.history[kind]
        rows[f"scMEDAL-{kind.upper()}"] = {
            **{k: model.trained[kind][k] for k in ("epochs_run", "best_epoch", "seconds", "max_epochs", "batch_size")},
            "seconds_per_epoch_median": float(hist["seconds"].iloc[1:].median()),
        }
        latents[f"scMEDAL-{kind.upper()}"] = model.get_latent(kind)[test_idx]

    latents["scVI"], rows["scVI"] = train_scvi(adata, train_idx, val_idx, test_idx, args.seed, args.scvi_max_epochs)

    scores = score_embeddings(latents, adata.obs["sample_id"].to_numpy()[test_idx],
                              adata.obs["celltype_coarse"].to_numpy()[test_idx], metrics=["asw"])
    for _, r in scores.iterrows():
        rows[r["embedding"]][f"asw_{r['label']}"] = float(r["value"])
    for r in rows.values():
        r["train_cells_per_second"] = len(train_idx) * r["epochs_run"] / r["seconds"]
        r["seconds_vs_scvi"] = r["seconds"] / rows["scVI"]["seconds"]
    result = {
        "command": "OMP_WAIT_POLICY=PASSIVE python benchmarks/peer_scvi.py"
                   + (f" --scvi-max-epochs {args.scvi_max_epochs}" if args.scvi_max_epochs else ""),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()},
        "data": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx), "genes": adata.n_vars,
                 "batches": int(adata.obs["sample_id"].nunique())},
        "models": rows,
    }
    write_json(args.out + ".json", result)
    head = ("| model | batch | epochs run | best epoch | s / epoch (median) | s to stop | vs scVI | "
            "test batch ASW | test cell-type ASW |")
    lines = ["# Time per epoch and to the early-stopping point: scMEDAL FE / RE vs scVI", "",
             f"`{result['command']}` on {os.cpu_count()} CPUs (shared; load {os.getloadavg()[0]:.1f} at the end)",
             "", head, "|" + "---|" * 9]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['batch_size']} | {r['epochs_run']} | {r['best_epoch']} | "
                     f"{r['seconds_per_epoch_median']:.2f} | {r['seconds']:.0f} | {r['seconds_vs_scvi']:.2f} | "
                     f"{r.get('asw_batch', float('nan')):.3f} | {r.get('asw_celltype', float('nan')):.3f} |")
    write_text(args.out + ".md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
