r"""The LOREM long-range block (LOREM paper Sec. 4-5, Eq. 4; architecture reference Sec. 3.8).

**Charges.** Every atom gets ``1 + (L_lr + 1)^2`` latent charge channels: a scalar charge
from an MLP on the scalar features and equivariant charges up to degree ``L_lr`` from a
self tensor product of the spherical features,

.. math::

    q_i = \mathrm{MLP}(x_i), \qquad Q_i = \mathrm{TensorDense}(S_i)
    \in \mathbb{R}^{(L_{lr}+1)^2}.

**Total charge** (optional). With ``total_charge`` on, the scalar charges of every
structure are shifted uniformly so that they add up to its total charge :math:`Q` (a
per-structure input), :math:`q_i \leftarrow q_i + (Q - \sum_j q_j) / N`, see
:py:meth:`LongRange.equilibrate`. Structures with different net charges then get different
potentials, and so different energies, at the same geometry.

**Potentials.** Every channel :math:`\alpha` goes through the same Coulomb operator
(prefactor 1):

.. math::

    V_i^\alpha = \frac12 \sum_j \sum_{\mathbf n}{}' \frac{Q_j^\alpha}
        {|\mathbf r_i - \mathbf r_j - \mathbf n \mathbf h|}.

For periodic cells this is an Ewald sum with Gaussian smearing :math:`\sigma = r_c / 4`,
reciprocal resolution :math:`\lambda = r_c / 8`, real space over the model's own neighbour
list and no exclusion radius; a neutralising background handles the non-zero net charge.
For molecules it is the bare all-pairs sum. Each ``(l, m)`` component interacts like an
independent monopole, so :math:`V^l` rotates like :math:`Q^l`. torch-pme evaluates all
channels in a single call.

**Mixing back.** :math:`\tilde\Phi_i = W^l \Phi_i` (per-degree linear ``1 -> s``),
:math:`U_i = \tilde\Phi_i \otimes S_i` (tensor product up to ``L``), then
:math:`x_i \leftarrow \mathrm{Update}(x_i, [\phi_i; (2l+1)^{1/4} \lVert U_i^l \rVert])`.
Since :math:`\tilde\Phi_i` is the same potential in every channel up to the scale
:math:`W^l`, the product is evaluated without forming it
(:py:meth:`~lorem_mta.modules.tensor_product.TensorProduct.rank_one`).

**Reciprocal space.** In ``"ewald"`` mode the k-vectors are exactly the reference set:
:math:`n_a = \lceil |\mathbf h_a| / \lambda \rceil` integer frequencies per lattice
vector (``fftfreq`` order), the half space :math:`m_1 > 0 \lor (m_1 = 0 \land m_2 > 0)
\lor (m_1 = m_2 = 0 \land m_3 > 0)` and its mirror image, built from the cell inside the
graph so that stresses are right. ``"pme"`` uses torch-pme's particle-mesh Ewald for
large cells.
"""

import math
from typing import List, Optional, Tuple

import torch
import torchpme
from torchpme.lib import KSpaceFilter, MeshInterpolator

from .layers import MLP, Update, structure_index
from .lr_cost import LongRangePlanner, fft_mesh_size, image_pairs, mesh_shape
from .spherical import degree_index, l_factors, norm_features
from .tensor_product import EquivariantLinear, TensorDense, TensorProduct

__all__ = [
    "ChannelMeshInterpolator",
    "CoulombPotentials",
    "LongRange",
    "MeshPME",
    "SplineModuliFilter",
    "ewald_kvectors",
    "fft_mesh_size",
    "slab_axis",
    "slab_cell",
    "slab_correction",
    "slab_frame",
    "slab_moments",
    "slab_normal",
    "slab_potentials",
]


def ewald_kvectors(cell: torch.Tensor, lr_wavelength: float) -> torch.Tensor:
    """Reciprocal vectors of the reference Ewald sum (half space and its mirror image).

    :param cell: tensor of shape ``(3, 3)``, rows are lattice vectors
    :param lr_wavelength: shortest wavelength kept, ``lambda``
    :return: tensor of shape ``(n_k, 3)``; ``k = 0`` is excluded
    """
    ns: List[int] = (
        torch.ceil(torch.linalg.norm(cell.detach().to(torch.float64), dim=1) / lr_wavelength)
        .long()
        .tolist()
    )
    axes: List[torch.Tensor] = []
    for n in ns:
        axes.append(torch.fft.fftfreq(n, 1.0 / n, device=cell.device).round().long())
    m1, m2, m3 = torch.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
    m1, m2, m3 = m1.reshape(-1), m2.reshape(-1), m3.reshape(-1)
    half = (m1 > 0) | ((m1 == 0) & (m2 > 0)) | ((m1 == 0) & (m2 == 0) & (m3 > 0))
    integers = torch.stack([m1[half], m2[half], m3[half]], dim=1).to(cell.dtype)
    reciprocal = 2 * torch.pi * torch.linalg.inv(cell).T
    kvectors = integers @ reciprocal
    return torch.cat([kvectors, -kvectors], dim=0)


