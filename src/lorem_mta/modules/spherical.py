r"""Spherical harmonics, degree-wise helpers and the safe spherical norm (LOREM Sec. 3.1, 3.5).

**Convention.** Everywhere inside ``lorem_mta`` spherical quantities are stored as
tensors of shape ``(..., (L + 1)^2, n_features)``; within each degree ``l`` the
components follow sphericart's (and metatensor's ``o3_mu``) order ``m = -l .. l``, i.e.
``(y, z, x)`` for ``l = 1``. The harmonics carry Racah (Schmidt semi-) normalisation

.. math::

    Y_0^0 = 1, \qquad \sum_m \big(Y_l^m(\hat r)\big)^2 = 1,

so that :math:`Y_1 = (y, z, x)/r`. They are sphericart's orthonormal harmonics times
:math:`\sqrt{4\pi / (2l+1)}`. The JAX reference (e3x) uses the same real basis and
normalisation in a different order ("Cartesian": ``m = +l, -l, +(l-1), ..., 0``);
:py:func:`e3x_to_sphericart_permutation` converts, and is needed only where a layout is
hard-coded (weight conversion, tests).

**Norm features.** Spherical features are turned into invariants with

.. math::

    P_i^{l,c} = (2l+1)^{1/4} \, \big\lVert S_i^{l,\cdot,c} \big\rVert_2,

where the empirical factors :math:`(2l+1)^{1/4}` make the variance of the norms more
uniform across :math:`l`. The exact norm (lorem-jax's, ``smoothing = 0``) has a zero
gradient at a zero block and finite second derivatives elsewhere, which force training
needs.

**Smooth norm.** The exact norm is a cone at zero: a block that vanishes by symmetry
(every odd-:math:`l` block of an atom at an inversion centre: CO2's carbon, every atom
of rock salt, fcc or bcc crystals) grows like :math:`|h|` with a displacement
:math:`h`, so the energy has a cusp there, :math:`E = E_0 + c|h|`, and the force is
undefined. With ``smoothing = \epsilon > 0`` the norm is replaced by

.. math::

    \lVert S^{l,c} \rVert_\epsilon = \sqrt{\lVert S^{l,c} \rVert^2 + \epsilon^2
        M_c^2} - \epsilon M_c, \qquad M_c^2 = \sum_{l'} \lVert S^{l',c} \rVert^2,

which is infinitely differentiable wherever the channel :math:`c` of the atom does not
vanish as a whole (its :math:`l = 0` part is an invariant and does not vanish by
symmetry), is zero for a zero block, and tends to the exact norm for
:math:`\lVert S^{l,c} \rVert \gg \epsilon M_c`. The scale :math:`M_c` is the norm of
the whole channel, so the smoothing is the same at any overall scale of the features
(at initialisation they are ~1e-3 in the short-range stages and ~1e-8 in the mixing
of the long-range block, and grow during training): a vanishing block enters
quadratically, :math:`\lVert S^l \rVert_\epsilon \approx \lVert S^l \rVert^2 / (2
\epsilon M_c)`, over displacements up to about :math:`\epsilon` times a bond length.
"""

import math
from typing import List

import torch


def degree_index(max_degree: int) -> torch.Tensor:
    """Degree ``l`` of every ``(l, m)`` component.

    :param max_degree: largest degree ``L``
    :return: integer tensor of shape ``((L + 1)^2,)``
    """
    return torch.cat(
        [torch.full((2 * l + 1,), l, dtype=torch.long) for l in range(max_degree + 1)]
    )


def l_factors(max_degree: int) -> torch.Tensor:
    """The ``(2l + 1)^(1/4)`` factors applied to the norms.

    :param max_degree: largest degree ``L``
    :return: tensor of shape ``(L + 1,)`` (float64)
    """
    return torch.tensor(
        [(2 * l + 1) ** 0.25 for l in range(max_degree + 1)], dtype=torch.float64
    )


def e3x_to_sphericart_permutation(max_degree: int) -> List[int]:
    """Indices that reorder e3x's Cartesian order into sphericart's ``-l..l`` order.

    ``x_sphericart = x_e3x[..., perm, :]``; e.g. for ``L = 1``: ``[0, 2, 3, 1]``.

    :param max_degree: largest degree ``L``
    :return: list of length ``(L + 1)^2``
    """
    perm: List[int] = []
    for l in range(max_degree + 1):
        # e3x position of each m in -l..l: position 2k holds m = l - k,
        # position 2k + 1 holds m = -(l - k), the last one holds m = 0
        for m in range(-l, l + 1):
            if m == 0:
                position = 2 * l
            elif m > 0:
                position = 2 * (l - m)
            else:
                position = 2 * (l + m) + 1
            perm.append(l * l + position)
    return perm


