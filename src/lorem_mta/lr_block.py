r"""The LOREM long-range block on metatensor TensorMaps, for features of any other model.

:py:class:`LongRangeBlock` is a thin adapter around
:py:class:`~lorem_mta.modules.long_range.LongRange` (the same charges, Ewald/direct
potentials and mixing that LOREM uses internally) and LOREM's long-range energy readout.
It takes per-atom features from another short-range model as TensorMaps and returns the
long-range-corrected features, the long-range atomic energies and the learned charges
and potentials, also as TensorMaps:

.. math::

    (x_i, S_i) \;\to\; (q_i, Q_i) \;\to\; (\phi_i, \Phi_i) \;\to\;
    \tilde x_i = \mathrm{Update}(x_i, \ldots) \;\to\; E^{LR}_i = \mathrm{MLP}(\tilde x_i).

**Inputs.** ``scalar_features``: one block, samples ``system, atom`` (more sample
dimensions are allowed, e.g. ``center_type``), no components, ``d`` properties (any
names). ``spherical_features``: metatensor's convention for spherical (equivariant)
features, blocks keyed by ``o3_lambda`` and ``o3_sigma`` (and optionally more key
dimensions, e.g. ``center_type``), samples ``system, atom``, components ``[o3_mu]`` with
``m = -l .. l`` in the real-spherical-harmonics basis of sphericart (``(y, z, x)`` for
``l = 1``, the order of featomic's spherical expansion), ``s`` properties in every block.
Every degree ``0 .. L`` must be present with ``o3_sigma = 1``; blocks with
``o3_sigma = -1`` (pseudotensors) and degrees above ``L`` are ignored, since LOREM's
tensor products couple proper tensors only. Several blocks of one degree (one per
``center_type``, say) are gathered; every atom of every system must appear once.

The rows may come in any order: they are placed by their ``system, atom`` sample values,
and all outputs list the atoms system by system in order. The block is differentiable
with respect to the features and (through the neighbour list and the direct sum) to the
positions and cells, so forces and stresses come from autograd.

**Systems.** Periodic systems (``pbc`` all true) need the full neighbour list of
:py:meth:`LongRangeBlock.requested_neighbor_lists` at the block's ``cutoff``: it is the
real-space part of the Ewald sum, whose Gaussian smearing is ``cutoff / 4``. Slabs
(``pbc`` true along two directions) use the 2D Ewald sum of
:py:class:`~lorem_mta.modules.long_range.CoulombPotentials`. Molecules (``pbc`` all
false) use the bare all-pairs Coulomb sum and need no neighbour list. 1D periodicity is
refused.
"""

from typing import Dict, List, Optional, Tuple

import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import NeighborListOptions, System

from .model import charge_channels_map
from .modules.backbone import LoremBackbone
from .modules.layers import MLP
from .modules.long_range import LongRange


