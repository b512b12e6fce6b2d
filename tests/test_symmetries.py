"""Symmetries of LOREM: O(3), translations, permutations, derivatives, supercells."""

import numpy as np
import pytest
import torch
from _helpers import (
    VARIANTS,
    assert_safe_for_finite_differences,
    molecule,
    nacl_cell,
    nacl_cluster,
    predict_per_atom,
    random_rotation,
    record,
    relative_error,
    total_energy,
    transform,
    variant_model,
    wigner_d,
)

from lorem_mta.utils import predict

LR_VARIANTS = [name for name, options in VARIANTS.items() if options.get("lr", True)]

STRUCTURES = {
    "nacl-periodic": nacl_cell,
    "nacl-cluster": nacl_cluster,
    "ch3oh": molecule,
}

TOLERANCE = 1e-10


def _evaluate(model, atoms):
    prediction = predict(model, [atoms])
    return (
        prediction.energies.detach()[0],
        prediction.forces[0].detach(),
        prediction.virials[0].detach(),
    )


def _transformation(kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "proper":
        return random_rotation(rng)
    if kind == "improper":
        return random_rotation(rng, improper=True)
    assert kind == "inversion"
    return -np.eye(3)


# ---------------------------------------------------------------------------------------
# the Wigner D helper itself
# ---------------------------------------------------------------------------------------


def test_wigner_helper():
    rng = np.random.default_rng(0)
    rotation = random_rotation(rng)
    # l = 1 in sphericart order is (y, z, x)
    permutation = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=float)
    np.testing.assert_allclose(
        wigner_d(1, rotation), permutation @ rotation @ permutation.T, atol=1e-12
    )
    for degree in range(4):
        d = wigner_d(degree, rotation)
        np.testing.assert_allclose(d @ d.T, np.eye(2 * degree + 1), atol=1e-12)
        np.testing.assert_allclose(wigner_d(degree, -rotation), (-1) ** degree * d, atol=1e-12)
        other = random_rotation(rng)
        np.testing.assert_allclose(
            wigner_d(degree, rotation @ other),
            d @ wigner_d(degree, other),
            atol=1e-12,
        )


# ---------------------------------------------------------------------------------------
# O(3): energy invariance, force and virial equivariance
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["proper", "improper"])
@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_energy_forces_virial_o3(variant, structure, kind):
    model = variant_model(variant)
    atoms = STRUCTURES[structure]()
    rotation = _transformation(kind, seed=len(variant) + len(structure))
    energy, forces, virial = _evaluate(model, atoms)
    energy_r, forces_r, virial_r = _evaluate(model, transform(atoms, rotation))

    rotation = torch.tensor(rotation)
    assert relative_error(energy_r, energy) < TOLERANCE
    assert relative_error(forces_r, forces @ rotation.T) < TOLERANCE
    assert relative_error(virial_r, rotation @ virial @ rotation.T) < TOLERANCE
    # the forces are not trivially zero, the test could fail
    assert float(forces.abs().max()) > 1e-3


# ---------------------------------------------------------------------------------------
# O(3): equivariance of the learned charges and potentials
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["proper", "improper", "inversion"])
@pytest.mark.parametrize("structure", ["nacl-periodic", "nacl-cluster"])
@pytest.mark.parametrize("variant", LR_VARIANTS)
def test_charges_potentials_equivariance(variant, structure, kind):
    model = variant_model(variant)
    atoms = STRUCTURES[structure]()
    rotation = _transformation(kind, seed=3 * len(variant) + len(structure))
    names = ["lorem::charges", "lorem::potentials"]
    reference = predict_per_atom(model, atoms, outputs=names)
    rotated = predict_per_atom(model, transform(atoms, rotation), outputs=names)

    max_degree_lr = VARIANTS[variant]["max_degree_lr"]
    for name in names:
        keys = reference[name].keys
        assert keys.names == ["o3_lambda", "o3_sigma"]
        assert keys.values.tolist() == [[l, 1] for l in range(max_degree_lr + 1)]
        for key, block in reference[name].items():
            degree = int(key["o3_lambda"])
            rotated_block = rotated[name].block(key)
            assert block.components[0].names == ["o3_mu"]
            assert block.components[0].values.reshape(-1).tolist() == list(
                range(-degree, degree + 1)
            )
            assert block.values.shape[1] == 2 * degree + 1
            assert block.values.shape[2] == (2 if degree == 0 else 1)
            d = torch.tensor(wigner_d(degree, rotation))
            expected = torch.einsum("mn,anc->amc", d, block.values)
            assert relative_error(rotated_block.values, expected) < TOLERANCE, (
                name,
                degree,
            )
            # non-trivial values, the check could fail
            assert float(block.values.abs().max()) > 1e-6
            if kind == "inversion" and degree % 2 == 1:
                assert relative_error(rotated_block.values, -block.values) < TOLERANCE


# ---------------------------------------------------------------------------------------
# translations and permutations
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["lr2", "lr1-mp1-eq", "sr"])
def test_translation_invariance_periodic(variant):
    model = variant_model(variant)
    atoms = nacl_cell()
    energy, forces, virial = _evaluate(model, atoms)

    translated = atoms.copy()
    translated.positions += np.array([3.1, -7.3, 12.9])
    # some atoms are now far outside the cell
    assert (translated.get_scaled_positions(wrap=False) > 1).any()
    wrapped = translated.copy()
    wrapped.wrap()
    assert not np.allclose(wrapped.positions, translated.positions)

    for other in [translated, wrapped]:
        energy_t, forces_t, virial_t = _evaluate(model, other)
        assert relative_error(energy_t, energy) < TOLERANCE
        assert relative_error(forces_t, forces) < TOLERANCE
        assert relative_error(virial_t, virial) < TOLERANCE


