r"""The short-range stages: the initial spherical density and optional message passing.

**Initial step** (LOREM Sec. 3.3-3.5; "1xSR" in the paper). With :math:`k_{ij}` from
:py:class:`~lorem_mta.modules.radial.RadialCoefficients` on the species embeddings,

.. math::

    x_i &\leftarrow \mathrm{Update}\Big(W_0 e_i,\ \sum_j W_1 k_{ij}\Big) \\
    A_i^{lm,c} &= \sum_j (W_2 k_{ij})^{l,c}\, Y^{lm}(\hat r_{ij}) \\
    S_i &= \mathrm{TensorDense}(A_i) \\
    x_i &\leftarrow \mathrm{Update}\big(x_i,\ (2l+1)^{1/4} \lVert S_i^{l} \rVert\big)

**Message-passing step** ``t >= 1`` (``num_message_passing`` of them): new radial
coefficients from :math:`[x_i; x_j]`, a scalar message and update, and optionally
(``equivariant_message_passing``) an equivariant message

.. math::

    M_i = \sum_j \big(\mathrm{filter}(a_{ij}) \otimes S_j\big), \qquad
    S_i \leftarrow (W_S S_i) \otimes (W_M M_i)

followed by another norm update. Every stage ends with a residual energy readout
:math:`E_i \mathrel{+}= \mathrm{MLP}_{[d, d, 1]}(x_i)`.
"""

from typing import List, NamedTuple, Optional, Tuple

import torch

from .layers import MLP, Linear, Update
from .radial import RadialCoefficients, apply_by_pair_type, sort_pairs
from .spherical import degree_index, l_factors, norm_features
from .tensor_product import EquivariantLinear, MessagePass, TensorDense, TensorProduct


def _sum_over_neighbors(
    edges: torch.Tensor, centers: torch.Tensor, n_atoms: int
) -> torch.Tensor:
    shape = list(edges.shape)
    shape[0] = n_atoms
    out = torch.zeros(shape, dtype=edges.dtype, device=edges.device)
    return out.index_add(0, centers, edges)


def neighbor_table(centers: torch.Tensor, n_atoms: int) -> torch.Tensor:
    """The pairs of every atom in a padded table (pair order kept within each atom).

    Row ``i`` lists the pairs whose centre is ``i``, in the order in which they appear in
    ``centers``, padded with ``n_pairs`` (the index of an extra row of zeros).

    :param centers: pair centres, ``(n_pairs,)``
    :param n_atoms: number of atoms
    :return: integer tensor of shape ``(n_atoms, width)``, ``width`` the largest number
        of pairs of one atom
    """
    n_pairs = centers.shape[0]
    counts = torch.bincount(centers, minlength=n_atoms)
    width = int(counts.max().item()) if n_atoms > 0 and n_pairs > 0 else 0
    order = torch.argsort(centers, stable=True)
    sorted_centers = centers[order]
    first = torch.cumsum(counts, dim=0) - counts
    slots = torch.arange(n_pairs, device=centers.device) - first[sorted_centers]
    table = torch.full((n_atoms * width,), n_pairs, dtype=torch.long, device=centers.device)
    table = table.index_copy(0, sorted_centers * width + slots, order)
    return table.reshape(n_atoms, width)