class SphericalHarmonics(torch.nn.Module):
    r"""Racah-normalised real spherical harmonics in sphericart order, in pure torch.

    For the unit vector :math:`\hat r = (x, y, z)`, with :math:`x + i y` raised to the
    power :math:`m` written :math:`C_m + i S_m` and the polynomials

    .. math::

        Q_m^m = (2m - 1)!!, \quad Q_{m+1}^m = (2m + 1) z Q_m^m, \quad
        Q_l^m = \frac{(2l - 1) z Q_{l-1}^m - (l + m - 1) Q_{l-2}^m}{l - m},

    the harmonics are :math:`Y_l^0 = Q_l^0` and, for :math:`m > 0`,
    :math:`Y_l^{\pm m} = \sqrt{2 (l-m)! / (l+m)!}\, Q_l^m \,(C_m, S_m)`. They are
    identical to ``sphericart.torch.SphericalHarmonics`` times
    :math:`\sqrt{4\pi / (2l+1)}` (checked to round-off in the tests).

    The recurrences are written with plain torch operations on purpose: every derivative
    (forces, stresses, and the second derivatives of force training) then comes from
    torch's autograd inside the exported TorchScript model. sphericart-torch registers
    its autograd formulas from Python only, so a model using it would silently lose the
    angular part of the forces in engines that load the model without Python (LAMMPS) or
    without importing sphericart first.

    :param max_degree: largest degree ``L``
    """

    def __init__(self, max_degree: int):
        super().__init__()
        self.max_degree = max_degree
        L = max_degree
        # Q_m^m = (2m - 1)!!, then the three-term recurrence in l
        self.diagonal = [float(math.prod(range(1, 2 * m, 2))) for m in range(L + 1)]
        self.prefactors = [
            1.0
            if m == 0 or m > l
            else math.sqrt(2 * math.factorial(l - m) / math.factorial(l + m))
            for l in range(L + 1)
            for m in range(L + 1)
        ]

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """Evaluate the harmonics of the direction of non-zero ``vectors``.

        :param vectors: tensor of shape ``(n_pairs, 3)``; must not contain zeros
        :return: tensor of shape ``(n_pairs, (L + 1)^2)``
        """
        L = self.max_degree
        unit = vectors / torch.linalg.norm(vectors, dim=-1, keepdim=True)
        x, y, z = unit[:, 0], unit[:, 1], unit[:, 2]
        one = torch.ones_like(x)
        cosines: List[torch.Tensor] = [one]
        sines: List[torch.Tensor] = [torch.zeros_like(x)]
        for m in range(1, L + 1):
            cosines.append(x * cosines[m - 1] - y * sines[m - 1])
            sines.append(x * sines[m - 1] + y * cosines[m - 1])

        # q[l * (L + 1) + m] = Q_l^m
        q: List[torch.Tensor] = [one] * ((L + 1) * (L + 1))
        for m in range(L + 1):
            q[m * (L + 1) + m] = self.diagonal[m] * one
            if m + 1 <= L:
                q[(m + 1) * (L + 1) + m] = (2 * m + 1) * z * q[m * (L + 1) + m]
            for l in range(m + 2, L + 1):
                q[l * (L + 1) + m] = (
                    (2 * l - 1) * z * q[(l - 1) * (L + 1) + m]
                    - (l + m - 1) * q[(l - 2) * (L + 1) + m]
                ) / (l - m)

        columns: List[torch.Tensor] = []
        for l in range(L + 1):
            for m in range(-l, l + 1):
                k = abs(m)
                value = self.prefactors[l * (L + 1) + k] * q[l * (L + 1) + k]
                if m > 0:
                    value = value * cosines[k]
                elif m < 0:
                    value = value * sines[k]
                columns.append(value)
        return torch.stack(columns, dim=-1)


def degree_sums(x: torch.Tensor, degrees: torch.Tensor, max_degree: int) -> torch.Tensor:
    """Sum over the components ``m`` of every degree.

    In eager mode one ``index_add``; inside ``torch.compile``, one static slice and sum
    per degree (:py:func:`static_degree_sums`), which the compiler fuses with direct
    loads instead of a scatter through ``degrees``.

    :param x: tensor of shape ``(n, (L + 1)^2, n_features)``
    :param degrees: degree of every component (:py:func:`degree_index`), shape
        ``((L + 1)^2,)``
    :param max_degree: largest degree ``L`` contained in ``x``
    :return: tensor of shape ``(n, L + 1, n_features)``
    """
    if torch.compiler.is_compiling():
        return static_degree_sums(x, max_degree)
    return torch.zeros(
        (x.shape[0], max_degree + 1, x.shape[2]), dtype=x.dtype, device=x.device
    ).index_add(1, degrees, x)


