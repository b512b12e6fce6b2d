r"""``LoremBackbone``: the whole LOREM network on plain tensors.

Reads like the paper's data flow (arXiv:2507.19382, Fig. 1 and Sec. 5):

1. species embedding, radial basis :math:`\rho_{ij}` and harmonics :math:`Y(\hat r_{ij})`;
2. the initial short-range step (spherical density and self tensor product), energy
   readout :math:`E^{(0)}_i`;
3. ``num_message_passing`` optional message-passing steps, readouts :math:`E^{(t)}_i`;
4. the long-range block (charges, optionally shifted to each structure's total charge,
   Ewald/direct potentials, mixing), readout :math:`E^{LR}_i`;
5. with ``bec=True``, a Born-effective-charge head after every stage
   (:py:mod:`lorem_mta.modules.bec`), summed and made to obey the acoustic sum rule;
6. optionally, atomic dipoles from the ``l = 1`` spherical features
   (:py:mod:`~lorem_mta.modules.dipole`).

Every energy readout is an MLP whose last layer is linear; on request the backbone also
returns what these last layers see, concatenated over the stages (the *last-layer
features* of LLPR uncertainties, see :py:meth:`LoremBackbone.last_layer_parameter_names`).

:math:`E_i = E^{(0)}_i + \sum_t E^{(t)}_i + E^{LR}_i`. The backbone never sees metatomic
objects: the adapter in :py:mod:`lorem_mta.model` flattens systems into the tensors below,
with atoms and pairs of each structure contiguous.
"""

from typing import List, NamedTuple, Optional

import torch

from .bec import BornChargeHead, acoustic_sum_rule, electric_field_energy
from .dipole import AtomicDipoles
from .layers import MLP, structure_index
from .long_range import LongRange
from .message_passing import InitialStep, MessagePassingStep, PairTopology, pair_topology
from .radial import BernsteinBasis, ChemicalEmbedding, cosine_cutoff
from .spherical import SphericalHarmonics


class BackboneOutput(NamedTuple):
    """What the backbone returns.

    ``energies``: atomic energies ``(n_atoms,)``; ``features``: final scalar features
    ``(n_atoms, d)``; ``charges`` and ``potentials``: long-range channels
    ``(n_atoms, 1 + (L_lr + 1)^2)`` (empty with ``lr=False``); ``born_charges``: Born
    effective charges ``(n_atoms, 3, 3)`` (``(0, 3, 3)`` without ``bec``);
    ``atomic_dipoles``: Cartesian atomic dipoles ``(n_atoms, 3)`` (``(n_atoms, 0)``
    without ``atomic_dipoles=True``); ``last_layer_features``: inputs of the last layers
    of the energy readouts, concatenated over the stages,
    ``(n_atoms, last_layer_feature_size)`` (``(n_atoms, 0)`` unless requested).
    """

    energies: torch.Tensor
    features: torch.Tensor
    charges: torch.Tensor
    potentials: torch.Tensor
    born_charges: torch.Tensor
    atomic_dipoles: torch.Tensor
    last_layer_features: torch.Tensor


class BatchTopology(NamedTuple):
    """What the backbone derives from the species and the neighbour list of a batch.

    Nothing here depends on the positions or the parameters: a training step computes it
    once per batch (:py:meth:`LoremBackbone.topology`) outside the compiled function
    of :py:mod:`lorem_mta.architecture.compiled`, since computing it involves shapes
    that depend on the data.
    """

    #: atomic numbers present, sorted, ``(n_species,)``
    species: torch.Tensor
    #: row of ``species`` of every atom, ``(n_atoms,)``
    species_index: torch.Tensor
    #: the initial step's pairs by species and neighbour table
    pairs: PairTopology
    #: structure of every atom, ``(n_atoms,)``
    structure: torch.Tensor
    #: pairs ``i < j`` of every structure when the long-range block sums a batch of
    #: molecules directly, ``(2, n_lr_pairs)``; ``(2, 0)`` otherwise
    molecule_pairs: torch.Tensor


