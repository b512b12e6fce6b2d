"""LOREM's long-range block on top of a SOAP short-range model (featomic).

The short-range model is a small SOAP neural network: featomic's spherical expansion
(cutoff 4 A) gives per-atom equivariant densities; their power spectrum, through an MLP,
gives the invariant features ``x_i`` and a short-range atomic energy; a per-degree linear
projection of the expansion gives the spherical features ``S_i``. Both go to
:py:class:`lorem_mta.lr_block.LongRangeBlock` as TensorMaps, which adds LOREM's
long-range energy (learned scalar and l <= 2 charges, Coulomb sum, mixing, readout).

The script

1. trains the SOAP model with and without the long-range block on the binding energies
   of charged molecular dimers (+1/-1 ion pairs 3.7-8.7 A apart, beyond the SOAP
   cutoff for most pairs) and prints the test errors;
2. prints the TensorMaps going in and out of the block and computes forces of a dimer
   and of a periodic NaCl cell (Ewald) by autograd, checking one component against
   finite differences;
3. exports the combined model as a metatomic ``AtomisticModel`` and evaluates it with
   metatomic-ase.

Usage: ``python examples/lr_block/soap_lorem.py [--epochs N] [--output DIR]``; needs
``featomic-torch`` (``pip install lorem-mta[examples]``).
"""

import argparse
import os
import time
from typing import Dict, List, Optional

import ase.build
import ase.io
import numpy as np
import torch
from featomic.torch import SphericalExpansion
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import (
    AtomisticModel,
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
    NeighborListOptions,
    System,
)
from metatomic_ase import MetatomicCalculator

from lorem_mta.lr_block import LongRangeBlock
from lorem_mta.utils import attach_neighbors, system_from_atoms

HERE = os.path.dirname(os.path.abspath(__file__))
ATOMIC_TYPES = [1, 6, 7, 8, 11, 17]
MAX_ANGULAR = 3
MAX_RADIAL = 4
SOAP_CUTOFF = 4.0
#: real-space cutoff of the Ewald sum (smearing cutoff / 4); unused for molecules
LR_CUTOFF = 5.0


