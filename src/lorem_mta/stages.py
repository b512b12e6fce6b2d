r"""LOREM split into stages for domain decomposition (LAMMPS ``pair_style lorem``).

A metatomic engine calls one ``forward``, which needs every atom of a periodic structure
for the long-range sum. Split into TorchScript methods, the same network runs with its
atoms spread over MPI ranks and still gives the exact long-range energy:

1. :py:meth:`LoremStages.short_range`, on every rank: species embedding, initial step
   and message passing for the rank's atoms and its ghosts (a shell of
   ``(num_message_passing + 1) * cutoff``), returning the short-range atomic energies,
   the node features and the latent charges (the engine then gives the ghosts the
   charges of their owners);
2. the distributed long range (Ewald and PME, periodic cells and slabs):
   :py:meth:`LoremStages.lr_method` (the method for the whole structure),
   :py:meth:`LoremStages.charge_sums` and :py:meth:`LoremStages.lr_charges` (the neutral
   mean, from the charge sums of all ranks), :py:meth:`LoremStages.lr_sums` (what the
   potentials need from a rank's own atoms: the PME mesh or the Ewald structure factors,
   the total charge, a slab's moments; the engine sums them over the ranks) and
   :py:meth:`LoremStages.lr_potentials` (the potentials of the rank's own atoms from the
   summed sums and the real-space pairs it owns). They call the functions of
   :py:class:`~lorem_mta.modules.long_range.CoulombPotentials` that the metatomic model
   calls for the whole structure;
3. :py:meth:`LoremStages.long_range_energies`, on every rank for its own atoms: the
   potentials mixed back into the features and the long-range energy readout.

:py:meth:`LoremStages.potentials` computes the potentials of all atoms of a structure
at once (the engine's fallback for the ``"direct"`` method, with all atoms gathered).
:py:meth:`LoremStages.forward` composes the stages for one periodic structure, and
``tests/test_lammps_stages.py`` checks that it, and the distributed stages split over
several fake ranks, equal :py:class:`~lorem_mta.model.LoremModel`. Forces and virials
come from autograd through the stages; the engine sums the gradients of every summed
quantity over the ranks before the backward pass of each rank's share (see
``docs/engines-lammps.rst``).

Models with Born effective charges or a total-charge input are not supported here.
"""

from typing import List, Tuple

import torch

from .model import LoremModel
from .modules.long_range import (
    slab_axis,
    slab_frame,
    slab_moments,
    slab_normal,
    slab_potentials,
)
from .modules.radial import cosine_cutoff


