"""Build a LOREM model, export it, and run a few MD steps of periodic NaCl in ASE.

This is the project's main job (see README): it exercises the whole pipeline a user
goes through with a trained model:

1. build the LOREM network with the paper's hyperparameters (random weights here;
   ``lorem-mta convert-jax`` or training give real ones);
2. export it as a metatomic ``AtomisticModel`` (a self-contained TorchScript file);
3. load the exported file in ASE through metatomic-ase's ``MetatomicCalculator`` and run
   velocity-Verlet molecular dynamics of a rattled 64-atom rock-salt NaCl cell, printing
   energies and the total-energy drift.

Usage: ``python examples/run_md.py [--steps N] [--output DIR]``.
"""

import argparse
import os
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

    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    print(f"{'step':>5} {'E_pot (eV)':>14} {'E_kin (eV)':>12} {'E_tot (eV)':>14}")
    totals = []

    def report():
        e_pot = atoms.get_potential_energy()
        e_kin = atoms.get_kinetic_energy()
        totals.append(e_pot + e_kin)
        print(f"{dynamics.nsteps:5d} {e_pot:14.6f} {e_kin:12.6f} {e_pot + e_kin:14.6f}")

    dynamics.attach(report, interval=max(1, args.steps // 10))
    start = time.perf_counter()
    dynamics.run(args.steps)
    elapsed = time.perf_counter() - start
    drift = (max(totals) - min(totals)) / len(atoms)
    print(f"{args.steps} steps of {len(atoms)} atoms in {elapsed:.1f} s")
    print(f"total energy fluctuation: {drift:.2e} eV/atom")
    stress = atoms.get_stress()
    print(f"stress (eV/A^3): {np.array2string(stress, precision=5)}")


if __name__ == "__main__":
    main()