@pytest.mark.parametrize("variant", ["lr2", "sr"])
def test_translation_invariance_molecule(variant):
    model = variant_model(variant)
    atoms = nacl_cluster()
    energy, forces, _ = _evaluate(model, atoms)
    translated = atoms.copy()
    translated.positions += np.array([13.1, -27.3, 2.9])
    energy_t, forces_t, _ = _evaluate(model, translated)
    assert relative_error(energy_t, energy) < TOLERANCE
    assert relative_error(forces_t, forces) < TOLERANCE


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("variant", ["lr2", "lr1-mp1-eq", "sr-mp1-eq-noinit"])
def test_permutation_invariance(variant, structure):
    model = variant_model(variant)
    atoms = STRUCTURES[structure]()
    permutation = np.random.default_rng(7).permutation(len(atoms))
    assert (permutation != np.arange(len(atoms))).any()
    permuted = atoms[permutation]

    energies = predict_per_atom(model, atoms)["energy"].block().values[:, 0]
    energies_p = predict_per_atom(model, permuted)["energy"].block().values[:, 0]
    assert relative_error(energies_p, energies[permutation]) < TOLERANCE

    energy, forces, virial = _evaluate(model, atoms)
    energy_p, forces_p, virial_p = _evaluate(model, permuted)
    assert relative_error(energy_p, energy) < TOLERANCE
    assert relative_error(forces_p, forces[permutation]) < TOLERANCE
    assert relative_error(virial_p, virial) < TOLERANCE


# ---------------------------------------------------------------------------------------
# forces and virial against finite differences
# ---------------------------------------------------------------------------------------

FD_STEP = 1e-5
FD_TOLERANCE = 1e-6


def _energy(model, atoms) -> float:
    return total_energy(model, atoms)


def _derivative(function, step: float = FD_STEP) -> float:
    """Fourth-order central finite difference of ``function`` at 0.

    The (noisy-weight) models have large third derivatives, so that the plain two-point
    stencil has truncation errors ~1e-6 relative at ``step = 1e-5``.
    """
    return (
        -function(2 * step) + 8 * function(step) - 8 * function(-step) + function(-2 * step)
    ) / (12 * step)


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("variant", ["lr2", "lr1-mp1-eq", "lr0-mp1-scalar", "sr"])
def test_forces_finite_differences(variant, structure):
    model = variant_model(variant)
    atoms = STRUCTURES[structure]()
    assert_safe_for_finite_differences(atoms)
    _, forces, _ = _evaluate(model, atoms)

    rng = np.random.default_rng(11)
    for atom, axis in zip(
        rng.choice(len(atoms), 3, replace=False), rng.integers(0, 3, 3), strict=True
    ):

        def displaced(delta, atom=atom, axis=axis):
            new = atoms.copy()
            new.positions[atom, axis] += delta
            return _energy(model, new)

        numerical = -_derivative(displaced)
        analytical = float(forces[atom, axis])
        error = abs(numerical - analytical) / max(1.0, abs(analytical))
        assert record(error) < FD_TOLERANCE


@pytest.mark.parametrize("strain", ["isotropic", "general"])
@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("variant", ["lr2", "lr1-mp1-eq", "sr"])
def test_virial_finite_differences(variant, structure, strain):
    model = variant_model(variant)
    atoms = STRUCTURES[structure]()
    assert_safe_for_finite_differences(atoms)
    _, _, virial = _evaluate(model, atoms)

    if strain == "isotropic":
        direction = np.eye(3)
    else:
        direction = np.random.default_rng(5).normal(size=(3, 3))

    def strained(eps):
        deformation = np.eye(3) + eps * direction
        new = atoms.copy()
        new.positions = atoms.positions @ deformation
        new.set_cell(atoms.cell.array @ deformation, scale_atoms=False)
        return _energy(model, new)

    numerical = _derivative(strained)
    analytical = float((virial * torch.tensor(direction)).sum())
    error = abs(numerical - analytical) / max(1.0, abs(analytical))
    assert record(error) < FD_TOLERANCE
    # a molecule's virial is symmetric (rotation invariance)
    assert relative_error(virial, virial.T) < TOLERANCE


# ---------------------------------------------------------------------------------------
# supercells
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("repeat", [(2, 1, 1), (2, 2, 1)])
@pytest.mark.parametrize("variant", ["lr2", "lr1-mp1-eq", "sr"])
def test_supercell_extensive(variant, repeat):
    model = variant_model(variant)
    atoms = nacl_cell()
    supercell = atoms.repeat(repeat)
    copies = int(np.prod(repeat))

    energy, forces, virial = _evaluate(model, atoms)
    energy_s, forces_s, virial_s = _evaluate(model, supercell)
    assert relative_error(energy_s, copies * energy) < TOLERANCE
    assert relative_error(virial_s, copies * virial) < TOLERANCE
    # ase's repeat stacks whole copies of the original atoms
    assert relative_error(forces_s, forces.repeat(copies, 1)) < TOLERANCE

    energies = predict_per_atom(model, atoms)["energy"].block().values[:, 0]
    energies_s = predict_per_atom(model, supercell)["energy"].block().values[:, 0]
    assert relative_error(energies_s, energies.repeat(copies)) < TOLERANCE