class LoremStages(torch.nn.Module):
    """The stages of a :py:class:`~lorem_mta.model.LoremModel` (shares its modules).

    :param model: the model (periodic structures, no ``bec``, no ``total_charge``)
    """

    def __init__(self, model: LoremModel):
        super().__init__()
        backbone = model.backbone
        if backbone.bec or backbone.total_charge:
            raise ValueError(
                "models with Born effective charges or a total-charge input can not be "
                "split into stages"
            )
        self.backbone = backbone
        self.register_buffer("atomic_baseline", model.atomic_baseline.clone())
        self.register_buffer("known_types", model.known_types.clone())
        self.atomic_types: List[int] = list(model.atomic_types)
        self.cutoff = float(model.cutoff)
        #: ghost shell that makes the features of a rank's own atoms exact
        self.interaction_range = (len(backbone.steps) + 1) * self.cutoff
        self.has_long_range = backbone.long_range is not None
        self.num_charge_channels = int(backbone.num_charge_channels)
        # backbones with neutral latent charges remove the mean of every channel over the
        # structure: a sum over all atoms, so it belongs to the potential stage
        self.neutral_charges = bool(getattr(backbone, "neutral_charges", False))
        self.dtype_name = "float64"

    @torch.jit.export
    def short_range(
        self,
        atomic_numbers: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        edge_vectors: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Short-range stage: energies, features and charges of every atom.

        :param atomic_numbers: tensor of shape ``(n_atoms,)``
        :param centers: index ``i`` of every pair (full list, pairs within the cutoff)
        :param neighbors: index ``j`` of every pair
        :param edge_vectors: ``r_j - r_i``, tensor of shape ``(n_pairs, 3)``
        :return: short-range atomic energies (atomic baseline included) ``(n_atoms,)``,
            scalar features ``(n_atoms, d)``, spherical features
            ``(n_atoms, (L + 1)^2, s)`` and charges ``(n_atoms, n_channels)`` (empty
            without the long-range block)
        """
        self._check_types(atomic_numbers)
        backbone = self.backbone
        dtype = edge_vectors.dtype
        # -- as LoremBackbone.forward, up to the charges --
        species, species_index = torch.unique(atomic_numbers, return_inverse=True)
        species_embedding = backbone.embedding(species)
        distances = torch.linalg.norm(edge_vectors, dim=-1)
        radial = backbone.radial_basis(distances) * cosine_cutoff(
            distances, backbone.cutoff
        ).unsqueeze(-1)
        harmonics = backbone.spherical_harmonics(edge_vectors)
        nodes_scalar, nodes_spherical, energies = backbone.initial(
            species_embedding, species_index, centers, neighbors, radial, harmonics
        )
        for step in backbone.steps:
            nodes_scalar, nodes_spherical, step_energies = step(
                nodes_scalar, nodes_spherical, centers, neighbors, radial, harmonics
            )
            energies = energies + step_energies
        energies = energies + self.atomic_baseline.to(dtype)[atomic_numbers]
        charges = torch.zeros((atomic_numbers.shape[0], 0), dtype=dtype)
        if backbone.long_range is not None:
            charges = backbone.long_range.charges(nodes_scalar, nodes_spherical)
        return energies, nodes_scalar, nodes_spherical, charges

    @torch.jit.export
    def potentials(
        self,
        charges: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        cell_shifts: torch.Tensor,
    ) -> torch.Tensor:
        """Long-range stage: Coulomb potentials of all atoms of a periodic structure.

        For backbones with neutral latent charges, the mean of every channel over the
        structure is removed here first (it needs all atoms), as in the backbone.

        :param charges: charges of all atoms from :py:meth:`short_range`, tensor of shape
            ``(n_atoms, n_channels)``
        :param positions: tensor of shape ``(n_atoms, 3)``
        :param cell: tensor of shape ``(3, 3)``, rows are lattice vectors
        :param centers: index ``i`` of every periodic pair within the cutoff (full list)
        :param neighbors: index ``j`` of every pair
        :param cell_shifts: integer cell shifts ``S`` of every pair, shape ``(n_pairs, 3)``:
            the pair vector is ``r_j - r_i + S h``
        :return: tensor of shape ``(n_atoms, n_channels)``
        """
        long_range = self.backbone.long_range
        if long_range is None:
            raise ValueError("this model has no long-range block")
        self._check_slab(cell)
        if self.neutral_charges:
            charges = long_range.equilibrate(charges, None, [0, positions.shape[0]], None)
        vectors = positions[neighbors] - positions[centers] + cell_shifts.to(cell.dtype) @ cell
        distances = torch.linalg.norm(vectors, dim=-1)
        return long_range.potentials(
            charges,
            positions,
            centers,
            neighbors,
            distances,
            [0, positions.shape[0]],
            [0, centers.shape[0]],
            cell.unsqueeze(0),
            [True],
            None,
        )

    @torch.jit.export
    def lr_method(self, cell: torch.Tensor, geometry: torch.Tensor, n_atoms: int) -> str:
        """The reciprocal-space method the model uses for this cell and number of atoms.

        :param cell: tensor of shape ``(3, 3)``; a zero third row for a slab
        :param geometry: ``[origin_x, origin_y, origin_z, thickness]`` of a slab (the
            mean position and the extent along the normal of all atoms; unused in 3D)
        :param n_atoms: number of atoms of the whole structure
        :return: ``"ewald"``, ``"pme"`` or ``"direct"``
        """
        long_range = self.backbone.long_range
        if long_range is None:
            raise ValueError("this model has no long-range block")
        self._check_slab(cell)
        internal = self._internal_cell(cell, geometry)
        method, _ = long_range.coulomb.planner.plan(
            internal, n_atoms, self.num_charge_channels, [True, True, True], cell.element_size()
        )
        return method

    @torch.jit.export
    def charge_sums(self, charges: torch.Tensor) -> torch.Tensor:
        """Sums of the charges of a rank's own atoms, shape ``(n_channels,)``.

        :param charges: tensor of shape ``(n_own, n_channels)``
        """
        return charges.sum(dim=0)

    @torch.jit.export
    def lr_charges(
        self, charges: torch.Tensor, sums: torch.Tensor, n_atoms: int
    ) -> torch.Tensor:
        """The charges that enter the Coulomb sum: minus the mean of every channel.

        As :py:meth:`~lorem_mta.modules.long_range.LongRange.equilibrate` with
        ``neutral_charges``, from the sums of all atoms; raw charges otherwise.

        :param charges: charges of a rank's atoms and ghosts, ``(n, n_channels)``
        :param sums: :py:meth:`charge_sums` summed over the ranks, ``(n_channels,)``
        :param n_atoms: number of atoms of the structure
        :return: tensor of shape ``(n, n_channels)``
        """
        if not self.neutral_charges:
            return charges
        charges = charges - (sums / float(n_atoms)).unsqueeze(0)
        return torch.cat([charges[:, :1] + 0.0, charges[:, 1:]], dim=-1)

    @torch.jit.export
    def lr_sums(
        self,
        charges: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
        geometry: torch.Tensor,
        method: str,
    ) -> torch.Tensor:
        """Everything the potentials need from all atoms, as sums over a rank's atoms.

        ``[reciprocal sums (PME mesh or Ewald structure factors), total charges,
        slab moments]``, flattened: the sums over the ranks are those of the structure.

        :param charges: :py:meth:`lr_charges` of a rank's own atoms, ``(n_own, C)``
        :param positions: their positions, ``(n_own, 3)``
        :param cell: tensor of shape ``(3, 3)``
        :param geometry: as in :py:meth:`lr_method`
        :param method: ``"pme"`` or ``"ewald"`` (from :py:meth:`lr_method`)
        :return: flat tensor
        """
        long_range = self.backbone.long_range
        if long_range is None:
            raise ValueError("this model has no long-range block")
        internal = self._internal_cell(cell, geometry)
        parts = [
            long_range.coulomb.reciprocal_sums(method, charges, positions, internal),
            charges.sum(dim=0),
        ]
        if slab_axis(cell) >= 0:
            heights = (positions - geometry[:3]) @ slab_normal(cell)
            parts.append(slab_moments(charges, heights)[1:].reshape(-1))
        return torch.cat(parts)

    @torch.jit.export
    def lr_potentials(
        self,
        sums: torch.Tensor,
        charges: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
        geometry: torch.Tensor,
        method: str,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        n_own: int,
    ) -> torch.Tensor:
        """Coulomb potentials of a rank's own atoms (the first ``n_own``).

        Real space over the pairs of the own atoms (neighbours may be ghosts), the
        reciprocal part from the :py:meth:`lr_sums` of all ranks, and the slab
        correction; the same functions as the metatomic model
        (:py:class:`~lorem_mta.modules.long_range.CoulombPotentials`).

        :param sums: :py:meth:`lr_sums` summed over the ranks
        :param charges: :py:meth:`lr_charges` of the rank's atoms and ghosts
        :param positions: their positions, ``(n, 3)``
        :param cell: tensor of shape ``(3, 3)``
        :param geometry: as in :py:meth:`lr_method`
        :param method: ``"pme"`` or ``"ewald"``
        :param centers: pair centres (own atoms), shape ``(n_pairs,)``
        :param neighbors: pair neighbours (own atoms or ghosts), shape ``(n_pairs,)``
        :param n_own: number of own atoms
        :return: tensor of shape ``(n_own, n_channels)``
        """
        long_range = self.backbone.long_range
        if long_range is None:
            raise ValueError("this model has no long-range block")
        coulomb = long_range.coulomb
        n_channels = charges.shape[1]
        slab = slab_axis(cell) >= 0
        n_moments = 2 * n_channels if slab else 0
        n_reciprocal = sums.shape[0] - n_channels - n_moments
        totals = sums[n_reciprocal : n_reciprocal + n_channels]
        distances = torch.linalg.norm(positions[neighbors] - positions[centers], dim=-1)
        internal = self._internal_cell(cell, geometry)
        own_charges = charges[:n_own]
        own_positions = positions[:n_own]
        real = coulomb.real_space(charges, centers, neighbors, distances, n_own)
        potentials = real + coulomb.reciprocal_potentials(
            method, sums[:n_reciprocal], totals, own_charges, own_positions, internal
        )
        if slab:
            heights = (own_positions - geometry[:3]) @ slab_normal(cell)
            moments = torch.cat(
                [totals.unsqueeze(0), sums[n_reciprocal + n_channels :].reshape(2, n_channels)]
            )
            volume = torch.abs(torch.linalg.det(internal))
            potentials = potentials + slab_potentials(moments, heights, volume, internal[2])
        return potentials

    @torch.jit.export
    def long_range_energies(
        self,
        nodes_scalar: torch.Tensor,
        nodes_spherical: torch.Tensor,
        potentials: torch.Tensor,
    ) -> torch.Tensor:
        """Mixing stage: long-range atomic energies from features and potentials.

        :param nodes_scalar: tensor of shape ``(n_atoms, d)``
        :param nodes_spherical: tensor of shape ``(n_atoms, (L + 1)^2, s)``
        :param potentials: tensor of shape ``(n_atoms, n_channels)``
        :return: tensor of shape ``(n_atoms,)``
        """
        long_range = self.backbone.long_range
        readout = self.backbone.long_range_readout
        if long_range is None or readout is None:
            raise ValueError("this model has no long-range block")
        nodes_scalar, _ = long_range.mix_with_updates(nodes_scalar, nodes_spherical, potentials)
        return readout(nodes_scalar)[:, 0]

    def forward(
        self,
        atomic_numbers: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        cell_shifts: torch.Tensor,
    ) -> torch.Tensor:
        """Atomic energies of one periodic structure, composed from the stages.

        :param atomic_numbers: tensor of shape ``(n_atoms,)``
        :param positions: tensor of shape ``(n_atoms, 3)``
        :param cell: tensor of shape ``(3, 3)``
        :param centers: index ``i`` of every periodic pair within the cutoff
        :param neighbors: index ``j`` of every pair
        :param cell_shifts: cell shifts of every pair, shape ``(n_pairs, 3)``
        :return: atomic energies, shape ``(n_atoms,)``
        """
        vectors = positions[neighbors] - positions[centers] + cell_shifts.to(cell.dtype) @ cell
        energies, scalar, spherical, charges = self.short_range(
            atomic_numbers, centers, neighbors, vectors
        )
        if not self.has_long_range:
            return energies
        potentials = self.potentials(charges, positions, cell, centers, neighbors, cell_shifts)
        return energies + self.long_range_energies(scalar, spherical, potentials)

    def _internal_cell(self, cell: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """The cell of the 3D sum: ``cell``, or the internal cell of a slab."""
        long_range = self.backbone.long_range
        if long_range is None or slab_axis(cell) < 0:
            return cell
        return slab_frame(cell, float(geometry[3]), long_range.coulomb.slab_gap(cell))

    def _check_slab(self, cell: torch.Tensor) -> None:
        """Refuse slabs for models with raw latent charges, as the metatomic model does."""
        if slab_axis(cell) >= 0 and not self.neutral_charges:
            raise ValueError(
                "a slab (periodic in two directions) needs a model with neutral latent "
                "charges (neutral_charges=True, the default of new models): the raw charges "
                "of this model (lorem-jax's form) have a net charge, whose energy in a slab "
                "depends on the vacuum. Use a box periodic in x, y and z with vacuum, or a "
                "model trained with neutral_charges"
            )

    def _check_types(self, atomic_numbers: torch.Tensor) -> None:
        if atomic_numbers.shape[0] == 0:
            return
        known = self.known_types[atomic_numbers.clamp(0, 99)]
        if bool((atomic_numbers < 0).any()) or bool((atomic_numbers > 99).any()):
            known = known & False
        if not bool(known.all()):
            given: List[int] = torch.unique(atomic_numbers).tolist()
            raise ValueError(
                "this model only knows atomic types "
                + str(self.atomic_types)
                + ", got "
                + str(given)
            )


def export_stages(model: LoremModel, path: str, dtype: torch.dtype = torch.float64) -> None:
    """Save the stages of ``model`` as TorchScript for ``pair_style lorem``.

    The file is not a metatomic model: only ``pair_style lorem`` (``lammps/`` in the
    repository) reads it. Export the metatomic model with
    :py:func:`~lorem_mta.model.export` for every other engine.

    :param model: the model
    :param path: output file, e.g. ``model-stages.pt``
    :param dtype: ``torch.float64`` or ``torch.float32``
    """
    import copy

    from .files import write_saved_atomically

    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    stages = LoremStages(copy.deepcopy(model).to(dtype).eval()).eval()
    stages.dtype_name = "float64" if dtype == torch.float64 else "float32"
    for parameter in stages.parameters():
        parameter.requires_grad_(False)
    scripted = torch.jit.script(stages)
    write_saved_atomically(path, lambda file: scripted.save(file))
