r"""Born effective charges: a per-atom rank-2 tensor head on the spherical features.

The Born effective charge (atomic polar tensor) of atom :math:`i` is
:math:`Z^*_{i,ab} = \partial F_{i,a} / \partial \mathcal{E}_b = \partial P_b / \partial
r_{i,a}` (unit: e). LOREM predicts it (lorem-jax ``LoremBEC``, not part of the paper)
from the spherical features of every stage with one head per stage:

.. math::

    h &= W_0 S + b_0, \quad h \leftarrow \sigma(h^{00}) \odot h, \quad
    h \leftarrow W_1 h + b_1, \quad h \leftarrow \sigma(h^{00}) \odot h, \quad
    h \leftarrow W_2 h + b_2 \\
    T^{l_3 m_3} &= \sum_{l_1 + l_2 \text{ even}} w^{l_1 l_2 l_3}
        \sum_{m_1 m_2} C^{l_1 l_2 l_3}_{m_1 m_2 m_3}\, (V_a h)^{l_1 m_1} (V_b h)^{l_2 m_2},
        \qquad l_3 \le 2 \\
    Z_{ab} &= \sum_{l_3 m_3} C^{1 1 l_3}_{a b m_3}\, T^{l_3 m_3}

Every :math:`W` and :math:`V` is an equivariant linear map (one matrix per degree, bias on
:math:`l = 0` only), :math:`\sigma(h^{00}) \odot h` is e3x's gated SiLU (every
component of a channel is multiplied by the sigmoid of the channel's scalar, so scalars
get a plain SiLU), and :math:`V_a, V_b` are the two halves of the ``TensorDense``
projection to one channel. Only the **even-parity** output block is kept: the true
scalar (trace), the **pseudovector** :math:`l_3 = 1` (antisymmetric part; it comes from
the paths with :math:`l_1 + l_2` even and :math:`l_1 + l_2 + l_3` odd, e.g.
:math:`1 \otimes 1 \to 1`, the cross product) and the even :math:`l_3 = 2` tensor
(symmetric traceless part). These are exactly the parts of a true rank-2 tensor; the
contraction with :math:`C^{11l_3}` builds the Cartesian :math:`3 \times 3` matrix, rows
and columns in ``x, y, z`` order.

The total is :math:`Z^*_i = \sum_\text{stages} Z_i` over the initial short-range stage,
every message-passing stage and the long-range stage (where the head reads the
potential-times-features product :math:`U_i`). The **acoustic sum rule** (charge
neutrality, :math:`\sum_i Z^*_i = 0` per structure) is imposed by subtracting the mean
over the atoms of each structure. In a uniform electric field :math:`\mathcal{E}` the
atoms feel the extra force :math:`F_{i,a} = \sum_b Z^*_{i,ab} \mathcal{E}_b`.
"""

from typing import List, Optional, Tuple

import torch

from .layers import structure_index
from .tensor_product import EquivariantLinear, TensorProduct, clebsch_gordan


def even_parity_paths(
    max_degree_1: int, max_degree_2: int, max_degree_out: int
) -> List[Tuple[int, int, int]]:
    """Paths of two natural-parity inputs into even-parity outputs (``l1 + l2`` even).

    These are e3x's paths into the even block when pseudotensors are on: they include
    the "pseudotensor" paths with ``l1 + l2 + l3`` odd (e.g. ``1 x 1 -> 1``).

    :param max_degree_1: largest degree of the first input
    :param max_degree_2: largest degree of the second input
    :param max_degree_out: largest output degree
    :return: list of ``(l1, l2, l3)`` paths
    """
    return [
        (l1, l2, l3)
        for l1 in range(max_degree_1 + 1)
        for l2 in range(max_degree_2 + 1)
        for l3 in range(max_degree_out + 1)
        if abs(l1 - l2) <= l3 <= l1 + l2 and (l1 + l2) % 2 == 0
    ]