class LoremBackbone(torch.nn.Module):
    """The LOREM network, with lorem-jax's argument names and defaults.

    Except the two fixes of its energy surface, ``norm_smoothing`` and
    ``neutral_charges``, which are on by default (``0.0`` and ``False`` give lorem-jax's
    model exactly).

    :param cutoff: short-range cutoff radius (Angstrom)
    :param max_degree: largest degree ``L`` of the spherical features
    :param max_degree_lr: largest degree of the equivariant charges
    :param num_features: scalar feature size ``d``
    :param num_radial: number of Bernstein basis functions
    :param num_species: width of the species embedding
    :param num_spherical_features: spherical channels ``s``
    :param lr: whether to include the long-range block
    :param num_message_passing: extra short-range steps after the first
    :param equivariant_message_passing: pass equivariant messages in those steps
    :param initialize_node_features: start scalar features from the species embedding
    :param long_range_method: ``"ewald"``, ``"pme"`` or ``"auto"`` (Ewald for small,
        PME for large structures) for periodic structures
    :param long_range_accuracy: accuracy of the reciprocal-space sum; ``None`` keeps the
        reference (lorem-jax) settings
    :param total_charge: condition on the total charge of every structure: the scalar
        latent charges are shifted uniformly to add up to it (needs ``lr``; adds no
        parameters; not in lorem-jax)
    :param bec: also predict Born effective charges (lorem-jax ``LoremBEC``), one
        :py:class:`~lorem_mta.modules.bec.BornChargeHead` per stage
    :param atomic_dipoles: add a learned atomic dipole head on the ``l = 1`` spherical
        features (needs ``lr`` and ``max_degree >= 1``; not in lorem-jax)
    :param norm_smoothing: ``epsilon`` of the smooth norm features, which keep the energy
        smooth at inversion centres (:py:mod:`~lorem_mta.modules.spherical`); ``0``
        is lorem-jax's exact norm
    :param neutral_charges: remove the per-structure mean of every latent charge
        channel, so that the long-range energy does not depend on the size of a
        periodic box around a molecule
        (:py:meth:`~lorem_mta.modules.long_range.LongRange.equilibrate`); ``False`` is
        lorem-jax's model
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        max_degree: int = 6,
        max_degree_lr: int = 2,
        num_features: int = 128,
        num_radial: int = 32,
        num_species: int = 8,
        num_spherical_features: int = 8,
        lr: bool = True,
        num_message_passing: int = 0,
        equivariant_message_passing: bool = True,
        initialize_node_features: bool = True,
        long_range_method: str = "ewald",
        long_range_accuracy: Optional[float] = None,
        total_charge: bool = False,
        bec: bool = False,
        atomic_dipoles: bool = False,
        norm_smoothing: float = 0.1,
        neutral_charges: bool = True,
    ):
        super().__init__()
        if total_charge and not lr:
            raise ValueError(
                "total_charge=True needs the long-range block (lr=True): the total charge "
                "is imposed on the latent charges"
            )
        d, s, L = num_features, num_spherical_features, max_degree
        self.cutoff = cutoff
        self.num_features = d
        self.num_charge_channels = 1 + (max_degree_lr + 1) ** 2 if lr else 0
        self.total_charge = bool(total_charge)
        if norm_smoothing < 0:
            raise ValueError(f"norm_smoothing must be >= 0, got {norm_smoothing}")
        self.norm_smoothing = float(norm_smoothing)
        self.neutral_charges = bool(neutral_charges)
        self.embedding = ChemicalEmbedding(num_species)
        self.radial_basis = BernsteinBasis(num_radial, cutoff)
        self.spherical_harmonics = SphericalHarmonics(L)
        self.initial = InitialStep(
            L, d, s, num_radial, num_species, initialize_node_features, norm_smoothing
        )
        self.steps = torch.nn.ModuleList(
            [
                MessagePassingStep(
                    L, d, s, num_radial, equivariant_message_passing, norm_smoothing
                )
                for _ in range(num_message_passing)
            ]
        )
        self.long_range = None
        self.long_range_readout = None
        if lr:
            self.long_range = LongRange(
                cutoff,
                L,
                max_degree_lr,
                d,
                s,
                long_range_method,
                long_range_accuracy,
                norm_smoothing,
                neutral_charges,
            )
            self.long_range_readout = MLP(d, [d, d, 1])
        self.bec = bool(bec)
        n_heads = (1 + num_message_passing + int(lr)) if bec else 0
        self.bec_heads = torch.nn.ModuleList([BornChargeHead(L, s, d) for _ in range(n_heads)])
        self.atomic_dipoles = None
        if atomic_dipoles:
            if not lr or max_degree < 1:
                raise ValueError(
                    "atomic_dipoles=True needs the long-range block (lr=True) and "
                    f"max_degree >= 1, got lr={lr}, max_degree={max_degree}"
                )
            self.atomic_dipoles = AtomicDipoles(s)
        #: one block of ``d`` last-layer features per energy readout
        self.last_layer_feature_size = d * (1 + num_message_passing + int(lr))

    def last_layer_parameter_names(self) -> List[str]:
        """Names of the last-layer weights, in the order of the last-layer features.

        The atomic energy without the electric-field term is
        ``last_layer_features @ concatenated weights`` plus the sum of the biases of the
        same layers.

        :return: one ``(1, d)`` weight per energy readout (initial step, message-passing
            steps, long-range block), names relative to the backbone
        """
        names = ["initial.readout"]
        names += [f"steps.{k}.readout" for k in range(len(self.steps))]
        if self.long_range_readout is not None:
            names.append("long_range_readout")
        last = len(self.initial.readout.layers) - 1
        return [f"{name}.layers.{last}.weight" for name in names]

    def forward(
        self,
        atomic_numbers: torch.Tensor,
        positions: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        edge_vectors: torch.Tensor,
        cells: torch.Tensor,
        atom_ptr: List[int],
        pair_ptr: List[int],
        periodic: List[bool],
        lr_atoms: Optional[torch.Tensor] = None,
        total_charges: Optional[torch.Tensor] = None,
        electric_field: Optional[torch.Tensor] = None,
        last_layer_features: bool = False,
        topology: Optional[BatchTopology] = None,
    ) -> BackboneOutput:
        """Atomic energies of a batch of structures.

        :param atomic_numbers: tensor of shape ``(n_atoms,)``, values below 100
        :param positions: tensor of shape ``(n_atoms, 3)``
        :param centers: index ``i`` of every pair (full list), shape ``(n_pairs,)``
        :param neighbors: index ``j`` of every pair, shape ``(n_pairs,)``
        :param edge_vectors: ``r_j - r_i + S h``, tensor of shape ``(n_pairs, 3)``;
            no zero vectors
        :param cells: tensor of shape ``(n_structures, 3, 3)``, rows are lattice vectors
        :param atom_ptr: first atom of every structure, plus the total
        :param pair_ptr: first pair of every structure, plus the total
        :param periodic: for every structure, periodic in 3D (True) or a molecule
        :param lr_atoms: optional mask of atoms taking part in the long-range sum
        :param total_charges: total charge of every structure, shape
            ``(n_structures,)``; used only with ``total_charge=True``, where ``None``
            means neutral structures
        :param electric_field: uniform electric field of every structure, shape
            ``(n_structures, 3)``; with ``bec=True`` it adds the energy term of
            :py:func:`~lorem_mta.modules.bec.electric_field_energy`, whose forces are
            ``Z*_i E``
        :param last_layer_features: also return the last-layer features of the energy
            readouts (computed again from the node features of every stage: two dense
            layers per stage, only when requested)
        :param topology: :py:meth:`topology` of the batch, computed here if not given
        :return: :py:class:`BackboneOutput`
        """
        if atomic_numbers.shape[0] == 0:
            return self._empty_output(positions, last_layer_features)
        if topology is None:
            topology = self.topology(
                atomic_numbers, centers, neighbors, atom_ptr, periodic, lr_atoms is None
            )
        species_index = topology.species_index
        # -- initial embeddings --
        species_embedding = self.embedding(topology.species)
        distances = torch.linalg.norm(edge_vectors, dim=-1)
        radial = self.radial_basis(distances) * cosine_cutoff(distances, self.cutoff).unsqueeze(
            -1
        )
        harmonics = self.spherical_harmonics(edge_vectors)

        # -- short range --
        nodes_scalar, nodes_spherical, energies = self.initial(
            species_embedding,
            species_index,
            centers,
            neighbors,
            radial,
            harmonics,
            topology.pairs,
        )
        spherical_stages: List[torch.Tensor] = [nodes_spherical]
        readout_inputs: List[torch.Tensor] = []
        if last_layer_features:
            readout_inputs.append(self.initial.readout.last_layer_input(nodes_scalar))
        for step in self.steps:
            nodes_scalar, nodes_spherical, step_energies = step(
                nodes_scalar, nodes_spherical, centers, neighbors, radial, harmonics
            )
            energies = energies + step_energies
            spherical_stages.append(nodes_spherical)
            if last_layer_features:
                readout_inputs.append(step.readout.last_layer_input(nodes_scalar))

        # -- long range --
        charges = torch.zeros((positions.shape[0], 0), dtype=positions.dtype)
        potentials = charges
        if self.long_range is not None and self.long_range_readout is not None:
            charges = self.long_range.charges(nodes_scalar, nodes_spherical)
            if self.total_charge or self.neutral_charges:
                charges = self.long_range.equilibrate(
                    charges, total_charges, atom_ptr, lr_atoms, topology.structure
                )
            potentials = self.long_range.potentials(
                charges,
                positions,
                centers,
                neighbors,
                distances,
                atom_ptr,
                pair_ptr,
                cells,
                periodic,
                lr_atoms,
                topology.molecule_pairs if topology.molecule_pairs.shape[1] > 0 else None,
            )
            nodes_scalar, updates = self.long_range.mix_with_updates(
                nodes_scalar, nodes_spherical, potentials
            )
            energies = energies + self.long_range_readout(nodes_scalar)[:, 0]
            spherical_stages.append(updates)
            if last_layer_features:
                readout_inputs.append(self.long_range_readout.last_layer_input(nodes_scalar))

        # -- Born effective charges --
        born_charges = torch.zeros((0, 3, 3), dtype=positions.dtype, device=positions.device)
        if self.bec:
            per_stage: List[torch.Tensor] = []
            for k, head in enumerate(self.bec_heads):
                per_stage.append(head(spherical_stages[k]))
            born_charges = torch.stack(per_stage).sum(dim=0)
            born_charges = acoustic_sum_rule(born_charges, atom_ptr, lr_atoms)
            if electric_field is not None:
                energies = energies + electric_field_energy(
                    born_charges, positions, electric_field, atom_ptr
                )

        dipoles = torch.zeros(
            (positions.shape[0], 0), dtype=positions.dtype, device=positions.device
        )
        if self.atomic_dipoles is not None:
            dipoles = self.atomic_dipoles(nodes_spherical)
        features = torch.zeros(
            (positions.shape[0], 0), dtype=positions.dtype, device=positions.device
        )
        if last_layer_features:
            features = torch.cat(readout_inputs, dim=1)
        return BackboneOutput(
            energies, nodes_scalar, charges, potentials, born_charges, dipoles, features
        )

    def topology(
        self,
        atomic_numbers: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        atom_ptr: List[int],
        periodic: List[bool],
        all_atoms_in_long_range: bool = True,
    ) -> BatchTopology:
        """The :py:class:`BatchTopology` of a batch (arguments as in :py:meth:`forward`).

        :param all_atoms_in_long_range: ``False`` when :py:meth:`forward` gets
            ``lr_atoms``: the long-range block then sums structure by structure and
            the molecule pairs are not needed
        :return: species, pairs by species, structure index, molecule pairs
        """
        species, species_index = torch.unique(atomic_numbers, return_inverse=True)
        device = atomic_numbers.device
        molecule_pairs = torch.zeros((2, 0), dtype=torch.long, device=device)
        if self.long_range is not None and all_atoms_in_long_range and not any(periodic):
            element_size = self.embedding.embedding.weight.element_size()
            molecule_pairs = self.long_range.coulomb.molecule_pairs(
                atom_ptr, self.num_charge_channels, element_size, device
            )
        return BatchTopology(
            species=species,
            species_index=species_index,
            pairs=pair_topology(species_index, centers, neighbors, species.shape[0]),
            structure=structure_index(atom_ptr, atomic_numbers.shape[0], device),
            molecule_pairs=molecule_pairs,
        )

    def _empty_output(
        self, positions: torch.Tensor, last_layer_features: bool
    ) -> BackboneOutput:
        """Outputs of a batch without atoms (zero-length, still tied to ``positions``).

        The energies are built from ``positions`` so that forces of an empty system are
        an empty tensor rather than an autograd error.
        """
        energies = positions[:, 0] * 0.0
        features = torch.zeros(
            (0, self.num_features), dtype=positions.dtype, device=positions.device
        )
        channels = torch.zeros(
            (0, self.num_charge_channels), dtype=positions.dtype, device=positions.device
        )
        born_charges = torch.zeros((0, 3, 3), dtype=positions.dtype, device=positions.device)
        n_dipole = 0 if self.atomic_dipoles is None else 3
        dipoles = torch.zeros((0, n_dipole), dtype=positions.dtype, device=positions.device)
        n_last = self.last_layer_feature_size if last_layer_features else 0
        last = torch.zeros((0, n_last), dtype=positions.dtype, device=positions.device)
        return BackboneOutput(
            energies, features, channels, channels, born_charges, dipoles, last
        )
