"""The long-range block on TensorMaps (lorem_mta.lr_block) fed by another featurizer.

The featurizer here is LOREM's own short-range stage, run outside the backbone and
turned into TensorMaps: with the block sharing the backbone's long-range weights, the
sum of both must reproduce the full model, and the usual symmetries must hold.
"""

from typing import List, Tuple

import numpy as np
import pytest
import torch
from _helpers import (
    make_model,
    molecule,
    nacl_cell,
    nacl_cluster,
    random_rotation,
    relative_error,
    transform,
    wigner_d,
)
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import System

from lorem_mta.lr_block import LongRangeBlock
from lorem_mta.modules import LoremBackbone
from lorem_mta.modules.radial import cosine_cutoff
from lorem_mta.utils import attach_neighbors, predict, system_from_atoms

STRUCTURES = {"nacl-periodic": nacl_cell, "nacl-cluster": nacl_cluster, "ch3oh": molecule}


class ShortRangeFeaturizer(torch.nn.Module):
    """LOREM's initial short-range stage as a stand-alone featurizer with TensorMap output."""

    def __init__(self, backbone: LoremBackbone, max_degree: int):
        super().__init__()
        self.backbone = backbone
        self.max_degree = max_degree
        self.options = LongRangeBlock.from_backbone(backbone).neighbor_options

    def requested_neighbor_lists(self):
        return [self.options]

    def forward(self, systems: List[System]) -> Tuple[TensorMap, TensorMap, torch.Tensor]:
        backbone = self.backbone
        types, centers, neighbors, vectors = [], [], [], []
        offset = 0
        for system in systems:
            pairs = system.get_neighbor_list(self.options)
            types.append(system.types.to(torch.long))
            centers.append(pairs.samples.column("first_atom").to(torch.long) + offset)
            neighbors.append(pairs.samples.column("second_atom").to(torch.long) + offset)
            vectors.append(pairs.values.reshape(-1, 3))
            offset += len(system)
        types, centers = torch.cat(types), torch.cat(centers)
        neighbors, vectors = torch.cat(neighbors), torch.cat(vectors)
        species, species_index = torch.unique(types, return_inverse=True)
        distances = torch.linalg.norm(vectors, dim=-1)
        radial = backbone.radial_basis(distances) * cosine_cutoff(
            distances, backbone.cutoff
        ).unsqueeze(-1)
        harmonics = backbone.spherical_harmonics(vectors)
        scalar, spherical, energies = backbone.initial(
            backbone.embedding(species), species_index, centers, neighbors, radial, harmonics
        )
        samples = Labels(
            ["system", "atom"],
            torch.tensor(
                [[k, i] for k, system in enumerate(systems) for i in range(len(system))],
                dtype=torch.int32,
            ),
        )
        return (
            scalar_map(scalar, samples),
            spherical_map(spherical, samples, self.max_degree),
            energies,
        )


def scalar_map(values: torch.Tensor, samples: Labels) -> TensorMap:
    block = TensorBlock(values, samples, [], Labels.range("n", values.shape[1]))
    return TensorMap(Labels.single(), [block])


def spherical_map(values: torch.Tensor, samples: Labels, max_degree: int) -> TensorMap:
    blocks = []
    for l in range(max_degree + 1):
        mu = Labels("o3_mu", torch.arange(-l, l + 1, dtype=torch.int32).reshape(-1, 1))
        properties = Labels.range("n", values.shape[2])
        blocks.append(TensorBlock(values[:, l * l : (l + 1) ** 2], samples, [mu], properties))
    keys = Labels(
        ["o3_lambda", "o3_sigma"], torch.tensor([[l, 1] for l in range(max_degree + 1)])
    )
    return TensorMap(keys, blocks)


@pytest.fixture(scope="module")
def parts():
    model = make_model(seed=7)
    featurizer = ShortRangeFeaturizer(model.backbone, max_degree=3)
    return model, featurizer, LongRangeBlock.from_backbone(model.backbone)


def composed(featurizer, block, structures, positions=None):
    """Systems, short-range energies per atom and the block's outputs."""
    systems = [
        system_from_atoms(atoms, torch.float64, None if positions is None else positions[k])
        for k, atoms in enumerate(structures)
    ]
    attach_neighbors(featurizer, systems)
    scalar, spherical, energies = featurizer(systems)
    return systems, energies, block(systems, scalar, spherical)


