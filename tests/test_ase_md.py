"""ASE: NVE energy conservation, per-atom energies and extra outputs of an exported model.

Everything goes through metatomic-ase's ``MetatomicCalculator`` on an exported float64
LOREM model with the long-range (Ewald) block, as a user running MD in ASE would.
"""

import copy

import ase.build
import numpy as np
import pytest
import torch
from _helpers import predict_per_atom, relative_error, variant_model
from ase import units
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from metatomic.torch import ModelOutput
from metatomic_ase import MetatomicCalculator

from lorem_mta.model import export

VARIANT = "lr2"
TOLERANCE = 1e-10
N_STEPS = 100
TIMESTEP_FS = 0.5
#: bound on max |E_tot(t) - E_tot(0)| / N_atoms over the NVE run (eV/atom)
DRIFT_BOUND = 1e-4


def _nacl(seed: int = 7) -> ase.Atoms:
    """Rattled cubic 8-atom rock-salt NaCl cell."""
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.rattle(0.1, seed=seed)
    return atoms


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ase-md") / "lorem.pt")
    export(copy.deepcopy(variant_model(VARIANT)), path, torch.float64)
    return path


def test_nve_energy_conservation(model_path):
    """100 velocity-Verlet steps of 0.5 fs (8-atom NaCl, 300 K) conserve the energy.

    The bound is ``max_t |E_tot(t) - E_tot(0)| / N_atoms < 1e-4 eV/atom`` (measured:
    ~7e-7 eV/atom); the total energy must also not drift systematically (the
    difference between the means of the first and last quarter is below the same
    bound), and the kinetic energy must actually change (the atoms move).
    """
    atoms = _nacl()
    atoms.calc = MetatomicCalculator(model_path)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    dynamics = VelocityVerlet(atoms, timestep=TIMESTEP_FS * units.fs)
    potential, kinetic = [], []

    def record():
        potential.append(atoms.get_potential_energy())
        kinetic.append(atoms.get_kinetic_energy())

    dynamics.attach(record, interval=1)
    dynamics.run(N_STEPS)
    potential, kinetic = np.array(potential), np.array(kinetic)
    total = potential + kinetic
    assert len(total) == N_STEPS + 1
    deviation = np.abs(total - total[0]).max() / len(atoms)
    quarter = len(total) // 4
    drift = abs(total[-quarter:].mean() - total[:quarter].mean()) / len(atoms)
    print(f"NVE: max deviation {deviation:.2e} eV/atom, drift {drift:.2e} eV/atom")
    assert deviation < DRIFT_BOUND, deviation
    assert drift < DRIFT_BOUND, drift
    # the dynamics is not trivial: energy flows between kinetic and potential
    assert np.ptp(kinetic) / len(atoms) > 50 * max(deviation, 1e-12)


def test_per_atom_energies(model_path):
    calculator = MetatomicCalculator(model_path)
    for atoms in [_nacl(), _nacl(seed=8).repeat((1, 1, 2))]:
        atoms.calc = calculator
        energies = atoms.get_potential_energies()
        assert energies.shape == (len(atoms),)
        total = atoms.get_potential_energy()
        assert relative_error(energies.sum(), total) < TOLERANCE
        expected = predict_per_atom(variant_model(VARIANT), atoms)["energy"]
        assert relative_error(energies, expected.block().values.reshape(-1)) < TOLERANCE
        # the per-atom energies are not all the same (Na and Cl differ)
        assert np.ptp(energies) > 1e-6


def test_charges_as_additional_output(model_path):
    """``lorem::charges`` requested at construction come with every energy call."""
    calculator = MetatomicCalculator(
        model_path,
        additional_outputs={"lorem::charges": ModelOutput(sample_kind="atom")},
    )
    atoms = _nacl()
    atoms.calc = calculator
    atoms.get_potential_energy()
    charges = calculator.additional_outputs["lorem::charges"]
    expected = predict_per_atom(variant_model(VARIANT), atoms, outputs=["lorem::charges"])
    assert charges.keys == expected["lorem::charges"].keys
    for key, block in expected["lorem::charges"].items():
        assert charges.block(key).samples == block.samples
        assert relative_error(charges.block(key).values, block.values) < TOLERANCE
    scalar = charges.block({"o3_lambda": 0, "o3_sigma": 1}).values[:, 0, 0].detach()
    assert scalar.shape == (len(atoms),)

    # a new geometry gives new charges
    atoms.positions[0] += 0.05
    atoms.get_potential_energy()
    moved = calculator.additional_outputs["lorem::charges"]
    new_scalar = moved.block({"o3_lambda": 0, "o3_sigma": 1}).values[:, 0, 0].detach()
    assert float((new_scalar - scalar).abs().max()) > 1e-8
