"""Add a DFT-D3(BJ) dispersion correction to a LOREM model and use it in ASE.

metatomic-torch's ``DFTD3.wrap`` wraps any exported model: the wrapped model adds the
D3 two-body energy (pure torch, reference tables shipped with metatomic-torch) to the
``energy`` output, so forces and stresses get the dispersion term through autograd.
The result is again an ``AtomisticModel`` that every metatomic engine runs.

Usage: ``python examples/compose_dftd3.py [--model model.pt] [--output DIR]``; without
``--model`` a LOREM model with the paper's hyperparameters and random weights is built.
"""

import argparse
import os

import ase.build
import torch
from metatomic.torch import load_atomistic_model
from metatomic.torch.dftd3 import DFTD3
from metatomic_ase import MetatomicCalculator

from lorem_mta.model import LoremModel, atomistic_model
from lorem_mta.modules import LoremBackbone

#: PBE-D3(BJ) damping parameters (atomic units: a2 in Bohr)
PBE_D3BJ = {"s6": 1.0, "a1": 0.4289, "s8": 0.7875, "a2": 4.4407}


def lorem_model(path):
    """The model of ``path``, or a fresh LOREM model (random weights) for H C O Na Cl."""
    if path is not None:
        return load_atomistic_model(path)
    torch.manual_seed(0)
    backbone = LoremBackbone(cutoff=5.0, max_degree=6, max_degree_lr=2)
    return atomistic_model(LoremModel(backbone, [1, 6, 8, 11, 17]), torch.float64)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="exported LOREM model")
    parser.add_argument("--output", default="outputs")
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)

    lorem = lorem_model(args.model)
    corrected = DFTD3.wrap(lorem, damping_params={"energy": PBE_D3BJ})
    path = os.path.join(args.output, "model-d3.pt")
    corrected.save(path)
    print(f"saved {path}")

    nacl = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    nacl.rattle(0.05, seed=1)
    water = ase.build.molecule("H2O")
    calculators = {"LOREM": MetatomicCalculator(lorem), "LOREM+D3": MetatomicCalculator(path)}
    known = set(lorem.capabilities().atomic_types)
    for name, atoms in [("NaCl (periodic)", nacl), ("H2O (molecule)", water)]:
        if not set(atoms.numbers) <= known:
            print(f"{name:16s} skipped: the model does not know all its atomic types")
            continue
        energies = {}
        for label, calculator in calculators.items():
            atoms.calc = calculator
            energies[label] = atoms.get_potential_energy()
        d3 = energies["LOREM+D3"] - energies["LOREM"]
        print(
            f"{name:16s} E(LOREM) = {energies['LOREM']:12.6f} eV   "
            f"E(LOREM+D3) = {energies['LOREM+D3']:12.6f} eV   E(D3) = {d3:9.6f} eV"
        )


if __name__ == "__main__":
    main()