class ChannelMeshInterpolator(MeshInterpolator):
    """torch-pme's mesh interpolator with all charge channels spread in one operation.

    torch-pme 0.5.0 spreads the charges channel by channel with an in-place
    ``index_put_`` on a view of the mesh, which makes the backward pass copy the whole
    mesh once per channel and channel (quadratic in the number of channels, and LOREM has
    10). This version accumulates every channel with a single out-of-place ``index_add``;
    the interpolation weights and indices are torch-pme's own.
    """

    def _stencil(self) -> torch.Tensor:
        """Interpolation weight of every stencil point, shape ``(n_stencil, n_points)``."""
        return (
            self.interpolation_weights[self.x_shifts, :, 0]
            * self.interpolation_weights[self.y_shifts, :, 1]
            * self.interpolation_weights[self.z_shifts, :, 2]
        )

    def _flat_index(self) -> torch.Tensor:
        """Flat mesh index of every stencil point, shape ``(n_stencil * n_points,)``."""
        ny = int(self.ns_mesh[1])
        nz = int(self.ns_mesh[2])
        return ((self.x_indices * ny + self.y_indices) * nz + self.z_indices).reshape(-1)

    def points_to_mesh(self, particle_weights: torch.Tensor) -> torch.Tensor:
        """Spread ``particle_weights`` of shape ``(n_points, n_channels)`` on the mesh.

        :param particle_weights: tensor of shape ``(n_points, n_channels)``
        :return: tensor of shape ``(n_channels, nx, ny, nz)``
        """
        n_channels = particle_weights.shape[1]
        nx = int(self.ns_mesh[0])
        ny = int(self.ns_mesh[1])
        nz = int(self.ns_mesh[2])
        # channels first, like the mesh: the backward gathers contiguous rows
        values = particle_weights.T.contiguous().unsqueeze(1) * self._stencil().unsqueeze(0)
        mesh = torch.zeros(
            (n_channels, nx * ny * nz), dtype=particle_weights.dtype, device=self._device
        ).index_add(1, self._flat_index(), values.reshape(n_channels, -1))
        return mesh.reshape(n_channels, nx, ny, nz)

    def mesh_to_points(self, mesh_vals: torch.Tensor) -> torch.Tensor:
        """Interpolate mesh values of shape ``(n_channels, nx, ny, nz)`` at the points.

        One contiguous gather along the flattened mesh for all channels (its backward is
        a single ``index_add``), instead of an advanced-indexing gather per channel whose
        backward is an accumulating ``index_put_``.

        :param mesh_vals: tensor of shape ``(n_channels, nx, ny, nz)``
        :return: tensor of shape ``(n_points, n_channels)``
        """
        n_channels = mesh_vals.shape[0]
        stencil = self._stencil()
        values = mesh_vals.reshape(n_channels, -1).index_select(1, self._flat_index())
        values = values.reshape(n_channels, stencil.shape[0], stencil.shape[1])
        return (values * stencil.unsqueeze(0)).sum(dim=1).T


class SplineModuliFilter(KSpaceFilter):
    r"""torch-pme's Coulomb k-space filter divided by the B-spline moduli of smooth PME.

    Spreading the charges with cardinal B-splines of order :math:`p` and interpolating
    back multiplies every Fourier component twice by the discrete transform of the
    spline. Smooth PME divides the Coulomb filter by its square,

    .. math::

        G(\mathbf k) = \frac{\hat\phi(k)}{\prod_a |b_a(\theta_a)|^2}, \qquad
        b_a(\theta) = \sum_{j} M_p(j) e^{i \theta j}, \qquad
        \theta_a = \mathbf k \cdot \mathbf h_a / K_a,

    with :math:`M_p(j)` the spline at the mesh points around a charge sitting on a mesh
    point, :math:`K_a` mesh points along lattice vector :math:`\mathbf h_a`. torch-pme's
    P3M filter uses the continuous transform (a product of sinc functions) instead,
    with the mesh spacing taken along the Cartesian axes: about as accurate for
    orthorhombic cells, but off by ~1e-2 (relative potentials) for triclinic ones, where
    this filter stays at ~2e-5.

    :param cell: tensor of shape ``(3, 3)``
    :param ns_mesh: integer tensor of shape ``(3,)``
    :param interpolation_nodes: spline order ``p``, odd (3 or 5)
    :param kernel: the Coulomb potential (torch-pme ``KSpaceKernel``)
    """

    def __init__(
        self,
        cell: torch.Tensor,
        ns_mesh: torch.Tensor,
        interpolation_nodes: int,
        kernel: torchpme.CoulombPotential,
    ):
        if interpolation_nodes not in (3, 5):
            raise ValueError(f"interpolation_nodes must be 3 or 5, got {interpolation_nodes}")
        # spline values at the mesh points around a charge sitting on a mesh point (set
        # before the parent's constructor, which computes the filter)
        spline = MeshInterpolator(cell, ns_mesh, interpolation_nodes, "P3M")
        values = spline._compute_1d_weights(torch.zeros((1, 1), dtype=torch.float64))
        self.spline_values: List[float] = values.reshape(-1).tolist()
        half = (interpolation_nodes - 1) // 2
        self.spline_offsets: List[float] = [float(j) for j in range(-half, half + 1)]
        super().__init__(cell, ns_mesh, kernel, fft_norm="backward", ifft_norm="forward")

    @torch.jit.export
    def update(
        self,
        cell: Optional[torch.Tensor] = None,
        ns_mesh: Optional[torch.Tensor] = None,
    ) -> None:
        """Set the cell and mesh, and the filter ``G(k)`` (see the class docstring).

        :param cell: tensor of shape ``(3, 3)``
        :param ns_mesh: integer tensor of shape ``(3,)``
        """
        self._prep_kvectors(cell, ns_mesh)
        self._kfilter = self._compute_influence(self._kvectors) * self.kernel.kernel_from_k_sq(
            self._k_sq
        )

    def _compute_influence(self, kvectors: torch.Tensor) -> torch.Tensor:
        r"""``1 / prod_a |b_a|^2`` on the ``(nx, ny, nz // 2 + 1)`` rfft mesh.

        :math:`\theta_a = 2 \pi m_a / K_a` depends on the integer frequency only, so the
        moduli are computed per axis and multiplied (``kvectors`` gives only the dtype
        and device).
        """
        ns: List[int] = self.ns_mesh.tolist()
        dtype, device = kvectors.dtype, kvectors.device
        values = torch.tensor(self.spline_values, dtype=dtype, device=device)
        offsets = torch.tensor(self.spline_offsets, dtype=dtype, device=device)
        moduli: List[torch.Tensor] = []
        for axis in range(3):
            n = ns[axis]
            if axis == 2:
                frequencies = torch.fft.rfftfreq(n, 1.0 / n, device=device)
            else:
                frequencies = torch.fft.fftfreq(n, 1.0 / n, device=device)
            theta = 2 * torch.pi * frequencies.to(dtype) / n
            # the spline is symmetric about the charge, so b_a is real
            modulus = (values * torch.cos(theta.unsqueeze(-1) * offsets)).sum(dim=-1)
            moduli.append(modulus * modulus)
        product = moduli[0][:, None, None] * moduli[1][None, :, None] * moduli[2][None, None, :]
        return torch.reciprocal(product)