class SoapLorem(torch.nn.Module):
    """SOAP network + (optionally) LOREM's long-range block, as a metatomic model.

    :param long_range: whether to add the long-range block
    :param num_features: scalar feature size ``d``
    :param num_spherical_features: spherical channels ``s``
    """

    def __init__(
        self, long_range: bool, num_features: int = 32, num_spherical_features: int = 8
    ):
        super().__init__()
        self.expansion = SphericalExpansion(
            cutoff={
                "radius": SOAP_CUTOFF,
                "smoothing": {"type": "ShiftedCosine", "width": 0.5},
            },
            density={"type": "Gaussian", "width": 0.3},
            basis={
                "type": "TensorProduct",
                "max_angular": MAX_ANGULAR,
                "radial": {"type": "Gto", "max_radial": MAX_RADIAL - 1},
            },
        )
        self.neighbor_types = Labels(
            "neighbor_type", torch.tensor(ATOMIC_TYPES, dtype=torch.int32).reshape(-1, 1)
        )
        channels = len(ATOMIC_TYPES) * MAX_RADIAL
        n_invariants = (MAX_ANGULAR + 1) * channels * (channels + 1) // 2
        self.register_buffer("pairs", torch.triu_indices(channels, channels), persistent=False)
        self.normalize = torch.nn.LayerNorm(n_invariants)
        self.embedding = torch.nn.Embedding(100, num_features)
        self.scalar = torch.nn.Sequential(
            torch.nn.Linear(n_invariants, num_features),
            torch.nn.SiLU(),
            torch.nn.Linear(num_features, num_features),
        )
        self.short_range = torch.nn.Sequential(
            torch.nn.Linear(num_features, num_features),
            torch.nn.SiLU(),
            torch.nn.Linear(num_features, 1),
        )
        self.projection = torch.nn.Parameter(
            torch.randn(MAX_ANGULAR + 1, channels, num_spherical_features) / channels**0.5
        )
        self.max_angular = MAX_ANGULAR
        self.block: Optional[LongRangeBlock] = None
        if long_range:
            self.block = LongRangeBlock(
                LR_CUTOFF, MAX_ANGULAR, num_features, num_spherical_features, max_degree_lr=2
            )

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        """Featomic's half list at 4 A (and the block's full list at 5 A for cells)."""
        options = self.expansion.requested_neighbor_lists()
        if self.block is not None:
            options = options + self.block.requested_neighbor_lists()
        return options

    def features(self, systems: List[System]) -> List[TensorMap]:
        """Scalar (one block) and spherical (one block per degree) features.

        :param systems: systems with neighbour lists
        :return: ``[scalar, spherical]``; samples ``system, atom``
        """
        expansion = self.expansion(systems)
        # every neighbour type in the properties, whatever the systems contain
        expansion = expansion.keys_to_properties(self.neighbor_types)
        blocks: List[TensorBlock] = []
        invariants: List[torch.Tensor] = []
        for l in range(self.max_angular + 1):
            selection = Labels(["o3_lambda", "o3_sigma"], torch.tensor([[l, 1]]))
            # the blocks of all centre types of this degree, in system order
            block = _join_center_types(expansion, selection)
            values = block.values  # [n_atoms, 2l + 1, channels]
            gram = torch.einsum("amc,amd->acd", values, values) / (2 * l + 1) ** 0.5
            invariants.append(gram[:, self.pairs[0], self.pairs[1]])
            projected = torch.einsum("amc,cs->ams", values, self.projection[l])
            properties = _range("channel", projected.shape[2])
            blocks.append(TensorBlock(projected, block.samples, block.components, properties))
        samples = blocks[0].samples
        types = torch.cat([system.types for system in systems]).to(torch.long)
        keys = Labels(
            ["o3_lambda", "o3_sigma"],
            torch.tensor([[l, 1] for l in range(self.max_angular + 1)], dtype=torch.int32),
        )
        power = self.normalize(torch.cat(invariants, dim=1))
        x = self.scalar(power) + self.embedding(types)
        scalar = TensorBlock(x, samples, [], _range("feature", x.shape[1]))
        return [TensorMap(_range("_", 1), [scalar]), TensorMap(keys, blocks)]

    def energies(self, systems: List[System]) -> torch.Tensor:
        """Total energy of every system.

        :param systems: systems with neighbour lists
        :return: tensor of shape ``(n_systems,)``
        """
        scalar, spherical = self.features(systems)
        atomic = self.short_range(scalar.block().values)[:, 0]
        if self.block is not None:
            outputs = self.block(systems, scalar, spherical)
            atomic = atomic + outputs["energy"].block().values[:, 0]
        index = scalar.block().samples.column("system").to(torch.long)
        return torch.zeros(len(systems), dtype=atomic.dtype).index_add(0, index, atomic)

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        """Metatomic entry point: the per-system ``energy``.

        :param systems: systems with neighbour lists
        :param outputs: requested outputs (``energy`` per system)
        :param selected_atoms: not supported (must be ``None``)
        :return: ``{"energy": TensorMap}``
        """
        if selected_atoms is not None:
            raise ValueError("this example model does not support selected_atoms")
        energies = self.energies(systems).reshape(-1, 1)
        block = TensorBlock(energies, _range("system", len(systems)), [], _range("energy", 1))
        return {"energy": TensorMap(_range("_", 1), [block])}


def _range(name: str, n: int) -> Labels:
    """``Labels.range`` (whose static method TorchScript can compile but not save)."""
    return Labels([name], torch.arange(n, dtype=torch.int32).reshape(-1, 1))


def _join_center_types(expansion: TensorMap, selection: Labels) -> TensorBlock:
    """One block of a given ``(o3_lambda, o3_sigma)`` with the atoms in system order."""
    selected = expansion.blocks(selection)
    values = torch.cat([block.values for block in selected])
    samples = torch.cat([block.samples.values for block in selected])
    order = torch.argsort(samples[:, 0].to(torch.long) * 1000000 + samples[:, 1])
    first = selected[0]
    return TensorBlock(
        values[order],
        Labels(["system", "atom"], samples[order]),
        first.components,
        first.properties,
    )


# ---------------------------------------------------------------------------------------


def load_dimers():
    """Charged dimers (molecules) and their binding energies, eV."""
    frames = ase.io.read(os.path.join(HERE, "charge-charge.xyz"), ":")
    targets = [
        atoms.get_potential_energy() - atoms.info["energyA"] - atoms.info["energyB"]
        for atoms in frames
    ]
    for atoms in frames:
        atoms.calc = None
        atoms.pbc = False
        atoms.cell = np.zeros((3, 3))
    return frames, torch.tensor(targets, dtype=torch.float64)