def total_energies(featurizer, block, structures, positions=None) -> torch.Tensor:
    _, short_range, outputs = composed(featurizer, block, structures, positions)
    energies = short_range + outputs["energy"].block().values[:, 0]
    system = outputs["energy"].block().samples.column("system").to(torch.long)
    return torch.zeros(len(structures), dtype=energies.dtype).index_add(0, system, energies)


# ---------------------------------------------------------------------------------------
# the block reproduces LOREM's internal long-range stage
# ---------------------------------------------------------------------------------------


def test_same_as_internal_path(parts):
    model, featurizer, block = parts
    structures = [nacl_cell(), molecule(), nacl_cluster()]
    names = ["lorem::charges", "lorem::potentials", "feature"]
    reference = predict(model, structures, extra_outputs=names)
    leaves = [torch.tensor(a.positions, requires_grad=True) for a in structures]
    energies = total_energies(featurizer, block, structures, leaves)
    assert relative_error(energies, reference.energies) < 1e-12
    gradients = torch.autograd.grad(energies.sum(), leaves)
    for gradient, forces in zip(gradients, reference.forces, strict=True):
        assert relative_error(-gradient, forces) < 1e-10

    _, _, outputs = composed(featurizer, block, structures)
    for name in ["charges", "potentials"]:
        expected = reference.outputs["lorem::" + name]
        assert outputs[name].keys == expected.keys
        for key, got in outputs[name].items():
            assert got.samples == expected.block(key).samples
            assert got.properties == expected.block(key).properties
            assert relative_error(got.values, expected.block(key).values) < 1e-12
    features = reference.outputs["feature"].block().values
    assert relative_error(outputs["features"].block().values, features) < 1e-12


def test_rows_in_any_order_and_split_by_type(parts):
    _, featurizer, block = parts
    structures = [nacl_cell(), molecule()]
    systems, _, reference = composed(featurizer, block, structures)
    scalar, spherical, _ = featurizer(systems)

    permutation = torch.from_numpy(
        np.random.default_rng(0).permutation(len(scalar.block().samples))
    )
    types = torch.cat([s.types for s in systems])
    shuffled_scalar = scalar_map(
        scalar.block().values[permutation],
        Labels(["system", "atom"], scalar.block().samples.values[permutation]),
    )
    blocks, keys = [], []
    for key, got in spherical.items():
        for atomic_type in torch.unique(types).tolist():
            rows = permutation[types[permutation] == atomic_type]
            samples = Labels(
                ["system", "atom", "center_type"],
                torch.cat([got.samples.values[rows], types[rows].reshape(-1, 1)], dim=1),
            )
            blocks.append(
                TensorBlock(got.values[rows], samples, got.components, got.properties)
            )
            keys.append([int(key["o3_lambda"]), 1, atomic_type])
    # a pseudotensor block is ignored
    last = blocks[-1]
    blocks.append(
        TensorBlock(last.values + 1.0, last.samples, last.components, last.properties)
    )
    keys.append([int(key["o3_lambda"]), -1, 0])
    split = TensorMap(
        Labels(["o3_lambda", "o3_sigma", "center_type"], torch.tensor(keys)), blocks
    )
    outputs = block(systems, shuffled_scalar, split)
    for name in ["energy", "features", "charges", "potentials"]:
        for key, got in outputs[name].items():
            assert relative_error(got.values, reference[name].block(key).values) < 1e-13


def test_clear_errors(parts):
    _, featurizer, block = parts
    systems = [system_from_atoms(molecule())]
    attach_neighbors(featurizer, systems)
    scalar, spherical, _ = featurizer(systems)
    with pytest.raises(ValueError, match="no block with o3_lambda=3"):
        keys = Labels(spherical.keys.names, spherical.keys.values[:3])
        block(systems, scalar, TensorMap(keys, [spherical.block(k).copy() for k in range(3)]))
    values = scalar.block().values
    missing = scalar_map(
        values[1:], Labels(["system", "atom"], scalar.block().samples.values[1:])
    )
    with pytest.raises(ValueError, match="exactly one row per atom"):
        block(systems, missing, spherical)
    wrong = scalar_map(values[:, :3], scalar.block().samples)
    with pytest.raises(ValueError, match="16 properties"):
        block(systems, wrong, spherical)
    wire = system_from_atoms(molecule())
    cell = torch.diag(torch.tensor([10.0, 0.0, 0.0], dtype=torch.float64))
    wire = System(wire.types, wire.positions, cell, torch.tensor([True, False, False]))
    with pytest.raises(ValueError, match=r"three directions, two \(slabs\) or none"):
        block([wire], scalar, spherical)


