r"""Species embedding, radial basis and the learned radial coefficients (LOREM Sec. 3.1-3.2).

For a pair :math:`(i, j)` at distance :math:`r` and cutoff :math:`r_c`:

.. math::

    f_c(r) &= \tfrac12\big(\cos(\pi r / r_c) + 1\big) \quad (r < r_c), \quad 0 \text{ else}

    b_k(r) &= \binom{K-1}{k}\, x^k (1 - x)^{K-1-k}, \qquad x = r / r_c,\ k = 0 \dots K-1

    \rho_{ij,k} &= b_k(r_{ij})\, f_c(r_{ij})

The radial coefficients are a species- (or feature-) pair dependent linear map of the
basis:

.. math::

    k_{ij,f} = \sum_k A_{ij,kf}\, \rho_{ij,k}, \qquad A_{ij} = \mathrm{MLP}([e_i; e_j])

with :math:`A_{ij}` reshaped from a :math:`K d` vector (flat index :math:`k d + f`).

The Bernstein polynomials use exact binomial coefficients and plain autograd. The JAX
reference (e3x) uses approximate log-binomials with a custom derivative, which differs by
about :math:`10^{-6}` relative; see ``docs`` for the parity statement.
"""

import math
from typing import List, Tuple

import torch

from .layers import MLP