def train(model, frames, targets, train_index, epochs):
    """Energy-only training; returns the absolute error of every dimer (eV)."""
    systems = [system_from_atoms(atoms) for atoms in frames]
    attach_neighbors(model, systems)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    generator = torch.Generator().manual_seed(0)
    batch_size = 10
    mean = float(targets[train_index].mean())
    for _ in range(epochs):
        order = train_index[torch.randperm(len(train_index), generator=generator)]
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size].tolist()
            predicted = model.energies([systems[k] for k in batch]) + mean
            loss = ((predicted - targets[batch]) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    with torch.no_grad():
        predicted = model.energies(systems) + mean
    return (predicted - targets).abs()


def forces_demo(model):
    """Print the TensorMaps around the block; forces of a dimer and of a NaCl cell."""
    nacl = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    nacl.rattle(0.05, seed=1)
    dimer = load_dimers()[0][0]
    for name, atoms in [
        ("dimer (molecule, direct sum)", dimer),
        ("NaCl (periodic, Ewald)", nacl),
    ]:
        positions = torch.tensor(atoms.positions, requires_grad=True)
        system = system_from_atoms(atoms, positions=positions)
        attach_neighbors(model, [system])
        scalar, spherical = model.features([system])
        outputs = model.block([system], scalar, spherical)
        energy = model.energies([system])[0]
        forces = -torch.autograd.grad(energy, positions)[0]

        step = 1e-4
        shifted = []
        for sign in (1.0, -1.0):
            moved = positions.detach().clone()
            moved[0, 0] += sign * step
            other = system_from_atoms(atoms, positions=moved)
            attach_neighbors(model, [other])
            with torch.no_grad():
                shifted.append(float(model.energies([other])[0]))
        finite_difference = -(shifted[0] - shifted[1]) / (2 * step)

        print(f"\n{name}: {len(atoms)} atoms")
        print(f"  scalar features in:  {tuple(scalar.block().values.shape)}")
        for key, block in spherical.items():
            print(f"  spherical in  {_key(key)}: {tuple(block.values.shape)}")
        for output in ["features", "energy"]:
            print(f"  {output + ' out:':20s} {tuple(outputs[output].block().values.shape)}")
        for key, block in outputs["charges"].items():
            print(f"  charges out  {_key(key)}: {tuple(block.values.shape)}")
        print(f"  energy {float(energy.detach()):.6f} eV, forces {tuple(forces.shape)}")
        print(
            f"  F[0, x] autograd {float(forces[0, 0]):+.6f} eV/A, "
            f"finite differences {finite_difference:+.6f} eV/A"
        )
        assert abs(finite_difference - float(forces[0, 0])) < 1e-5


def _key(key) -> str:
    return f"(o3_lambda={int(key['o3_lambda'])}, o3_sigma={int(key['o3_sigma'])})"


def export_and_run(model, output):
    """Export as a metatomic model and run it in ASE."""
    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput(unit="eV", sample_kind="system")},
        atomic_types=ATOMIC_TYPES,
        interaction_range=float("inf"),
        length_unit="angstrom",
        supported_devices=["cpu"],
        dtype="float64",
    )
    metadata = ModelMetadata(name="SOAP + LOREM long-range block (example)")
    exported = AtomisticModel(model.eval(), metadata, capabilities)
    path = os.path.join(output, "soap-lorem.pt")
    exported.save(path)
    dimer = load_dimers()[0][0]
    system = system_from_atoms(dimer)
    attach_neighbors(model, [system])
    with torch.no_grad():
        eager = float(model.energies([system])[0])
    dimer.calc = MetatomicCalculator(path)
    energy = dimer.get_potential_energy()
    assert abs(energy - eager) < 1e-8, (energy, eager)
    forces = dimer.get_forces()
    largest = np.abs(forces).max()
    print(f"\nexported {path}; ASE: energy {energy:.6f} eV, |F|max {largest:.4f} eV/A")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--output", default=os.path.join("outputs", "lr_block"))
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    torch.set_default_dtype(torch.float64)

    frames, targets = load_dimers()
    order = torch.randperm(len(frames), generator=torch.Generator().manual_seed(1))
    train_index, test_index = order[:100], order[100:]
    print(
        f"{len(frames)} dimers, binding energies {float(targets.min()):.2f} to "
        f"{float(targets.max()):.2f} eV (std {float(targets.std()):.2f} eV)"
    )
    distances = torch.tensor([atoms.info["distance"] for atoms in frames])
    far = test_index[distances[test_index] > 6.0]
    print(
        f"MAE (meV) on {len(train_index)} training, {len(test_index)} test dimers and the "
        f"{len(far)} test dimers more than 6 A apart:"
    )
    models = {}
    for long_range in [False, True]:
        torch.manual_seed(0)
        model = SoapLorem(long_range)
        start = time.time()
        errors = 1000 * train(model, frames, targets, train_index, args.epochs)
        label = "SOAP + LOREM long range" if long_range else "SOAP only"
        print(
            f"  {label:24s} train {float(errors[train_index].mean()):5.0f}"
            f"  test {float(errors[test_index].mean()):5.0f}"
            f"  test > 6 A {float(errors[far].mean()):5.0f}  ({time.time() - start:.0f} s)"
        )
        models[long_range] = model

    forces_demo(models[True])
    export_and_run(models[True], args.output)


if __name__ == "__main__":
    main()