class BiasedEquivariantLinear(EquivariantLinear):
    """:py:class:`EquivariantLinear` with a bias on the scalar (``l = 0``) component.

    e3x ``Dense`` with ``use_bias=True``: the bias starts at zero.

    :param max_degree: largest degree ``L`` of the input (and output)
    :param in_features: input channels
    :param out_features: output channels
    """

    def __init__(self, max_degree: int, in_features: int, out_features: int):
        super().__init__(max_degree, in_features, out_features)
        self.bias = torch.nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the per-degree maps and the scalar bias.

        :param x: tensor of shape ``(n, (L + 1)^2, in_features)``
        :return: tensor of shape ``(n, (L + 1)^2, out_features)``
        """
        # TorchScript has no super(): the per-degree maps of EquivariantLinear.forward
        y = torch.einsum("nmi,mio->nmo", x, self.weight[self.degrees])
        return torch.cat([y[:, :1] + self.bias, y[:, 1:]], dim=1)


def gated_silu(x: torch.Tensor) -> torch.Tensor:
    """e3x's equivariant SiLU: every component times the sigmoid of its channel's scalar.

    :param x: tensor of shape ``(n, (L + 1)^2, F)``
    :return: tensor of the same shape
    """
    return torch.sigmoid(x[:, :1]) * x


def cartesian_rank2_matrix() -> torch.Tensor:
    """Map from the nine ``l <= 2`` components to a Cartesian ``3 x 3`` matrix.

    ``Z[a, b] = sum_k M[k, a, b] T[k]`` with ``k`` in sphericart order
    (``l = 0``; ``l = 1``: ``m = -1, 0, 1``; ``l = 2``: ``m = -2 .. 2``) and ``a, b`` in
    ``x, y, z`` order: the coefficients :math:`C^{1 1 l}` with both ``l = 1`` indices
    moved from sphericart's ``(y, z, x)`` to ``(x, y, z)``.

    :return: tensor of shape ``(9, 3, 3)`` (float64)
    """
    xyz = [2, 0, 1]  # sphericart index of x, y, z
    blocks = [torch.from_numpy(clebsch_gordan(1, 1, l)) for l in range(3)]
    cg = torch.cat(blocks, dim=2)  # [3, 3, 9], sphericart order
    return cg[xyz][:, xyz].permute(2, 0, 1).contiguous()


class BornChargeHead(torch.nn.Module):
    """Per-atom ``3 x 3`` tensor from spherical features, see the module docstring.

    The head of lorem-jax's ``LoremBEC`` (``PerParticleTensorPredictor``).

    :param max_degree: largest degree ``L`` of the input features
    :param in_features: channels of the input features
    :param num_features: width of the hidden equivariant layers
    """

    def __init__(self, max_degree: int, in_features: int, num_features: int):
        super().__init__()
        L, d = max_degree, num_features
        self.dense_0 = BiasedEquivariantLinear(L, in_features, d)
        self.dense_1 = BiasedEquivariantLinear(L, d, d)
        self.dense_2 = BiasedEquivariantLinear(L, d, d)
        self.projection = BiasedEquivariantLinear(L, d, 2)
        self.tensor = TensorProduct(L, L, 2, 1, paths=even_parity_paths(L, L, 2))
        self.register_buffer("to_cartesian", cartesian_rank2_matrix(), persistent=False)

    def forward(self, spherical: torch.Tensor) -> torch.Tensor:
        """Predict one Cartesian tensor per atom.

        :param spherical: tensor of shape ``(n_atoms, (L + 1)^2, in_features)``
        :return: tensor of shape ``(n_atoms, 3, 3)``
        """
        h = gated_silu(self.dense_0(spherical))
        h = gated_silu(self.dense_1(h))
        h = self.projection(self.dense_2(h))
        t = self.tensor(h[..., :1], h[..., 1:])[..., 0]  # [n, 9]
        return torch.einsum("nk,kab->nab", t, self.to_cartesian.to(t.dtype))


def acoustic_sum_rule(
    born_charges: torch.Tensor, atom_ptr: List[int], weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    r"""Subtract the per-structure mean so that :math:`\sum_i Z^*_i = 0`.

    :param born_charges: tensor of shape ``(n_atoms, 3, 3)``
    :param atom_ptr: first atom of every structure, plus the total
    :param weights: optional boolean mask of shape ``(n_atoms,)`` of the atoms that
        count (e.g. not the ghosts of a domain decomposition); the mean is taken over
        them, every atom of the structure is shifted
    :return: tensor of shape ``(n_atoms, 3, 3)``
    """
    n_structures = len(atom_ptr) - 1
    device, dtype = born_charges.device, born_charges.dtype
    structure = structure_index(atom_ptr, born_charges.shape[0], device)
    w = torch.ones(born_charges.shape[0], dtype=dtype, device=device)
    if weights is not None:
        w = weights.to(dtype)
    zeros = torch.zeros((n_structures, 3, 3), dtype=dtype, device=device)
    total = zeros.index_add(0, structure, born_charges * w[:, None, None])
    n_atoms = torch.zeros(n_structures, dtype=dtype, device=device).index_add(0, structure, w)
    mean = total / n_atoms.clamp(min=1.0)[:, None, None]
    return born_charges - mean[structure]


def electric_field_energy(
    born_charges: torch.Tensor,
    positions: torch.Tensor,
    electric_field: torch.Tensor,
    atom_ptr: List[int],
) -> torch.Tensor:
    r"""Per-atom energy whose negative gradient is the field force :math:`Z^*_i \mathcal{E}`.

    :math:`u_i = -\sum_{ab} r_{i,a} \, \bar Z^*_{i,ab} \, \mathcal{E}_b`, with
    :math:`\bar Z^*` the Born charges held fixed (detached), so that
    :math:`-\partial u / \partial r_i = Z^*_i \mathcal{E}` exactly. With the acoustic sum
    rule the sum over a structure does not depend on the origin.

    :param born_charges: tensor of shape ``(n_atoms, 3, 3)``
    :param positions: tensor of shape ``(n_atoms, 3)``
    :param electric_field: uniform field of every structure, shape ``(n_structures, 3)``
    :param atom_ptr: first atom of every structure, plus the total
    :return: tensor of shape ``(n_atoms,)``
    """
    structure = structure_index(atom_ptr, positions.shape[0], positions.device)
    field = electric_field.to(positions.dtype)[structure]
    forces = torch.einsum("nab,nb->na", born_charges.detach(), field)
    return -(positions * forces).sum(dim=1)