class LongRangeBlock(torch.nn.Module):
    """LOREM's long-range block on TensorMap features (see the module docstring).

    :param cutoff: neighbour-list cutoff of the real-space Ewald sum (Angstrom); sets the
        smearing ``cutoff / 4`` and the reciprocal resolution ``cutoff / 8``
    :param max_degree: largest degree ``L`` of the spherical input features
    :param num_features: number ``d`` of scalar input features
    :param num_spherical_features: number ``s`` of spherical channels per degree
    :param max_degree_lr: largest degree ``L_lr`` of the equivariant charges (at most
        ``2 L``, LOREM uses 2)
    :param method: ``"ewald"`` (the reference), ``"pme"``, ``"direct"`` or ``"auto"``
        (cheapest estimate per structure, see :py:mod:`lorem_mta.modules.lr_cost`) for
        periodic systems
    :param accuracy: long-range accuracy, ``None`` for LOREM's reference settings
    :param norm_smoothing: ``epsilon`` of the smooth norms of the mixing (``0``: exact
        norm, see :py:mod:`lorem_mta.modules.spherical`)
    :param neutral_charges: remove the per-system mean of every charge channel, see
        :py:meth:`~lorem_mta.modules.long_range.LongRange.equilibrate`
    """

    def __init__(
        self,
        cutoff: float,
        max_degree: int,
        num_features: int,
        num_spherical_features: int,
        max_degree_lr: int = 2,
        method: str = "ewald",
        accuracy: Optional[float] = None,
        norm_smoothing: float = 0.1,
        neutral_charges: bool = True,
    ):
        super().__init__()
        if max_degree < 0 or not 0 <= max_degree_lr <= 2 * max_degree:
            raise ValueError(
                f"need 0 <= max_degree_lr <= 2 max_degree, got max_degree={max_degree} "
                f"and max_degree_lr={max_degree_lr}"
            )
        d, s = num_features, num_spherical_features
        self.long_range = LongRange(
            cutoff,
            max_degree,
            max_degree_lr,
            d,
            s,
            method,
            accuracy,
            norm_smoothing,
            neutral_charges,
        )
        self.readout = MLP(d, [d, d, 1])
        self._set_sizes(cutoff, max_degree, max_degree_lr, d, s)

    def _set_sizes(
        self, cutoff: float, max_degree: int, max_degree_lr: int, d: int, s: int
    ) -> None:
        self.cutoff = float(cutoff)
        self.max_degree = max_degree
        self.max_degree_lr = max_degree_lr
        self.num_features = d
        self.num_spherical_features = s
        self.neighbor_options = NeighborListOptions(
            cutoff=self.cutoff, full_list=True, strict=True
        )

    @staticmethod
    def from_backbone(backbone: LoremBackbone) -> "LongRangeBlock":
        """A block that shares the long-range modules of a LOREM backbone.

        The returned block and ``backbone`` hold the same parameters (training one trains
        the other); fed with the backbone's own short-range features it reproduces the
        backbone's long-range stage exactly.

        :param backbone: a :py:class:`~lorem_mta.modules.LoremBackbone` built with
            ``lr=True`` and ``total_charge=False``
        :return: the block
        """
        if backbone.long_range is None or backbone.long_range_readout is None:
            raise ValueError("this backbone has no long-range block (lr=False)")
        if backbone.total_charge:
            raise ValueError("backbones with total_charge=True are not supported")
        block = LongRangeBlock.__new__(LongRangeBlock)
        torch.nn.Module.__init__(block)
        long_range = backbone.long_range
        block.long_range = long_range
        block.readout = backbone.long_range_readout
        block._set_sizes(
            backbone.cutoff,
            long_range.max_degree,
            long_range.max_degree_lr,
            backbone.num_features,
            long_range.potential_dense.weight.shape[2],
        )
        return block

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        """The neighbour list of periodic systems: full, strict, at ``cutoff``.

        :return: list with one :py:class:`NeighborListOptions`
        """
        return [self.neighbor_options]

    def forward(
        self,
        systems: List[System],
        scalar_features: TensorMap,
        spherical_features: TensorMap,
    ) -> Dict[str, TensorMap]:
        """Long-range corrected features, energies, charges and potentials.

        :param systems: the systems the features belong to (periodic ones with the
            neighbour list of :py:meth:`requested_neighbor_lists`)
        :param scalar_features: invariant features, one block of ``d`` properties,
            ``n_atoms`` samples ``system, atom``
        :param spherical_features: equivariant features, blocks ``(o3_lambda,
            o3_sigma=1)`` for every degree up to ``L``, each with components ``o3_mu``
            (``2l + 1``) and ``s`` properties
        :return: dictionary of TensorMaps, samples ``system, atom`` for all ``n_atoms``
            atoms in system order:

            * ``"features"``: updated scalar features, values ``(n_atoms, d)``,
              properties ``feature``;
            * ``"energy"``: long-range atomic energies ``E^LR_i``, values
              ``(n_atoms, 1)``, property ``energy`` (sum them over ``atom`` for
              per-system energies);
            * ``"charges"`` and ``"potentials"``: the ``1 + (L_lr + 1)^2`` charge and
              potential channels as spherical TensorMaps, one block per ``(o3_lambda,
              o3_sigma = 1)``, components ``o3_mu``, property ``channel`` (the
              ``l = 0`` block holds the scalar MLP charge, channel 0, and the ``l = 0``
              spherical charge, channel 1), the layout of LOREM's ``lorem::charges``
        """
        device = scalar_features.block(0).values.device
        atom_ptr: List[int] = [0]
        for system in systems:
            atom_ptr.append(atom_ptr[-1] + len(system))
        n_atoms = atom_ptr[-1]
        offsets = torch.tensor(atom_ptr[:-1], dtype=torch.long, device=device)

        nodes_scalar = self._scalar_values(scalar_features, offsets, n_atoms)
        nodes_spherical = self._spherical_values(spherical_features, offsets, n_atoms)
        dtype = nodes_scalar.dtype
        positions = torch.zeros((0, 3), dtype=dtype, device=device)
        cells = torch.zeros((0, 3, 3), dtype=dtype, device=device)
        if len(systems) > 0:
            positions = torch.cat([system.positions for system in systems]).to(dtype)
            cells = torch.stack([system.cell for system in systems]).to(dtype)
        periodic = [_is_periodic(system) for system in systems]
        centers, neighbors, distances, pair_ptr = self._real_space_pairs(
            systems, periodic, atom_ptr, dtype, device
        )

        # -- the LOREM long-range stage --
        charges = self.long_range.charges(nodes_scalar, nodes_spherical)
        if self.long_range.neutral_charges:
            charges = self.long_range.equilibrate(charges, None, atom_ptr)
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
        )
        features = self.long_range.mix(nodes_scalar, nodes_spherical, potentials)
        energies = self.readout(features)

        # -- outputs --
        counts = torch.tensor([len(system) for system in systems], dtype=torch.long)
        system_index = torch.repeat_interleave(
            torch.arange(len(systems), dtype=torch.long), counts, output_size=n_atoms
        ).to(device)
        atom_index = (
            torch.arange(n_atoms, dtype=torch.long, device=device) - offsets[system_index]
        )
        samples = Labels(
            ["system", "atom"], torch.stack([system_index, atom_index], dim=1).to(torch.int32)
        )
        return {
            "features": _scalar_map(features, samples, "feature"),
            "energy": _scalar_map(energies, samples, "energy"),
            "charges": charge_channels_map(charges, samples, self.max_degree_lr),
            "potentials": charge_channels_map(potentials, samples, self.max_degree_lr),
        }

    def _real_space_pairs(
        self,
        systems: List[System],
        periodic: List[bool],
        atom_ptr: List[int],
        dtype: torch.dtype,
        device: torch.device,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, List[int]]:
        """Pairs of the periodic systems' neighbour lists, with global atom indices.

        :return: centres and neighbours ``(n_pairs,)``, distances ``(n_pairs,)`` and the
            first pair of every system plus the total (molecules have none)
        """
        centers: List[torch.Tensor] = [torch.zeros(0, dtype=torch.long, device=device)]
        neighbors: List[torch.Tensor] = [torch.zeros(0, dtype=torch.long, device=device)]
        distances: List[torch.Tensor] = [torch.zeros(0, dtype=dtype, device=device)]
        pair_ptr: List[int] = [0]
        for k, system in enumerate(systems):
            if periodic[k]:
                pairs = system.get_neighbor_list(self.neighbor_options)
                indices = pairs.samples.values.to(torch.long)
                centers.append(indices[:, 0] + atom_ptr[k])
                neighbors.append(indices[:, 1] + atom_ptr[k])
                vectors = pairs.values.reshape(-1, 3).to(dtype)
                distances.append(torch.linalg.norm(vectors, dim=1))
                pair_ptr.append(pair_ptr[-1] + indices.shape[0])
            else:
                pair_ptr.append(pair_ptr[-1])
        return torch.cat(centers), torch.cat(neighbors), torch.cat(distances), pair_ptr

    def _scalar_values(self, tensor: TensorMap, offsets: torch.Tensor, n_atoms: int):
        """Dense ``(n_atoms, d)`` scalar features in system order."""
        if len(tensor) != 1:
            raise ValueError(
                "scalar_features must have exactly one block, got " + str(len(tensor))
            )
        block = tensor.block(0)
        values = block.values
        if len(block.components) != 0 or values.shape[-1] != self.num_features:
            raise ValueError(
                "scalar_features must have no components and "
                + str(self.num_features)
                + " properties, got values of shape "
                + str(values.shape)
            )
        index = _atom_index(block.samples, offsets)
        _check_covered(index, n_atoms, "scalar_features")
        dense = torch.zeros(
            (n_atoms, values.shape[1]), dtype=values.dtype, device=values.device
        )
        return dense.index_copy(0, index, values)

    def _spherical_values(self, tensor: TensorMap, offsets: torch.Tensor, n_atoms: int):
        """Dense ``(n_atoms, (L + 1)^2, s)`` spherical features in system order."""
        names = tensor.keys.names
        if "o3_lambda" not in names or "o3_sigma" not in names:
            raise ValueError(
                "spherical_features must be keyed by o3_lambda and o3_sigma, got keys "
                + str(names)
            )
        lambdas = tensor.keys.column("o3_lambda")
        sigmas = tensor.keys.column("o3_sigma")
        per_degree: List[torch.Tensor] = []
        for l in range(self.max_degree + 1):
            selected: List[int] = (
                torch.nonzero((lambdas == l) & (sigmas == 1)).reshape(-1).tolist()
            )
            if len(selected) == 0:
                raise ValueError(
                    "spherical_features has no block with o3_lambda=" + str(l) + ", o3_sigma=1"
                )
            dense = torch.zeros(0)
            indices: List[torch.Tensor] = []
            for position in selected:
                block = tensor.block(position)
                values = block.values
                if (
                    len(block.components) != 1
                    or values.shape[1] != 2 * l + 1
                    or values.shape[2] != self.num_spherical_features
                ):
                    raise ValueError(
                        "the o3_lambda="
                        + str(l)
                        + " blocks of spherical_features must have one o3_mu component of "
                        + str(2 * l + 1)
                        + " entries and "
                        + str(self.num_spherical_features)
                        + " properties, got values of shape "
                        + str(values.shape)
                    )
                index = _atom_index(block.samples, offsets)
                if len(indices) == 0:
                    dense = torch.zeros(
                        (n_atoms, 2 * l + 1, values.shape[2]),
                        dtype=values.dtype,
                        device=values.device,
                    )
                dense = dense.index_copy(0, index, values)
                indices.append(index)
            _check_covered(torch.cat(indices), n_atoms, "o3_lambda=" + str(l) + " features")
            per_degree.append(dense)
        return torch.cat(per_degree, dim=1)


