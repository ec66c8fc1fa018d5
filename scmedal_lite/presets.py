"""Named settings: the paper's per-dataset presets and this package's default. Presets are data, not code paths.

Each preset gives the loss weights of the FE, FEC and RE networks and the training schedule. The paper's
presets (``"paper"``, ``"AML"``, ``"ASD"``, ``"HH"``) reproduce the authors' settings exactly: Adam 1e-4,
batch 512, 500 epochs, early stopping (patience 30) that never fired for FE and RE in their code, which
``faithful=True`` in :meth:`scmedal_lite.SCMEDAL.train` reproduces.

Example
-------
>>> from scmedal_lite.presets import get_preset
>>> get_preset("AML")["fe"]
{'w_recon': 1000.0, 'w_gen': 1.0}
"""

from __future__ import annotations

import copy

from .validate import InputError

#: The FE network's design (see :class:`scmedal_lite.networks.FixedEffectsAE`): the paper's, and the allowed values.
PAPER_FE_DESIGN = {"decoder": "tied", "adversary_input": "all", "generator_loss": "negative_ce",
                   "adversary_steps": 1, "adversary_pass": "separate", "stop_on": "loss",
                   "stop_min_improvement": 0.0, "weight_average": 0.0, "mix_warmup": 0.0,
                   "adversary_set": 0, "memory_size": 16384, "mix_reach": 0.0, "lr_decay_to": 1.0,
                   "stop_from": "start", "latent": "point", "kl_warmup": 0.0}
FE_DESIGN_CHOICES = {"decoder": ("tied", "random_effects"), "adversary_input": ("all", "latent"),
                     "generator_loss": ("negative_ce", "confusion"), "adversary_pass": ("separate", "shared"),
                     "stop_on": ("loss", "recon_loss"), "stop_from": ("start", "warmup_end"),
                     "latent": ("point", "variational")}
#: The designs of the ``"mixing"`` preset (book/method.md, "The mixing preset"): the set-level adversary over
#: a memory of recent training latents, the mixing term measured against each cell's neighbourhood (1.54 times
#: the latents an average batch holds in the memory: 400 of 16,384 on COVID's 63 samples), the
#: learning rate's cosine decay to 5 %, and early stopping that counts from the mixing term's warm-up's end.
MIXING_FE_DESIGN = {"adversary_set": 8, "memory_size": 16384, "mix_reach": 1.54, "lr_decay_to": 0.05,
                    "stop_from": "warmup_end"}
#: The RE network's design (see :class:`scmedal_lite.networks.RandomEffectsAE`): the paper's, and the allowed values.
PAPER_RE_DESIGN = {"output_init": "paper"}
RE_DESIGN_CHOICES = {"output_init": ("paper", "data")}

#: The default weight of the FE network's local-mixing term (0 in the paper's presets): see book/method.md,
#: "What the default changes", for how it was chosen.
W_MIX = 100.0
#: The default weight of the FEC cell-type head's cross-entropy (1 in the paper's presets): see book/method.md,
#: "scVI and scANVI on the same cells, and the cell-type head's weight".
FEC_W_CLASS = 100.0

_PAPER_SCHEDULE = {"learning_rate": 1e-4, "batch_size": 512, "max_epochs": 500, "max_steps": None,
                   "min_epochs": 1, "patience": 30}

