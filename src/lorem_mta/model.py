"""Metatomic adapter: :py:class:`LoremModel` turns ``System`` objects into backbone inputs.

This is the only module that touches metatomic/metatensor objects. It

* requests one full, strict neighbour list at the model cutoff (shared by the
  short-range stages and the real-space part of the Ewald sum);
* flattens a list of systems into the flat tensors of
  :py:class:`~lorem_mta.modules.LoremBackbone` (atoms and pairs of each system
  contiguous; edge vectors are the neighbour-list values, so forces and stresses come
  from autograd through positions, cell and neighbour list);
* validates the input (atomic types, periodicity, overlapping atoms, cells) with clear
  errors instead of NaNs;
* returns ``energy`` (per system or per atom), ``feature`` (per-atom invariants),
  ``mtt::aux::energy_last_layer_features`` (what the last linear layers of the energy
  readouts see, concatenated over the readouts: initial step, message-passing steps,
  long-range block; the LLPR uncertainties of metatrain are built on them) and
  the learned long-range quantities ``lorem::charges`` and ``lorem::potentials`` as
  equivariant TensorMaps (one block per ``(o3_lambda, o3_sigma)``, components ``o3_mu``
  in ``-l..l`` order, property ``channel`` = column of the charge stack: 0 is the scalar
  MLP charge, 1 the ``l = 0`` spherical charge, 2-4 the ``l = 1`` and 5-9 the ``l = 2``
  components);
* with a backbone built with ``bec=True``, returns the Born effective charges
  ``lorem::born_effective_charges`` (per atom, Cartesian rank 2: components ``xyz_1``
  (force direction) and ``xyz_2`` (field direction), unit ``e``, acoustic sum rule
  imposed) and adds the forces ``Z*_i E`` of the uniform electric field
  set with :py:meth:`LoremModel.set_electric_field` (zero by default);
* with a backbone built with ``total_charge=True``, requests the per-system ``charge``
  input (unit ``e``, metatomic's standard name: metatomic-ase fills it from
  ``atoms.info["charge"]``, metatrain from the ``extra_data: charge`` section of the
  options) and passes it to the backbone; systems without it are taken as neutral
  (``Q = 0``), the documented default for engines that provide no such input (LAMMPS),
  with a warning (once per model) naming the ways to provide it;
* returns ``lorem::dipole``, the dipole moment of every molecule from the scalar latent
  charges (and optional atomic dipoles), see :py:mod:`lorem_mta.modules.dipole`;
  periodic systems are refused for this output.
"""

import copy
import itertools
import math
import os
import types
import warnings
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import (
    AtomisticModel,
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
    NeighborListOptions,
    System,
)

from .files import write_saved_atomically
from .modules import BackboneOutput, LoremBackbone
from .modules.dipole import dipole_contributions
from .modules.layers import structure_index
from .modules.long_range import slab_axis

#: smallest distance between two atoms (Angstrom) accepted by the model
MIN_DISTANCE = 0.1

CHARGES = "lorem::charges"
POTENTIALS = "lorem::potentials"
DIPOLE = "lorem::dipole"
#: unit of the dipole output (the charges are in elementary charges)
DIPOLE_UNIT = "e*angstrom"
#: name of the per-system total-charge input (metatomic's standard quantity)
TOTAL_CHARGE = "charge"
#: Born effective charges (models with ``bec=True``)
BORN_CHARGES = "lorem::born_effective_charges"
#: inputs of the last layers of the energy readouts (metatrain's name, used by LLPR)
LAST_LAYER_FEATURES = "mtt::aux::energy_last_layer_features"


class FlatSystems(NamedTuple):
    """A list of systems as the flat tensors of the backbone.

    ``types`` ``(n_atoms,)``, ``positions`` ``(n_atoms, 3)``; ``centers``,
    ``neighbors`` ``(n_pairs,)`` and ``vectors`` ``(n_pairs, 3)`` of the full neighbour
    list, in the flat atom numbering; ``cells`` ``(n_systems, 3, 3)``; ``atom_ptr`` and
    ``pair_ptr``: first atom and pair of every system, plus the totals; ``periodic``:
    whether every system is periodic; ``n_periodic``: its number of periodic
    directions (3, 2 for a slab or 0); ``system_index`` and ``atom_index``
    ``(n_atoms,)``, int32: system of every atom and its index in that system.
    """

    types: torch.Tensor
    positions: torch.Tensor
    centers: torch.Tensor
    neighbors: torch.Tensor
    vectors: torch.Tensor
    cells: torch.Tensor
    atom_ptr: List[int]
    pair_ptr: List[int]
    periodic: List[bool]
    n_periodic: List[int]
    system_index: torch.Tensor
    atom_index: torch.Tensor


