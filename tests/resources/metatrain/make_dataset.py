"""Regenerate ``hcno_lj.xyz``, the tiny dataset of the metatrain test suites.

Run from this folder: ``python make_dataset.py`` (deterministic: fixed seed, no network).
"""

import ase.build
import ase.io
import numpy as np
from ase.calculators.lj import LennardJones

MOLECULES = ["H2O", "NH3", "CH4", "HCN", "CO2", "CH3OH", "H2CO", "N2H4", "HCOOH", "CH3CN"]
PERIODIC = ["H2O", "NH3", "HCN"]  # in a 6 A cubic box
BOX = 6.0


def labelled(atoms: ase.Atoms) -> ase.Atoms:
    atoms.calc = LennardJones(sigma=1.0, epsilon=0.1, rc=4.0, smooth=True)
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    atoms.calc = None
    atoms.info["energy"] = float(energy)
    atoms.arrays["forces"] = forces
    return atoms


def main() -> None:
    rng = np.random.default_rng(20250730)
    frames = []
    # periodic frames first: the suites rotate the *last* frame without its cell
    for name in PERIODIC:
        atoms = ase.build.molecule(name)
        atoms.rattle(0.05, rng=rng)
        atoms.set_cell([BOX, BOX, BOX])
        atoms.center()
        atoms.pbc = True
        frames.append(labelled(atoms))
    for repeat in range(2):
        for name in MOLECULES[repeat * 3 :] if repeat else MOLECULES:
            atoms = ase.build.molecule(name)
            atoms.rattle(0.05 + 0.05 * repeat, rng=rng)
            atoms.pbc = False
            frames.append(labelled(atoms))
    ase.io.write("hcno_lj.xyz", frames, format="extxyz")
    print(f"wrote {len(frames)} frames")


if __name__ == "__main__":
    main()
