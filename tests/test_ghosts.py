"""Inputs as LAMMPS builds them: local atoms plus periodic-image "ghosts".

LAMMPS' ``pair_style metatomic`` hands the model the local atoms and their ghost images,
with ``selected_atoms`` set to the local ones and neighbour pairs remapped onto local
atoms with cell shifts. The energy, forces (ghost forces folded back onto their owners,
as LAMMPS does) and virial must equal the plain periodic evaluation.
"""

import ase
import ase.build
import numpy as np
import pytest
import torch
from _helpers import make_model
from metatensor.torch import Labels
from metatomic.torch import ModelOutput, System
from vesin.metatomic import NeighborList

from lorem_mta.utils import predict


def _with_ghosts(model, atoms, n_images):
    """Energy, forces on local atoms and virial of local + ghost atoms."""
    dtype = torch.float64
    local = torch.tensor(atoms.positions, dtype=dtype, requires_grad=True)
    strain = torch.eye(3, dtype=dtype, requires_grad=True)
    cell = torch.tensor(atoms.cell.array, dtype=dtype) @ strain
    positions = local @ strain
    types = torch.tensor(atoms.numbers, dtype=torch.int32)
    n_local = len(atoms)

    # neighbour list of the local atoms only (pairs remapped onto local atoms)
    local_system = System(types, positions, cell, torch.ones(3, dtype=torch.bool))
    options = model.requested_neighbor_lists()[0]
    neighbors = NeighborList(options, "angstrom").compute(local_system)

    # ghosts: every periodic image of every local atom up to n_images cells away
    shifts = [
        (a, b, c)
        for a in range(-n_images, n_images + 1)
        for b in range(-n_images, n_images + 1)
        for c in range(-n_images, n_images + 1)
        if (a, b, c) != (0, 0, 0)
    ]
    shifts = torch.tensor(shifts, dtype=dtype)
    ghosts = (positions.unsqueeze(0) + (shifts @ cell).unsqueeze(1)).reshape(-1, 3)
    ghost_types = types.repeat(len(shifts))
    system = System(
        torch.cat([types, ghost_types]),
        torch.cat([positions, ghosts]),
        cell,
        torch.ones(3, dtype=torch.bool),
    )
    system.add_neighbor_list(options, neighbors)
    selected = Labels(
        ["system", "atom"],
        torch.stack(
            [torch.zeros(n_local, dtype=torch.int32), torch.arange(n_local, dtype=torch.int32)],
            1,
        ),
    )
    outputs = model([system], {"energy": ModelOutput(sample_kind="system")}, selected)
    energy = outputs["energy"].block().values.sum()
    grad_local, grad_strain = torch.autograd.grad(energy, [local, strain])
    return energy.item(), -grad_local.numpy(), grad_strain.numpy(), len(system)


@pytest.mark.parametrize("variant", [{"max_degree_lr": 2}, {"lr": False}])
def test_ghost_atoms_do_not_double_count(variant):
    model = make_model(**variant)
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.set_cell(
        atoms.cell.array @ np.array([[1.0, 0.05, 0], [0, 0.97, 0.04], [0.02, 0, 1.01]]),
        scale_atoms=True,
    )
    atoms.rattle(0.1, seed=4)
    reference = predict(model, [atoms])
    energy, forces, virial, n_total = _with_ghosts(model, atoms, n_images=1)
    assert n_total == 27 * len(atoms)
    assert abs(energy - reference.energies[0].item()) < 1e-10 * abs(energy)
    np.testing.assert_allclose(forces, reference.forces[0].detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(virial, reference.virials[0].numpy(), atol=1e-9)


def test_ghosts_in_a_cell_smaller_than_the_cutoff():
    model = make_model(max_degree_lr=1)
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64)  # 2 atoms, cell vectors ~4 A
    atoms.rattle(0.05, seed=5)
    reference = predict(model, [atoms])
    energy, forces, _, _ = _with_ghosts(model, atoms, n_images=2)
    assert abs(energy - reference.energies[0].item()) < 1e-10 * abs(energy)
    np.testing.assert_allclose(forces, reference.forces[0].detach().numpy(), atol=1e-10)


def test_plain_subselection_keeps_every_charge():
    """Selecting atoms that are not images must not change the long-range sum."""
    model = make_model(max_degree_lr=2)
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.rattle(0.1, seed=6)
    full = predict(model, [atoms], extra_outputs=["lorem::potentials"])
    selected = Labels(["system", "atom"], torch.tensor([[0, 1], [0, 5]], dtype=torch.int32))
    part = predict(model, [atoms], extra_outputs=["lorem::potentials"], selected_atoms=selected)
    full_potentials = full.outputs["lorem::potentials"].block(0).values[[1, 5]]
    np.testing.assert_allclose(
        part.outputs["lorem::potentials"].block(0).values.detach(),
        full_potentials.detach(),
        atol=1e-12,
    )