PRESETS: dict[str, dict] = {
    # This package's default. Same architecture and loss structure as the paper; the schedule is chosen so
    # that data of any size get enough optimisation steps (see SCMEDAL.train): a budget of optimisation
    # steps, converted to epochs, with early stopping on the real validation loss. lr 1e-3 instead of 1e-4:
    # the RE network is otherwise badly under-trained for hundreds of epochs (anchors.md).
    "default": {
        # w_mix: the local-mixing term (soft kNN same-batch fraction of the latent; book/method.md).
        # w_keep: the within-batch neighbour-keeping term, off by default except on small data
        # (schedule["small_data_w_keep"]; book/method.md, "Over-mixing" and "The guard on small data").
        # w_center: the batch-centring term (share of the latent's variance the batch means explain), off by default.
        # w_cycle: the counterfactual-consistency term, off by default (on in the "mixing" preset).
        "fe": {"w_recon": 1000.0, "w_gen": 1.0, "w_mix": W_MIX, "w_keep": 0.0, "w_center": 0.0,
               "w_cycle": 0.0},
        # A batch-invariant latent and a decoder with the batch's random effects: counterfactuals decode the
        # FE latent in the target batch, and the adversary is one that mixing (not relabelling) defeats;
        # early stopping on the validation reconstruction, not on a total whose adversarial part only measures
        # the current adversary (book/method.md, "What the default changes").
        "fe_design": {"decoder": "random_effects", "adversary_input": "latent", "generator_loss": "confusion",
                      "adversary_steps": 5, "stop_on": "recon_loss", "mix_neighbours": 5,
                      # one encoder pass per step, shared by the adversary's updates and the autoencoder's
                      # (the paper runs the encoder again for the adversary; book/method.md, "One encoder
                      # pass per step").
                      "adversary_pass": "shared",
                      # a new best must beat the last counted one by 0.3 % to reset the patience: gains
                      # below that on a plateau are noise (book/method.md, "When FE stops").
                      "stop_min_improvement": 0.003,
                      # the local-mixing term's weight rises linearly from 0 over the first half of the
                      # training budget (in steps), so reconstruction shapes the latent before mixing pulls
                      # on it (book/method.md, "A warm-up for the mixing term").
                      "mix_warmup": 0.5,
                      # weight_average > 0 (opt-in): at every epoch's end the autoencoder's weights become
                      # their moving average over the steps (book/method.md, "Averaged weights").
                      "weight_average": 0.0,
                      # the memory-based designs and the learning rate's decay: off (the "mixing" preset's).
                      "adversary_set": 0, "memory_size": 16384, "mix_reach": 0.0, "lr_decay_to": 1.0,
                      "stop_from": "start",
                      # "variational" (opt-in): a Gaussian latent with a KL term, weighted as a calibrated
                      # Gaussian decoder's ELBO weighs it (book/method.md, "What scVI owes to the counts").
                      "latent": "point",
                      # with the variational latent (opt-in): the share of the budget over which its KL term's
                      # weight rises from 0 (book/method.md, "FE as a conditional VAE"; measured, not adopted).
                      "kl_warmup": 0.0},
        # w_class: the cell-type head's weight, FEC_W_CLASS (100; the paper's 1 left the labels little say).
        "fec": {"w_recon": 2000.0, "w_gen": 1.0, "w_class": FEC_W_CLASS, "w_mix": W_MIX, "w_keep": 0.0,
                "w_center": 0.0, "w_cycle": 0.0},
        "re": {"w_recon": 110.0, "w_clus": 0.1},
        # output_init "data" (opt-in) starts the output block's normalisation at the training data's per-gene
        # mean and s.d.: a lower reconstruction error at the same budget, but a less batch-specific latent on
        # the full COVID data and the pancreas atlas (book/method.md, "Where the RE network's output starts").
        "re_design": dict(PAPER_RE_DESIGN),
        "schedule": {"learning_rate": 1e-3, "batch_size": 512, "max_epochs": None, "max_steps": 2000,
                     "min_epochs": 10, "patience": 10,
                     "patience_steps": 400,
                     # with the step budget, RE's minibatch shrinks (powers of two, >= 32) until an epoch
                     # has at least this many steps: only below 4,096 training cells (book/method.md, "The
                     # RE network's minibatch on small data"). None keeps batch_size on any data.
                     "re_min_steps_per_epoch": 8,
                     # below 4,096 training cells FE's w_keep defaults to this (the neighbour-keeping guard;
                     # book/method.md, "The guard on small data"); fe={"w_keep": ...} overrides it.
                     "small_data_w_keep": 100.0,
                     # FE's own patience in steps (None: patience_steps); the "mixing" preset trains FE to the
                     # end of its budget and keeps its best epoch after the warm-up.
                     "fe_patience_steps": None},
        "description": "scmedal_lite default: paper's architecture and weights (AML), faster schedule.",
    },
    "paper": {
        "fe": {"w_recon": 4000.0, "w_gen": 1.0},
        "fec": {"w_recon": 2000.0, "w_gen": 1.0, "w_class": 1.0},
        "re": {"w_recon": 110.0, "w_clus": 0.1},
        "fe_design": dict(PAPER_FE_DESIGN),
        "re_design": dict(PAPER_RE_DESIGN),
        "schedule": dict(_PAPER_SCHEDULE),
        "description": "The authors' default configuration (configs/training.py).",
    },
    "AML": {
        "fe": {"w_recon": 1000.0, "w_gen": 1.0},
        "fec": {"w_recon": 2000.0, "w_gen": 0.5, "w_class": 3.0},
        "re": {"w_recon": 110.0, "w_clus": 0.1},
        "fe_design": dict(PAPER_FE_DESIGN),
        "re_design": dict(PAPER_RE_DESIGN),
        "schedule": dict(_PAPER_SCHEDULE),
        "data": {"batch_key": "batch", "labels_key": "celltype", "condition_key": "Patient_group",
                 "n_top_genes": 2916},
        "description": "van Galen 2019 AML (19 batches, 21 cell types).",
    },
    "ASD": {
        "fe": {"w_recon": 2000.0, "w_gen": 1.0},
        "fec": {"w_recon": 2000.0, "w_gen": 1.0, "w_class": 1.0},
        "re": {"w_recon": 110.0, "w_clus": 0.4},
        "fe_design": dict(PAPER_FE_DESIGN),
        "re_design": dict(PAPER_RE_DESIGN),
        "schedule": dict(_PAPER_SCHEDULE),
        "data": {"batch_key": "batch", "labels_key": "celltype", "condition_key": "diagnosis",
                 "n_top_genes": 2916},
        "description": "Velmeshev 2019 autism (31 donors, 17 cell types).",
    },
    "HH": {
        "fe": {"w_recon": 600.0, "w_gen": 1.0},
        "fec": {"w_recon": 2000.0, "w_gen": 1.0, "w_class": 1.0},
        "re": {"w_recon": 110.0, "w_clus": 0.1},
        "fe_design": dict(PAPER_FE_DESIGN),
        "re_design": dict(PAPER_RE_DESIGN),
        "schedule": dict(_PAPER_SCHEDULE),
        "data": {"batch_key": "batch", "labels_key": "celltype", "condition_key": "TissueDetail",
                 "n_top_genes": 3000},
        "description": "Litvinukova 2020 healthy heart (147 samples).",
    },
}

