"""
Adding a DFT-D3 dispersion correction
=====================================

metatomic-torch ships a pure-torch DFT-D3(BJ) implementation, ``DFTD3``, that wraps any
exported model: the wrapped model adds the two-body D3 energy to ``energy`` (forces and
stresses follow by autograd) and is again an ``AtomisticModel`` for every engine. This
example reuses ``examples/compose_dftd3.py`` (the PBE-D3(BJ) damping parameters and a
LOREM model for H, C, O, Na, Cl with random weights) and looks at the dispersion
energy between two water molecules.
"""

import sys
from pathlib import Path

import ase.build
import matplotlib.pyplot as plt
import numpy as np
from metatomic.torch.dftd3 import DFTD3
from metatomic_ase import MetatomicCalculator

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
sys.path.insert(0, str(HERE.parent))

import compose_dftd3  # noqa: E402  (examples/compose_dftd3.py)

# %%
# Wrap the model
# --------------

lorem = compose_dftd3.lorem_model(None)
print("damping parameters:", compose_dftd3.PBE_D3BJ)
corrected = DFTD3.wrap(lorem, damping_params={"energy": compose_dftd3.PBE_D3BJ})
output = Path("outputs") / "gallery-d3"
output.mkdir(parents=True, exist_ok=True)
corrected.save(str(output / "model-d3.pt"))

# %%
# A water dimer
# -------------
#
# Two molecules moved apart along x. E(LOREM + D3) - E(LOREM) is the D3 energy: the
# :math:`-C_6/r^6` tail at long distance, damped (Becke-Johnson) at short distance.
# ``compute_energy`` evaluates the energy only (``atoms.calc = calculator`` and
# ``atoms.get_potential_energy()`` work as well, and give forces and stresses too).

calculators = {
    "LOREM": MetatomicCalculator(lorem),
    "LOREM+D3": MetatomicCalculator(str(output / "model-d3.pt")),
}
water = ase.build.molecule("H2O")
distances = np.linspace(2.6, 9.0, 17)
energies = {name: [] for name in calculators}
for distance in distances:
    dimer = water.copy()
    other = water.copy()
    other.translate([distance, 0.0, 0.0])
    dimer += other
    for name, calculator in calculators.items():
        energies[name].append(calculator.compute_energy(dimer)["energy"])
d3 = np.array(energies["LOREM+D3"]) - np.array(energies["LOREM"])
for distance, energy in zip(distances[::4], d3[::4], strict=True):
    print(f"O-O distance {distance:.2f} Å: E(D3) = {1000 * energy:8.3f} meV")

figure, axis = plt.subplots(figsize=(6, 3.8))
axis.plot(distances, 1000 * (d3 - d3[-1]), "o-")
axis.set_xlabel("O-O distance (Å)")
axis.set_ylabel("E(D3) - E(D3, 9 Å) (meV)")
axis.set_title("D3(BJ) energy of a water dimer")
figure.tight_layout()
