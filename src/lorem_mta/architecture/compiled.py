r"""Compiled force training: energies and forces of a batch from one compiled function.

A force-training step evaluates the energy :math:`E(\mathbf r; \theta)`, its gradient
:math:`\partial E / \partial \mathbf r` (with the graph kept) and then the gradient of
the loss with respect to :math:`\theta` through both. In eager mode each of the three
passes dispatches thousands of small torch operators, whose fixed cost dominates a
step of a small model on small structures. With ``compile: true`` (training
hyperparameter), the trainer evaluates

.. math::

    (\theta, \mathbf r) \mapsto \Big(E_s(\theta, \mathbf r),\
    \frac{\partial \sum_s E_s}{\partial \mathbf r}\Big)

as one function compiled by ``torch.compile`` (inductor): the inner gradient is taken
with :py:func:`torch.func.grad` *inside* the compiled function, so that the compiler
sees the forward and the force pass as one graph and derives a first-order backward
for the parameters (``torch.compile`` cannot run a double backward through a compiled
region, so compiling the model alone would not help force training).

Everything that has shapes depending on the data (species present, pairs sorted by
species pair, the neighbour table, the molecule pairs of the direct Coulomb sum) is
computed before the call, by :py:meth:`~lorem_mta.modules.LoremBackbone.topology`;
the compiled function itself only does arithmetic. The numbers are those of the eager
model up to float round-off (``tests/test_compiled_training.py``).

Supported: the energy target with or without forces (no stress or virial), molecules
(``pbc=False``) with any model, periodic structures only without the long-range block
(``lr: false``); models without Born effective charges. Other batches run in eager mode,
and the log says why once. Validation batches with as many structures as the training
batches go through the same function (with gradients on, so that the training graph
serves them). The first batches pay the compilation (minutes on a small CPU; cached on
disk by torch between runs).

When the training structures are kept in memory for the whole run (prepared once, no
worker processes: ``kept=True``), the flat tensors of every structure (atomic
numbers, pairs, cell shifts, checked once) are kept too, and a batch only concatenates
them: reading a structure's neighbour list from its metatomic ``System`` costs tens of
microseconds per call.
"""

import logging
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import System

from ..model import FlatSystems
from ..modules.backbone import BatchTopology
from ..modules.layers import structure_index


