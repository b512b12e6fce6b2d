"""The stages of ``pair_style lorem`` compose to the metatomic model.

:py:class:`lorem_mta.stages.LoremStages` runs the short-range stage, the potentials of
all atoms and the long-range mixing separately (as the LAMMPS pair style does across MPI
ranks); its ``forward`` chains them for one periodic structure. Energies, forces and
virials must equal those of :py:class:`~lorem_mta.model.LoremModel` on the same
structure, also after TorchScript export.
"""

import ase.build
import numpy as np
import pytest
import torch
from _helpers import make_model, nacl_cell, relative_error, variant_model
from ase.neighborlist import neighbor_list

from lorem_mta.stages import LoremStages, export_stages
from lorem_mta.utils import predict

TOLERANCE = 1e-12


def _stage_prediction(stages, atoms):
    """Energy, forces and virial dE/d(strain) from ``stages.forward``."""
    i, j, shifts = neighbor_list("ijS", atoms, stages.cutoff)
    strain = torch.eye(3, dtype=torch.float64, requires_grad=True)
    positions = torch.tensor(atoms.positions, requires_grad=True)
    cell = torch.tensor(atoms.cell.array)
    energies = stages(
        torch.tensor(atoms.numbers),
        positions @ strain,
        cell @ strain,
        torch.tensor(i),
        torch.tensor(j),
        torch.tensor(shifts),
    )
    energy = energies.sum()
    gradient, virial = torch.autograd.grad(energy, [positions, strain])
    return energy.detach(), -gradient, virial


@pytest.mark.parametrize("variant", ["lr2", "lr1-mp1-eq", "sr-mp1-eq-noinit"])
def test_stages_match_model(variant):
    model = variant_model(variant)
    atoms = nacl_cell(seed=11)
    reference = predict(model, [atoms])
    stages = LoremStages(model)
    energy, forces, virial = _stage_prediction(stages, atoms)
    assert relative_error(energy, reference.energies.detach()[0]) < TOLERANCE
    assert relative_error(forces, reference.forces[0].detach()) < TOLERANCE
    assert relative_error(virial, reference.virials[0].detach()) < TOLERANCE
    assert stages.interaction_range == (len(model.backbone.steps) + 1) * model.cutoff


def test_exported_stages(tmp_path):
    model = variant_model("lr2")
    path = str(tmp_path / "stages.pt")
    export_stages(model, path)
    loaded = torch.jit.load(path)
    assert loaded.dtype_name == "float64"
    assert loaded.has_long_range
    atoms = nacl_cell(seed=12)
    energy, forces, virial = _stage_prediction(loaded, atoms)
    reference = predict(model, [atoms])
    assert relative_error(energy, reference.energies.detach()[0]) < TOLERANCE
    assert relative_error(forces, reference.forces[0].detach()) < TOLERANCE
    assert relative_error(virial, reference.virials[0].detach()) < TOLERANCE
    with pytest.raises(Exception, match="only knows atomic types"):
        loaded.short_range(
            torch.tensor([3]),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            torch.zeros((0, 3), dtype=torch.float64),
        )


def test_stages_refuse_born_charges():
    with pytest.raises(ValueError, match="can not be split"):
        LoremStages(make_model(bec=True))
    assert np.isfinite(LoremStages(variant_model("sr")).interaction_range)


def _rattled_slab(seed=3):
    """Rattled NaCl bilayer (2 x 2 in-plane cubic cells) with 15 A of vacuum, pbc T, T, F."""
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 1))
    atoms = atoms[atoms.positions[:, 2] < 3.0]
    atoms.cell[2, 2] = 2.82 + 15.0
    atoms.rattle(0.1, seed=seed)
    atoms.pbc = [True, True, False]
    return atoms