# ---------------------------------------------------------------------------------------
# symmetries and derivatives
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_rotation_and_translation(parts, structure):
    _, featurizer, block = parts
    atoms = STRUCTURES[structure]()
    rotation = random_rotation(np.random.default_rng(3))
    moved = transform(atoms, rotation, translation=np.array([0.3, -1.2, 2.0]))
    with torch.no_grad():
        _, sr, reference = composed(featurizer, block, [atoms])
        _, sr_moved, outputs = composed(featurizer, block, [moved])
    assert relative_error(sr_moved, sr) < 1e-10
    for name in ["energy", "features"]:
        assert (
            relative_error(outputs[name].block().values, reference[name].block().values) < 1e-10
        )
    for name in ["charges", "potentials"]:
        for key, got in outputs[name].items():
            d = torch.from_numpy(wigner_d(int(key["o3_lambda"]), rotation))
            expected = torch.einsum("mn,ans->ams", d, reference[name].block(key).values)
            assert relative_error(got.values, expected) < 1e-9
            assert float(got.values.abs().max()) > 1e-6


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_forces_finite_differences(parts, structure):
    _, featurizer, block = parts
    atoms = STRUCTURES[structure]()
    positions = torch.tensor(atoms.positions, requires_grad=True)
    energy = total_energies(featurizer, block, [atoms], [positions])[0]
    # long-range part alone, so that the check does not rest on the short-range forces
    systems, _, outputs = composed(featurizer, block, [atoms], [positions])
    lr_energy = outputs["energy"].block().values.sum()
    forces = -torch.autograd.grad(energy, positions)[0]
    lr_forces = -torch.autograd.grad(lr_energy, positions)[0]
    step = 1e-5
    for atom, direction in [(0, 0), (1, 2), (len(atoms) - 1, 1)]:
        values = []
        for sign in (1.0, -1.0):
            shifted = positions.detach().clone()
            shifted[atom, direction] += sign * step
            with torch.no_grad():
                _, sr, out = composed(featurizer, block, [atoms], [shifted])
            lr = out["energy"].block().values.sum()
            values.append((float(sr.sum() + lr), float(lr)))
        total_fd = -(values[0][0] - values[1][0]) / (2 * step)
        lr_fd = -(values[0][1] - values[1][1]) / (2 * step)
        assert abs(total_fd - float(forces[atom, direction])) < 1e-6
        assert abs(lr_fd - float(lr_forces[atom, direction])) < 1e-6
    assert float(lr_forces.abs().max()) > 1e-4


def test_torchscript(parts):
    _, featurizer, block = parts
    scripted = torch.jit.script(block)
    structures = [nacl_cell(), molecule()]
    systems, _, reference = composed(featurizer, block, structures)
    scalar, spherical, _ = featurizer(systems)
    outputs = scripted(systems, scalar, spherical)
    for name in ["energy", "features", "charges", "potentials"]:
        for key, got in outputs[name].items():
            assert relative_error(got.values, reference[name].block(key).values) < 1e-14