def static_degree_sums(x: torch.Tensor, max_degree: int) -> torch.Tensor:
    """:py:func:`degree_sums` by static slices (same numbers up to round-off).

    :param x: tensor of shape ``(n, (L + 1)^2, n_features)``
    :param max_degree: largest degree ``L`` contained in ``x``
    :return: tensor of shape ``(n, L + 1, n_features)``
    """
    blocks = torch.split(x, [2 * l + 1 for l in range(max_degree + 1)], dim=1)
    return torch.cat([block.sum(dim=1, keepdim=True) for block in blocks], dim=1)


def spherical_norm(x: torch.Tensor, degrees: torch.Tensor, max_degree: int) -> torch.Tensor:
    """Per-degree Euclidean norm with a zero gradient at zero and finite second derivative.

    :param x: tensor of shape ``(n_atoms, (L + 1)^2, n_features)``
    :param degrees: degree of every component (:py:func:`degree_index`), shape
        ``((L + 1)^2,)``
    :param max_degree: largest degree ``L`` contained in ``x``
    :return: tensor of shape ``(n_atoms, L + 1, n_features)``
    """
    squared = degree_sums(x * x, degrees, max_degree)
    nonzero = squared > 0
    # the inner `where` keeps sqrt away from 0, so no NaN appears in the backward pass
    safe = torch.where(nonzero, squared, torch.ones_like(squared))
    return torch.where(nonzero, torch.sqrt(safe), torch.zeros_like(squared))


def smooth_spherical_norm(
    x: torch.Tensor, degrees: torch.Tensor, max_degree: int, smoothing: float
) -> torch.Tensor:
    r"""Per-degree smooth norm :math:`\sqrt{|x^l|^2 + \epsilon^2 M^2} - \epsilon M`.

    ``M`` is the norm of every channel over all degrees (see the module docstring).
    Infinitely differentiable, double backward included, wherever ``M > 0``; zero with
    a zero gradient for an all-zero channel.

    :param x: tensor of shape ``(n_atoms, (L + 1)^2, n_features)``
    :param degrees: degree of every component, shape ``((L + 1)^2,)``
    :param max_degree: largest degree ``L`` contained in ``x``
    :param smoothing: ``epsilon > 0``
    :return: tensor of shape ``(n_atoms, L + 1, n_features)``
    """
    squared = degree_sums(x * x, degrees, max_degree)
    scale = smoothing * smoothing * squared.sum(dim=1, keepdim=True)
    # sqrt(s + c) - sqrt(c) = s / (sqrt(s + c) + sqrt(c)): no cancellation for s << c
    denominator = _safe_sqrt(squared + scale) + _safe_sqrt(scale)
    denominator = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return squared / denominator


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` for ``x >= 0`` with zero (not NaN) gradients at ``x = 0``."""
    nonzero = x > 0
    safe = torch.where(nonzero, x, torch.ones_like(x))
    return torch.where(nonzero, torch.sqrt(safe), torch.zeros_like(x))


def norm_features(
    x: torch.Tensor,
    degrees: torch.Tensor,
    factors: torch.Tensor,
    max_degree: int,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Flattened ``(2l+1)^(1/4) |x^l|`` invariants, degree-major (index ``l * F + c``).

    :param x: tensor of shape ``(n_atoms, (L + 1)^2, n_features)``
    :param degrees: degree of every component, shape ``((L + 1)^2,)``
    :param factors: :py:func:`l_factors`, shape ``(L + 1,)``
    :param max_degree: largest degree ``L`` contained in ``x``
    :param smoothing: ``0`` for the exact norm (:py:func:`spherical_norm`, lorem-jax),
        ``epsilon > 0`` for :py:func:`smooth_spherical_norm`
    :return: tensor of shape ``(n_atoms, (L + 1) * n_features)``
    """
    if smoothing > 0.0:
        norms = smooth_spherical_norm(x, degrees, max_degree, smoothing)
    else:
        norms = spherical_norm(x, degrees, max_degree)
    norms = norms * factors.to(x.dtype).unsqueeze(-1)
    return norms.reshape(x.shape[0], -1)
