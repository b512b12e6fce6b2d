"""Train LOREM on 21 cumulene structures with ``mtt train``, test, export and plot.

1. split ``cumulene.xyz`` into training, validation and test files (fixed seed);
2. ``mtt train options.yaml`` (the ``experimental.lorem_mta`` architecture);
3. ``mtt export model.ckpt``;
4. evaluation of the exported model (metatomic-ase calculator) on the held-out test
   structures and, for comparison, on the training structures;
5. a parity plot of predicted against reference energies and forces, ``parity.png``.

Usage: ``python examples/train/train.py [--epochs N] [--output DIR]``.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
SPLIT = {"train": 13, "validation": 3, "test": 5}


def mtt(*arguments: str, cwd: Path) -> None:
    """Run metatrain's command line (the ``mtt`` next to this interpreter)."""
    executable = Path(sys.executable).parent / "mtt"
    if not executable.exists():
        executable = Path(shutil.which("mtt") or "mtt")
    print("$ mtt " + " ".join(arguments), flush=True)
    subprocess.run([str(executable), *arguments], cwd=cwd, check=True)


def split_dataset(output: Path) -> None:
    frames = ase.io.read(HERE / "cumulene.xyz", ":")
    order = np.random.default_rng(0).permutation(len(frames))
    start = 0
    for name, count in SPLIT.items():
        selected = [frames[i] for i in order[start : start + count]]
        ase.io.write(output / f"{name}.xyz", selected)
        start += count


def evaluate(output: Path, split: str) -> tuple:
    """Energies per atom and force components of one split, reference and predicted.

    The exported model runs through metatomic-ase's ``MetatomicCalculator``, as in any
    ASE simulation (``mtt eval`` would give the same numbers).
    """
    from metatomic_ase import MetatomicCalculator

    extensions = output / "extensions"
    calculator = MetatomicCalculator(
        str(output / "exported.pt"),
        extensions_directory=str(extensions) if extensions.is_dir() else None,
    )
    reference, predicted = [], []
    for atoms in ase.io.read(output / f"{split}.xyz", ":"):
        reference.append((atoms.get_potential_energy(), atoms.get_forces()))
        atoms.calc = calculator
        predicted.append((atoms.get_potential_energy(), atoms.get_forces()))
    n_atoms = np.array([len(forces) for _, forces in reference])
    return (
        np.array([energy for energy, _ in reference]) / n_atoms,
        np.array([energy for energy, _ in predicted]) / n_atoms,
        np.concatenate([forces.reshape(-1) for _, forces in reference]),
        np.concatenate([forces.reshape(-1) for _, forces in predicted]),
    )


def parity_plot(results: dict, path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for axis, (index, label, unit) in zip(
        axes, [(0, "energy per atom", "eV/atom"), (2, "force components", "eV/Å")], strict=True
    ):
        for split, color in [("train", "0.7"), ("test", "C3")]:
            reference, predicted = results[split][index], results[split][index + 1]
            rmse = np.sqrt(np.mean((predicted - reference) ** 2))
            axis.scatter(
                reference, predicted, s=8, color=color, label=f"{split} (RMSE {rmse:.3g})"
            )
        values = np.concatenate([results[s][index] for s in results])
        low, high = values.min(), values.max()
        margin = 0.05 * (high - low)
        axis.plot([low - margin, high + margin], [low - margin, high + margin], "k--", lw=0.8)
        axis.set_xlabel(f"reference {label} ({unit})")
        axis.set_ylabel(f"LOREM {label} ({unit})")
        axis.legend(fontsize=8)
    figure.suptitle("LOREM trained with mtt train on 13 cumulene structures")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="number of epochs")
    parser.add_argument("--output", default="outputs/train", help="working directory")
    args = parser.parse_args()

    output = Path(args.output).resolve()
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    split_dataset(output)
    shutil.copy(HERE / "options.yaml", output / "options.yaml")

    overrides = []
    if args.epochs is not None:
        overrides = ["-r", f"architecture.training.num_epochs={args.epochs}"]
    mtt("train", "options.yaml", *overrides, cwd=output)
    mtt("export", "model.ckpt", "-o", "exported.pt", cwd=output)

    results = {split: evaluate(output, split) for split in ["train", "test"]}
    parity_plot(results, output / "parity.png")
    energy_rmse = np.sqrt(np.mean((results["test"][1] - results["test"][0]) ** 2))
    force_rmse = np.sqrt(np.mean((results["test"][3] - results["test"][2]) ** 2))
    print(f"test RMSE: energy {1000 * energy_rmse:.2f} meV/atom, forces {force_rmse:.3f} eV/Å")
    print(f"parity plot: {output / 'parity.png'}")


if __name__ == "__main__":
    main()