class MeshPME(torchpme.PMECalculator):
    """torch-pme's PME with the mesh from :py:func:`mesh_shape` (fast FFT lengths).

    The reciprocal-space steps are torch-pme's: spread the charges on the mesh, apply the
    Coulomb k-space filter, interpolate back, and subtract the self and background terms.
    """

    def _compute_kspace(
        self,
        charges: torch.Tensor,
        cell: torch.Tensor,
        positions: torch.Tensor,
        periodic: Optional[torch.Tensor] = None,
        node_mask: Optional[torch.Tensor] = None,
        kvectors: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if node_mask is not None or kvectors is not None:
            raise ValueError("PME evaluates one structure at a time")
        shape = mesh_shape(cell, self.mesh_spacing)
        self.mesh_interpolator.update(cell, shape)
        self.kspace_filter.update(cell, shape)
        self.mesh_interpolator.compute_weights(positions)
        density = self.mesh_interpolator.points_to_mesh(particle_weights=charges)
        mesh_potential = self.kspace_filter.forward(density)
        inverse_volume = torch.abs(cell.det()).pow(-1)
        potentials = self.mesh_interpolator.mesh_to_points(mesh_potential) * inverse_volume
        potentials = potentials - charges * self.potential.self_contribution()
        background = self.potential.background_correction()
        potentials = potentials - 2 * background * torch.sum(charges, dim=0) * inverse_volume
        potentials = potentials + self.potential.pbc_correction(
            periodic, positions, cell, charges
        )
        return potentials / 2


def slab_axis(cell: torch.Tensor) -> int:
    """The non-periodic lattice direction of a slab, ``-1`` for a 3D periodic cell.

    metatomic (and so every engine) sets the cell vector of a non-periodic direction to
    zero; a cell with exactly one zero row is a slab.

    :param cell: tensor of shape ``(3, 3)``
    :return: index of the zero row, or ``-1``
    """
    zero = torch.nonzero(torch.all(cell == 0, dim=1)).reshape(-1)
    if zero.shape[0] == 1:
        return int(zero[0])
    return -1


def slab_cell(
    cell: torch.Tensor, positions: torch.Tensor, gap: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""A 3D cell in which a slab's Ewald sum is evaluated, and the atoms' heights.

    The two lattice vectors :math:`\mathbf a, \mathbf b` of the slab are kept and the
    third is the unit normal :math:`\hat{\mathbf n} = \mathbf a \times \mathbf b /
    |\mathbf a \times \mathbf b|` times a height :math:`L` that holds the slab and a gap
    of vacuum: :math:`L` is the slab's thickness plus ``gap``, rounded up to a
    multiple of 4 Angstrom (and detached from the graph) so that it stays constant in
    simulations. Nothing depends on the vacuum in the user's cell (which metatomic
    drops anyway) or on how the slab is oriented in space.

    :param cell: tensor of shape ``(3, 3)`` with one zero row (:py:func:`slab_axis`)
    :param positions: tensor of shape ``(n_atoms, 3)``
    :param gap: vacuum between images, Angstrom
    :return: the cell, shape ``(3, 3)`` (rows ``a, b, L n``), and the heights
        :math:`z_i = (\mathbf r_i - \bar{\mathbf r}) \cdot \hat{\mathbf n}`, shape
        ``(n_atoms,)``
    """
    origin = positions.detach().mean(dim=0)
    normal = slab_normal(cell)
    heights = (positions - origin) @ normal
    thickness = float((heights.max() - heights.min()).detach()) if heights.shape[0] else 0.0
    return slab_frame(cell, thickness, gap), heights


def slab_normal(cell: torch.Tensor) -> torch.Tensor:
    """Unit normal ``a x b / |a x b|`` of a slab (cell with one zero row).

    :param cell: tensor of shape ``(3, 3)`` with one zero row (:py:func:`slab_axis`)
    :return: tensor of shape ``(3,)``
    """
    axis = slab_axis(cell)
    a = cell[1 if axis == 0 else 0]
    b = cell[1 if axis == 2 else 2]
    normal = torch.linalg.cross(a, b)
    return normal / torch.linalg.norm(normal)


def slab_frame(cell: torch.Tensor, thickness: float, gap: float) -> torch.Tensor:
    """The internal 3D cell of a slab of a given thickness (see :py:func:`slab_cell`).

    :param cell: tensor of shape ``(3, 3)`` with one zero row (:py:func:`slab_axis`)
    :param thickness: extent of the slab's atoms along the normal, Angstrom
    :param gap: vacuum between images, Angstrom
    :return: tensor of shape ``(3, 3)``, rows ``a, b, L n``
    """
    axis = slab_axis(cell)
    a = cell[1 if axis == 0 else 0]
    b = cell[1 if axis == 2 else 2]
    height = 4.0 * math.ceil((thickness + gap) / 4.0)
    return torch.stack([a, b, height * slab_normal(cell)])


def slab_moments(charges: torch.Tensor, heights: torch.Tensor) -> torch.Tensor:
    """Sums over atoms of the slab correction: ``[Q, M, S]`` (see :py:func:`slab_correction`).

    Sums, so that the moments of atoms spread over MPI ranks add up.

    :param charges: tensor of shape ``(n_atoms, n_channels)``
    :param heights: heights along the normal, shape ``(n_atoms,)``
    :return: tensor of shape ``(3, n_channels)``
    """
    z = heights.unsqueeze(-1)
    return torch.stack(
        [charges.sum(dim=0), (charges * z).sum(dim=0), (charges * z * z).sum(dim=0)]
    )


def slab_potentials(
    moments: torch.Tensor, heights: torch.Tensor, volume: torch.Tensor, normal: torch.Tensor
) -> torch.Tensor:
    """The slab correction of :py:func:`slab_correction` from the moments of all atoms.

    :param moments: :py:func:`slab_moments` of all atoms, shape ``(3, n_channels)``
    :param heights: heights of the atoms that receive potentials, shape ``(n,)``
    :param volume: volume of the 3D cell, scalar tensor
    :param normal: third row of the 3D cell, shape ``(3,)``
    :return: tensor of shape ``(n, n_channels)``
    """
    z = heights.unsqueeze(-1)
    total, dipole, second = moments[0], moments[1], moments[2]
    length_sq = (normal * normal).sum()
    bracket = 2 * dipole * z - second - total * z * z - total * length_sq / 6
    return torch.pi / volume * bracket


def slab_correction(
    charges: torch.Tensor, heights: torch.Tensor, volume: torch.Tensor, normal: torch.Tensor
) -> torch.Tensor:
    r"""Potentials that turn a 3D Ewald sum of a slab into the 2D periodic sum.

    The energy correction for a slab in a 3D cell of volume :math:`V` and height
    :math:`L` along the normal (Yeh and Berkowitz, J. Chem. Phys. 111, 3155 (1999), with
    the terms of a charged slab of Ballenegger, Arnold and Cerda, J. Chem. Phys. 131,
    094107 (2009)), in every channel with :math:`M = \sum_j q_j z_j`,
    :math:`S = \sum_j q_j z_j^2` and :math:`Q = \sum_j q_j`:

    .. math::

        E_c = \frac{2\pi}{V} \Big( M^2 - Q S - \frac{Q^2 L^2}{12} \Big),
        \qquad
        V^c_i = \frac12 \frac{\partial E_c}{\partial q_i}
            = \frac{\pi}{V} \Big( 2 M z_i - S - Q z_i^2 - \frac{Q L^2}{6} \Big),

    with the convention :math:`E = \sum_i q_i V_i` of :py:class:`CoulombPotentials`.
    It removes the interaction of the slab's dipole with its images along the normal
    (and the field of the neutralising background); the result does not depend on the
    origin of the heights. With neutral channels (``neutral_charges``) only the dipole
    term is left and the energy of the slab is independent of :math:`L`; a net
    charge in a slab interacts with the background, whose energy grows with
    :math:`L`.

    :param charges: tensor of shape ``(n_atoms, n_channels)``
    :param heights: heights along the normal, shape ``(n_atoms,)``
    :param volume: volume of the 3D cell, scalar tensor
    :param normal: third row of the 3D cell, :math:`L \hat{\mathbf n}`, shape ``(3,)``
    :return: tensor of shape ``(n_atoms, n_channels)``
    """
    return slab_potentials(slab_moments(charges, heights), heights, volume, normal)


class CoulombPotentials(torch.nn.Module):
    r"""Multi-channel Coulomb potentials ``V = 1/2 sum q v`` for one structure at a time.

    The Gaussian smearing is always :math:`\sigma = r_c / 4` (the real-space sum runs
    over the model's neighbour list at :math:`r_c`, where
    :math:`\mathrm{erfc}(r_c / \sqrt2 \sigma) \approx 6 \times 10^{-5}`). What can be
    chosen is how the reciprocal-space part is evaluated:

    * ``accuracy=None``, ``method="ewald"``: the reference settings, :math:`\lambda = r_c/8`
      (the Gaussian filter is :math:`\sim 10^{-9}` at the largest k-vector);
    * ``accuracy=a``: Ewald keeps k-vectors up to :math:`k_{max}` with
      :math:`e^{-\sigma^2 k_{max}^2 / 2} = a`, i.e. :math:`\lambda = \pi\sigma /
      \sqrt{2 \ln(1/a)}`;
    * ``method="pme"``: particle-mesh Ewald with ``2 |h_a| / \sigma + 1`` mesh
      points along lattice vector :math:`a` (rounded up to a fast FFT length, see
      :py:func:`mesh_shape`), 5th-order B-splines and the exact spline moduli of
      smooth PME (:py:class:`SplineModuliFilter`), linear scaling;
    * ``method="direct"``: explicit pairs of atoms and periodic images with a wider
      smearing chosen for the structure, for a few atoms in a large box (see
      :py:mod:`.lr_cost`);
    * ``method="auto"``: the method with the lowest estimated cost for the structure
      at hand among those that fit the memory limit
      (:py:class:`~.lr_cost.LongRangePlanner`).

    Every method is checked against the memory limit before anything is allocated.

    :param cutoff: short-range cutoff ``r_c``
    :param method: ``"ewald"``, ``"pme"``, ``"direct"`` or ``"auto"`` for periodic
        structures
    :param accuracy: target accuracy of the reciprocal sum; ``None`` for the reference
        settings (``"ewald"``) or 1e-5 (the others)
    :param memory_limit_gb: largest estimated memory of the sum of one structure (GiB)
    """

    def __init__(
        self,
        cutoff: float,
        method: str = "ewald",
        accuracy: Optional[float] = None,
        memory_limit_gb: float = 16.0,
    ):
        super().__init__()
        # method, accuracy and the memory guard (lr_cost.py)
        self.planner = LongRangePlanner(cutoff, method, accuracy, memory_limit_gb)
        self.smearing = self.planner.smearing
        self.cutoff = cutoff
        self.lr_wavelength = self.planner.ewald_wavelength()
        # PME: 2 |h| / sigma + 1 mesh points, at most sigma / 2 apart
        self.mesh_spacing = self.planner.mesh_spacing
        # direct sums: one torch-pme Ewald per smearing level (nothing in the state dict)
        self.direct_levels = torch.nn.ModuleList()
        for smearing in self.planner.direct_smearings:
            level = torchpme.EwaldCalculator(
                torchpme.CoulombPotential(smearing=smearing),
                lr_wavelength=smearing,
                full_neighbor_list=True,
            )
            level.potential._non_persistent_buffers_set.update(["smearing", "prefactor"])
            self.direct_levels.append(level)
        self.ewald = torchpme.EwaldCalculator(
            torchpme.CoulombPotential(smearing=self.smearing),
            lr_wavelength=self.lr_wavelength,
            full_neighbor_list=True,
        )
        interpolation_nodes = 5
        self.pme = MeshPME(
            torchpme.CoulombPotential(smearing=self.smearing),
            mesh_spacing=self.mesh_spacing,
            interpolation_nodes=interpolation_nodes,
            full_neighbor_list=True,
        )
        reference = self.pme.mesh_interpolator
        self.pme.mesh_interpolator = ChannelMeshInterpolator(
            cell=reference.cell,
            ns_mesh=reference.ns_mesh,
            interpolation_nodes=interpolation_nodes,
            method="P3M",
        )
        self.pme.kspace_filter = SplineModuliFilter(
            cell=reference.cell,
            ns_mesh=reference.ns_mesh,
            interpolation_nodes=interpolation_nodes,
            kernel=self.pme.potential,
        )
        self.direct = torchpme.Calculator(
            torchpme.CoulombPotential(smearing=None), full_neighbor_list=False
        )

    def forward(
        self,
        charges: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
        periodic: bool,
        pairs: torch.Tensor,
        distances: torch.Tensor,
    ) -> torch.Tensor:
        """Potentials of one structure.

        :param charges: tensor of shape ``(n_atoms, n_channels)``
        :param positions: tensor of shape ``(n_atoms, 3)``
        :param cell: tensor of shape ``(3, 3)`` (ignored for molecules)
        :param periodic: whether the structure is periodic (in three directions, or in
            two for a slab, whose cell has a zero row along the third, as in metatomic)
        :param pairs: full neighbour list (periodic only), shape ``(n_pairs, 2)``
        :param distances: pair distances (periodic only), shape ``(n_pairs,)``
        :return: tensor of shape ``(n_atoms, n_channels)``
        """
        if periodic and slab_axis(cell) >= 0:
            return self._slab(charges, positions, cell, pairs, distances)
        if not periodic:
            return self.molecules(charges, positions, [0, positions.shape[0]])
        return self._periodic(charges, positions, cell, pairs, distances)

    def molecules(
        self,
        charges: torch.Tensor,
        positions: torch.Tensor,
        atom_ptr: List[int],
        pairs: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        r"""Potentials of non-periodic structures, :math:`V_i = \sum_{j \neq i} q_j / r_{ij}`.

        All the structures go through one direct sum over the pairs ``i < j`` of every
        structure (no pair between two structures), so that a batch of molecules costs
        the operations of one.

        :param charges: tensor of shape ``(n_atoms, n_channels)``
        :param positions: tensor of shape ``(n_atoms, 3)``
        :param atom_ptr: first atom of every structure, plus the total; the structures
            cover all the atoms
        :param pairs: the pairs of :py:meth:`molecule_pairs`, computed here if not given
        :return: tensor of shape ``(n_atoms, n_channels)``
        """
        if pairs is None:
            pairs = self.molecule_pairs(
                atom_ptr, charges.shape[1], charges.element_size(), positions.device
            )
        vectors = positions[pairs[1]] - positions[pairs[0]]
        return self.direct(
            charges=charges,
            cell=torch.zeros((3, 3), dtype=positions.dtype, device=positions.device),
            positions=positions,
            neighbor_indices=pairs.T,
            neighbor_distances=torch.linalg.norm(vectors, dim=1),
        )

    def molecule_pairs(
        self, atom_ptr: List[int], n_channels: int, element_size: int, device: torch.device
    ) -> torch.Tensor:
        """The pairs ``i < j`` of every structure of a batch of molecules.

        Refuses (:py:meth:`LongRangePlanner.check_molecule`) molecules whose direct sum
        would not fit in memory.

        :param atom_ptr: first atom of every structure, plus the total
        :param n_channels: number of charge channels
        :param element_size: bytes per number of the charges
        :param device: device of the result
        :return: integer tensor of shape ``(2, n_pairs)``, global atom indices
        """
        pairs: List[torch.Tensor] = []
        for k in range(len(atom_ptr) - 1):
            n_atoms = atom_ptr[k + 1] - atom_ptr[k]
            self.planner.check_molecule(n_atoms, n_channels, element_size)
            pairs.append(torch.triu_indices(n_atoms, n_atoms, 1, device=device) + atom_ptr[k])
        if len(pairs) == 0:
            return torch.zeros((2, 0), dtype=torch.long, device=device)
        return torch.cat(pairs, dim=1)

    def _periodic(
        self,
        charges: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
        pairs: torch.Tensor,
        distances: torch.Tensor,
    ) -> torch.Tensor:
        """Potentials of a 3D periodic cell (or a slab's internal cell), any method.

        The planner picks the method (arguments of :py:meth:`forward`).
        """
        periodic = [True, True, True]
        method, level = self.planner.plan(
            cell, positions.shape[0], charges.shape[1], periodic, charges.element_size()
        )
        if method == "direct":
            return self.direct_potentials(charges, positions, cell, level, periodic)
        sums = self.reciprocal_sums(method, charges, positions, cell)
        real = self.real_space(charges, pairs[:, 0], pairs[:, 1], distances, charges.shape[0])
        return real + self.reciprocal_potentials(
            method, sums, charges.sum(dim=0), charges, positions, cell
        )

    def real_space(
        self,
        charges: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        distances: torch.Tensor,
        n_targets: int,
    ) -> torch.Tensor:
        r"""Real-space part of the Ewald sum at the pair centres.

        :math:`V_i = \frac12 \sum_j q_j \mathrm{erfc}(r_{ij} / \sqrt2 \sigma) / r_{ij}`
        over the full list of pairs within the cutoff; a domain owns the pairs whose
        centre it owns.

        :param charges: charges of every atom indexed by the pairs, ``(n, n_channels)``
        :param centers: pair centres, shape ``(n_pairs,)``, below ``n_targets``
        :param neighbors: pair neighbours, shape ``(n_pairs,)``
        :param distances: pair distances, shape ``(n_pairs,)``
        :param n_targets: number of atoms that receive potentials (the first ones)
        :return: tensor of shape ``(n_targets, n_channels)``
        """
        terms = self.ewald.potential.sr_from_dist(distances).unsqueeze(-1)
        potentials = torch.zeros(
            (n_targets, charges.shape[1]), dtype=charges.dtype, device=charges.device
        )
        return potentials.index_add(0, centers, charges[neighbors] * terms) / 2

    def reciprocal_sums(
        self, method: str, charges: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor
    ) -> torch.Tensor:
        r"""Reciprocal-space sums of a set of charges, additive over sets of atoms.

        ``"pme"``: the charges spread on the mesh with B-splines (shape
        ``(n_channels, nx, ny, nz)``); ``"ewald"``: the structure factors
        :math:`[\sum_j q_j \cos \mathbf k \cdot \mathbf r_j, \sum_j q_j \sin
        \mathbf k \cdot \mathbf r_j]` of the k-vectors of :py:func:`ewald_kvectors`
        (shape ``(2, n_k, n_channels)``). Both are flattened. The sums of the atoms of
        every MPI rank add up to those of the whole structure.

        :param method: ``"pme"`` or ``"ewald"``
        :param charges: tensor of shape ``(n, n_channels)``
        :param positions: tensor of shape ``(n, 3)``
        :param cell: tensor of shape ``(3, 3)``
        :return: flat tensor
        """
        if method == "pme":
            interpolator = self.pme.mesh_interpolator
            interpolator.update(cell, mesh_shape(cell, self.mesh_spacing))
            interpolator.compute_weights(positions)
            return interpolator.points_to_mesh(charges).reshape(-1)
        if method != "ewald":
            raise ValueError("reciprocal sums exist for 'pme' and 'ewald', got " + method)
        phases = ewald_kvectors(cell, self.planner.ewald_wavelength()) @ positions.T
        return torch.stack([torch.cos(phases) @ charges, torch.sin(phases) @ charges]).reshape(
            -1
        )

    def reciprocal_potentials(
        self,
        method: str,
        sums: torch.Tensor,
        totals: torch.Tensor,
        charges: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
    ) -> torch.Tensor:
        """Reciprocal-space potentials at some atoms from the sums of all atoms.

        Applies the Coulomb filter to :py:meth:`reciprocal_sums` of the whole
        structure (the FFTs of PME, the Gaussian ``G(k)`` of Ewald), evaluates the
        result at the given atoms and subtracts their self terms and the field of the
        neutralising background.

        :param method: ``"pme"`` or ``"ewald"``
        :param sums: flat :py:meth:`reciprocal_sums` of all atoms
        :param totals: total charge of every channel, shape ``(n_channels,)``
        :param charges: charges of the atoms that receive potentials, ``(n, n_channels)``
        :param positions: their positions, ``(n, 3)``
        :param cell: tensor of shape ``(3, 3)``
        :return: tensor of shape ``(n, n_channels)``
        """
        n_channels = charges.shape[1]
        if method == "pme":
            shape = mesh_shape(cell, self.mesh_spacing)
            ns: List[int] = shape.tolist()
            interpolator = self.pme.mesh_interpolator
            interpolator.update(cell, shape)
            self.pme.kspace_filter.update(cell, shape)
            mesh = sums.reshape(n_channels, ns[0], ns[1], ns[2])
            mesh_potential = self.pme.kspace_filter.forward(mesh)
            interpolator.compute_weights(positions)
            values = interpolator.mesh_to_points(mesh_potential)
        elif method == "ewald":
            kvectors = ewald_kvectors(cell, self.planner.ewald_wavelength())
            kernel = self.ewald.potential.lr_from_k_sq(torch.sum(kvectors**2, dim=-1))
            factors = sums.reshape(2, kvectors.shape[0], n_channels) * kernel.unsqueeze(-1)
            phases = kvectors @ positions.T
            values = torch.cos(phases).T @ factors[0] + torch.sin(phases).T @ factors[1]
        else:
            raise ValueError("reciprocal sums exist for 'pme' and 'ewald', got " + method)
        potential = self.ewald.potential
        inverse_volume = torch.abs(cell.det()).pow(-1)
        values = values * inverse_volume - charges * potential.self_contribution()
        values = values - 2 * potential.background_correction() * totals * inverse_volume
        return values / 2

    def direct_potentials(
        self,
        charges: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
        level: int,
        periodic: List[bool],
    ) -> torch.Tensor:
        """The reference sum from explicit image pairs and a wider smearing ``sigma'``.

        ``V_ref = V(sigma') - 1/2 sum_{r_ij >= r_c} q_j erfc(r_ij / sqrt2 sigma) / r_ij``:
        the converged Ewald sum with smearing ``sigma'`` minus the real-space terms of
        the reference smearing that the model's neighbour list leaves out.

        :param charges: tensor of shape ``(n_atoms, n_channels)``
        :param positions: tensor of shape ``(n_atoms, 3)``
        :param cell: tensor of shape ``(3, 3)``
        :param level: index of the smearing ``sigma'`` in ``planner.direct_smearings``
        :param periodic: periodic lattice vectors
        :return: tensor of shape ``(n_atoms, n_channels)``
        """
        radius = self.planner.direct_cutoff(level)
        pairs, distances = image_pairs(positions, cell, radius, periodic)
        kvectors = ewald_kvectors(cell, self.planner.direct_wavelength(level))
        result = torch.zeros_like(charges)
        for k, calculator in enumerate(self.direct_levels):
            if k == level:
                result = calculator(
                    charges=charges,
                    cell=cell,
                    positions=positions,
                    neighbor_indices=pairs,
                    neighbor_distances=distances,
                    kvectors=kvectors,
                )
        outside = distances >= self.cutoff
        far = pairs[outside]
        terms = self.ewald.potential.sr_from_dist(distances[outside]).unsqueeze(-1)
        missing = torch.zeros_like(charges).index_add(0, far[:, 0], charges[far[:, 1]] * terms)
        return result - missing / 2

    def _slab(
        self,
        charges: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
        pairs: torch.Tensor,
        distances: torch.Tensor,
    ) -> torch.Tensor:
        """Potentials of a slab (periodic along two lattice vectors).

        The sum runs in the 3D cell of :py:func:`slab_cell`, with the slab correction of
        :py:func:`slab_correction`. Arguments as in :py:meth:`forward`.
        """
        internal, heights = slab_cell(cell, positions, self.slab_gap(cell))
        potentials = self._periodic(charges, positions, internal, pairs, distances)
        volume = torch.abs(torch.linalg.det(internal))
        return potentials + slab_correction(charges, heights, volume, internal[2])

    def slab_gap(self, cell: torch.Tensor) -> float:
        r"""Vacuum between periodic images of a slab in the internal 3D cell.

        The images interact through the in-plane Fourier components of the charge
        density, which decay like :math:`e^{-2\pi g / a}` over a gap :math:`g` for an
        in-plane period :math:`a`: :math:`g = 3 a_{max}` makes this below ~1e-8 of
        the slab's own energy. At least twice the cutoff, so that the real-space sum
        (over the model's neighbour list) never reaches an image.

        :param cell: tensor of shape ``(3, 3)`` with one zero row
        :return: the gap, Angstrom
        """
        lateral = float(torch.linalg.norm(cell.detach(), dim=1).max())
        return max(3.0 * lateral, 8.0 * self.smearing)


class LongRange(torch.nn.Module):
    """Charges, potentials and mixing of the potentials back into the node features.

    :param cutoff: short-range cutoff (sets the Ewald parameters)
    :param max_degree: largest degree ``L`` of the spherical features
    :param max_degree_lr: largest degree ``L_lr`` of the equivariant charges
    :param num_features: scalar feature size ``d``
    :param num_spherical_features: spherical channels ``s``
    :param method: ``"ewald"``, ``"pme"`` or ``"auto"`` for periodic structures
    :param accuracy: reciprocal-space accuracy (``None``: reference settings)
    :param norm_smoothing: ``epsilon`` of the smooth norm features of the mixing
        (``0``: exact norm, see :py:mod:`~lorem_mta.modules.spherical`)
    :param neutral_charges: remove the per-structure mean of every charge channel
        (:py:meth:`equilibrate`)
    """

    def __init__(
        self,
        cutoff: float,
        max_degree: int,
        max_degree_lr: int,
        num_features: int,
        num_spherical_features: int,
        method: str = "ewald",
        accuracy: Optional[float] = None,
        norm_smoothing: float = 0.0,
        neutral_charges: bool = False,
    ):
        super().__init__()
        d, s = num_features, num_spherical_features
        self.max_degree = max_degree
        self.max_degree_lr = max_degree_lr
        self.norm_smoothing = float(norm_smoothing)
        self.neutral_charges = bool(neutral_charges)
        self.scalar_charge = MLP(d, [2 * d, 1])
        self.spherical_charges = TensorDense(max_degree, s, 1, max_degree_lr)
        self.coulomb = CoulombPotentials(cutoff, method, accuracy)
        self.potential_dense = EquivariantLinear(max_degree_lr, 1, s)
        self.potential_tensor = TensorProduct(
            max_degree_lr, max_degree, max_degree, s, rank_one=True
        )
        self.update = Update(1 + (max_degree + 1) * s, d)
        self.register_buffer("degrees", degree_index(max_degree), persistent=False)
        self.register_buffer("l_factors", l_factors(max_degree), persistent=False)

    def charges(self, nodes_scalar: torch.Tensor, nodes_spherical: torch.Tensor):
        """The ``1 + (L_lr + 1)^2`` charge channels: ``[q, Q^00, Q^1m, Q^2m, ...]``.

        :param nodes_scalar: tensor of shape ``(n_atoms, d)``
        :param nodes_spherical: tensor of shape ``(n_atoms, (L + 1)^2, s)``
        :return: tensor of shape ``(n_atoms, 1 + (L_lr + 1)^2)``
        """
        spherical = self.spherical_charges(nodes_spherical)[..., 0]
        return torch.cat([self.scalar_charge(nodes_scalar), spherical], dim=-1)

    def equilibrate(
        self,
        charges: torch.Tensor,
        total_charges: Optional[torch.Tensor],
        atom_ptr: List[int],
        lr_atoms: Optional[torch.Tensor] = None,
        structure: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        r"""Make every structure's charges add up to its total charge.

        Charge equilibration with a uniform correction. By default (lorem-jax's model
        with ``total_charge``), only the scalar charges (channel 0) move, by
        :math:`q_i \leftarrow q_i + (Q - \sum_j q_j) / N`. With ``neutral_charges``
        the per-structure mean of *every* channel :math:`\alpha` is removed,
        :math:`Q^\alpha_i \leftarrow Q^\alpha_i - \frac1N \sum_j Q^\alpha_j`, and the
        scalar charges then get :math:`Q / N` each: every equivariant channel is
        neutral, so no neutralising background enters the Ewald sum and a molecule in
        a periodic box converges to its isolated energy like a dipole (:math:`1/L^3`)
        instead of like a net charge (:math:`1/L`). The mean of an :math:`(l, m)`
        channel rotates like the channel, so the projection commutes with rotations;
        it is also invariant under permutations and translations.

        The sums and :math:`N` run over the atoms that take part in the long-range sum
        (``lr_atoms``); every atom of the structure (ghosts included, so that they stay
        copies of their images) gets the same shift.

        :param charges: tensor of shape ``(n_atoms, n_channels)``
        :param total_charges: tensor of shape ``(n_structures,)``, ``None`` for neutral
            structures
        :param atom_ptr: first atom of every structure, plus the total
        :param lr_atoms: optional boolean mask of the atoms in the long-range sum
        :param structure: structure of every atom, ``(n_atoms,)``, computed from
            ``atom_ptr`` if not given
        :return: tensor of shape ``(n_atoms, n_channels)``
        """
        n_structures = len(atom_ptr) - 1
        device, dtype = charges.device, charges.dtype
        if structure is None:
            structure = structure_index(atom_ptr, charges.shape[0], device)
        weights = torch.ones_like(charges[:, 0]) if lr_atoms is None else lr_atoms.to(dtype)
        zeros = torch.zeros(n_structures, dtype=dtype, device=device)
        n_atoms = zeros.index_add(0, structure, weights).clamp(min=1.0)
        target = zeros
        if total_charges is not None:
            target = total_charges.to(device=device, dtype=dtype).reshape(n_structures)
        if self.neutral_charges:
            sums = torch.zeros(
                (n_structures, charges.shape[1]), dtype=dtype, device=device
            ).index_add(0, structure, charges * weights.unsqueeze(-1))
            charges = charges - (sums / n_atoms.unsqueeze(-1))[structure]
            scalar = charges[:, 0] + (target / n_atoms)[structure]
        else:
            scalar = charges[:, 0]
            current = zeros.index_add(0, structure, scalar * weights)
            scalar = scalar + ((target - current) / n_atoms)[structure]
        return torch.cat([scalar.unsqueeze(-1), charges[:, 1:]], dim=-1)

    def potentials(
        self,
        charges: torch.Tensor,
        positions: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        distances: torch.Tensor,
        atom_ptr: List[int],
        pair_ptr: List[int],
        cells: torch.Tensor,
        periodic: List[bool],
        lr_atoms: Optional[torch.Tensor] = None,
        molecule_pairs: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Potentials for every charge channel, structure by structure.

        :param charges: tensor of shape ``(n_atoms, n_channels)``
        :param positions: tensor of shape ``(n_atoms, 3)``
        :param centers: pair centres (global indices), shape ``(n_pairs,)``
        :param neighbors: pair neighbours (global indices), shape ``(n_pairs,)``
        :param distances: pair distances, shape ``(n_pairs,)``
        :param atom_ptr: first atom of every structure, plus the total, length
            ``n_structures + 1``
        :param pair_ptr: first pair of every structure, plus the total
        :param cells: tensor of shape ``(n_structures, 3, 3)``
        :param periodic: periodicity of every structure
        :param lr_atoms: optional boolean mask of shape ``(n_atoms,)``; only these atoms
            carry charges and receive potentials (the others, e.g. LAMMPS ghosts, get 0)
        :param molecule_pairs: for a batch of molecules without ``lr_atoms``, the pairs
            of :py:meth:`CoulombPotentials.molecule_pairs` (computed if not given)
        :return: tensor of shape ``(n_atoms, n_channels)``
        """
        if lr_atoms is None and not any(periodic):
            # only molecules: one direct sum for the whole batch
            return self.coulomb.molecules(charges, positions, atom_ptr, molecule_pairs)
        potentials = torch.zeros_like(charges)
        for k in range(len(atom_ptr) - 1):
            a0, a1, p0, p1 = atom_ptr[k], atom_ptr[k + 1], pair_ptr[k], pair_ptr[k + 1]
            pairs = torch.stack([centers[p0:p1], neighbors[p0:p1]], dim=1) - a0
            pair_distances = distances[p0:p1]
            atoms = torch.arange(a0, a1, device=charges.device)
            if lr_atoms is not None:
                keep = lr_atoms[a0:a1]
                new_index = torch.cumsum(keep.to(torch.long), 0) - 1
                keep_pairs = keep[pairs[:, 0]] & keep[pairs[:, 1]]
                pairs = new_index[pairs[keep_pairs]]
                pair_distances = pair_distances[keep_pairs]
                atoms = atoms[keep]
            if atoms.shape[0] == 0:
                continue
            result = self.coulomb(
                charges[atoms],
                positions[atoms],
                cells[k],
                periodic[k],
                pairs,
                pair_distances,
            )
            potentials = potentials.index_copy(0, atoms, result)
        return potentials

    def mix(
        self,
        nodes_scalar: torch.Tensor,
        nodes_spherical: torch.Tensor,
        potentials: torch.Tensor,
    ) -> torch.Tensor:
        """Mix the potentials back into the scalar node features.

        :param nodes_scalar: tensor of shape ``(n_atoms, d)``
        :param nodes_spherical: tensor of shape ``(n_atoms, (L + 1)^2, s)``
        :param potentials: tensor of shape ``(n_atoms, 1 + (L_lr + 1)^2)``
        :return: updated scalar features, tensor of shape ``(n_atoms, d)``
        """
        return self.mix_with_updates(nodes_scalar, nodes_spherical, potentials)[0]

    def mix_with_updates(
        self,
        nodes_scalar: torch.Tensor,
        nodes_spherical: torch.Tensor,
        potentials: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """:py:meth:`mix`, also returning the spherical updates ``U_i``.

        :param nodes_scalar: tensor of shape ``(n_atoms, d)``
        :param nodes_spherical: tensor of shape ``(n_atoms, (L + 1)^2, s)``
        :param potentials: tensor of shape ``(n_atoms, 1 + (L_lr + 1)^2)``
        :return: updated scalar features ``(n_atoms, d)`` and the product of the
            potentials with the spherical features, ``(n_atoms, (L + 1)^2, s)``
        """
        # potential_tensor(potential_dense(V), S) without forming the s copies of V
        scale = self.potential_dense.weight[:, 0, :]
        updates = self.potential_tensor.rank_one(potentials[:, 1:], scale, nodes_spherical)
        norms = norm_features(
            updates, self.degrees, self.l_factors, self.max_degree, self.norm_smoothing
        )
        nodes_scalar = self.update(nodes_scalar, torch.cat([potentials[:, :1], norms], dim=-1))
        return nodes_scalar, updates
