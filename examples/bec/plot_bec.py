"""Predicted against reference Born effective charges of a trained model, as a PNG.

One panel per Cartesian component ``Z[a, b]`` (force along ``a`` per field along ``b``),
atoms coloured by species, RMSE in every panel title.

Usage::

    python examples/bec/plot_bec.py model.pt frames.xyz -o bec_parity.png

``model.pt`` is a model exported by ``mtt train`` with ``bec: true`` (its rank-2 output
is found by name, ``mtt::apt`` by default); ``frames.xyz`` holds reference tensors in the
per-atom ``apt`` array (9 numbers per atom, row-major).
"""

import argparse

import ase.data
import ase.io
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from metatomic.torch import (  # noqa: E402
    ModelEvaluationOptions,
    ModelOutput,
    load_atomistic_model,
)

from lorem_mta.utils import attach_neighbors, system_from_atoms  # noqa: E402


def born_charges(model_path: str, frames, output: str) -> np.ndarray:
    """Predicted tensors of every atom of ``frames``, shape ``(n_atoms, 3, 3)``."""
    model = load_atomistic_model(model_path)
    dtype = getattr(torch, model.capabilities().dtype)
    options = ModelEvaluationOptions(
        length_unit="angstrom", outputs={output: ModelOutput(sample_kind="atom")}
    )
    predictions = []
    for atoms in frames:
        system = system_from_atoms(atoms, dtype)
        attach_neighbors(model, [system])
        values = model([system], options, check_consistency=False)[output].block().values
        predictions.append(values[..., 0].detach().double().numpy())
    return np.concatenate(predictions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("frames")
    parser.add_argument("-o", "--output", default="bec_parity.png")
    parser.add_argument("--name", default="mtt::apt", help="the model's rank-2 output")
    parser.add_argument("--key", default="apt", help="reference array in the frames")
    parser.add_argument("--index", default=":", help="frames to use (ASE index)")
    args = parser.parse_args()

    frames = ase.io.read(args.frames, index=args.index)
    predicted = born_charges(args.model, frames, args.name)
    reference = np.concatenate([a.arrays[args.key].reshape(-1, 3, 3) for a in frames])
    numbers = np.concatenate([a.numbers for a in frames])

    fig, axes = plt.subplots(3, 3, figsize=(9, 9), sharex=True, sharey=True)
    low, high = reference.min() - 0.1, reference.max() + 0.1
    for a, row in enumerate("xyz"):
        for b, column in enumerate("xyz"):
            ax = axes[a, b]
            for z in np.unique(numbers):
                mask = numbers == z
                symbol = ase.data.chemical_symbols[z]
                ax.scatter(reference[mask, a, b], predicted[mask, a, b], s=4, label=symbol)
            rmse = np.sqrt(np.mean((predicted[:, a, b] - reference[:, a, b]) ** 2))
            ax.plot([low, high], [low, high], color="grey", lw=0.8)
            ax.set_title(f"Z[{row}{column}]  RMSE {rmse:.3f} e", fontsize=10)
            if a == 2:
                ax.set_xlabel("reference (e)")
            if b == 0:
                ax.set_ylabel("LOREM (e)")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    total = np.sqrt(np.mean((predicted - reference) ** 2))
    fig.suptitle(f"Born effective charges, {len(frames)} frames, RMSE {total:.3f} e")
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}: RMSE {total:.4f} e over {len(numbers)} atoms")


if __name__ == "__main__":
    main()