def test_new_block_trains():
    """A freshly built block (own weights) on top of frozen features learns."""
    torch.manual_seed(0)
    featurizer = ShortRangeFeaturizer(make_model(seed=11).backbone, max_degree=3)
    block = LongRangeBlock(cutoff=5.0, max_degree=3, num_features=16, num_spherical_features=4)
    block = block.double()
    structures = [nacl_cell(seed=k) for k in range(2)] + [nacl_cluster()]
    systems = [system_from_atoms(a) for a in structures]
    attach_neighbors(block, systems)
    with torch.no_grad():
        scalar, spherical, _ = featurizer(systems)
    targets = torch.tensor([-1.0, -1.5, 0.5], dtype=torch.float64)
    optimizer = torch.optim.Adam(block.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        outputs = block(systems, scalar, spherical)
        atomic = outputs["energy"].block()
        system = atomic.samples.column("system").to(torch.long)
        energies = torch.zeros(3, dtype=torch.float64).index_add(0, system, atomic.values[:, 0])
        loss = ((energies - targets) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.1 * losses[0]


def test_constructor_checks():
    with pytest.raises(ValueError, match="max_degree_lr"):
        LongRangeBlock(
            cutoff=5.0, max_degree=1, num_features=4, num_spherical_features=2, max_degree_lr=3
        )
    backbone = LoremBackbone(lr=False, num_features=8, max_degree=1)
    with pytest.raises(ValueError, match="no long-range block"):
        LongRangeBlock.from_backbone(backbone)


# ---------------------------------------------------------------------------------------
# features of another package: featomic's SOAP spherical expansion
# ---------------------------------------------------------------------------------------


def soap_features(systems, expansion, projection):
    """Scalar (l = 0 part) and spherical features from featomic, one block per degree."""
    types = Labels("neighbor_type", torch.tensor([[11], [17]], dtype=torch.int32))
    density = expansion(systems).keys_to_properties(types).keys_to_samples("center_type")
    blocks = []
    for l in range(projection.shape[0]):
        block = density.block({"o3_lambda": l, "o3_sigma": 1})
        values = torch.einsum("amc,cs->ams", block.values, projection[l])
        blocks.append(
            TensorBlock(values, block.samples, block.components, Labels.range("n", 4))
        )
        if l == 0:
            scalar = torch.cat([block.values[:, 0], values[:, 0] ** 2], dim=1)
            scalar_block = TensorBlock(scalar, block.samples, [], Labels.range("n", 16))
    keys = Labels(["o3_lambda", "o3_sigma"], torch.tensor([[l, 1] for l in range(len(blocks))]))
    return TensorMap(Labels.single(), [scalar_block]), TensorMap(keys, blocks)


@pytest.mark.parametrize("structure", ["nacl-periodic", "nacl-cluster"])
def test_featomic_features(structure):
    featomic = pytest.importorskip("featomic.torch")
    expansion = featomic.SphericalExpansion(
        cutoff={"radius": 4.0, "smoothing": {"type": "ShiftedCosine", "width": 0.5}},
        density={"type": "Gaussian", "width": 0.3},
        basis={
            "type": "TensorProduct",
            "max_angular": 2,
            "radial": {"type": "Gto", "max_radial": 5},
        },
    )
    torch.manual_seed(0)
    block = LongRangeBlock(cutoff=5.0, max_degree=2, num_features=16, num_spherical_features=4)
    block = block.double()
    projection = torch.randn(3, 12, 4, dtype=torch.float64)
    atoms = STRUCTURES[structure]()
    rotation = random_rotation(np.random.default_rng(4))
    results = []
    for current in [atoms, transform(atoms, rotation, translation=np.array([1.0, 2.0, -0.5]))]:
        positions = torch.tensor(current.positions, requires_grad=True)
        system = system_from_atoms(current, positions=positions)
        for options in expansion.requested_neighbor_lists() + block.requested_neighbor_lists():
            attach_neighbors(_Requests(options), [system])
        outputs = block([system], *soap_features([system], expansion, projection))
        energy = outputs["energy"].block().values.sum()
        forces = -torch.autograd.grad(energy, positions)[0]
        results.append((float(energy.detach()), forces, outputs["potentials"]))
    assert relative_error(results[1][0], results[0][0]) < 1e-10
    assert relative_error(results[1][1], results[0][1] @ torch.from_numpy(rotation).T) < 1e-8
    assert float(results[0][1].abs().max()) > 1e-4
    for key, got in results[1][2].items():
        d = torch.from_numpy(wigner_d(int(key["o3_lambda"]), rotation))
        expected = torch.einsum("mn,ans->ams", d, results[0][2].block(key).values)
        assert relative_error(got.values.detach(), expected.detach()) < 1e-9


class _Requests:
    """Something with ``requested_neighbor_lists``, for :py:func:`attach_neighbors`."""

    def __init__(self, options):
        self.options = options

    def requested_neighbor_lists(self):
        return [self.options]
