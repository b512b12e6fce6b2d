"""Plot the latent charges and potentials a LOREM model learned, atom by atom.

Runs an exported LOREM model on one structure, asks for the ``lorem::charges`` and
``lorem::potentials`` outputs (spherical TensorMaps, one block per ``o3_lambda``) and
saves a figure: the atoms projected on their two principal axes, coloured by the learned
scalar charge (channel 0), and a map of the potential of every charge channel on every
atom.

Without ``--model`` the small lorem-jax training run of the tests
(``tests/resources/jax_run``, C9H4 cumulene) is converted first, as
``lorem-mta convert-jax tests/resources/jax_run -o model.pt`` does. The default structure
is the first of ``examples/train/cumulene.xyz`` (lorem-jax's example data).

Usage: ``python examples/visualize_charges.py [--model model.pt] [--structure FILE]
[--index N] [--output DIR]``; needs matplotlib (``pip install lorem-mta[examples]``).
"""

import argparse
import os

import ase.io
import matplotlib
import numpy as np
import torch
from metatomic.torch import ModelEvaluationOptions, ModelOutput, load_atomistic_model

from lorem_mta.convert import convert_jax
from lorem_mta.utils import attach_neighbors, system_from_atoms

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX_RUN = os.path.join(ROOT, "tests", "resources", "jax_run")
STRUCTURES = os.path.join(ROOT, "examples", "train", "cumulene.xyz")
#: channel labels of the charge stack (see lorem_mta.model)
CHANNELS = ["q (MLP)", "Q 00", "Q 1,-1", "Q 1,0", "Q 1,1"] + [f"Q 2,{m}" for m in range(-2, 3)]


def learned_channels(model, atoms):
    """Charges and potentials of every atom, ``(n_atoms, n_channels)`` arrays each."""
    system = system_from_atoms(atoms, model=model)  # in the model's dtype
    attach_neighbors(model, [system])
    names = ["lorem::charges", "lorem::potentials"]
    options = ModelEvaluationOptions(
        length_unit="angstrom",
        outputs={name: ModelOutput(sample_kind="atom") for name in names},
    )
    outputs = model([system], options, check_consistency=True)
    result = []
    for name in names:
        # blocks o3_lambda = 0, 1, 2: (n_atoms, 2l + 1, n_channels) -> channel columns
        columns = []
        for _, block in outputs[name].items():
            values = block.values.detach()
            if values.shape[2] == 1:
                columns.append(values[:, :, 0])
            else:
                columns.append(values[:, 0, :])
        result.append(torch.cat(columns, dim=1).numpy())
    return result


def principal_projection(positions: np.ndarray) -> np.ndarray:
    """Positions on their two principal axes (the plane that shows the most)."""
    centered = positions - positions.mean(axis=0)
    _, _, axes = np.linalg.svd(centered, full_matrices=False)
    return centered @ axes[:2].T


def plot(atoms, charges, potentials, path):
    """Atoms coloured by scalar charge, and the potentials of every channel."""
    xy = principal_projection(atoms.positions)
    extent = np.ptp(xy, axis=0)
    figure, (left, right) = plt.subplots(
        2,
        1,
        figsize=(9, 3.5 + 6 * extent[1] / extent[0]),
        gridspec_kw={"height_ratios": [extent[1] / extent[0] + 0.3, 1]},
    )
    limit = np.abs(charges[:, 0]).max()
    for i in range(len(atoms)):
        for j in range(i + 1, len(atoms)):
            if atoms.get_distance(i, j) < 1.6:
                left.plot(xy[[i, j], 0], xy[[i, j], 1], color="0.7", lw=2, zorder=0)
    sizes = np.where(atoms.numbers == 1, 150, 450)
    points = left.scatter(
        xy[:, 0],
        xy[:, 1],
        c=charges[:, 0],
        s=sizes,
        cmap="coolwarm",
        vmin=-limit,
        vmax=limit,
        edgecolors="k",
    )
    for i, symbol in enumerate(atoms.get_chemical_symbols()):
        left.annotate(symbol, xy[i], ha="center", va="center", fontsize=8)
    left.set_aspect("equal")
    left.margins(0.15)
    left.set_xlabel("principal axis 1 (Å)")
    left.set_ylabel("principal axis 2 (Å)")
    left.set_title(f"{atoms.get_chemical_formula()}: learned scalar charge q")
    figure.colorbar(points, ax=left, label="q (model units)")

    image = right.imshow(potentials.T, aspect="auto", cmap="viridis")
    right.set_yticks(range(potentials.shape[1]), CHANNELS[: potentials.shape[1]], fontsize=8)
    right.set_xticks(range(len(atoms)), atoms.get_chemical_symbols(), fontsize=7)
    right.set_xlabel("atom")
    right.set_title("potential of every charge channel")
    figure.colorbar(image, ax=right, label="potential (model units)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="exported LOREM model")
    parser.add_argument("--structure", default=STRUCTURES, help="any file ASE reads")
    parser.add_argument("--index", type=int, default=0, help="structure in the file")
    parser.add_argument("--output", default=os.path.join("outputs", "visualize_charges"))
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)

    path = args.model
    if path is None:
        path = os.path.join(args.output, "jax_run.pt")
        convert_jax(JAX_RUN, path, torch.float64)
        print(f"converted {JAX_RUN} -> {path}")
    model = load_atomistic_model(path)

    atoms = ase.io.read(args.structure, index=args.index)
    charges, potentials = learned_channels(model, atoms)
    print(f"{atoms.get_chemical_formula()}: {charges.shape[1]} charge channels")
    for symbol, q, v in zip(
        atoms.get_chemical_symbols(), charges[:, 0], potentials[:, 0], strict=True
    ):
        print(f"  {symbol:2s} q = {q:+.4f}   phi = {v:+.4f}")
    print(f"  sum of q = {charges[:, 0].sum():+.4f}")

    figure = os.path.join(args.output, "charges.png")
    plot(atoms, charges, potentials, figure)
    print(f"saved {figure}")


if __name__ == "__main__":
    main()
