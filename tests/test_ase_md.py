"""ASE: NVE energy conservation, per-atom energies and extra outputs of an exported model.

Everything goes through metatomic-ase's ``MetatomicCalculator`` on an exported float64
LOREM model with the long-range (Ewald) block, as a user running MD in ASE would.
"""

import ase.build
import numpy as np
import pytest
import torch
from _helpers import make_model, predict_per_atom, record, relative_error, variant_model
from ase import units
from ase.calculators.lj import LennardJones
from ase.calculators.mixing import SumCalculator
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
    export(variant_model(VARIANT), path, torch.float64)
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


# -- a long NVE run ----------------------------------------------------------------------

LONG_STEPS = 2000
LONG_TIMESTEP_FS = 1.0
#: bound on the drift of the total energy (slope of a linear fit, eV/atom/ps)
LONG_DRIFT_BOUND = 1e-4
#: bound on the fluctuation of the total energy around that fit (standard deviation, eV/atom)
LONG_FLUCTUATION_BOUND = 1e-4


@pytest.mark.slow
def test_long_nve_run_pme(tmp_path):
    """2000 velocity-Verlet steps of 1 fs (2 ps), 64-atom NaCl from 300 K, PME.

    A small float64 test model (long-range block with PME) exported and run through
    metatomic-ase. Its weights are random and it has no repulsive core: alone, it lets
    two ions come within 0.1 A of each other in a few ps (the model then refuses the
    geometry). A smooth Lennard-Jones term (``sigma`` 2.4 A, ``epsilon`` 0.2 eV, zero
    with its first derivative at 5 A) keeps the ions apart; it conserves energy up to the
    integrator, so the drift measured is that of the model and the integration. The
    system heats from 300 K: the rattled rock-salt lattice is not a minimum of this
    energy.

    Measured: drift -9e-6 eV/atom/ps, fluctuation 9e-6 eV/atom (temperature 190-1500 K),
    about 270 s on one loaded core. Bounds: 1e-4 eV/atom/ps and 1e-4 eV/atom, about ten
    times the measurements. The 100-step test above is the short version that runs by
    default.
    """
    model = make_model(
        seed=3,
        max_degree=1,
        max_degree_lr=1,
        num_features=8,
        num_spherical_features=2,
        num_radial=4,
        long_range_method="pme",
    )
    path = str(tmp_path / "lorem-pme.pt")
    export(model, path, torch.float64)

    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=7)
    repulsion = LennardJones(sigma=2.4, epsilon=0.2, rc=5.0, smooth=True)
    atoms.calc = SumCalculator([MetatomicCalculator(path), repulsion])
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    dynamics = VelocityVerlet(atoms, timestep=LONG_TIMESTEP_FS * units.fs)
    potential, kinetic, shortest = [], [], []

    def observe():
        potential.append(atoms.get_potential_energy())
        kinetic.append(atoms.get_kinetic_energy())
        distances = atoms.get_all_distances(mic=True)
        shortest.append(distances[np.triu_indices(len(atoms), 1)].min())

    dynamics.attach(observe, interval=1)
    dynamics.run(LONG_STEPS)
    n_atoms = len(atoms)
    total = (np.array(potential) + np.array(kinetic)) / n_atoms
    kinetic = np.array(kinetic) / n_atoms
    assert len(total) == LONG_STEPS + 1
    time_ps = np.arange(len(total)) * LONG_TIMESTEP_FS * 1e-3
    slope, intercept = np.polyfit(time_ps, total, 1)
    fluctuation = np.std(total - (slope * time_ps + intercept))
    temperature = kinetic / (1.5 * units.kB)
    print(
        f"NVE {LONG_STEPS} steps: drift {slope:.2e} eV/atom/ps, fluctuation "
        f"{fluctuation:.2e} eV/atom, max |E - E0| {np.abs(total - total[0]).max():.2e} "
        f"eV/atom, T {temperature.min():.0f}-{temperature.max():.0f} K, shortest "
        f"distance {min(shortest):.2f} A"
    )
    assert abs(record(slope)) < LONG_DRIFT_BOUND
    assert fluctuation < LONG_FLUCTUATION_BOUND
    # the ions move: kinetic energy flows, no two ions come close
    assert np.ptp(kinetic) > 100 * fluctuation
    assert min(shortest) > 1.5