def _is_periodic(system: System) -> bool:
    n_periodic = int(system.pbc.sum())
    if n_periodic >= 2:
        # 3D, or a slab (metatomic zeroes the cell vector of the open direction)
        return True
    if n_periodic == 0:
        return False
    pbc: List[bool] = system.pbc.tolist()
    raise ValueError(
        "the long-range block needs systems periodic in three directions, two (slabs) "
        "or none, got pbc=" + str(pbc)
    )


def _atom_index(samples: Labels, offsets: torch.Tensor) -> torch.Tensor:
    """Global atom index ``offset[system] + atom`` of every sample."""
    if "system" not in samples.names or "atom" not in samples.names:
        raise ValueError(
            "feature samples must contain 'system' and 'atom', got " + str(samples.names)
        )
    systems = samples.column("system").to(torch.long).to(offsets.device)
    atoms = samples.column("atom").to(torch.long).to(offsets.device)
    if systems.shape[0] > 0 and (
        int(systems.min()) < 0 or int(systems.max()) >= offsets.shape[0]
    ):
        raise ValueError("feature samples refer to systems that were not given")
    return offsets[systems] + atoms


def _check_covered(index: torch.Tensor, n_atoms: int, what: str) -> None:
    """Every atom exactly once."""
    counts = torch.zeros(n_atoms, dtype=torch.long, device=index.device)
    if index.shape[0] > 0 and (int(index.min()) < 0 or int(index.max()) >= n_atoms):
        raise ValueError(what + " refer to atoms that are not in the systems")
    counts = counts.index_add(0, index, torch.ones_like(index))
    if index.shape[0] != n_atoms or not bool((counts == 1).all()):
        raise ValueError(
            what
            + " must have exactly one row per atom of the systems ("
            + str(n_atoms)
            + " atoms, got "
            + str(index.shape[0])
            + " rows)"
        )


def _scalar_map(values: torch.Tensor, samples: Labels, name: str) -> TensorMap:
    device = values.device
    properties = Labels(
        [name], torch.arange(values.shape[1], device=device, dtype=torch.int32).reshape(-1, 1)
    )
    block = TensorBlock(values=values, samples=samples, components=[], properties=properties)
    return TensorMap(Labels("_", torch.tensor([[0]], device=device)), [block])