def check_finite_parameters(tensors: Iterable[Tuple[str, Any]], source: str) -> None:
    """Refuse parameters (or buffers) that are NaN or infinite, naming them.

    A model with one non-finite parameter gives NaN energies and forces for every
    structure; this catches it where the model is read or written (lorem-jax conversion,
    checkpoint loading, export) instead of at the first evaluation.

    :param tensors: ``(name, tensor)`` pairs, e.g. ``module.named_parameters()`` or the
        items of a state dict; tensors that are not floating point are skipped
    :param source: what the tensors come from, for the message (``"the checkpoint
        'model.ckpt'"``)
    :raises ValueError: naming the first non-finite tensors and how many values of each
        are not finite
    """
    bad = []
    for name, tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            n_bad = int((~torch.isfinite(tensor.detach())).sum())
            if n_bad:
                bad.append(f"'{name}' ({n_bad} of {tensor.numel()} values)")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(
            f"{source} has parameters that are NaN or infinite: {', '.join(bad[:3])}{more}. "
            "Such a model gives NaN energies and forces: the file is damaged or the "
            "training diverged"
        )


class LoremModel(torch.nn.Module):
    """LOREM as a metatomic model (wrap it with :py:func:`export` / ``AtomisticModel``).

    :param backbone: the network
    :param atomic_types: atomic numbers the model accepts
    :param atomic_baseline: optional per-type energy added to every atom (e.g. a
        composition fit), ``{atomic number: energy}``
    """

    def __init__(
        self,
        backbone: LoremBackbone,
        atomic_types: List[int],
        atomic_baseline: Optional[Dict[int, float]] = None,
    ):
        super().__init__()
        if len(atomic_types) == 0:
            raise ValueError("atomic_types must not be empty")
        if min(atomic_types) < 1 or max(atomic_types) > 99:
            raise ValueError(f"atomic types must be between 1 and 99, got {atomic_types}")
        self.backbone = backbone
        self.atomic_types = sorted(set(int(t) for t in atomic_types))
        self.cutoff = float(backbone.cutoff)
        self.has_long_range = backbone.long_range is not None
        self.total_charge = bool(backbone.total_charge)
        # a missing total charge is warned about once per model (and exported model)
        self.warned_missing_charge = False
        self.neutral_charges = bool(backbone.neutral_charges)
        baseline = torch.zeros(100, dtype=torch.float64)
        for atomic_type, energy in (atomic_baseline or {}).items():
            baseline[int(atomic_type)] = float(energy)
        self.register_buffer("atomic_baseline", baseline)
        known = torch.zeros(100, dtype=torch.bool)
        known[self.atomic_types] = True
        self.register_buffer("known_types", known, persistent=False)
        self.min_distance = MIN_DISTANCE
        self.neighbor_options = NeighborListOptions(
            cutoff=self.cutoff, full_list=True, strict=True
        )
        self.has_bec = bool(backbone.bec)
        # uniform electric field (V/A, i.e. e * field in eV/A per e) acting through the
        # Born effective charges; not part of the state dict
        self.register_buffer("electric_field", torch.zeros(3), persistent=False)
        # hyperparameters as JSON, for `lorem-mta info` (set by the exporters)
        self.hypers_json = ""
        self.max_degree_lr = 0
        if self.has_long_range:
            self.max_degree_lr = int(math.isqrt(backbone.num_charge_channels - 1)) - 1

    @torch.jit.unused
    def set_electric_field(self, field: List[float]) -> None:
        """Set the uniform electric field (V/A) that adds ``Z*_i E`` to the forces.

        The force enters through an energy term, see
        :py:func:`~lorem_mta.modules.bec.electric_field_energy`. Needs ``bec=True``.

        :param field: the three Cartesian components
        """
        if not self.has_bec:
            raise ValueError("an electric field needs a model with Born effective charges")
        value = torch.tensor(field, dtype=self.electric_field.dtype).reshape(3)
        self.electric_field = value.to(self.electric_field.device)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        """The neighbour list LOREM needs: full, strict, at the cutoff.

        :return: list with one :py:class:`NeighborListOptions`
        """
        return [self.neighbor_options]

    def requested_inputs(self) -> Dict[str, ModelOutput]:
        """Extra inputs: the per-system total charge when the model conditions on it.

        Engines that do not provide it (or provide it for some systems only) are not
        refused: such systems are treated as neutral, unless the engine runs the model
        with ``check_consistency`` on, where metatomic requires every requested input.

        :return: ``{"charge": ModelOutput(unit="e", sample_kind="system")}`` with
            ``total_charge=True``, else an empty dictionary
        """
        if not self.total_charge:
            return {}
        return {
            TOTAL_CHARGE: ModelOutput(
                unit="e",
                sample_kind="system",
                description="total charge of the system (0 when not provided)",
            )
        }

    def outputs(self) -> Dict[str, ModelOutput]:
        """Outputs this model can compute.

        :return: dictionary of output name to :py:class:`ModelOutput`
        """
        outputs = {
            "energy": ModelOutput(unit="eV", sample_kind="atom"),
            "feature": ModelOutput(
                sample_kind="atom", description="LOREM final scalar node features"
            ),
            LAST_LAYER_FEATURES: ModelOutput(
                sample_kind="atom",
                description="last-layer features of the energy readouts (for LLPR)",
            ),
        }
        if self.has_long_range:
            outputs[CHARGES] = ModelOutput(
                sample_kind="atom", description="learned latent charges (all channels)"
            )
            outputs[POTENTIALS] = ModelOutput(
                sample_kind="atom",
                description="Coulomb potentials of the latent charges",
            )
            outputs[DIPOLE] = ModelOutput(
                unit=DIPOLE_UNIT,
                sample_kind="atom",
                description="dipole moment of molecules (non-periodic systems only); "
                "per atom: the contributions of the atoms",
            )
        if self.has_bec:
            outputs[BORN_CHARGES] = ModelOutput(
                unit="e",
                sample_kind="atom",
                description="Born effective charges Z[a, b] = dF_a / dE_b",
            )
        return outputs

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        """Evaluate the requested outputs.

        Three steps: flatten and validate the systems (:py:meth:`_flatten`), run the
        backbone (:py:meth:`_run_backbone`), and wrap its tensors into TensorMaps
        (:py:meth:`_scalar_outputs`, :py:meth:`_long_range_outputs`).

        :param systems: systems with the neighbour list of
            :py:meth:`requested_neighbor_lists` attached
        :param outputs: requested outputs
        :param selected_atoms: optional ``system, atom`` labels of the atoms whose
            contributions are returned
        :return: one TensorMap per requested output
        """
        if len(outputs) == 0:
            return {}
        self._check_dtypes(systems)
        flat = self._flatten(systems)
        if "lorem::dipole" in outputs:
            self._check_dipole_request(flat.periodic)
        n_atoms = flat.types.shape[0]
        device = flat.positions.device
        mask = torch.ones(n_atoms, dtype=torch.bool, device=device)
        if selected_atoms is not None:
            mask = self._selection_mask(selected_atoms, flat.atom_ptr, n_atoms, device)
        output = self._run_backbone(
            systems,
            flat,
            mask,
            selected_atoms is not None,
            "mtt::aux::energy_last_layer_features" in outputs,  # LAST_LAYER_FEATURES
        )
        samples = Labels(
            ["system", "atom"],
            torch.stack([flat.system_index, flat.atom_index], dim=1)[mask],
        )
        results: Dict[str, TensorMap] = {}
        self._scalar_outputs(outputs, output, flat, mask, samples, results)
        self._long_range_outputs(outputs, output, flat, mask, samples, results)
        return results

    def _flatten(self, systems: List[System]) -> FlatSystems:
        """Validate the systems and concatenate them into the backbone's flat tensors.

        Atoms and pairs of every system are contiguous; neighbour indices are shifted to
        the flat atom numbering. The edge vectors are the neighbour-list values, so that
        forces and stresses come from autograd through them.
        """
        device = systems[0].positions.device
        types_list: List[torch.Tensor] = []
        positions_list: List[torch.Tensor] = []
        pairs_list: List[torch.Tensor] = []
        vectors_list: List[torch.Tensor] = []
        cells_list: List[torch.Tensor] = []
        atom_ptr: List[int] = [0]
        pair_ptr: List[int] = [0]
        for system in systems:
            neighbors = system.get_neighbor_list(self.neighbor_options)
            pairs = neighbors.samples.values
            vectors = neighbors.values.reshape(-1, 3)
            types_list.append(system.types)
            positions_list.append(system.positions)
            pairs_list.append(pairs[:, :2])
            vectors_list.append(vectors)
            cells_list.append(system.cell)
            atom_ptr.append(atom_ptr[-1] + len(system))
            pair_ptr.append(pair_ptr[-1] + vectors.shape[0])
        types = torch.cat(types_list).to(torch.long)
        positions = torch.cat(positions_list)
        cells = torch.stack(cells_list)
        vectors = torch.cat(vectors_list)
        n_periodic = self._check_systems(systems, types, positions, cells)
        self._check_distances(vectors)
        # global atom indices of the pairs: add the first atom of every pair's system
        first_atom = torch.tensor(atom_ptr[:-1], dtype=torch.long, device=device)
        pair_system = structure_index(pair_ptr, vectors.shape[0], device)
        pairs = torch.cat(pairs_list).to(torch.long) + first_atom[pair_system].unsqueeze(1)
        structure = structure_index(atom_ptr, types.shape[0], device)
        atom_index = torch.arange(types.shape[0], device=device) - first_atom[structure]
        return FlatSystems(
            types=types,
            positions=positions,
            centers=pairs[:, 0],
            neighbors=pairs[:, 1],
            vectors=vectors,
            cells=cells,
            atom_ptr=atom_ptr,
            pair_ptr=pair_ptr,
            periodic=[n > 0 for n in n_periodic],
            n_periodic=n_periodic,
            system_index=structure.to(torch.int32),
            atom_index=atom_index.to(torch.int32),
        )

    def _run_backbone(
        self,
        systems: List[System],
        flat: FlatSystems,
        mask: torch.Tensor,
        has_selection: bool,
        last_layer_features: bool,
    ) -> BackboneOutput:
        """Gather the backbone's optional inputs and run it.

        The optional inputs are the total charges (``total_charge=True``), the uniform
        electric field (``bec=True``, when not zero) and, with a selection, the atoms
        that take part in the long-range sum (not the periodic ghosts of selected
        atoms, see :py:meth:`_periodic_ghosts`).
        """
        dtype = flat.positions.dtype
        device = flat.positions.device
        total_charges: Optional[torch.Tensor] = None
        if self.total_charge:
            total_charges = self._total_charges(systems, dtype, device)
        if self.has_long_range:
            self._check_slabs(flat.n_periodic, total_charges)
        electric_field: Optional[torch.Tensor] = None
        if self.has_bec and bool((self.electric_field != 0).any()):
            electric_field = self.electric_field.to(dtype).reshape(1, 3).expand(len(systems), 3)
        lr_atoms: Optional[torch.Tensor] = None
        if has_selection and (self.has_long_range or self.has_bec):
            lr_atoms = ~self._periodic_ghosts(
                flat.positions, flat.cells, mask, flat.atom_ptr, flat.periodic
            )
        return self.backbone(
            flat.types,
            flat.positions,
            flat.centers,
            flat.neighbors,
            flat.vectors,
            flat.cells,
            flat.atom_ptr,
            flat.pair_ptr,
            flat.periodic,
            lr_atoms,
            total_charges,
            electric_field,
            last_layer_features,
        )

    def _scalar_outputs(
        self,
        outputs: Dict[str, ModelOutput],
        output: BackboneOutput,
        flat: FlatSystems,
        mask: torch.Tensor,
        samples: Labels,
        results: Dict[str, TensorMap],
    ) -> None:
        """Add the per-atom (or summed) scalars to ``results``.

        ``energy`` (atomic baseline added), ``feature``/``features`` and the
        last-layer features of the energy readouts.
        """
        device = flat.positions.device
        n_systems = len(flat.atom_ptr) - 1
        if "energy" in outputs:
            energies = (
                output.energies + self.atomic_baseline.to(flat.positions.dtype)[flat.types]
            )
            if not self.training:
                self._check_finite_energies(energies)
            results["energy"] = self._scalar_output(
                energies.unsqueeze(-1),
                outputs["energy"],
                mask,
                samples,
                flat.system_index,
                n_systems,
                Labels(["energy"], torch.tensor([[0]], device=device)),
            )
        for name in ["feature", "features", "mtt::aux::energy_last_layer_features"]:
            if name in outputs:
                features = output.features
                if name == "mtt::aux::energy_last_layer_features":
                    features = output.last_layer_features
                properties = Labels(
                    ["feature"],
                    torch.arange(features.shape[1], device=device).reshape(-1, 1),
                )
                results[name] = self._scalar_output(
                    features,
                    outputs[name],
                    mask,
                    samples,
                    flat.system_index,
                    n_systems,
                    properties,
                )

    def _long_range_outputs(
        self,
        outputs: Dict[str, ModelOutput],
        output: BackboneOutput,
        flat: FlatSystems,
        mask: torch.Tensor,
        samples: Labels,
        results: Dict[str, TensorMap],
    ) -> None:
        """Add the charges, potentials, dipoles and Born effective charges to ``results``."""
        if "lorem::charges" in outputs:
            results["lorem::charges"] = self._spherical_output(output.charges[mask], samples)
        if "lorem::born_effective_charges" in outputs:
            if outputs["lorem::born_effective_charges"].sample_kind != "atom":
                raise ValueError("Born effective charges are only available per atom")
            results["lorem::born_effective_charges"] = self._cartesian_output(
                output.born_charges[mask], samples
            )
        if "lorem::potentials" in outputs:
            results["lorem::potentials"] = self._spherical_output(
                output.potentials[mask], samples
            )
        if "lorem::dipole" in outputs:
            structure = flat.system_index[mask].to(torch.long)
            contributions = dipole_contributions(
                output.charges[:, 0][mask],
                flat.positions[mask],
                structure,
                len(flat.atom_ptr) - 1,
                output.atomic_dipoles[mask],
            )
            results["lorem::dipole"] = self._vector_output(
                contributions,
                outputs["lorem::dipole"],
                samples,
                structure,
                len(flat.atom_ptr) - 1,
            )

    def _check_dipole_request(self, periodic: List[bool]) -> None:
        """Refuse dipoles of periodic systems and of models without charges."""
        if not self.has_long_range:
            raise ValueError(
                "the 'lorem::dipole' output needs the long-range block (lr=True): the "
                "dipole is computed from the learned charges"
            )
        for k, is_periodic in enumerate(periodic):
            if is_periodic:
                raise ValueError(
                    "the dipole moment of a periodic system (system "
                    + str(k)
                    + ") is not defined: translating an atom by a lattice vector "
                    "changes it, and the polarisation is multivalued. Dipoles are "
                    "only available for molecules (pbc=False)"
                )

    def _vector_output(
        self,
        values: torch.Tensor,
        request: ModelOutput,
        samples: Labels,
        structure: torch.Tensor,
        n_systems: int,
    ) -> TensorMap:
        """Atomic vectors ``(n_atoms, 3)``, per atom or summed per system."""
        device = values.device
        if request.sample_kind != "atom":
            values = torch.zeros((n_systems, 3), dtype=values.dtype, device=device).index_add(
                0, structure, values
            )
            samples = Labels(
                ["system"],
                torch.arange(n_systems, device=device, dtype=torch.int32).reshape(-1, 1),
            )
        block = TensorBlock(
            values=values.unsqueeze(-1),
            samples=samples,
            components=[Labels(["xyz"], torch.arange(3, device=device).reshape(-1, 1))],
            properties=Labels(["dipole"], torch.tensor([[0]], device=device)),
        )
        return TensorMap(Labels("_", torch.tensor([[0]], device=device)), [block])

    def _check_systems(
        self,
        systems: List[System],
        types: torch.Tensor,
        positions: torch.Tensor,
        cells: torch.Tensor,
    ) -> List[int]:
        """Validate a batch at once; return the periodic directions of every system.

        :param systems: the systems
        :param types: atomic types of all the atoms, shape ``(n_atoms,)``
        :param positions: positions of all the atoms, shape ``(n_atoms, 3)``
        :param cells: cells, shape ``(n_systems, 3, 3)``
        :return: for every system, the number of periodic directions (3, 2: a slab,
            or 0: a molecule)
        """
        if types.shape[0] > 0:
            out_of_range = (types < 0) | (types > 99)
            known = self.known_types[types.clamp(0, 99)]
            if bool(out_of_range.any()) or not bool(known.all()):
                given: List[int] = torch.unique(types).tolist()
                raise ValueError(
                    "this model only knows atomic types "
                    + str(self.atomic_types)
                    + ", got "
                    + str(given)
                )
        if not bool(torch.isfinite(positions).all()):
            raise ValueError("positions contain NaN or infinite values")
        if not bool(torch.isfinite(cells).all()):
            raise ValueError("the cell contains NaN or infinite values")
        counts: List[int] = torch.stack([s.pbc for s in systems]).sum(dim=1).tolist()
        if 3 in counts:
            volumes = torch.abs(torch.linalg.det(cells.detach()))
            full = torch.tensor([n == 3 for n in counts], device=cells.device)
            if bool((volumes[full] < 1e-6).any()):
                raise ValueError("periodic system with a singular (zero-volume) cell")
        for k, n_periodic in enumerate(counts):
            if n_periodic != 3 and n_periodic != 0:
                self._check_partly_periodic(systems[k], n_periodic)
        return counts

    def _check_partly_periodic(self, system: System, n_periodic: int) -> None:
        """Validate a system periodic in one or two directions.

        :raises ValueError: for 1D periodicity or a degenerate slab cell
        """
        if n_periodic == 2:
            # a slab: metatomic zeroes the cell vector of the non-periodic direction
            rows = system.cell.detach()[system.pbc]
            area = float(torch.linalg.norm(torch.linalg.cross(rows[0], rows[1])))
            if area < 1e-6:
                raise ValueError(
                    "slab (2D periodic system) whose two periodic cell vectors are "
                    "zero or parallel"
                )
            return
        pbc: List[bool] = system.pbc.tolist()
        raise ValueError(
            "LOREM's long-range Coulomb sum needs a system periodic in three "
            "directions, two (a slab) or none (a molecule), got pbc="
            + str(pbc)
            + ": 1D periodicity (wires, polymers) is not supported; make the system "
            "periodic along all three directions with enough vacuum around it"
        )

    def _check_slabs(
        self, n_periodic: List[int], total_charges: Optional[torch.Tensor]
    ) -> None:
        """Refuse slabs whose long-range energy would depend on the internal vacuum.

        A net charge in a slab interacts with the neutralising background of the 3D sum
        it is evaluated in, an energy that grows with the height of that cell. With
        ``neutral_charges`` every channel is neutral; without it (models converted from
        lorem-jax) the latent charges carry a net charge, so such models are refused, as
        are slabs with a non-zero total charge.
        """
        for k, n in enumerate(n_periodic):
            if n != 2:
                continue
            if not self.neutral_charges:
                raise ValueError(
                    "system "
                    + str(k)
                    + " is a slab (periodic in two directions), which needs a model with "
                    "neutral latent charges (neutral_charges=True, the default of new "
                    "models): the raw charges of this model (lorem-jax's form) have a net "
                    "charge, whose energy in a slab depends on the vacuum. Use pbc=True "
                    "with vacuum, or a model trained with neutral_charges"
                )
            if total_charges is not None and float(torch.abs(total_charges[k])) > 0.0:
                raise ValueError(
                    "system "
                    + str(k)
                    + " is a slab with a non-zero total charge ("
                    + str(float(total_charges[k]))
                    + " e): the energy of a charged slab depends on the neutralising "
                    "background and on the vacuum; charged slabs are not supported"
                )

    def _check_dtypes(self, systems: List[System]) -> None:
        """Refuse systems whose dtype is not the model's, naming both."""
        expected = self.backbone.embedding.embedding.weight.dtype
        for k, system in enumerate(systems):
            if system.positions.dtype != expected:
                raise ValueError(
                    "system "
                    + str(k)
                    + " is in "
                    + _dtype_name(system.positions.dtype)
                    + " but this model runs in "
                    + _dtype_name(expected)
                    + ": convert the systems (system.to(dtype=...)) or export the model "
                    "in " + _dtype_name(system.positions.dtype)
                )

    def _check_finite_energies(self, energies: torch.Tensor) -> None:
        """Refuse non-finite energies of finite inputs: non-finite parameters.

        The inputs were checked, so NaN energies come from the parameters (a damaged
        model file). One ``isfinite`` over the atoms: nothing measurable next to the
        model. Not in training mode, where the trainer handles divergence.
        """
        if not bool(torch.isfinite(energies.detach()).all()):
            raise ValueError(
                "the model computed NaN or infinite energies for finite inputs: its "
                "parameters are probably not finite (a damaged model file, or a diverged "
                "training); lorem_mta.model.check_finite_parameters(model."
                "named_parameters(), 'model') names them"
            )

    def _total_charges(
        self, systems: List[System], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """Total charge of every system from its ``charge`` data (0 if absent)."""
        values: List[torch.Tensor] = []
        for k, system in enumerate(systems):
            # a literal: TorchScript can not read module-level strings
            if "charge" in system.known_data():
                charge = system.get_data("charge").block().values
                if charge.numel() != 1:
                    raise ValueError(
                        "the 'charge' input must hold one total charge per system, got "
                        + str(charge.numel())
                        + " values for system "
                        + str(k)
                    )
                charge = charge.reshape(1).to(device=device, dtype=dtype)
                if not bool(torch.isfinite(charge).all()):
                    raise ValueError("the total charge of system " + str(k) + " is not finite")
                values.append(charge)
            else:
                if not self.warned_missing_charge:
                    warnings.warn(
                        "this model was trained with the total charge as input "
                        "(total_charge: true), but system "
                        + str(k)
                        + " has no 'charge' data: it is taken as neutral (Q = 0), "
                        "which is wrong for a charged system. Give the charge with "
                        "atoms.info['charge'] in ASE (metatomic-ase) or an "
                        "'extra_data: charge' section in the options of mtt eval; "
                        "LAMMPS provides none (neutral systems only). This warning is "
                        "shown once",
                        stacklevel=2,
                    )
                    self.warned_missing_charge = True
                values.append(torch.zeros(1, dtype=dtype, device=device))
        return torch.cat(values)

    def _check_distances(self, vectors: torch.Tensor) -> None:
        if vectors.shape[0] > 0:
            shortest = float(torch.linalg.norm(vectors.detach(), dim=1).min())
            if shortest < self.min_distance:
                raise ValueError(
                    "two atoms are "
                    + _format_length(shortest)
                    + " A apart (the minimum is "
                    + _format_length(self.min_distance)
                    + " A): overlapping or duplicated atoms, or periodic images of an "
                    "atom that close (a cell too small or too flat)"
                )

    def _selection_mask(
        self,
        selected_atoms: Labels,
        atom_ptr: List[int],
        n_atoms: int,
        device: torch.device,
    ) -> torch.Tensor:
        values = selected_atoms.values.to(device)
        offsets = torch.tensor(atom_ptr[:-1], dtype=torch.long, device=device)
        index = offsets[values[:, 0].to(torch.long)] + values[:, 1].to(torch.long)
        mask = torch.zeros(n_atoms, dtype=torch.bool, device=device)
        mask[index] = True
        return mask

    def _periodic_ghosts(
        self,
        positions: torch.Tensor,
        cells: torch.Tensor,
        selected: torch.Tensor,
        atom_ptr: List[int],
        periodic: List[bool],
    ) -> torch.Tensor:
        """Unselected atoms that are periodic images of selected atoms (ghosts).

        Domain-decomposing engines (LAMMPS) add periodic images of the atoms of the cell
        as extra "ghost" atoms and select the real ones. Ghosts must not enter the Ewald
        sum: the images are already there through the lattice sum. Unselected atoms
        that are not images of selected ones (a plain sub-selection of a structure)
        keep their charges.
        """
        ghosts = torch.zeros_like(selected)
        for k in range(len(atom_ptr) - 1):
            a0, a1 = atom_ptr[k], atom_ptr[k + 1]
            if not periodic[k] or bool(selected[a0:a1].all()):
                continue
            cell = cells[k].detach()
            # a slab: a unit vector in the non-periodic direction, never wrapped
            periodic_rows = torch.any(cell != 0, dim=1).to(cell.dtype)
            axis = slab_axis(cell)
            if axis >= 0:
                first = cell[1 if axis == 0 else 0]
                second = cell[1 if axis == 2 else 2]
                normal = torch.linalg.cross(first, second)
                cell = cell.index_copy(
                    0,
                    torch.tensor([axis], device=cell.device),
                    (normal / torch.linalg.norm(normal)).unsqueeze(0),
                )
            fractional = positions[a0:a1].detach() @ torch.linalg.inv(cell)
            local = selected[a0:a1]
            delta = fractional[~local].unsqueeze(1) - fractional[local].unsqueeze(0)
            delta = (delta - torch.round(delta) * periodic_rows) @ cell
            is_image = (torch.linalg.norm(delta, dim=-1) < 1e-4).any(dim=1)
            unselected = torch.nonzero(~local).reshape(-1) + a0
            ghosts[unselected] = is_image
        return ghosts

    def _scalar_output(
        self,
        values: torch.Tensor,
        request: ModelOutput,
        mask: torch.Tensor,
        samples: Labels,
        system_index: torch.Tensor,
        n_systems: int,
        properties: Labels,
    ) -> TensorMap:
        device = values.device
        if request.sample_kind == "atom":
            block_values = values[mask]
            block_samples = samples
        else:
            block_values = torch.zeros(
                (n_systems, values.shape[1]), dtype=values.dtype, device=device
            ).index_add(0, system_index[mask].to(torch.long), values[mask])
            block_samples = Labels(
                ["system"],
                torch.arange(n_systems, device=device, dtype=torch.int32).reshape(-1, 1),
            )
        block = TensorBlock(
            values=block_values,
            samples=block_samples,
            components=[],
            properties=properties,
        )
        return TensorMap(Labels("_", torch.tensor([[0]], device=device)), [block])

    def _cartesian_output(self, values: torch.Tensor, samples: Labels) -> TensorMap:
        device = values.device
        xyz = torch.arange(3, device=device, dtype=torch.int32).reshape(-1, 1)
        block = TensorBlock(
            values=values.unsqueeze(-1),
            samples=samples,
            components=[Labels(["xyz_1"], xyz), Labels(["xyz_2"], xyz)],
            properties=Labels(["born_effective_charges"], torch.tensor([[0]], device=device)),
        )
        return TensorMap(Labels("_", torch.tensor([[0]], device=device)), [block])

    def _spherical_output(self, values: torch.Tensor, samples: Labels) -> TensorMap:
        return charge_channels_map(values, samples, self.max_degree_lr)


def charge_channels_map(values: torch.Tensor, samples: Labels, max_degree_lr: int) -> TensorMap:
    """Charge-like channels as an equivariant TensorMap (``lorem::charges`` layout).

    One block per ``(o3_lambda, o3_sigma = 1)``, components ``o3_mu``; property
    ``channel``: 0 (scalar MLP charge) and 1 (``l = 0`` spherical charge) in the
    ``l = 0`` block, ``1 + l^2`` in the others.

    :param values: tensor of shape ``(n_atoms, 1 + (L_lr + 1)^2)``
    :param samples: samples of the blocks (one per atom)
    :param max_degree_lr: largest degree ``L_lr``
    :return: TensorMap with ``L_lr + 1`` blocks
    """
    device = values.device
    blocks: List[TensorBlock] = []
    keys: List[List[int]] = []
    for l in range(max_degree_lr + 1):
        mu = torch.arange(-l, l + 1, device=device, dtype=torch.int32).reshape(-1, 1)
        if l == 0:
            block_values = values[:, 0:2].reshape(-1, 1, 2)
            channels = [0, 1]
        else:
            start = 1 + l * l
            block_values = values[:, start : start + 2 * l + 1].reshape(-1, 2 * l + 1, 1)
            channels = [start]
        properties = Labels(["channel"], torch.tensor(channels, device=device).reshape(-1, 1))
        blocks.append(TensorBlock(block_values, samples, [Labels(["o3_mu"], mu)], properties))
        keys.append([l, 1])
    return TensorMap(
        Labels(["o3_lambda", "o3_sigma"], torch.tensor(keys, device=device)), blocks
    )


def _format_length(value: float) -> str:
    """``value`` (non-negative) with at most six decimals and no trailing zeros.

    TorchScript's ``str`` prints 17 significant digits (``0.10000000000000001``).
    """
    micro = int(round(value * 1e6))
    decimals = str(micro % 1000000 + 1000000)[1:].rstrip("0")
    if decimals == "":
        decimals = "0"
    return str(micro // 1000000) + "." + decimals


def _dtype_name(dtype: torch.dtype) -> str:
    if dtype == torch.float64:
        return "float64"
    if dtype == torch.float32:
        return "float32"
    if dtype == torch.float16:
        return "float16"
    return "another dtype than float32 or float64"


def capabilities(model: LoremModel, dtype: torch.dtype) -> ModelCapabilities:
    """Metatomic capabilities of ``model``.

    :param model: the model
    :param dtype: dtype the model will run in
    :return: capabilities; the interaction range is infinite with the long-range block
    """
    backbone = model.backbone
    interaction_range = (len(backbone.steps) + 1) * model.cutoff
    if model.has_long_range:
        interaction_range = math.inf
    return ModelCapabilities(
        outputs=model.outputs(),
        atomic_types=model.atomic_types,
        interaction_range=interaction_range,
        length_unit="angstrom",
        supported_devices=["cpu", "cuda"],
        dtype="float64" if dtype == torch.float64 else "float32",
    )


def default_metadata() -> ModelMetadata:
    """Metadata citing the LOREM paper and its building blocks.

    :return: metadata
    """
    return ModelMetadata(
        name="LOREM",
        description=(
            "LOREM: Learning Long-Range Representations with Equivariant Messages "
            "(lorem_mta implementation)"
        ),
        references={
            "architecture": [
                "Rumiantsev, Langer, Sodjargal, Ceriotti, Loche, Learning Long-Range "
                "Representations with Equivariant Messages, arXiv:2507.19382"
            ],
            "implementation": [
                "torch-pme: Loche et al., J. Chem. Phys. 162, 142501 (2025)",
            ],
        },
    )


def atomistic_model(
    model: LoremModel,
    dtype: torch.dtype = torch.float32,
    metadata: Optional[ModelMetadata] = None,
) -> AtomisticModel:
    """Wrap ``model`` into a metatomic :py:class:`AtomisticModel`.

    ``model`` is left as it is (dtype, train/eval mode, ``requires_grad`` of its
    parameters): when the export would change it (another dtype, train mode, trainable
    parameters, which metatomic freezes), a copy is wrapped; otherwise (a frozen model
    in eval mode and in ``dtype``) the atomistic model wraps ``model`` itself.

    :param model: the model
    :param dtype: dtype to run in (``float32`` or ``float64``)
    :param metadata: model metadata; defaults to :py:func:`default_metadata`
    :return: the atomistic model, in eval mode
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if _export_changes(model, dtype):
        model = copy.deepcopy(model)
    model = model.to(dtype).eval()
    model.warned_missing_charge = False  # warn again in the exported model
    # after the cast: a float64 value beyond the float32 range becomes infinite
    check_finite_parameters(model.state_dict().items(), "this model")
    return AtomisticModel(model, metadata or default_metadata(), capabilities(model, dtype))


def _export_changes(model: torch.nn.Module, dtype: torch.dtype) -> bool:
    """Whether wrapping ``model`` in an ``AtomisticModel`` of ``dtype`` changes it.

    :param model: the model
    :param dtype: the dtype of the export
    :return: true when the model is in train mode, a parameter requires gradients
        (metatomic's ``AtomisticModel`` turns them off) or a floating-point parameter or
        buffer is not in ``dtype``
    """
    if model.training or any(p.requires_grad for p in model.parameters()):
        return True
    tensors = itertools.chain(model.parameters(), model.buffers())
    return any(t.is_floating_point() and t.dtype != dtype for t in tensors)


def export(
    model: LoremModel,
    path: str,
    dtype: torch.dtype = torch.float32,
    collect_extensions: Optional[str] = None,
) -> AtomisticModel:
    """Export ``model`` to a TorchScript file that any metatomic engine can run.

    ``model`` is left as it is, see :py:func:`atomistic_model`.

    :param model: the model
    :param path: output file, e.g. ``model.pt``
    :param dtype: dtype of the exported model
    :param collect_extensions: folder where the compiled extensions the model needs
        are copied (LOREM itself needs none; this collects any other loaded extension)
    :return: the atomistic model that was saved (an existing ``path`` is replaced only
        once the new file is complete)
    """
    wrapped = atomistic_model(model, dtype)
    _atomic_save(wrapped, path, collect_extensions)
    return wrapped


def _atomic_save(
    model: AtomisticModel, path: str, collect_extensions: Optional[str] = None
) -> None:
    """Save ``model`` to memory, then write it to a temporary file and rename it.

    An existing file at ``path`` is only replaced by a complete model: if saving fails
    (TorchScript error, full disk, interruption) it is left as it was, and a full disk
    raises an ``OSError`` naming ``path`` instead of aborting the process (see
    :py:func:`lorem_mta.files.write_saved_atomically`). A folder, device or FIFO at
    ``path`` is refused; a symbolic link is written through.
    """
    existed = collect_extensions is not None and os.path.exists(collect_extensions)
    # the class's save: an instance may carry this function as its save (save_atomically)
    write_saved_atomically(
        str(path),
        lambda file: AtomisticModel.save(model, file, collect_extensions=collect_extensions),
    )
    # a pure-torch model needs no compiled extension: drop the empty folder we created
    created = collect_extensions is not None and not existed
    if created and os.path.isdir(collect_extensions) and not os.listdir(collect_extensions):
        os.rmdir(collect_extensions)


def save_atomically(model: AtomisticModel) -> AtomisticModel:
    """Make ``model.save(path)`` write atomically, as :py:func:`export` does.

    metatrain's ``mtt export`` calls ``save`` on the model that ``LoremMta.export``
    returns; with this, a full disk raises an ``OSError`` and leaves an existing file
    intact instead of truncating it.

    :param model: the atomistic model
    :return: the same model
    """
    # a method bound to the instance (a copy.deepcopy binds it to the copy); TorchScript
    # ignores it and the saved class stays AtomisticModel
    object.__setattr__(model, "save", types.MethodType(_save_atomically, model))
    return model


def _save_atomically(
    model: AtomisticModel, file: Any, collect_extensions: Optional[str] = None
) -> None:
    # metatomic's save writes to str(file) in any case
    path = os.fspath(file) if isinstance(file, os.PathLike) else str(file)
    _atomic_save(model, path, collect_extensions)