def cosine_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Smooth cosine cutoff, zero at and beyond ``cutoff``.

    :param r: distances, tensor of shape ``(n_pairs,)``
    :param cutoff: cutoff radius
    :return: tensor of shape ``(n_pairs,)``
    """
    value = 0.5 * (torch.cos(torch.pi * r / cutoff) + 1.0)
    return torch.where(r < cutoff, value, torch.zeros_like(r))


class BernsteinBasis(torch.nn.Module):
    """Bernstein polynomial basis of degree ``num_radial - 1`` on ``[0, cutoff]``.

    :param num_radial: number of basis functions ``K``
    :param cutoff: cutoff radius ``r_c``
    """

    def __init__(self, num_radial: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        degree = num_radial - 1
        k = torch.arange(num_radial, dtype=torch.float64)
        binomials = [float(math.comb(degree, int(i))) for i in range(num_radial)]
        self.register_buffer("exponents", k)
        self.register_buffer("binomials", torch.tensor(binomials, dtype=torch.float64))
        self.degree = degree
        self.binomial_values: List[float] = binomials

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """Evaluate the basis.

        :param r: distances, tensor of shape ``(n_pairs,)``
        :return: tensor of shape ``(n_pairs, num_radial)``
        """
        if torch.compiler.is_compiling():
            return self.by_products(r)
        x = (r / self.cutoff).unsqueeze(-1)
        k = self.exponents.to(r.dtype)
        return self.binomials.to(r.dtype) * x**k * (1.0 - x) ** (self.degree - k)

    def by_products(self, r: torch.Tensor) -> torch.Tensor:
        """:py:meth:`forward` with the powers as repeated products (what a compiled graph uses).

        The powers with a tensor of exponents, and their first and second derivatives in
        force training, are ``pow`` calls per element in a compiled graph; products of
        ``x`` and ``1 - x`` fuse into plain multiplications. The same numbers up to
        round-off.

        :param r: distances, tensor of shape ``(n_pairs,)``
        :return: tensor of shape ``(n_pairs, num_radial)``
        """
        x = r / self.cutoff
        rest = 1.0 - x
        x_powers: List[torch.Tensor] = [torch.ones_like(x)]
        rest_powers: List[torch.Tensor] = [torch.ones_like(x)]
        for _ in range(self.degree):
            x_powers.append(x_powers[-1] * x)
            rest_powers.append(rest_powers[-1] * rest)
        columns = [
            self.binomial_values[k] * x_powers[k] * rest_powers[self.degree - k]
            for k in range(self.degree + 1)
        ]
        return torch.stack(columns, dim=-1)


class ChemicalEmbedding(torch.nn.Module):
    """Learned embedding of the atomic number (a table of 100 elements).

    :param num_features: embedding width (``num_species`` in LOREM's hyperparameters)
    :param total_species: size of the table; atomic numbers must be smaller
    """

    def __init__(self, num_features: int, total_species: int = 100):
        super().__init__()
        self.embedding = torch.nn.Embedding(total_species, num_features)
        # flax's default embedding init: normal with variance 1 / num_features
        torch.nn.init.normal_(self.embedding.weight, std=math.sqrt(1.0 / num_features))

    def forward(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """Look up the embedding.

        :param atomic_numbers: tensor of shape ``(n_atoms,)``
        :return: tensor of shape ``(n_atoms, num_features)``
        """
        return self.embedding(atomic_numbers)


class RadialCoefficients(torch.nn.Module):
    """Pair-dependent linear map of the radial basis, ``k_ij = A([a_i; a_j]) . rho_ij``.

    :param in_features: size of the per-atom input ``a_i`` (the pair input is twice that)
    :param num_radial: number of radial basis functions ``K``
    :param features: output size ``d``
    """

    def __init__(self, in_features: int, num_radial: int, features: int):
        super().__init__()
        self.num_radial = num_radial
        self.features = features
        self.mlp = MLP(2 * in_features, [features, num_radial * features])

    def forward(
        self,
        node_inputs: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        radial: torch.Tensor,
    ) -> torch.Tensor:
        """Compute ``k_ij`` for every pair.

        :param node_inputs: per-atom inputs, tensor of shape ``(n_atoms, in_features)``
        :param centers: index ``i`` of every pair, tensor of shape ``(n_pairs,)``
        :param neighbors: index ``j`` of every pair, tensor of shape ``(n_pairs,)``
        :param radial: radial basis times cutoff, tensor of shape
            ``(n_pairs, num_radial)``
        :return: tensor of shape ``(n_pairs, features)``
        """
        pair_inputs = torch.cat([node_inputs[centers], node_inputs[neighbors]], dim=-1)
        coefficients = self.mlp(pair_inputs).reshape(-1, self.num_radial, self.features)
        return torch.einsum("pkf,pk->pf", coefficients, radial)

    def pair_matrices(self, embedding: torch.Tensor) -> torch.Tensor:
        """The matrix :math:`A` of every ordered species pair (the MLP once per pair).

        :param embedding: one row per species present, shape ``(n_species, in_features)``
        :return: tensor of shape ``(n_species^2, num_radial, features)``; pair ``(a, b)``
            (centre species ``a``, neighbour species ``b``) is row ``a * n_species + b``
        """
        n_species = embedding.shape[0]
        pair_inputs = torch.cat(
            [
                embedding.unsqueeze(1).expand(-1, n_species, -1),
                embedding.unsqueeze(0).expand(n_species, -1, -1),
            ],
            dim=-1,
        ).reshape(n_species * n_species, -1)
        return self.mlp(pair_inputs).reshape(-1, self.num_radial, self.features)


def sort_pairs(
    species_index: torch.Tensor, centers: torch.Tensor, neighbors: torch.Tensor, n_species: int
) -> Tuple[torch.Tensor, List[int], torch.Tensor]:
    """The pairs sorted by species pair.

    Pairs sorted by type let a per-type linear map run as one matrix product per type
    (:py:func:`apply_by_pair_type`, and one gather back to the pair order, instead of an
    update of the whole output per type, which the double backward of force training
    would copy once per type).

    :param species_index: species (row of the embedding) of every atom, ``(n_atoms,)``
    :param centers: pair centres, ``(n_pairs,)``
    :param neighbors: pair neighbours, ``(n_pairs,)``
    :param n_species: number of species ``S``
    :return: the sorting permutation ``(n_pairs,)``, the number of pairs of each of the
        ``S^2`` types, and the position of every pair in the sorted order ``(n_pairs,)``
    """
    pair_type = species_index[centers] * n_species + species_index[neighbors]
    order = torch.argsort(pair_type)
    counts: List[int] = torch.bincount(pair_type, minlength=n_species * n_species).tolist()
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.shape[0], device=order.device)
    return order, counts, inverse


def apply_by_pair_type(
    radial: torch.Tensor, matrices: torch.Tensor, order: torch.Tensor, counts: List[int]
) -> torch.Tensor:
    """``radial_ij @ matrices[type_ij]`` for pairs sorted by :py:func:`sort_pairs`.

    :param radial: tensor of shape ``(n_pairs, K)``
    :param matrices: tensor of shape ``(n_types, K, F)``
    :param order: sorting permutation of the pairs, ``(n_pairs,)``
    :param counts: number of pairs of every type
    :return: tensor of shape ``(n_pairs, F)`` in the sorted order
    """
    chunks = torch.split(radial[order], counts)
    per_type = torch.unbind(matrices)
    return torch.cat([chunks[t] @ per_type[t] for t in range(len(chunks))])
