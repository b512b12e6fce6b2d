r"""Dipole moments of molecules from the learned charges (not in lorem-jax or the paper).

**Point charges.** The scalar latent charge :math:`q_i` (channel 0 of the long-range
block, the one that ``total_charge`` shifts) is read as a point charge at
:math:`\mathbf r_i`. The dipole of a structure is taken about its geometric centre
:math:`\mathbf c = \frac1N \sum_i \mathbf r_i`,

.. math::

    \boldsymbol\mu = \sum_i q_i (\mathbf r_i - \mathbf c) + \sum_i \mathbf p_i .

For a neutral set of charges (:math:`\sum_i q_i = 0`, e.g. with ``total_charge``) the
first term equals :math:`\sum_i q_i \mathbf r_i` for any origin. In general it is the
dipole of the charges after the uniform shift :math:`q_i \to q_i - \bar q` that
neutralises them, since :math:`\sum_i (q_i - \bar q)\,\mathbf r_i = \sum_i q_i
(\mathbf r_i - \mathbf c)`: the dipole is invariant under translations whether or not the
network's charges add up to zero. For a molecule with a net charge :math:`Q` the dipole
depends on the origin; here it is always the geometric centre, and a reference dipole
about another point :math:`\mathbf o` (centre of mass, coordinate origin) converts as
:math:`\boldsymbol\mu_{\mathbf c} = \boldsymbol\mu_{\mathbf o} - Q(\mathbf c - \mathbf o)`.

**Atomic dipoles** (optional). :math:`\mathbf p_i` is a learned linear combination of the
``l = 1`` components of the final spherical features :math:`S_i`,
:math:`\mathbf p_i = \sum_c w_c S_i^{1,\cdot,c}`, reordered from sphericart's
``(y, z, x)`` to ``(x, y, z)``. It rotates with the structure and describes polarisation
that point charges on the nuclei cannot (lone pairs, anisotropic electron clouds).

**Periodic systems.** The dipole of a periodic cell is not defined: shifting an atom by a
lattice vector changes :math:`\sum_i q_i \mathbf r_i` by :math:`q_i \mathbf h`, and the
polarisation is only defined modulo such quanta (Berry-phase theory). Only molecules are
accepted, see :py:class:`lorem_mta.model.LoremModel`.
"""

import torch

from .layers import lecun_normal_


class AtomicDipoles(torch.nn.Module):
    r"""Per-atom dipoles :math:`\mathbf p_i` from the ``l = 1`` spherical features.

    :param num_spherical_features: spherical channels ``s`` of the features
    """

    def __init__(self, num_spherical_features: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(num_spherical_features, 1))
        lecun_normal_(self.weight, num_spherical_features)

    def forward(self, nodes_spherical: torch.Tensor) -> torch.Tensor:
        """Cartesian atomic dipoles.

        :param nodes_spherical: tensor of shape ``(n_atoms, (L + 1)^2, s)`` with
            ``L >= 1``, components ``m = -l..l`` within each degree
        :return: tensor of shape ``(n_atoms, 3)``, ``(x, y, z)`` order
        """
        vectors = (nodes_spherical[:, 1:4, :] @ self.weight)[..., 0]  # [n_atoms, (y, z, x)]
        return vectors[:, [2, 0, 1]]


def dipole_contributions(
    charges: torch.Tensor,
    positions: torch.Tensor,
    structure: torch.Tensor,
    n_structures: int,
    atomic_dipoles: torch.Tensor,
) -> torch.Tensor:
    r"""Atomic contributions :math:`q_i (\mathbf r_i - \mathbf c) + \mathbf p_i` to the dipole.

    :param charges: point charges, tensor of shape ``(n_atoms,)``
    :param positions: tensor of shape ``(n_atoms, 3)``
    :param structure: index of the structure of every atom, shape ``(n_atoms,)``
    :param n_structures: number of structures
    :param atomic_dipoles: tensor of shape ``(n_atoms, 3)``, or ``(n_atoms, 0)`` for
        point charges only
    :return: tensor of shape ``(n_atoms, 3)``; the sum over the atoms of a structure is
        its dipole (:py:func:`dipole_moments`)
    """
    zeros = torch.zeros((n_structures, 3), dtype=positions.dtype, device=positions.device)
    counts = torch.zeros(n_structures, dtype=positions.dtype, device=positions.device)
    counts = counts.index_add(0, structure, torch.ones_like(charges))
    centres = zeros.index_add(0, structure, positions) / counts.clamp(min=1.0).unsqueeze(-1)
    contributions = charges.unsqueeze(-1) * (positions - centres[structure])  # [n_atoms, 3]
    if atomic_dipoles.shape[1] == 3:
        contributions = contributions + atomic_dipoles
    return contributions


def dipole_moments(
    charges: torch.Tensor,
    positions: torch.Tensor,
    structure: torch.Tensor,
    n_structures: int,
    atomic_dipoles: torch.Tensor,
) -> torch.Tensor:
    """Dipole of every structure about its geometric centre (see the module docstring).

    :param charges: point charges, tensor of shape ``(n_atoms,)``
    :param positions: tensor of shape ``(n_atoms, 3)``
    :param structure: index of the structure of every atom, shape ``(n_atoms,)``
    :param n_structures: number of structures (structures without atoms get zero)
    :param atomic_dipoles: tensor of shape ``(n_atoms, 3)``, or ``(n_atoms, 0)`` for
        point charges only
    :return: tensor of shape ``(n_structures, 3)``
    """
    contributions = dipole_contributions(
        charges, positions, structure, n_structures, atomic_dipoles
    )
    zeros = torch.zeros((n_structures, 3), dtype=positions.dtype, device=positions.device)
    return zeros.index_add(0, structure, contributions)
