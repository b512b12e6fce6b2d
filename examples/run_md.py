"""Build a LOREM model, export it, and run a few MD steps of periodic NaCl in ASE.

The export-and-simulate part of the pipeline on the paper's full-size network, with
random weights (``examples/first_run.py``, the project's main job, trains a model first):

1. build the LOREM network with the paper's hyperparameters (random weights here;
   ``lorem-mta convert-jax`` or training give real ones);
2. export it as a metatomic ``AtomisticModel`` (a self-contained TorchScript file);
3. load the exported file in ASE through metatomic-ase's ``MetatomicCalculator`` and run
   velocity-Verlet molecular dynamics of a rattled 64-atom rock-salt NaCl cell, with a
   progress bar (tqdm when installed), printing energies and the total-energy drift, and
   saving an energy-conservation plot ``DIR/energy.png`` (when matplotlib is installed).

Usage: ``python examples/run_md.py [--steps N] [--output DIR]``.
"""

import argparse
import os
import sys
import time

import ase.build
import numpy as np
import torch
from ase import units
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from metatomic_ase import MetatomicCalculator

from lorem_mta.model import LoremModel, export
from lorem_mta.modules import LoremBackbone

try:
    from tqdm import tqdm
except ImportError:  # optional
    tqdm = None


class ProgressBar:
    """``tqdm`` progress bar when available, else a minimal one printed to stderr."""

    def __init__(self, total: int):
        self.total = total
        self.done = 0
        self.bar = tqdm(total=total, unit="step") if tqdm is not None else None

    def update(self):
        """Advance by one step."""
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        width = 40
        filled = width * self.done // max(self.total, 1)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self):
        """Finish the bar."""
        if self.bar is not None:
            self.bar.close()


def plot_energies(times, potential, kinetic, n_atoms, path):
    """Save kinetic, potential and total energy (per atom, shifted) against time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no energy plot")
        return
    potential, kinetic = np.asarray(potential), np.asarray(kinetic)
    total = potential + kinetic
    figure, axes = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    for values, label in [(kinetic, "kinetic"), (potential, "potential"), (total, "total")]:
        axes[0].plot(times, (values - values[0]) / n_atoms, label=label)
    axes[0].set_ylabel("E(t) - E(0) (eV/atom)")
    axes[0].legend()
    axes[1].plot(times, (total - total[0]) / n_atoms, color="C2")
    axes[1].set_ylabel("total E(t) - E(0) (eV/atom)")
    axes[1].set_xlabel("time (fs)")
    figure.suptitle("NVE energy conservation")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"saved {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output", default="outputs")
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)

    # 1. the paper's LOREM model (1 021 198 parameters), seeded random weights
    torch.manual_seed(0)
    backbone = LoremBackbone(cutoff=5.0, max_degree=6, max_degree_lr=2)
    model = LoremModel(backbone, atomic_types=[11, 17])
    n_parameters = sum(p.numel() for p in backbone.parameters())
    print(f"LOREM model with {n_parameters} parameters")

    # 2. export (float64 so that the energy drift reflects the integrator only)
    path = os.path.join(args.output, "model.pt")
    export(model, path, dtype=torch.float64)
    print(f"exported {path}")

    # 3. NVE molecular dynamics in ASE
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=42)
    atoms.calc = MetatomicCalculator(path)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))

    timestep_fs = 0.5
    dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    times, potential, kinetic, table = [], [], [], []
    interval = max(1, args.steps // 10)
    progress = ProgressBar(args.steps)

    def record():
        e_pot = atoms.get_potential_energy()
        e_kin = atoms.get_kinetic_energy()
        times.append(dynamics.nsteps * timestep_fs)
        potential.append(e_pot)
        kinetic.append(e_kin)
        if dynamics.nsteps % interval == 0:
            table.append(
                f"{dynamics.nsteps:5d} {e_pot:14.6f} {e_kin:12.6f} {e_pot + e_kin:14.6f}"
            )
        if dynamics.nsteps > 0:
            progress.update()

    dynamics.attach(record, interval=1)
    start = time.perf_counter()
    dynamics.run(args.steps)
    elapsed = time.perf_counter() - start
    progress.close()
    print(f"{'step':>5} {'E_pot (eV)':>14} {'E_kin (eV)':>12} {'E_tot (eV)':>14}")
    print("\n".join(table))
    totals = np.array(potential) + np.array(kinetic)
    drift = (totals.max() - totals.min()) / len(atoms)
    print(f"{args.steps} steps of {len(atoms)} atoms in {elapsed:.1f} s")
    print(f"total energy fluctuation: {drift:.2e} eV/atom")
    if atoms.pbc.all():  # a stress is only defined for a periodic cell
        stress = atoms.get_stress()
        print(f"stress (eV/A^3): {np.array2string(stress, precision=5)}")
    plot_energies(
        times, potential, kinetic, len(atoms), os.path.join(args.output, "energy.png")
    )


if __name__ == "__main__":
    main()
