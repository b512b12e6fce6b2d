"""
Converting a lorem-jax model
============================

Models trained with lorem-jax (the JAX reference implementation of LOREM, command
``lorem-train``) convert into metatomic models with one command:

.. code-block:: bash

    lorem-mta convert-jax my_experiment/ -o model.pt

The input is a ``lorem-train`` experiment folder, its ``run/`` folder or one
checkpoint folder (``run/checkpoints/R2_E+F``, the best validation R2, by default), or
an ``.npz`` with the flattened parameter tree. Parameters, hyperparameters and the
per-species energy baseline are read without jax or flax. This example converts the
small lorem-jax run committed in ``tests/resources/jax_run`` (cumulene, 11 044
parameters) and compares the result with the numbers lorem-jax itself computed.
"""

# %%
# Convert
# -------

import subprocess
import sys
from pathlib import Path

import ase
import matplotlib.pyplot as plt
import numpy as np
from metatomic_ase import MetatomicCalculator

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
RUN = HERE.parents[1] / "tests" / "resources" / "jax_run"
output = Path("outputs") / "gallery-convert"
output.mkdir(parents=True, exist_ok=True)

command = [
    str(Path(sys.executable).parent / "lorem-mta"),
    "convert-jax",
    str(RUN),
    "-o",
    str(output / "model.pt"),
    "--dtype",
    "float64",
]
print("$ lorem-mta " + " ".join(command[1:]))
print(subprocess.run(command, check=True, capture_output=True, text=True).stdout)

# %%
# Compare with lorem-jax
# ----------------------
#
# ``reference.npz`` holds four structures (three from the training data, one placed in
# a periodic triclinic cell) with lorem-jax's energies and forces: from its ASE
# calculator in float32, as a user gets them, and from the same pipeline in float64 with
# exact Bernstein binomials, which is what ``lorem_mta`` computes.

reference = np.load(RUN / "reference.npz")
offsets = np.concatenate([[0], np.cumsum(reference["n_atoms"])])
calculator = MetatomicCalculator(
    str(output / "model.pt"), extensions_directory=str(output / "extensions")
)
energies, forces = [], []
for k, name in enumerate(reference["names"]):
    a, b = offsets[k], offsets[k + 1]
    atoms = ase.Atoms(
        numbers=reference["numbers"][a:b],
        positions=reference["positions"][a:b],
        cell=reference["cells"][k],
        pbc=reference["pbc"][k],
    )
    atoms.calc = calculator
    energies.append(atoms.get_potential_energy())
    forces.append(atoms.get_forces())
    print(
        f"{name:11s} E = {energies[-1]:.8f} eV   lorem-jax float64: "
        f"{reference['energy_f64_exactbinom'][k]:.8f}   float32: {reference['energy'][k]:.8f}"
    )
energies, forces = np.array(energies), np.concatenate(forces)

for label, suffix in [("float64, exact binomials", "_f64_exactbinom"), ("float32", "")]:
    d_energy = np.abs(energies - reference["energy" + suffix]).max()
    d_forces = np.abs(forces - reference["forces" + suffix]).max()
    print(f"max |dE| = {d_energy:.1e} eV, max |dF| = {d_forces:.1e} eV/Å  ({label})")

# %%
# The differences against lorem-jax in float64 are round-off (about 1e-14); against
# lorem-jax's float32 calculator they are float32 round-off plus e3x's approximate
# Bernstein coefficients (about 1e-5 eV/Å).

figure, axes = plt.subplots(1, 2, figsize=(9, 4))
axes[0].scatter(reference["forces"].flatten(), forces.flatten(), s=6)
axes[0].plot([-4, 4], [-4, 4], "k--", lw=0.8)
axes[0].set_xlabel("lorem-jax force (eV/Å)")
axes[0].set_ylabel("lorem_mta force (eV/Å)")
for suffix, label in [("_f64_exactbinom", "vs float64"), ("", "vs float32 calculator")]:
    difference = np.abs(forces - reference["forces" + suffix]).flatten()
    axes[1].semilogy(np.sort(difference)[::-1] + 1e-18, label=label)
axes[1].set_xlabel("force component (sorted)")
axes[1].set_ylabel("|difference| (eV/Å)")
axes[1].legend()
figure.tight_layout()
