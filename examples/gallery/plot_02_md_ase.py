"""
Molecular dynamics with ASE
===========================

An exported LOREM model is a metatomic ``AtomisticModel``: ASE runs it through
metatomic-ase's ``MetatomicCalculator``. This example is a short version of
``examples/run_md.py``: build the paper's network (1 021 198 parameters, random
weights: ``examples/first_run.py``, the main job of the repository, trains a model
and runs MD with it), export it, and run velocity-Verlet (NVE) dynamics of a rattled
64-atom rock-salt NaCl cell.
"""

# %%
# Build and export the model
# --------------------------
#
# :py:class:`~lorem_mta.modules.LoremBackbone` with default arguments is the paper's
# model; :py:class:`~lorem_mta.model.LoremModel` adds the atomic types and the metatomic
# interface; :py:func:`~lorem_mta.model.export` writes a self-contained TorchScript
# file. float64 makes the energy drift reflect the integrator only.

import time
from pathlib import Path

import ase.build
import matplotlib.pyplot as plt
import numpy as np
import torch
from ase import units
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from metatomic_ase import MetatomicCalculator

from lorem_mta.model import LoremModel, export
from lorem_mta.modules import LoremBackbone

torch.manual_seed(0)
backbone = LoremBackbone(cutoff=5.0, max_degree=6, max_degree_lr=2)
print(f"{sum(p.numel() for p in backbone.parameters())} parameters")

output = Path("outputs") / "gallery-md"
output.mkdir(parents=True, exist_ok=True)
export(LoremModel(backbone, atomic_types=[11, 17]), output / "model.pt", dtype=torch.float64)

# %%
# Set up the simulation
# ---------------------
#
# The calculator computes energies, forces and stresses (periodic cells use an Ewald
# sum for the long-range block). Per-atom energies and the extra outputs of the model
# are available too, see :ref:`sphx_glr_gallery_plot_03_long_range.py`.

atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2))
atoms.rattle(0.05, seed=42)
atoms.calc = MetatomicCalculator(str(output / "model.pt"))
thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
print(f"{len(atoms)} atoms, E = {atoms.get_potential_energy():.4f} eV")
print(f"stress (eV/Å^3): {np.array2string(atoms.get_stress(), precision=5)}")

# %%
# Run NVE dynamics
# ----------------
#
# 60 steps of 0.5 fs; the total energy should stay constant up to the integrator error.

timestep = 0.5
dynamics = VelocityVerlet(atoms, timestep=timestep * units.fs)
times, potential, kinetic = [], [], []


def record():
    times.append(dynamics.nsteps * timestep)
    potential.append(atoms.get_potential_energy())
    kinetic.append(atoms.get_kinetic_energy())


dynamics.attach(record, interval=1)
start = time.perf_counter()
dynamics.run(60)
elapsed = time.perf_counter() - start
print(f"60 steps in {elapsed:.1f} s ({elapsed / 60:.2f} s per step)")

# %%
# Energy conservation
# -------------------

potential, kinetic = np.array(potential), np.array(kinetic)
total = potential + kinetic
figure, axis = plt.subplots(figsize=(6, 3.5))
for values, label in [(kinetic, "kinetic"), (potential, "potential"), (total, "total")]:
    axis.plot(times, (values - values[0]) / len(atoms), label=label)
axis.set_xlabel("time (fs)")
axis.set_ylabel("E(t) - E(0) (eV/atom)")
axis.legend()
figure.tight_layout()
print(f"total energy fluctuation: {(total.max() - total.min()) / len(atoms):.2e} eV/atom")
