"""Draw the LOREM data-flow diagram of the architecture page (``docs/_static/dataflow.png``).

Usage: ``python docs/_scripts/dataflow_figure.py`` (needs matplotlib); the PNG is
committed, so the documentation build does not run this script.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUTPUT = Path(__file__).resolve().parents[1] / "_static" / "dataflow.png"

COLORS = {
    "input": "#e8e8e8",
    "sr": "#d6e6f5",
    "lr": "#fbe2c8",
    "out": "#d9efd5",
}


def box(axis, x, y, width, height, title, equation, module, kind):
    """A rounded box centred on ``(x, y)`` with a title, an equation and a module name."""
    patch = FancyBboxPatch(
        (x - width / 2, y - height / 2),
        width,
        height,
        boxstyle="round,pad=0.008,rounding_size=0.012",
        facecolor=COLORS[kind],
        edgecolor="0.35",
        linewidth=1.0,
    )
    axis.add_patch(patch)
    axis.text(
        x, y + height * 0.26, title, ha="center", va="center", fontsize=9.5, weight="bold"
    )
    axis.text(x, y - height * 0.02, equation, ha="center", va="center", fontsize=9.5)
    axis.text(
        x,
        y - height * 0.31,
        module,
        ha="center",
        va="center",
        fontsize=7.5,
        color="0.3",
        family="monospace",
    )


def arrow(axis, start, end, **kwargs):
    """An arrow between two points."""
    axis.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=12,
            linewidth=1.0,
            color="0.25",
            shrinkA=0,
            shrinkB=0,
            **kwargs,
        )
    )


def group(axis, x0, y0, x1, y1, label, color):
    """A dashed frame around one stage of the network."""
    axis.add_patch(
        FancyBboxPatch(
            (x0, y0),
            x1 - x0,
            y1 - y0,
            boxstyle="round,pad=0.004,rounding_size=0.015",
            facecolor="none",
            edgecolor=color,
            linewidth=1.4,
            linestyle="--",
        )
    )
    axis.text(
        x0 + 0.008,
        y1 - 0.012,
        label,
        ha="left",
        va="top",
        fontsize=10,
        color=color,
        weight="bold",
    )


def main():
    """Draw the diagram and save it."""
    figure = plt.figure(figsize=(12, 8.6))
    axis = figure.add_axes([0, 0, 1, 1])
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.axis("off")

    w, h = 0.29, 0.085
    xs = [0.17, 0.5, 0.83]

    # inputs and embeddings
    box(
        axis,
        xs[0],
        0.925,
        w,
        h,
        "species",
        r"$Z_i \rightarrow e_i$ (embedding, width 8)",
        "modules/radial.py",
        "input",
    )
    box(
        axis,
        xs[1],
        0.925,
        w,
        h,
        "radial basis",
        r"$\rho_{ij,k} = b_k(r_{ij}/r_c)\,f_c(r_{ij})$",
        "modules/radial.py",
        "input",
    )
    box(
        axis,
        xs[2],
        0.925,
        w,
        h,
        "directions",
        r"$Y_l^m(\hat{r}_{ij})$, $l \leq L$ (Racah)",
        "modules/spherical.py",
        "input",
    )
    box(
        axis,
        xs[0] + 0.165,
        0.79,
        0.36,
        h,
        "radial coefficients",
        r"$k_{ij} = \sum_k \mathrm{MLP}([e_i; e_j])_k\, \rho_{ij,k}$",
        "RadialCoefficients",
        "input",
    )
    arrow(axis, (xs[0], 0.88), (xs[0] + 0.08, 0.835))
    arrow(axis, (xs[1], 0.88), (xs[1] - 0.08, 0.835))

    # short-range stage
    group(axis, 0.01, 0.475, 0.99, 0.735, "short-range stage (one cutoff sphere)", "#2f6ea5")
    box(
        axis,
        xs[0],
        0.645,
        w,
        h,
        "scalar features",
        r"$x_i \leftarrow \mathrm{Update}(W_0 e_i,\ \sum_j W_1 k_{ij})$",
        "modules/message_passing.py",
        "sr",
    )
    box(
        axis,
        xs[1],
        0.645,
        w,
        h,
        "spherical density",
        r"$A_i = \sum_j (W_2 k_{ij})\, Y(\hat{r}_{ij})$",
        "modules/message_passing.py",
        "sr",
    )
    box(
        axis,
        xs[2],
        0.645,
        w,
        h,
        "self tensor product",
        r"$S_i = \mathrm{TensorDense}(A_i)$",
        "modules/tensor_product.py",
        "sr",
    )
    box(
        axis,
        xs[1],
        0.53,
        w,
        h,
        "norms to scalars",
        r"$x_i \leftarrow \mathrm{Update}(x_i, (2l{+}1)^{1/4}\Vert S_i^l\Vert)$",
        "modules/spherical.py, layers.py",
        "sr",
    )
    box(
        axis,
        xs[0],
        0.53,
        w,
        h,
        "readout (+ optional MP steps)",
        r"$E_i^{(0)} = \mathrm{MLP}(x_i)$,  $E_i^{(t)}$",
        "modules/backbone.py",
        "out",
    )
    arrow(axis, (xs[0] + 0.1, 0.745), (xs[0], 0.69))
    arrow(axis, (xs[0] + 0.23, 0.745), (xs[1], 0.69))
    arrow(axis, (xs[2], 0.88), (xs[2], 0.69))
    arrow(axis, (xs[1] + w / 2, 0.645), (xs[2] - w / 2, 0.645))
    arrow(axis, (xs[2] - 0.06, 0.6), (xs[1] + 0.08, 0.575))
    arrow(axis, (xs[0] + 0.11, 0.6), (xs[1] - 0.1, 0.5725))
    arrow(axis, (xs[1] - w / 2, 0.53), (xs[0] + w / 2, 0.53))

    # long-range stage
    group(
        axis,
        0.01,
        0.135,
        0.99,
        0.455,
        "long-range block (all atoms, all periodic images)",
        "#c0650f",
    )
    box(
        axis,
        xs[0],
        0.365,
        w,
        h,
        "latent charges (10 channels)",
        r"$q_i = \mathrm{MLP}(x_i)$,  $Q_i = \mathrm{TensorDense}(S_i)_{l \leq 2}$",
        "modules/long_range.py",
        "lr",
    )
    box(
        axis,
        xs[1],
        0.365,
        w,
        h,
        "Coulomb potentials",
        r"$V_i^\alpha = \frac{1}{2}\sum_j \sum_{\mathbf{n}}{}' "
        r"Q_j^\alpha / |\mathbf{r}_{ij} + \mathbf{n}|$",
        "torch-pme: Ewald, PME or direct sum",
        "lr",
    )
    box(
        axis,
        xs[2],
        0.365,
        w,
        h,
        "mix back",
        r"$U_i = (W \Phi_i) \otimes S_i$",
        "modules/long_range.py",
        "lr",
    )
    box(
        axis,
        xs[2],
        0.215,
        w,
        h,
        "update and readout",
        r"$x_i \leftarrow \mathrm{Update}(x_i, [\phi_i; \Vert U_i^l \Vert])$, "
        r"$E_i^{LR}$",
        "modules/long_range.py",
        "out",
    )
    box(
        axis,
        xs[0],
        0.215,
        w,
        h,
        "total charge (optional)",
        r"$q_i \leftarrow q_i + (Q - \sum_j q_j)/N$",
        "LongRange.equilibrate",
        "lr",
    )
    arrow(axis, (xs[1] - 0.05, 0.485), (xs[0] + 0.05, 0.41))
    arrow(axis, (xs[2], 0.6), (xs[2], 0.41))
    axis.text(xs[2] + 0.01, 0.5, r"$S_i$", ha="left", va="center", fontsize=11)
    arrow(axis, (xs[0] + w / 2, 0.365), (xs[1] - w / 2, 0.365))
    arrow(axis, (xs[1] + w / 2, 0.365), (xs[2] - w / 2, 0.365))
    arrow(axis, (xs[2], 0.32), (xs[2], 0.26))
    axis.annotate(
        "",
        xy=(xs[0], 0.32),
        xytext=(xs[0], 0.26),
        arrowprops={"arrowstyle": "<|-|>", "color": "0.25", "lw": 1.0},
    )
    axis.text(
        xs[1],
        0.27,
        "each (l, m) channel is an independent charge species:\n"
        r"$V^l$ rotates like $Q^l$ (cell rotated with the atoms)",
        ha="center",
        va="center",
        fontsize=8.5,
        style="italic",
        color="0.3",
    )

    # energy
    box(
        axis,
        0.5,
        0.06,
        0.7,
        0.1,
        "energy, forces, stress (sum of the readouts)",
        r"$E = \sum_i (e_{Z_i} + E_i^{(0)} + \sum_t E_i^{(t)} + E_i^{LR})$,"
        r"   $\mathbf{F} = -\partial E / \partial \mathbf{R}$,  virial by autograd",
        "LoremBackbone (modules/backbone.py), LoremModel (model.py)",
        "out",
    )
    arrow(axis, (xs[2] - 0.05, 0.17), (0.7, 0.11))

    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUTPUT, dpi=110)
    print(f"saved {OUTPUT}")


if __name__ == "__main__":
    main()
