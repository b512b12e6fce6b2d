"""Helpers to evaluate a :py:class:`~lorem_mta.model.LoremModel` from plain Python.

Engines (ASE, LAMMPS, i-PI, TorchSim) evaluate exported models themselves; these helpers
do the same thing in a few lines for scripts and tests: build a metatomic ``System``,
attach the neighbour list the model asks for (with autograd through positions and cell),
and get energy, forces and the virial ``W = dE/d(strain)`` (ASE stress times volume).
"""

import itertools
from typing import Dict, List, NamedTuple, Optional

import ase
import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import ModelOutput, System, register_autograd_neighbors
from vesin.metatomic import NeighborList


class Prediction(NamedTuple):
    """Energy (per system), forces (per system) and virial ``dE/d(strain)``."""

    energies: torch.Tensor
    forces: List[torch.Tensor]
    virials: torch.Tensor
    outputs: Dict[str, TensorMap]


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype a model computes in, which its input systems must have.

    :param model: an exported ``AtomisticModel`` (``load_atomistic_model``; its
        ``capabilities().dtype``) or an eager module such as
        :py:class:`~lorem_mta.model.LoremModel` (the dtype of its first floating-point
        parameter or buffer; float64 for a module without any)
    :return: ``torch.float32`` or ``torch.float64``
    """
    capabilities = getattr(model, "capabilities", None)
    if callable(capabilities):
        name = capabilities().dtype
        if name not in ("float32", "float64"):
            raise ValueError(f"the model computes in {name!r}; expected float32 or float64")
        return getattr(torch, name)
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float64


def system_from_atoms(
    atoms: ase.Atoms,
    dtype: Optional[torch.dtype] = None,
    positions: Optional[torch.Tensor] = None,
    strain: Optional[torch.Tensor] = None,
    model: Optional[torch.nn.Module] = None,
) -> System:
    """Convert ASE atoms to a metatomic ``System`` (positions and cell times ``strain``).

    :param atoms: the structure; periodicity from ``atoms.pbc``
    :param dtype: dtype of positions and cell; by default the dtype of ``model``
        (:py:func:`model_dtype`), float64 without a model
    :param positions: optional ``(n_atoms, 3)`` tensor to use instead of
        ``atoms.positions`` (e.g. a leaf that requires gradients)
    :param strain: optional ``(3, 3)`` matrix applied to positions and cell
    :param model: the model the system is for (sets the dtype)
    :return: the system
    """
    if model is not None:
        expected = model_dtype(model)
        if dtype is not None and dtype != expected:
            raise ValueError(
                f"system_from_atoms: dtype {dtype} differs from the model's {expected} "
                "(leave dtype out to take the model's)"
            )
        dtype = expected
    elif dtype is None:
        dtype = torch.float64
    if positions is None:
        positions = torch.tensor(atoms.positions, dtype=dtype)
    pbc = torch.tensor(atoms.pbc, dtype=torch.bool)
    cell = torch.tensor(atoms.cell.array, dtype=dtype) * pbc.unsqueeze(-1).to(dtype)
    if strain is not None:
        positions = positions @ strain
        cell = cell @ strain
    return System(
        types=torch.tensor(atoms.numbers, dtype=torch.int32),
        positions=positions,
        cell=cell,
        pbc=pbc,
    )


def attach_neighbors(model: torch.nn.Module, systems: List[System]) -> None:
    """Compute and attach every neighbour list ``model`` requests (autograd-ready).

    :param model: a :py:class:`~lorem_mta.model.LoremModel` or ``AtomisticModel``
    :param systems: systems to complete in place
    """
    for options in model.requested_neighbor_lists():
        calculator = NeighborList(options, "angstrom")
        for system in systems:
            if len(system) == 0:
                # vesin refuses systems without atoms
                system.add_neighbor_list(options, _empty_neighbors(system))
            else:
                system.add_neighbor_list(options, calculator.compute(system))


def _empty_neighbors(system: System) -> TensorBlock:
    """An empty neighbour list (the one of a system without atoms)."""
    samples = Labels(
        ["first_atom", "second_atom", "cell_shift_a", "cell_shift_b", "cell_shift_c"],
        torch.zeros((0, 5), dtype=torch.int32),
    )
    neighbors = TensorBlock(
        values=system.positions.new_zeros((0, 3, 1)),
        samples=samples,
        components=[Labels.range("xyz", 3)],
        properties=Labels.range("distance", 1),
    )
    register_autograd_neighbors(system, neighbors)
    return neighbors


def predict(
    model: torch.nn.Module,
    structures: List[ase.Atoms],
    dtype: Optional[torch.dtype] = None,
    extra_outputs: Optional[List[str]] = None,
    selected_atoms: Optional[Labels] = None,
    create_graph: bool = False,
) -> Prediction:
    """Energies, forces and virials of ``structures`` with a (non-exported) model.

    :param model: a :py:class:`~lorem_mta.model.LoremModel`
    :param structures: ASE structures
    :param dtype: dtype to evaluate in (by default the model's, :py:func:`model_dtype`)
    :param extra_outputs: names of further outputs to return (e.g. ``lorem::charges``)
    :param selected_atoms: optional selection passed to the model
    :param create_graph: keep the graph of the derivatives (for force training)
    :return: :py:class:`Prediction`
    """
    if dtype is None:
        dtype = model_dtype(model)
    strains = [torch.eye(3, dtype=dtype).requires_grad_(True) for _ in range(len(structures))]
    leaves = [
        torch.tensor(atoms.positions, dtype=dtype).requires_grad_(True) for atoms in structures
    ]
    systems = [
        system_from_atoms(atoms, dtype, positions, strain)
        for atoms, positions, strain in zip(structures, leaves, strains, strict=True)
    ]
    attach_neighbors(model, systems)
    requested = {"energy": ModelOutput(unit="eV", sample_kind="system")}
    for name in extra_outputs or []:
        requested[name] = ModelOutput(sample_kind="atom")
    outputs = model(systems, requested, selected_atoms)
    energies = outputs["energy"].block().values.reshape(-1)
    gradients = torch.autograd.grad(
        energies.sum(), leaves + strains, create_graph=create_graph, allow_unused=True
    )
    forces = [
        -g if g is not None else torch.zeros_like(p)
        for g, p in zip(gradients[: len(systems)], leaves, strict=True)
    ]
    virials = torch.stack(
        [
            g if g is not None else torch.zeros((3, 3), dtype=dtype)
            for g in gradients[len(systems) :]
        ]
    )
    return Prediction(energies, forces, virials, outputs)