def _ranked_prediction(stages, atoms, n_ranks, method):
    """Energy, forces and virial with the long range split over ``n_ranks`` fake ranks.

    Every rank owns a slab of atoms along the first lattice vector; its "ghosts" are the
    periodic images its pairs reach. Every rank spreads only its own atoms (``lr_sums``),
    the sums are added by hand, and every rank computes the potentials of its own atoms
    only (``lr_potentials``); autograd runs through the whole composition.
    """
    slab = not atoms.pbc[2]
    i, j, shifts = neighbor_list("ijS", atoms, stages.cutoff)
    strain = torch.eye(3, dtype=torch.float64, requires_grad=True)
    positions = torch.tensor(atoms.positions, requires_grad=True) @ strain
    cell_array = atoms.cell.array.copy()
    if slab:
        cell_array[2] = 0.0  # metatomic's convention for the open direction
    cell = torch.tensor(cell_array) @ strain
    numbers = torch.tensor(atoms.numbers)
    vectors = positions[j] - positions[i] + torch.tensor(shifts).to(cell.dtype) @ cell
    energies, scalar, spherical, charges = stages.short_range(
        numbers, torch.tensor(i), torch.tensor(j), vectors
    )
    n_atoms = len(atoms)
    geometry = torch.zeros(4, dtype=torch.float64)
    if slab:
        origin = positions.detach().mean(dim=0)
        heights = positions.detach()[:, 2] - origin[2]
        geometry = torch.cat([origin, (heights.max() - heights.min()).reshape(1)])
    assert stages.lr_method(cell, geometry, n_atoms) == method
    fractional = atoms.get_scaled_positions()[:, 0]
    owner = np.minimum((fractional * n_ranks).astype(int), n_ranks - 1)
    ranks = []
    for rank in range(n_ranks):
        own = np.flatnonzero(owner == rank)
        local = {int(a): k for k, a in enumerate(own)}
        members = list(own)
        image_positions = [positions[own]]
        centers, neighbors = [], []
        for a in own:
            for p in np.flatnonzero(i == a):
                key = (int(j[p]), *map(int, shifts[p]))
                if key[1:] == (0, 0, 0) and key[0] in local:
                    neighbor = local[key[0]]
                else:
                    if key not in local:
                        local[key] = len(members)
                        members.append(key[0])
                        shift = torch.tensor(shifts[p]).to(cell.dtype) @ cell
                        image_positions.append((positions[key[0]] + shift)[None])
                    neighbor = local[key]
                centers.append(local[int(a)])
                neighbors.append(neighbor)
        ranks.append((own, members, torch.cat(image_positions), centers, neighbors))
    # sums of the charges over the ranks, then of the reciprocal sums
    totals = sum(stages.charge_sums(charges[own]) for own, *_ in ranks)
    rank_charges = [
        stages.lr_charges(charges[members], totals, n_atoms) for _, members, *_ in ranks
    ]
    sums = sum(
        stages.lr_sums(q[: len(rank[0])], rank[2][: len(rank[0])], cell, geometry, method)
        for q, rank in zip(rank_charges, ranks, strict=True)
    )
    energy = energies.sum()
    for q, (own, _, rank_positions, centers, neighbors) in zip(
        rank_charges, ranks, strict=True
    ):
        potentials = stages.lr_potentials(
            sums,
            q,
            rank_positions,
            cell,
            geometry,
            method,
            torch.tensor(centers, dtype=torch.long),
            torch.tensor(neighbors, dtype=torch.long),
            len(own),
        )
        energy = (
            energy + stages.long_range_energies(scalar[own], spherical[own], potentials).sum()
        )
    gradient, virial = torch.autograd.grad(energy, [positions, strain])
    return energy.detach(), -gradient, virial


@pytest.mark.parametrize(
    ("structure", "method", "n_ranks"),
    [
        ("bulk", "ewald", 1),
        ("bulk", "ewald", 3),
        ("bulk", "pme", 2),
        ("slab", "ewald", 2),
        ("slab", "pme", 3),
    ],
)
def test_distributed_stages_match_model(structure, method, n_ranks):
    """The long range split over fake ranks (sums added by hand) equals LoremModel."""
    model = make_model(max_degree_lr=1, long_range_method=method, seed=5)
    atoms = nacl_cell(seed=13) if structure == "bulk" else _rattled_slab()
    reference = predict(model, [atoms])
    stages = LoremStages(model)
    energy, forces, virial = _ranked_prediction(stages, atoms, n_ranks, method)
    assert relative_error(energy, reference.energies.detach()[0]) < TOLERANCE
    assert relative_error(forces, reference.forces[0].detach()) < TOLERANCE
    assert relative_error(virial, reference.virials[0].detach()) < TOLERANCE


def test_stages_refuse_raw_charges_in_slabs():
    """A model with raw (non-neutral) latent charges is refused for slabs, as in ASE."""
    stages = LoremStages(make_model(max_degree_lr=1, neutral_charges=False))
    cell = torch.tensor(_rattled_slab().cell.array)
    cell[2] = 0.0
    with pytest.raises(ValueError, match="neutral latent charges"):
        stages.lr_method(cell, torch.tensor([0.0, 0.0, 0.0, 3.0], dtype=torch.float64), 16)