def _gather_padded(edges: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``edges[table]`` with the padding rows zero, shape ``(n_atoms, width, ...)``."""
    trailing: List[int] = list(edges.shape[1:])
    padded = torch.cat([edges, edges.new_zeros([1] + trailing)])
    return padded.index_select(0, table.reshape(-1)).reshape(list(table.shape) + trailing)


def _sum_by_species(
    matrices: torch.Tensor,
    species_index: torch.Tensor,
    centers: torch.Tensor,
    neighbors: torch.Tensor,
    radial: torch.Tensor,
    n_species: int,
    species_atoms: Optional[List[torch.Tensor]] = None,
) -> torch.Tensor:
    """``sum_j rho_ij A_{s_i s_j}`` for every atom ``i``, summing ``rho`` first.

    The radial basis of every atom is summed per neighbour species, then multiplied by
    the matrices of the atom's species: one ``(n_atoms, S K) @ (S K, d)`` product per
    centre species instead of a ``(n_pairs, d)`` tensor.

    :param matrices: ``(S^2, K, d)`` from :py:meth:`RadialCoefficients.pair_matrices`
    :param species_index: ``(n_atoms,)``
    :param centers: ``(n_pairs,)``
    :param neighbors: ``(n_pairs,)``
    :param radial: ``(n_pairs, K)``
    :param n_species: number of species ``S``
    :param species_atoms: the atoms of every species (:py:func:`atoms_by_species`),
        computed here if not given
    :return: tensor of shape ``(n_atoms, d)``
    """
    if species_atoms is None:
        species_atoms = atoms_by_species(species_index, n_species)
    n_atoms = species_index.shape[0]
    n_radial, n_features = matrices.shape[1], matrices.shape[2]
    slot = centers * n_species + species_index[neighbors]
    summed = torch.zeros(
        (n_atoms * n_species, n_radial), dtype=radial.dtype, device=radial.device
    ).index_add(0, slot, radial)
    summed = summed.reshape(n_atoms, n_species * n_radial)
    per_center = matrices.reshape(n_species, n_species * n_radial, n_features)
    output = torch.zeros((n_atoms, n_features), dtype=radial.dtype, device=radial.device)
    for species, atoms in enumerate(species_atoms):
        output = output.index_copy(0, atoms, summed[atoms] @ per_center[species])
    return output


def atoms_by_species(species_index: torch.Tensor, n_species: int) -> List[torch.Tensor]:
    """The atoms of every species.

    :param species_index: species of every atom, ``(n_atoms,)``
    :param n_species: number of species ``S``
    :return: ``S`` integer tensors of atom indices
    """
    return [torch.nonzero(species_index == species)[:, 0] for species in range(n_species)]


class PairTopology(NamedTuple):
    """What the initial step derives from the species and the pairs alone.

    None of it depends on the positions, so a training step can compute it once per
    batch outside a compiled function (:py:mod:`lorem_mta.architecture.compiled`):
    computing it involves shapes that depend on the data (``nonzero``, ``bincount``).
    """

    #: the atoms of every species (:py:func:`atoms_by_species`)
    species_atoms: List[torch.Tensor]
    #: the pairs sorted by species pair (:py:func:`~.radial.sort_pairs`)
    pair_order: torch.Tensor
    #: number of pairs of every species pair
    pair_counts: List[int]
    #: position of every pair in the sorted order
    pair_inverse: torch.Tensor
    #: :py:func:`neighbor_table` of the pairs, ``(n_atoms, width)``
    table: torch.Tensor


def pair_topology(
    species_index: torch.Tensor, centers: torch.Tensor, neighbors: torch.Tensor, n_species: int
) -> PairTopology:
    """The :py:class:`PairTopology` of a batch.

    :param species_index: species (row of the embedding) of every atom, ``(n_atoms,)``
    :param centers: pair centres, ``(n_pairs,)``
    :param neighbors: pair neighbours, ``(n_pairs,)``
    :param n_species: number of species ``S``
    :return: the atoms by species, the pairs sorted by species pair, the neighbour table
    """
    order, counts, inverse = sort_pairs(species_index, centers, neighbors, n_species)
    return PairTopology(
        species_atoms=atoms_by_species(species_index, n_species),
        pair_order=order,
        pair_counts=counts,
        pair_inverse=inverse,
        table=neighbor_table(centers, species_index.shape[0]),
    )


class _SphericalCoefficients(torch.nn.Module):
    """``a_ij^{lm,c} = (W k_ij)^{l,c} Y^{lm}_ij``: edge features of every degree."""

    def __init__(self, max_degree: int, num_features: int, num_spherical: int):
        super().__init__()
        self.max_degree = max_degree
        self.num_spherical = num_spherical
        self.dense = Linear(num_features, (max_degree + 1) * num_spherical, bias=False)
        self.sizes: List[int] = [2 * l + 1 for l in range(max_degree + 1)]

    def forward(self, edges_scalar: torch.Tensor, harmonics: torch.Tensor) -> torch.Tensor:
        coefficients = self.dense(edges_scalar).reshape(
            -1, self.max_degree + 1, self.num_spherical
        )
        # one broadcast product per degree (no gather of the coefficients over m)
        per_degree = coefficients.unbind(1)  # [P, s] each
        blocks = torch.split(harmonics, self.sizes, dim=1)  # [P, 2l + 1] each
        return torch.cat(
            [blocks[l].unsqueeze(-1) * per_degree[l].unsqueeze(1) for l in range(len(blocks))],
            dim=1,
        )  # [P, lm, s]

    def density_from_coefficients(
        self,
        coefficients: torch.Tensor,
        coefficient_table: torch.Tensor,
        harmonics: torch.Tensor,
        table: torch.Tensor,
    ) -> torch.Tensor:
        """``A_i = sum_j a_ij`` without forming the ``(n_pairs, (L + 1)^2, s)`` edge features.

        For every degree, the sum over the neighbours of atom ``i`` is the product of
        its ``(2l + 1, width)`` harmonics and ``(width, s)`` coefficients: one batched
        matrix product over atoms on the padded :py:func:`neighbor_table`. Same sums in
        the same order as adding the edge features up, with 4-8x less memory traffic.

        :param coefficients: ``(n_pairs, (L + 1) s)``, in any order
        :param coefficient_table: the :py:func:`neighbor_table` in that order
        :param harmonics: ``(n_pairs, (L + 1)^2)``
        :param table: the :py:func:`neighbor_table` in the order of ``harmonics``
        :return: tensor of shape ``(n_atoms, (L + 1)^2, s)``
        """
        coefficients = coefficients.reshape(-1, self.max_degree + 1, self.num_spherical)
        per_degree = _gather_padded(coefficients, coefficient_table).unbind(2)  # [n, w, s]
        blocks = torch.split(_gather_padded(harmonics, table), self.sizes, dim=2)
        if torch.compiler.is_compiling():
            # broadcast products summed over the neighbours: the compiler fuses them,
            # where a batched product over the atoms is one tiny product per atom
            return torch.cat(
                [
                    (blocks[l].unsqueeze(-1) * per_degree[l].unsqueeze(2)).sum(dim=1)
                    for l in range(len(blocks))
                ],
                dim=1,
            )
        return torch.cat(
            [torch.bmm(blocks[l].transpose(1, 2), per_degree[l]) for l in range(len(blocks))],
            dim=1,
        )


class InitialStep(torch.nn.Module):
    """Species-based radial coefficients, scalar features and the spherical density.

    :param max_degree: largest degree ``L``
    :param num_features: scalar feature size ``d``
    :param num_spherical_features: spherical channels ``s``
    :param num_radial: radial basis size ``K``
    :param num_species: species embedding width
    :param initialize_node_features: start from ``W_0 e_i`` instead of zeros
    :param norm_smoothing: ``epsilon`` of the smooth norm features (``0``: exact norm,
        see :py:mod:`~lorem_mta.modules.spherical`)
    """

    def __init__(
        self,
        max_degree: int,
        num_features: int,
        num_spherical_features: int,
        num_radial: int,
        num_species: int,
        initialize_node_features: bool,
        norm_smoothing: float = 0.0,
    ):
        super().__init__()
        d, s, L = num_features, num_spherical_features, max_degree
        self.num_features = d
        self.norm_smoothing = float(norm_smoothing)
        self.max_degree = L
        self.radial_coefficients = RadialCoefficients(num_species, num_radial, d)
        self.node_embedding = None
        if initialize_node_features:
            self.node_embedding = Linear(num_species, d, bias=True)
        self.message = Linear(d, d, bias=False)
        self.message_update = Update(d, d)
        self.spherical_coefficients = _SphericalCoefficients(L, d, s)
        self.tensor_dense = TensorDense(L, s, s, L)
        self.norm_update = Update((L + 1) * s, d)
        self.readout = MLP(d, [d, d, 1])
        self.register_buffer("degrees", degree_index(L), persistent=False)
        self.register_buffer("l_factors", l_factors(L), persistent=False)

    def forward(
        self,
        species_embedding: torch.Tensor,
        species_index: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        radial: torch.Tensor,
        harmonics: torch.Tensor,
        topology: Optional[PairTopology] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the first short-range stage.

        :param species_embedding: one row per species present, ``(n_species, width)``
        :param species_index: row of ``species_embedding`` per atom, ``(n_atoms,)``
        :param centers: pair centres, ``(n_pairs,)``
        :param neighbors: pair neighbours, ``(n_pairs,)``
        :param radial: radial basis times cutoff, ``(n_pairs, K)``
        :param harmonics: spherical harmonics, ``(n_pairs, (L + 1)^2)``
        :param topology: :py:func:`pair_topology` of the batch, computed here if not
            given
        :return: scalar features ``(n_atoms, d)``, spherical features
            ``(n_atoms, (L + 1)^2, s)`` and atomic energies ``(n_atoms,)``
        """
        n_atoms, n_species = species_index.shape[0], species_embedding.shape[0]
        if topology is None:
            topology = pair_topology(species_index, centers, neighbors, n_species)
        # k_ij = rho_ij A_{s_i s_j} is linear in rho: both of its uses below are computed
        # from the species-pair matrices A without forming k_ij for every pair
        matrices = self.radial_coefficients.pair_matrices(species_embedding)
        if self.node_embedding is not None:
            nodes_scalar = self.node_embedding(species_embedding)[species_index]
        else:
            nodes_scalar = torch.zeros(
                (n_atoms, self.num_features), dtype=radial.dtype, device=radial.device
            )
        summed = _sum_by_species(
            matrices,
            species_index,
            centers,
            neighbors,
            radial,
            n_species,
            topology.species_atoms,
        )
        nodes_scalar = self.message_update(nodes_scalar, self.message(summed))

        # (W k_ij)^{l,c} = rho_ij (A W^T): one (K, (L + 1) s) matrix per species pair
        projected = matrices @ self.spherical_coefficients.dense.weight.T
        coefficients = apply_by_pair_type(  # sorted by pair type
            radial, projected, topology.pair_order, topology.pair_counts
        )
        table = topology.table
        inverse = topology.pair_inverse
        sorted_table = torch.cat([inverse, inverse.new_full((1,), inverse.shape[0])])
        density = self.spherical_coefficients.density_from_coefficients(
            coefficients, sorted_table[table], harmonics, table
        )
        nodes_spherical = self.tensor_dense(density)

        norms = norm_features(
            nodes_spherical, self.degrees, self.l_factors, self.max_degree, self.norm_smoothing
        )
        nodes_scalar = self.norm_update(nodes_scalar, norms)
        return nodes_scalar, nodes_spherical, self.readout(nodes_scalar)[:, 0]


class EquivariantMessage(torch.nn.Module):
    """Equivariant half of a message-passing step: new ``S`` and a norm update.

    :param max_degree: largest degree ``L``
    :param num_features: scalar feature size ``d``
    :param num_spherical_features: spherical channels ``s``
    :param norm_smoothing: ``epsilon`` of the smooth norm features (``0``: exact norm)
    """

    def __init__(
        self,
        max_degree: int,
        num_features: int,
        num_spherical_features: int,
        norm_smoothing: float = 0.0,
    ):
        super().__init__()
        d, s, L = num_features, num_spherical_features, max_degree
        self.max_degree = L
        self.norm_smoothing = float(norm_smoothing)
        self.spherical_coefficients = _SphericalCoefficients(L, d, s)
        self.message_pass = MessagePass(L, s)
        self.node_dense = EquivariantLinear(L, s, s)
        self.message_dense = EquivariantLinear(L, s, s)
        self.tensor = TensorProduct(L, L, L, s)
        self.norm_update = Update((L + 1) * s, d)
        self.register_buffer("degrees", degree_index(L), persistent=False)
        self.register_buffer("l_factors", l_factors(L), persistent=False)

    def forward(
        self,
        nodes_scalar: torch.Tensor,
        nodes_spherical: torch.Tensor,
        edges_scalar: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        harmonics: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Pass equivariant messages.

        :param nodes_scalar: ``(n_atoms, d)``
        :param nodes_spherical: ``(n_atoms, (L + 1)^2, s)``
        :param edges_scalar: radial coefficients of this step, ``(n_pairs, d)``
        :param centers: pair centres, ``(n_pairs,)``
        :param neighbors: pair neighbours, ``(n_pairs,)``
        :param harmonics: spherical harmonics, ``(n_pairs, (L + 1)^2)``
        :return: updated scalar and spherical features
        """
        edges_spherical = self.spherical_coefficients(edges_scalar, harmonics)
        messages = self.message_pass(nodes_spherical, edges_spherical, centers, neighbors)
        nodes_spherical = self.tensor(
            self.node_dense(nodes_spherical), self.message_dense(messages)
        )
        norms = norm_features(
            nodes_spherical, self.degrees, self.l_factors, self.max_degree, self.norm_smoothing
        )
        return self.norm_update(nodes_scalar, norms), nodes_spherical


class MessagePassingStep(torch.nn.Module):
    """One extra short-range step (scalar, and optionally equivariant, messages).

    :param max_degree: largest degree ``L``
    :param num_features: scalar feature size ``d``
    :param num_spherical_features: spherical channels ``s``
    :param num_radial: radial basis size ``K``
    :param equivariant: also pass equivariant messages and update ``S``
    :param norm_smoothing: ``epsilon`` of the smooth norm features (``0``: exact norm)
    """

    def __init__(
        self,
        max_degree: int,
        num_features: int,
        num_spherical_features: int,
        num_radial: int,
        equivariant: bool,
        norm_smoothing: float = 0.0,
    ):
        super().__init__()
        d = num_features
        self.radial_coefficients = RadialCoefficients(d, num_radial, d)
        self.message = Linear(d, d, bias=False)
        self.message_update = Update(d, d)
        self.equivariant = None
        if equivariant:
            self.equivariant = EquivariantMessage(
                max_degree, d, num_spherical_features, norm_smoothing
            )
        self.readout = MLP(d, [d, d, 1])

    def forward(
        self,
        nodes_scalar: torch.Tensor,
        nodes_spherical: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        radial: torch.Tensor,
        harmonics: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the step.

        :param nodes_scalar: ``(n_atoms, d)``
        :param nodes_spherical: ``(n_atoms, (L + 1)^2, s)``
        :param centers: pair centres, ``(n_pairs,)``
        :param neighbors: pair neighbours, ``(n_pairs,)``
        :param radial: radial basis times cutoff, ``(n_pairs, K)``
        :param harmonics: spherical harmonics, ``(n_pairs, (L + 1)^2)``
        :return: updated scalar and spherical features, and atomic energies
        """
        n_atoms = nodes_scalar.shape[0]
        edges_scalar = self.radial_coefficients(nodes_scalar, centers, neighbors, radial)
        messages = self.message(_sum_over_neighbors(edges_scalar, centers, n_atoms))
        nodes_scalar = self.message_update(nodes_scalar, messages)
        if self.equivariant is not None:
            nodes_scalar, nodes_spherical = self.equivariant(
                nodes_scalar,
                nodes_spherical,
                edges_scalar,
                centers,
                neighbors,
                harmonics,
            )
        return nodes_scalar, nodes_spherical, self.readout(nodes_scalar)[:, 0]