def _mixing_preset() -> dict:
    """The default with the FE designs that mixed COVID's samples as well as Harmony (book/method.md, "The
    mixing preset"): :data:`MIXING_FE_DESIGN`, ``w_cycle = 30``, FE trained to the end of its budget."""
    preset = copy.deepcopy(PRESETS["default"])
    preset["fe"]["w_cycle"] = 30.0
    preset["fe_design"].update(MIXING_FE_DESIGN)
    preset["schedule"]["fe_patience_steps"] = preset["schedule"]["max_steps"]
    preset["description"] = ("The default with a set-level adversary over a memory of training latents, the "
                             "mixing term measured against each cell's neighbourhood, a counterfactual-"
                             "consistency term and a decaying learning rate: mixes batches as well as Harmony "
                             "on COVID, at several times the default's cost.")
    return preset


PRESETS["mixing"] = _mixing_preset()

#: Fixed architecture and random-effects settings shared by all presets (method.md §1).
ARCHITECTURE = {"hidden": [512, 132], "latent_dim": 50, "prior_scale": 0.25, "post_loc_init_scale": 0.1,
                "kl_weight": 1e-5}


def get_preset(name: str) -> dict:
    """A deep copy of preset ``name`` (one of :data:`PRESETS`)."""
    if name not in PRESETS:
        raise InputError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return copy.deepcopy(PRESETS[name])
