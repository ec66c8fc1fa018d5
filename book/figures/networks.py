"""Draw the two scMEDAL networks as an SVG for the book (method.md).

    python book/figures/networks.py        # writes book/figures/networks.svg

Plain matplotlib, no network access; the SVG is committed so the book builds without running this.
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
plt.rcParams.update({"svg.fonttype": "none", "font.family": "DejaVu Sans", "svg.hashsalt": "scmedal"})

BLUE, ORANGE, GREY, GREEN, RED = "#dbe8f6", "#fbe3cc", "#eeeeee", "#dff0d8", "#f8d7da"


def box(ax, x, y, w, h, text, color, fontsize=9.5, bold=False):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=color, ec="0.35", lw=0.9))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight="bold" if bold else "normal")


def arrow(ax, a, b, style="-|>", color="0.3", ls="-", rad=0.0):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=10, color=color, lw=1.0, ls=ls,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2))


def chain(ax, y, items, x0=0.68, dx=1.45, w=1.3, h=0.72):
    xs = []
    for i, (text, color) in enumerate(items):
        x = x0 + i * dx
        box(ax, x, y, w, h, text, color)
        if i:
            arrow(ax, (xs[-1] + w / 2, y), (x - w / 2, y))
        xs.append(x)
    return xs


def main():
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 8.4))
    for ax in (ax1, ax2):
        ax.set_xlim(0, 11.7)
        ax.set_ylim(0, 4)
        ax.axis("off")

    # ---------------------------------------------------------------- fixed effects
    ax1.set_title("scMEDAL-FE: fixed-effects autoencoder with a batch adversary (batch-invariant latent)",
                  fontsize=12, loc="left")
    items = [("x\ncells × genes", GREY), ("Dense 512\nBN · SELU", BLUE), ("Dense 132\nBN · SELU", BLUE),
             ("Dense 50\nSELU", BLUE), ("FE latent\n50-d", GREEN), ("132\n(tied Wᵀ)", BLUE),
             ("512\n(tied Wᵀ)", BLUE), ("x̂\nlinear", GREY)]
    xs = chain(ax1, 2.9, items)
    adversary = "adversary: concat(h₅₁₂, h₁₃₂, latent)\n→ 512 ReLU → 132 ReLU → softmax(batch)"
    box(ax1, xs[2] - 0.1, 1.0, 4.2, 0.85, adversary, ORANGE)
    for i in (1, 2, 3):
        arrow(ax1, (xs[i], 2.58), (xs[2] + (i - 2) * 0.9, 1.4), color="#c26a00", ls="--")
    ax1.text(xs[4] - 0.55, 1.0, "adversary step:\n    min CE(batch, adversary)\n"
             "autoencoder step:\n    min w_recon · MSE(x, x̂) − w_gen · CE(batch, adversary)",
             fontsize=10, va="center")
    ax1.text(xs[0] - 0.6, 3.55, "input: min–max scaled log expression", fontsize=9, ha="left", color="0.3")

    # ---------------------------------------------------------------- random effects
    ax2.set_title("scMEDAL-RE: random-effects autoencoder, conditioned on the batch (batch-specific latent)",
                  fontsize=12, loc="left")
    items = [("x, batch z\n(one-hot)", GREY), ("Dense 512\nCSB(z), SELU", RED),
             ("Dense 132\nCSB(z), SELU", RED),
             ("Dense 50\nSELU", BLUE), ("RE latent\n50-d", GREEN), ("132\nCSB(z)", RED), ("512\nCSB(z)", RED),
             ("x̂\nCSB(z)", GREY)]
    xs = chain(ax2, 2.9, items)
    box(ax2, xs[4], 1.3, 1.6, 0.72, "Dense 5 ReLU\n→ softmax(batch)", ORANGE)
    arrow(ax2, (xs[4], 2.58), (xs[4], 1.58), color="#c26a00")
    box(ax2, xs[1] + 0.6, 0.95, 3.9, 1.15,
        "CSB(z):  h ← BN(h);  h · (1 + γ(z)) + β(z)\nγ, β: one row per batch, Normal posterior\n"
        "(mean, s.d.), prior N(0, 0.25²), KL × 1e-5", RED, fontsize=9.5)
    ax2.text(xs[5] - 0.35, 1.0, "loss:  w_recon · MSE(x, x̂)\n    + w_clus · CE(batch, head) + KL\n"
             "counterfactual: decode with\n    another batch's one-hot z_b", fontsize=10, va="center")

    fig.tight_layout()
    out = os.path.join(HERE, "networks.svg")
    fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