def _energies_and_gradients(
    backbone: torch.nn.Module,
    parameters: Dict[str, torch.Tensor],
    buffers: Dict[str, torch.Tensor],
    positions: torch.Tensor,
    types: torch.Tensor,
    centers: torch.Tensor,
    neighbors: torch.Tensor,
    shifts: torch.Tensor,
    cells: torch.Tensor,
    atom_ptr: List[int],
    pair_ptr: List[int],
    periodic: List[bool],
    total_charges: Optional[torch.Tensor],
    topology: BatchTopology,
    baseline: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Energies of every structure and their gradient with respect to the positions.

    :param backbone: the :py:class:`~lorem_mta.modules.LoremBackbone`
    :param parameters: its parameters, by name
    :param buffers: its buffers, by name
    :param positions: ``(n_atoms, 3)``
    :param types: atomic numbers, ``(n_atoms,)``
    :param centers: pair centres, ``(n_pairs,)``
    :param neighbors: pair neighbours, ``(n_pairs,)``
    :param shifts: ``S h`` of every pair (zero in molecules), ``(n_pairs, 3)``
    :param cells: ``(n_structures, 3, 3)``
    :param atom_ptr: first atom of every structure, plus the total
    :param pair_ptr: first pair of every structure, plus the total
    :param periodic: periodicity of every structure
    :param total_charges: ``(n_structures,)`` or ``None``
    :param topology: the batch's :py:class:`~lorem_mta.modules.backbone.BatchTopology`
    :param baseline: energy added per atom (the model's atomic baseline), ``(n_atoms,)``
    :return: energies ``(n_structures,)`` and gradients ``(n_atoms, 3)``
    """

    def total_energy(positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        vectors = positions[neighbors] - positions[centers] + shifts
        output = torch.func.functional_call(
            backbone,
            (parameters, buffers),
            (types, positions, centers, neighbors, vectors, cells, atom_ptr, pair_ptr),
            {"periodic": periodic, "total_charges": total_charges, "topology": topology},
        )
        atomic = output.energies + baseline
        zeros = torch.zeros(len(atom_ptr) - 1, dtype=atomic.dtype, device=atomic.device)
        energies = zeros.index_add(0, topology.structure, atomic)
        return energies.sum(), energies

    gradients, energies = torch.func.grad(total_energy, has_aux=True)(positions)
    return energies, gradients


class FlatBatch(NamedTuple):
    """A batch as the compiled function's inputs.

    ``types`` ``(n_atoms,)`` (int64), ``positions`` ``(n_atoms, 3)`` (detached);
    ``centers``, ``neighbors`` ``(n_pairs,)`` in the flat atom numbering; ``shifts``
    ``(n_pairs, 3)``: ``S h`` of every pair (zero in molecules); ``cells``
    ``(n_structures, 3, 3)``; ``atom_ptr``, ``pair_ptr``: first atom and pair of every
    structure plus the totals; ``periodic``: per structure; ``system_index`` and
    ``atom_index`` ``(n_atoms,)``, int32: structure of every atom and its index in it.
    """

    types: torch.Tensor
    positions: torch.Tensor
    centers: torch.Tensor
    neighbors: torch.Tensor
    shifts: torch.Tensor
    cells: torch.Tensor
    atom_ptr: List[int]
    pair_ptr: List[int]
    periodic: List[bool]
    system_index: torch.Tensor
    atom_index: torch.Tensor


class _Kept(NamedTuple):
    """The flat tensors of one structure kept for the whole run."""

    #: the structure itself: holding it keeps its ``id`` from being reused
    system: System
    #: ``(n_atoms,)`` int64
    types: torch.Tensor
    #: ``(n_atoms, 3)``, detached
    positions: torch.Tensor
    #: ``(n_pairs, 2)`` int64, the structure's own atom numbering
    pairs: torch.Tensor
    #: ``(n_pairs, 3)``
    shifts: torch.Tensor
    #: ``(3, 3)``, detached
    cell: torch.Tensor
    periodic: bool
    #: ``(n_atoms,)`` int32, ``0 .. n_atoms - 1``
    atom_index: torch.Tensor


class CompiledEnergyForces:
    """Energies and position gradients of training batches from a compiled function.

    Returns what :py:func:`metatrain.utils.evaluate_model.evaluate_model` returns for
    the energy target in training mode (a TensorMap per structure with a ``positions``
    gradient block), so the loss, the metrics and the scaling of the trainer stay
    metatrain's.

    :param model: the metatrain model (:py:class:`~lorem_mta.architecture.LoremMta`)
    :param backend: ``torch.compile`` backend; ``None`` calls the function without
        compiling it (for tests)
    """

    def __init__(self, model: torch.nn.Module, backend: Optional[str] = "inductor") -> None:
        self.model = model
        # flat tensors of the structures kept in memory, by id of their System
        self._kept: Dict[int, _Kept] = {}
        self.lorem = model.lorem
        self.backbone = model.lorem.backbone
        self.function = _energies_and_gradients
        if backend is not None:
            # one graph or an error: a graph break inside torch.func.grad would run the
            # whole function in eager mode, silently
            self.function = torch.compile(
                _energies_and_gradients, backend=backend, dynamic=True, fullgraph=True
            )
        self._told: set = set()
        self._state: Optional[Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]] = None

    def unsupported(self, systems: List[System], targets: Dict) -> Optional[str]:
        """Why this batch runs in eager mode, or ``None`` if it runs compiled.

        :param systems: the batch
        :param targets: the target infos of the batch, by name
        :return: a reason, or ``None``
        """
        if set(targets) != {self.model.target_name}:
            return "targets other than the energy (" + ", ".join(sorted(targets)) + ")"
        info = targets[self.model.target_name]
        if not set(info.gradients) <= {"positions"}:
            return "stress or virial training"
        if info.per_atom:
            return "per-atom energies"
        if self.backbone.bec:
            return "Born effective charges"
        if self.backbone.long_range is not None and any(bool(s.pbc.any()) for s in systems):
            return "periodic structures with the long-range block"
        return None

    def __call__(
        self, systems: List[System], targets: Dict, kept: bool = False
    ) -> Optional[Dict[str, TensorMap]]:
        """Energy (and forces, if the target has them) of a batch.

        :param systems: the batch, with neighbour lists
        :param targets: the target infos of the batch, by name
        :param kept: as in :py:meth:`evaluate`
        :return: ``{target name: energy TensorMap}``, or ``None`` when the batch would
            need more compiled variants than torch allows (see :py:meth:`evaluate`):
            evaluate it in eager mode
        """
        evaluated = self.evaluate(systems, kept)
        if evaluated is None:
            return None
        energies, gradients, flat = evaluated
        name = self.model.target_name
        with_forces = "positions" in targets[name].gradients
        return {name: _energy_map(energies, gradients if with_forces else None, flat)}

    def evaluate(
        self, systems: List[System], kept: bool = False
    ) -> Optional[Tuple[torch.Tensor, torch.Tensor, FlatBatch]]:
        """Energies of a batch and their gradients with respect to the positions.

        The function is compiled again (and kept) for batches with another number of
        structures, or other species, or a species pair that is absent or occurs once
        (torch specialises sizes 0 and 1): one graph when every batch has the same
        structures count and all the species.

        :param systems: the batch, with neighbour lists
        :param kept: the systems are kept unchanged in memory for the whole run (the
            trainer's prepared datasets without worker processes): keep their flat
            tensors too, checked once (see the module documentation). Only for such
            systems: the tensors of every system seen are kept
        :return: energies ``(n_structures,)``, their gradients ``(n_atoms, 3)`` (both
            with the graph to the parameters) and the flat batch; or ``None`` when the
            batch would need more compiled variants than torch allows
            (``torch._dynamo.config.recompile_limit``; logged once)
        """
        lorem = self.lorem
        flat = self._kept_batch(systems) if kept else self._flat_batch(systems)
        total_charges: Optional[torch.Tensor] = None
        if lorem.total_charge:
            total_charges = lorem._total_charges(
                systems, flat.positions.dtype, flat.positions.device
            )
        topology = self.backbone.topology(
            flat.types, flat.centers, flat.neighbors, flat.atom_ptr, flat.periodic
        )
        positions = flat.positions
        baseline = lorem.atomic_baseline.to(positions.dtype)[flat.types]
        parameters, buffers = self._parameters_and_buffers()
        try:
            energies, gradients = self.function(
                self.backbone,
                parameters,
                buffers,
                positions,
                flat.types,
                flat.centers,
                flat.neighbors,
                flat.shifts,
                flat.cells,
                flat.atom_ptr,
                flat.pair_ptr,
                flat.periodic,
                total_charges,
                topology,
                baseline,
            )
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            self.tell_once(
                "shapes that would need more compiled variants than torch allows "
                f"(recompile_limit {torch._dynamo.config.recompile_limit})"
            )
            return None
        except torch._dynamo.exc.TorchDynamoException as error:
            raise RuntimeError(
                "compile: torch.compile could not compile the training step of this "
                "batch (" + type(error).__name__ + "); train with 'compile: false'"
            ) from error
        return energies, gradients, flat

    def _flat_batch(self, systems: List[System]) -> FlatBatch:
        """The :py:class:`FlatBatch` of a batch, read from its systems.

        :param systems: the batch, with neighbour lists
        :return: its flat tensors (the systems checked by the model)
        """
        lorem = self.lorem
        lorem._check_dtypes(systems)
        flat = lorem._flatten(systems)
        return FlatBatch(
            types=flat.types,
            positions=flat.positions.detach(),
            centers=flat.centers,
            neighbors=flat.neighbors,
            shifts=_pair_shifts(systems, lorem, flat),
            cells=flat.cells.detach(),
            atom_ptr=flat.atom_ptr,
            pair_ptr=flat.pair_ptr,
            periodic=flat.periodic,
            system_index=flat.system_index,
            atom_index=flat.atom_index,
        )

    def _kept_batch(self, systems: List[System]) -> FlatBatch:
        """The :py:class:`FlatBatch` of a batch, joined from the kept structures.

        Same tensors as :py:meth:`_flat_batch`; a structure seen for the first time is
        read (and checked) once.

        :param systems: the batch, with neighbour lists
        :return: its flat tensors
        """
        kept = [self._kept_system(system) for system in systems]
        atom_ptr, pair_ptr = [0], [0]
        for item in kept:
            atom_ptr.append(atom_ptr[-1] + item.types.shape[0])
            pair_ptr.append(pair_ptr[-1] + item.pairs.shape[0])
        pairs = torch.cat([item.pairs + atom_ptr[k] for k, item in enumerate(kept)])
        periodic = [item.periodic for item in kept]
        cells = torch.stack([item.cell for item in kept])
        if any(periodic):
            shifts = torch.cat([item.shifts for item in kept])
        else:
            shifts = cells.new_zeros((pair_ptr[-1], 3))
        return FlatBatch(
            types=torch.cat([item.types for item in kept]),
            positions=torch.cat([item.positions for item in kept]),
            centers=pairs[:, 0],
            neighbors=pairs[:, 1],
            shifts=shifts,
            cells=cells,
            atom_ptr=atom_ptr,
            pair_ptr=pair_ptr,
            periodic=periodic,
            system_index=structure_index(atom_ptr, atom_ptr[-1], cells.device).to(torch.int32),
            atom_index=torch.cat([item.atom_index for item in kept]),
        )

    def _kept_system(self, system: System) -> _Kept:
        """The kept flat tensors of one structure, read the first time it is seen.

        :param system: a structure of the batch
        :return: its :py:class:`_Kept` tensors
        """
        item = self._kept.get(id(system))
        if item is not None and item.system is system:
            return item
        flat = self._flat_batch([system])
        item = _Kept(
            system=system,
            types=flat.types,
            positions=flat.positions,
            pairs=torch.stack([flat.centers, flat.neighbors], dim=1),
            shifts=flat.shifts,
            cell=flat.cells[0],
            periodic=flat.periodic[0],
            atom_index=flat.atom_index,
        )
        self._kept[id(system)] = item
        return item

    def _parameters_and_buffers(
        self,
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """The backbone's parameters and buffers by name, collected at the first call.

        The trainer's optimizer holds the same tensors for the whole run; walking the
        modules at every batch would cost about a millisecond.

        :return: parameters and buffers, by name
        """
        if self._state is None:
            self._state = (
                dict(self.backbone.named_parameters()),
                dict(self.backbone.named_buffers()),
            )
        return self._state

    def tell_once(self, reason: str) -> None:
        """Log once per reason that batches run in eager mode.

        :param reason: from :py:meth:`unsupported`
        """
        if reason not in self._told:
            self._told.add(reason)
            logging.info(f"compile: batches with {reason} run in eager mode")


def _pair_shifts(
    systems: List[System], lorem: torch.nn.Module, flat: FlatSystems
) -> torch.Tensor:
    """``S h`` of every pair: the cell shifts of the neighbour lists times the cells.

    :param systems: the batch
    :param lorem: the :py:class:`~lorem_mta.model.LoremModel` (its neighbour options)
    :param flat: the flattened batch (its cells, pair offsets and periodicity)
    :return: ``(n_pairs, 3)``, zero in molecules
    """
    cells = flat.cells.detach()
    n_pairs = flat.pair_ptr[-1]
    if not any(flat.periodic):
        # molecules: no neighbour is an image (an exact zero, as in S h with S = 0)
        return cells.new_zeros((n_pairs, 3))
    cell_shifts = torch.cat(
        [system.get_neighbor_list(lorem.neighbor_options).samples.values for system in systems]
    )[:, 2:5].to(cells.dtype)
    pair_structure = structure_index(flat.pair_ptr, n_pairs, cells.device)
    return torch.bmm(cell_shifts.unsqueeze(1), cells[pair_structure]).squeeze(1)


def _energy_map(
    energies: torch.Tensor, gradients: Optional[torch.Tensor], flat: FlatBatch
) -> TensorMap:
    """The energy TensorMap of ``evaluate_model``, with a ``positions`` gradient block.

    :param energies: ``(n_structures,)``
    :param gradients: ``(n_atoms, 3)`` or ``None``
    :param flat: the flattened batch (its system and atom index of every atom)
    :return: TensorMap with one block (samples ``system``, property ``energy``)
    """
    device = energies.device
    properties = _labels("energy", 1, device)
    block = TensorBlock(
        values=energies.unsqueeze(-1),
        samples=_labels("system", energies.shape[0], device),
        components=[],
        properties=properties,
    )
    if gradients is not None:
        block.add_gradient(
            "positions",
            TensorBlock(
                values=gradients.unsqueeze(-1),
                samples=Labels(
                    ["sample", "atom"], torch.stack([flat.system_index, flat.atom_index], dim=1)
                ),
                components=[_labels("xyz", 3, device)],
                properties=properties,
            ),
        )
    return TensorMap(_labels("_", 1, device), [block])


_LABELS: Dict[Tuple[str, int, torch.device], Labels] = {}


def _labels(name: str, size: int, device: torch.device) -> Labels:
    """``Labels.range(name, size)`` on ``device`` (int32), built once.

    :param name: the dimension's name
    :param size: number of entries ``0 .. size - 1``
    :param device: where the labels live
    :return: the labels, shared between calls (labels are immutable)
    """
    key = (name, size, device)
    if key not in _LABELS:
        values = torch.arange(size, dtype=torch.int32, device=device).reshape(-1, 1)
        _LABELS[key] = Labels([name], values)
    return _LABELS[key]
