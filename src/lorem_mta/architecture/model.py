"""metatrain model interface of LOREM: :py:class:`LoremMta`.

A thin layer over :py:class:`lorem_mta.model.LoremModel`, which it holds as the
sub-module ``lorem`` and calls for the network itself (system flattening, input
validation, periodic and non-periodic structures in one batch, ``selected_atoms``). This
module adds what metatrain needs around it: one energy-like target with any name, the
composition baseline and the scaler (applied in evaluation mode, as in metatrain's PET
and SOAP-BPNN), checkpoints and export.

With ``total_charge: true`` the model requests the per-system ``charge`` input (see
:py:meth:`LoremMta.requested_inputs`); the trainer attaches it to the systems from the
``charge`` extra data of the datasets. Checkpoints store ``total_charge`` in the model
hyperparameters only when it is on, so that checkpoints of models without it keep the
version-1 layout (checkpoints without the entry load with the default, off).

With ``bec: true`` the model learns, next to the energy, one per-atom Cartesian rank-2
target (Born effective charges, any target name) and returns it under that name; like
``total_charge``, ``bec`` is only stored in checkpoints when it is on.

Besides the energy, a dataset may hold one **dipole** target: a per-structure Cartesian
vector (``type: {cartesian: {rank: 1}}``, e.g. ``mtt::dipole``) of molecules. It is
computed from the learned charges (``lorem::dipole`` of
:py:class:`~lorem_mta.model.LoremModel`, see :py:mod:`lorem_mta.modules.dipole`), needs
no extra parameters (unless ``atomic_dipoles: true``) and is never scaled, so that
predictions stay equal to the dipole of the ``lorem::charges`` output.

For metatrain's LLPR uncertainties (``architecture: name: llpr``), the model offers the
last-layer features of its energy target, ``mtt::aux::{target}_last_layer_features``
(``target`` without a ``mtt::`` prefix, e.g. ``mtt::aux::energy_last_layer_features``),
with ``last_layer_feature_size`` and ``last_layer_parameter_names`` as metatrain's PET
and SOAP-BPNN do: the energy of the network (before the scaler and the composition
baseline) is these features times the concatenated weights of the last layers of the
energy readouts, plus the biases of those layers.
"""

import copy
import itertools
import logging
from typing import Any, Dict, List, Literal, Optional, Tuple

import metatensor.torch as mts
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
from metatrain.composition import CompositionModel
from metatrain.scaler import Scaler
from metatrain.utils.abc import ModelInterface
from metatrain.utils.architectures import get_default_hypers
from metatrain.utils.data import DatasetInfo, TargetInfo
from metatrain.utils.dtype import dtype_to_str
from metatrain.utils.hypers import init_with_defaults, raise_if_hypers_mismatch
from metatrain.utils.metadata import merge_metadata

from ..documentation import ModelHypers
from ..model import (
    DIPOLE,
    LAST_LAYER_FEATURES,
    LoremModel,
    capabilities,
    check_finite_parameters,
    default_metadata,
    save_atomically,
)
from ..model_files import LONG_RANGE_SETTINGS, hypers_json, set_long_range
from ..modules import LoremBackbone
from ..modules.lr_cost import METHODS as LONG_RANGE_METHODS
from . import checkpoints
from .reporting import float32_export_note

#: name of the architecture in metatrain (options files and checkpoints)
ARCHITECTURE_NAME = "experimental.lorem_mta"


class LoremMta(ModelInterface[ModelHypers]):
    """LOREM as a metatrain architecture.

    :param hypers: model hyperparameters, see
        :py:class:`lorem_mta.documentation.ModelHypers`
    :param dataset_info: atomic types, length unit and the (single, energy-like) target
    """

    __checkpoint_version__ = 3
    __supported_devices__ = ["cuda", "cpu"]
    __supported_dtypes__ = [torch.float32, torch.float64]
    __default_metadata__ = default_metadata()

    def __init__(self, hypers: ModelHypers, dataset_info: DatasetInfo) -> None:
        # missing entries (when used from Python) take their default value
        hypers = {**init_with_defaults(ModelHypers), **hypers}
        super().__init__(hypers, dataset_info, self.__default_metadata__)
        _check_hypers(self.hypers)
        self.target_name, self.dipole_target = _targets(
            dataset_info.targets, bool(self.hypers["bec"])
        )
        self.bec_target = _bec_target(dataset_info.targets, bool(self.hypers["bec"]))
        self.atomic_types: List[int] = list(dataset_info.atomic_types)

        backbone = LoremBackbone(
            cutoff=float(self.hypers["cutoff"]),
            max_degree=int(self.hypers["max_degree"]),
            max_degree_lr=int(self.hypers["max_degree_lr"]),
            num_features=int(self.hypers["num_features"]),
            num_radial=int(self.hypers["num_radial"]),
            num_species=int(self.hypers["num_species"]),
            num_spherical_features=int(self.hypers["num_spherical_features"]),
            lr=bool(self.hypers["lr"]),
            num_message_passing=int(self.hypers["num_message_passing"]),
            equivariant_message_passing=bool(self.hypers["equivariant_message_passing"]),
            initialize_node_features=bool(self.hypers["initialize_node_features"]),
            long_range_method=str(self.hypers["long_range_method"]),
            long_range_accuracy=(
                None
                if self.hypers["long_range_accuracy"] is None
                else float(self.hypers["long_range_accuracy"])
            ),
            total_charge=bool(self.hypers["total_charge"]),
            bec=bool(self.hypers["bec"]),
            atomic_dipoles=bool(self.hypers["atomic_dipoles"]),
            norm_smoothing=float(self.hypers["norm_smoothing"]),
            neutral_charges=bool(self.hypers["neutral_charges"]),
        )
        # the network (its own `atomic_baseline` stays zero: the composition model below
        # is the baseline)
        self.lorem = LoremModel(backbone, self.atomic_types)

        target_info = dataset_info.targets[self.target_name]
        self.outputs: Dict[str, ModelOutput] = {
            self.target_name: ModelOutput(
                unit=target_info.unit,
                sample_kind="atom",
                description=target_info.description,
            )
        }
        for name, output in self.lorem.outputs().items():
            if name not in ("energy", LAST_LAYER_FEATURES):
                self.outputs[name] = output
        # LLPR: last-layer features of the energy target (metatrain's naming)
        self.last_layer_features_name = last_layer_features_name(self.target_name)
        self.outputs[self.last_layer_features_name] = ModelOutput(
            sample_kind="atom",
            description=f"last-layer features of the energy readouts for {self.target_name}",
        )
        self.last_layer_feature_size = int(backbone.last_layer_feature_size)
        # metatrain's LLPR wrapper (2026.4) passes the uncertainty it computes itself on
        # to the wrapped model, as `energy_uncertainty` (not as `mtt::aux::...`): skip it
        self.llpr_uncertainty_name = (
            "energy_uncertainty"
            if self.target_name == "energy"
            else "mtt::aux::" + self.target_name.replace("mtt::", "") + "_uncertainty"
        )
        self.last_layer_parameter_names: Dict[str, List[str]] = {
            self.target_name: [
                "lorem.backbone." + name for name in backbone.last_layer_parameter_names()
            ]
        }
        self.bec_property = ""
        if self.bec_target != "":
            bec_info = dataset_info.targets[self.bec_target]
            self.outputs[self.bec_target] = ModelOutput(
                unit=bec_info.unit, sample_kind="atom", description=bec_info.description
            )
            self.bec_property = bec_info.layout.block().properties.names[0]
        # property labels of the dipole target (TorchScript can not read dataset_info)
        self.dipole_properties = Labels(["dipole"], torch.tensor([[0]]))
        if self.dipole_target != "":
            self._add_dipole_output(dataset_info.targets[self.dipole_target])

        # additive models and scaler: fitted by the trainer, applied in eval mode
        self.additive_models = torch.nn.ModuleList(
            [CompositionModel.from_valid_targets(dataset_info, self.atomic_types)]
        )
        self.scaler = Scaler(
            hypers=get_default_hypers("scaler")["model"], dataset_info=dataset_info
        )
        self.has_new_targets = False

    def _add_dipole_output(self, target_info: TargetInfo) -> None:
        """Declare the dipole target (needs the charges of the long-range block)."""
        if DIPOLE not in self.outputs:
            raise ValueError(
                f"the dipole target '{self.dipole_target}' needs the learned charges of "
                "the long-range block: train with `lr: true`"
            )
        self.dipole_properties = target_info.layout.block().properties
        self.outputs[self.dipole_target] = ModelOutput(
            unit=target_info.unit,
            sample_kind="system",
            description=target_info.description or "dipole moment (molecules only)",
        )

    def supported_outputs(self) -> Dict[str, ModelOutput]:
        """Outputs of this model: the energy target, ``feature`` and the ``lorem::`` ones.

        :return: dictionary of output name to :py:class:`ModelOutput`
        """
        return self.outputs

    def requested_inputs(self) -> Dict[str, ModelOutput]:
        """Extra per-system inputs: ``charge`` (unit ``e``) with ``total_charge: true``.

        :return: dictionary of input name to :py:class:`ModelOutput` (empty without
            ``total_charge``)
        """
        return self.lorem.requested_inputs()

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        """The neighbour list of :py:class:`~lorem_mta.model.LoremModel`.

        :return: list with one full, strict neighbour list at the cutoff
        """
        return self.lorem.requested_neighbor_lists()

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        """Compute the requested outputs.

        In training mode the energy target is the raw network output (the trainer
        removes the baseline and the scale from the targets instead); in evaluation mode
        the scaler and the composition baseline are applied.

        :param systems: systems with the neighbour list of
            :py:meth:`requested_neighbor_lists` attached
        :param outputs: requested outputs (names from :py:meth:`supported_outputs`)
        :param selected_atoms: optional ``system, atom`` labels of the atoms to compute
            the outputs for
        :return: one TensorMap per requested output
        """
        lorem_outputs: Dict[str, ModelOutput] = {}
        for name, request in outputs.items():
            if name == self.target_name:
                lorem_outputs["energy"] = request
            elif name == self.bec_target:
                lorem_outputs["lorem::born_effective_charges"] = request  # BORN_CHARGES
            elif name == self.dipole_target:
                lorem_outputs["lorem::dipole"] = request
            elif name == self.last_layer_features_name:
                lorem_outputs["mtt::aux::energy_last_layer_features"] = request
            elif name == self.llpr_uncertainty_name:
                continue  # computed by the LLPR wrapper from the last-layer features
            elif name in self.outputs or name == "features":
                lorem_outputs[name] = request
            else:
                raise ValueError(
                    "LOREM cannot compute the output '"
                    + name
                    + "'; available outputs: "
                    + str(list(self.outputs.keys()))
                )
        results = self.lorem(systems, lorem_outputs, selected_atoms)

        return_dict: Dict[str, TensorMap] = {}
        for name, tensor_map in results.items():
            if name == "energy":
                return_dict[self.target_name] = tensor_map
            elif name == "mtt::aux::energy_last_layer_features":  # LAST_LAYER_FEATURES
                return_dict[self.last_layer_features_name] = tensor_map
            elif name == "lorem::born_effective_charges" and self.bec_target in outputs:
                return_dict[self.bec_target] = _with_property(tensor_map, self.bec_property)
                if "lorem::born_effective_charges" in outputs:
                    return_dict[name] = tensor_map
            else:
                return_dict[name] = tensor_map
        if self.dipole_target != "" and "lorem::dipole" in results:
            return_dict[self.dipole_target] = self._dipole_layout(results["lorem::dipole"])
            if "lorem::dipole" not in outputs:
                return_dict.pop("lorem::dipole")

        if not self.training:
            return_dict = self.scaler.apply_scales(
                systems,
                return_dict,
                selected_atoms=selected_atoms,
                use_per_target_scales=True,
                use_per_property_scales=True,
            )
            # the baseline (thousands of eV for large structures) is added in float64
            # and the sum rounded once to the output dtype: a float32 model is then
            # within half a float32 step of the float64 sum (the step is 2^-10 eV at
            # |E| of 8192-16384 eV; see docs/training.rst, "Precision")
            dtypes: Dict[str, torch.dtype] = {}
            baseline_systems = _float64_systems(systems)
            for additive_model in self.additive_models:
                additive_outputs: Dict[str, ModelOutput] = {}
                for name, request in outputs.items():
                    if name in additive_model.outputs:
                        additive_outputs[name] = request
                contributions = additive_model(
                    baseline_systems, additive_outputs, selected_atoms
                )
                for name, contribution in contributions.items():
                    values = return_dict[name].block().values
                    if name not in dtypes:
                        dtypes[name] = values.dtype
                        return_dict[name] = return_dict[name].to(dtype=torch.float64)
                    return_dict[name] = _add_baseline(
                        return_dict[name],
                        contribution.to(device=values.device, dtype=torch.float64),
                    )
            for name, dtype in dtypes.items():
                return_dict[name] = return_dict[name].to(dtype=dtype)
        return return_dict

    def _dipole_layout(self, dipoles: TensorMap) -> TensorMap:
        """``lorem::dipole`` with the property labels of the dipole target."""
        block = dipoles.block()
        properties = self.dipole_properties.to(block.values.device)
        new_block = TensorBlock(block.values, block.samples, block.components, properties)
        return TensorMap(dipoles.keys, [new_block])

    def restart(
        self, dataset_info: DatasetInfo, model_hypers: Optional[Dict[str, Any]] = None
    ) -> "LoremMta":
        """Prepare to continue training (restart or fine-tuning) on ``dataset_info``.

        :param dataset_info: the new dataset; same atomic types (or a subset) and the
            same energy target
        :param model_hypers: model hyperparameters of the new run, if given they must
            match the ones of this model
        :return: this model
        """
        if model_hypers is not None:
            # how the long-range sum is evaluated changes no parameter: take the new
            # settings, compare the rest
            if any(name in model_hypers for name in LONG_RANGE_SETTINGS):
                self.set_long_range(
                    str(
                        model_hypers.get("long_range_method", self.hypers["long_range_method"])
                    ),
                    model_hypers.get("long_range_accuracy", self.hypers["long_range_accuracy"]),
                )
            raise_if_hypers_mismatch(
                self.hypers,
                model_hypers,
                default_hypers=init_with_defaults(ModelHypers),
            )
        new_types = sorted(set(dataset_info.atomic_types) - set(self.atomic_types))
        if len(new_types) > 0:
            raise ValueError(
                f"the dataset contains atomic types {new_types} that this LOREM model "
                f"was not trained on (it knows {self.atomic_types}); adding atomic "
                "types is not supported"
            )
        new_target, new_dipole = _targets(dataset_info.targets, bool(self.hypers["bec"]))
        if _bec_target(dataset_info.targets, bool(self.hypers["bec"])) != self.bec_target:
            raise ValueError(
                "the Born-effective-charge target of the new dataset must have the name "
                f"'{self.bec_target}' of this model"
            )
        if new_target != self.target_name:
            raise ValueError(
                f"this LOREM model was trained on the target '{self.target_name}' but "
                f"the dataset provides '{new_target}'; rename the target in the options "
                "file (LOREM learns exactly one energy target)"
            )
        if new_dipole != "" and new_dipole != self.dipole_target:
            if self.dipole_target != "":
                raise ValueError(
                    f"this LOREM model was trained on the dipole target "
                    f"'{self.dipole_target}' but the dataset provides '{new_dipole}'"
                )
            # the dipole adds no parameters: it can be added when fine-tuning
            self.dipole_target = new_dipole
            self._add_dipole_output(dataset_info.targets[new_dipole])
        self.dataset_info = self.dataset_info.union(dataset_info)
        self.has_new_targets = False
        self.additive_models[0] = self.additive_models[0].restart(
            dataset_info=DatasetInfo(
                length_unit=dataset_info.length_unit,
                atomic_types=self.atomic_types,
                targets={
                    name: info
                    for name, info in dataset_info.targets.items()
                    if CompositionModel.is_valid_target(name, info)
                },
            )
        )
        self.scaler = self.scaler.restart(dataset_info)
        return self

    def set_long_range(self, method: str, accuracy: Optional[float]) -> None:
        """Change how the long-range sum is evaluated (no parameter changes).

        :param method: ``"auto"``, ``"ewald"``, ``"pme"`` or ``"direct"``
        :param accuracy: target accuracy, ``None`` for the reference settings
        """
        if self.hypers["lr"]:
            set_long_range(self, method, None if accuracy is None else float(accuracy))
        old = {name: self.hypers[name] for name in LONG_RANGE_SETTINGS}
        self.hypers["long_range_method"] = method
        self.hypers["long_range_accuracy"] = accuracy
        if old != {name: self.hypers[name] for name in LONG_RANGE_SETTINGS}:
            logging.info(
                f"long-range settings changed from {old} to method={method}, "
                f"accuracy={accuracy}"
            )

    @classmethod
    def load_checkpoint(
        cls,
        checkpoint: Dict[str, Any],
        context: Literal["restart", "finetune", "export"],
    ) -> "LoremMta":
        """Create a model from a checkpoint written by :py:meth:`get_checkpoint`.

        :param checkpoint: the checkpoint dictionary
        :param context: ``"restart"`` loads the latest weights, ``"finetune"`` and
            ``"export"`` the best ones
        :return: the model
        """
        # epochs are stored counted from 0 and logged counted from 1
        if context == "restart":
            logging.info(f"Using latest model from epoch {_epoch_number(checkpoint['epoch'])}")
            state_dict = checkpoint["model_state_dict"]
        elif context in ("finetune", "export"):
            logging.info(
                f"Using best model from epoch {_epoch_number(checkpoint['best_epoch'])}"
            )
            state_dict = checkpoint["best_model_state_dict"]
            if state_dict is None:  # no epoch was run
                state_dict = checkpoint["model_state_dict"]
        else:
            raise ValueError(f"unknown context '{context}' for checkpoint loading")
        which = "latest" if context == "restart" else "best"
        check_finite_parameters(
            state_dict.items(), f"the {which} model of this checkpoint ({context})"
        )

        model_data = checkpoint["model_data"]
        model = cls(model_data["model_hypers"], model_data["dataset_info"])
        dtype = next(
            value.dtype
            for name, value in state_dict.items()
            if name.startswith("lorem.") and value.is_floating_point()
        )
        # the network in its training dtype, baseline and scaler in float64
        model.to(dtype)
        model.additive_models.to(torch.float64)
        model.scaler.to(torch.float64)
        model.load_state_dict(state_dict)
        model.additive_models[0].sync_tensor_maps()
        model.scaler.sync_tensor_maps()
        model.metadata = merge_metadata(model.metadata, checkpoint.get("metadata"))
        return model

    def get_checkpoint(self) -> Dict[str, Any]:
        """Everything :py:meth:`load_checkpoint` needs to rebuild this model.

        :return: the checkpoint dictionary
        """
        return {
            "architecture_name": ARCHITECTURE_NAME,
            "model_ckpt_version": self.__checkpoint_version__,
            "metadata": self.metadata,
            "model_data": {
                "model_hypers": _checkpoint_hypers(self.hypers),
                "dataset_info": self.dataset_info,
            },
            "epoch": None,
            "best_epoch": None,
            "model_state_dict": self.state_dict(),
            "best_model_state_dict": self.state_dict(),
        }

    @classmethod
    def upgrade_checkpoint(cls, checkpoint: Dict[str, Any]) -> Dict[str, Any]:
        """Upgrade a checkpoint of an older model version, see :py:mod:`.checkpoints`.

        :param checkpoint: the checkpoint dictionary, modified in place
        :return: the upgraded checkpoint
        """
        return checkpoints.upgrade(checkpoint, "model", cls.__checkpoint_version__)

    def _max_baseline(self) -> float:
        """The largest magnitude of the per-species energies of the baseline."""
        weights = self.additive_models[0].model.weights.get(self.target_name)
        if weights is None or len(weights) == 0:
            return 0.0
        return max(float(block.values.abs().max()) for block in weights.blocks())

    def export(self, metadata: Optional[ModelMetadata] = None) -> AtomisticModel:
        """Wrap this model into a metatomic :py:class:`AtomisticModel`.

        The whole model (baseline included) is cast to the dtype of the network; the
        interaction range is infinite with the long-range block. This model is left as
        it is (dtype, device, train or eval mode, parameters and their
        ``requires_grad``): when the export would change it (a float32 network with its
        float64 baseline and scaler, a model on a GPU, train mode, trainable
        parameters, which metatomic freezes), a copy is exported; otherwise (a frozen
        model in eval mode and in its export dtype, baseline on the CPU) the exported
        model is this one.

        :param metadata: metadata merged into the default one (which cites LOREM)
        :return: the atomistic model, in eval mode
        """
        dtype = next(self.lorem.parameters()).dtype
        if dtype not in self.__supported_dtypes__:
            raise ValueError(f"LOREM can not be exported in {dtype}")
        model = copy.deepcopy(self) if self._export_changes(dtype) else self
        model.lorem.hypers_json = hypers_json(model.hypers)
        model.to(dtype)
        check_finite_parameters(model.state_dict().items(), "this model")
        model.lorem.warned_missing_charge = False  # warn again in the exported model
        # the TensorMaps of the composition model are not registered buffers
        model.additive_models[0].weights_to(torch.device("cpu"), torch.float64)
        if dtype == torch.float32:
            note = float32_export_note(
                model._max_baseline(), model.dataset_info.targets[model.target_name].unit
            )
            if note is not None:
                logging.info(note)

        model_capabilities = ModelCapabilities(
            outputs=model.outputs,
            atomic_types=model.atomic_types,
            interaction_range=capabilities(model.lorem, dtype).interaction_range,
            length_unit=model.dataset_info.length_unit,
            supported_devices=model.__supported_devices__,
            dtype=dtype_to_str(dtype),
        )
        # mtt export calls save(): write it atomically (see lorem_mta.files)
        return save_atomically(
            AtomisticModel(
                model.eval(), merge_metadata(model.metadata, metadata), model_capabilities
            )
        )

    def _export_changes(self, dtype: torch.dtype) -> bool:
        """Whether :py:meth:`export` would change this model in place.

        :param dtype: the dtype of the export
        :return: true when the model is in train mode, a parameter requires gradients
            (metatomic's ``AtomisticModel`` turns them off), a parameter or buffer is
            not in ``dtype`` or the weights of the composition baseline are not float64
            tensors on the CPU
        """
        if self.training or any(p.requires_grad for p in self.parameters()):
            return True
        tensors = itertools.chain(self.parameters(), self.buffers())
        if any(t.is_floating_point() and t.dtype != dtype for t in tensors):
            return True
        weights = self.additive_models[0].model.weights.values()
        return any(
            block.values.device.type != "cpu" or block.values.dtype != torch.float64
            for tensor_map in weights
            for block in tensor_map.blocks()
        )


def _add_baseline(total: TensorMap, baseline: TensorMap) -> TensorMap:
    """``total + baseline``, where ``baseline`` may lack systems without atoms.

    metatrain's composition model gives no sample for a system without atoms (its
    baseline is 0), the network gives one (energy 0): the baseline is added to the
    samples it has.
    """
    if len(total.keys) != 1 or len(total.block().samples) == len(baseline.block().samples):
        return mts.add(total, baseline)
    block = total.block()
    other = baseline.block()
    values = block.values.clone()
    for i in range(len(other.samples)):
        position = block.samples.position(other.samples.entry(i))
        if position is not None:
            values[position] = values[position] + other.values[i]
    new_block = TensorBlock(values, block.samples, block.components, block.properties)
    return TensorMap(total.keys, [new_block])


def _float64_systems(systems: List[System]) -> List[System]:
    """The systems in float64, for the composition baseline (types only matter).

    metatrain's composition model works in the dtype of the positions: with float32
    systems, its per-species energies would be rounded to float32 and summed in float32.
    These copies carry no neighbour lists and no gradients (the baseline does not depend
    on the positions).
    """
    if len(systems) == 0 or systems[0].positions.dtype == torch.float64:
        return systems
    return [
        System(
            types=system.types,
            positions=system.positions.detach().to(torch.float64),
            cell=system.cell.detach().to(torch.float64),
            pbc=system.pbc,
        )
        for system in systems
    ]


def _epoch_number(epoch: Optional[int]) -> str:
    """An epoch stored counted from 0, as the log shows it (counted from 1)."""
    return "None" if epoch is None else str(epoch + 1)  # metatrain tests expect None


def last_layer_features_name(target_name: str) -> str:
    """Name of the last-layer-features output of a target, as metatrain's LLPR asks it.

    :param target_name: e.g. ``"energy"`` or ``"mtt::U0"``
    :return: ``mtt::aux::{target_name without "mtt::"}_last_layer_features``
    """
    return "mtt::aux::" + target_name.replace("mtt::", "") + "_last_layer_features"


def _is_bec(info: TargetInfo) -> bool:
    """Whether ``info`` describes a per-atom Cartesian rank-2 target."""
    if not (info.is_cartesian and info.sample_kind == "atom") or len(info.gradients) > 0:
        return False
    block = info.layout.block()
    return len(block.components) == 2 and len(block.properties) == 1


def _bec_target(targets: Dict[str, TargetInfo], bec: bool) -> str:
    """Name of the Born-effective-charge target ("" without ``bec``)."""
    if not bec:
        return ""
    names = [name for name, info in targets.items() if _is_bec(info)]
    if len(names) != 1:
        raise ValueError(
            "a LOREM model with `bec: true` learns exactly one per-atom Cartesian rank-2 "
            "target (`type: {cartesian: {rank: 2}}`, `per_atom: true`) next to the "
            f"energy; got {names or 'none'} among {list(targets)}"
        )
    return names[0]


def _with_property(tensor_map: TensorMap, name: str) -> TensorMap:
    """The single-block ``tensor_map`` with its property renamed to ``name``."""
    block = tensor_map.block()
    properties = Labels([name], block.properties.values)
    new = TensorBlock(block.values, block.samples, block.components, properties)
    return TensorMap(tensor_map.keys, [new])


def _targets(targets: Dict[str, TargetInfo], bec: bool = False) -> Tuple[str, str]:
    """Names of the energy-like target and of the optional dipole target (or ``""``).

    With ``bec``, one per-atom Cartesian rank-2 target may come with them (see
    :py:func:`_bec_target`). Raise a clear error for anything else.
    """
    if bec:
        targets = {name: info for name, info in targets.items() if not _is_bec(info)}
    energies = [
        name
        for name, info in targets.items()
        if info.quantity == "energy"
        and info.is_scalar
        and info.sample_kind == "system"
        and len(info.layout.block().properties) == 1
    ]
    dipoles = [name for name, info in targets.items() if _is_dipole(info)]
    if len(energies) == 1 and len(dipoles) <= 1 and len(targets) == 1 + len(dipoles):
        return energies[0], dipoles[0] if len(dipoles) == 1 else ""
    described = {
        name: f"quantity='{info.quantity}', sample_kind='{info.sample_kind}'"
        for name, info in targets.items()
    }
    raise ValueError(
        "LOREM (experimental.lorem_mta) learns exactly one energy-like target: a "
        "per-structure scalar with `quantity: energy` (e.g. 'energy' or 'mtt::U0', "
        "optionally with forces and stress/virial), and optionally one dipole target "
        "(a per-structure vector, `type: {cartesian: {rank: 1}}`, without gradients); "
        f"got {described or 'no targets'}"
    )


def _is_dipole(info: TargetInfo) -> bool:
    """Whether ``info`` describes a per-structure Cartesian vector with one property."""
    block = info.layout.block()
    return (
        info.is_cartesian
        and info.sample_kind == "system"
        and len(block.components) == 1
        and len(block.components[0]) == 3
        and len(block.properties) == 1
        and len(info.gradients) == 0
    )


def _checkpoint_hypers(hypers: Dict[str, Any]) -> Dict[str, Any]:
    """Model hyperparameters as stored in checkpoints.

    ``total_charge`` and ``atomic_dipoles`` (added after version 1 of the checkpoints)
    are only written when they are on: checkpoints of models without them keep exactly
    the version-1 layout, and :py:meth:`LoremMta.__init__` fills in the defaults when
    the entries are missing.
    """
    stored = dict(hypers)
    for name in ("total_charge", "bec", "atomic_dipoles"):
        if not stored.get(name, False):
            stored.pop(name, None)
    return stored


def _check_hypers(hypers: Dict[str, Any]) -> None:
    """Reject invalid model hyperparameters with a message naming the value."""
    if not float(hypers["cutoff"]) > 0.0:
        raise ValueError(f"cutoff must be positive, got {hypers['cutoff']}")
    for name in ["num_features", "num_radial", "num_species", "num_spherical_features"]:
        if int(hypers[name]) < 1:
            raise ValueError(f"{name} must be at least 1, got {hypers[name]}")
    for name in ["max_degree", "max_degree_lr", "num_message_passing"]:
        if int(hypers[name]) < 0:
            raise ValueError(f"{name} must be non-negative, got {hypers[name]}")
    if hypers["long_range_method"] not in LONG_RANGE_METHODS:
        raise ValueError(
            "long_range_method must be 'auto', 'ewald', 'pme' or 'direct', got "
            f"'{hypers['long_range_method']}'"
        )
    if not float(hypers["norm_smoothing"]) >= 0.0:
        raise ValueError(f"norm_smoothing must be >= 0, got {hypers['norm_smoothing']}")
    accuracy = hypers["long_range_accuracy"]
    if accuracy is not None and not 0.0 < float(accuracy) < 1.0:
        raise ValueError(f"long_range_accuracy must be between 0 and 1, got {accuracy}")
    if hypers["total_charge"] and not hypers["lr"]:
        raise ValueError(
            "total_charge: true needs the long-range block (lr: true): the total charge "
            "is imposed on the latent charges of the long-range part"
        )
    if hypers["atomic_dipoles"] and (not hypers["lr"] or int(hypers["max_degree"]) < 1):
        raise ValueError(
            "atomic_dipoles: true needs the long-range block (lr: true) and "
            f"max_degree >= 1, got lr: {hypers['lr']}, max_degree: {hypers['max_degree']}"
        )
    if hypers["cutoff_fn"] != "cosine_cutoff":
        raise ValueError(f"cutoff_fn must be 'cosine_cutoff', got '{hypers['cutoff_fn']}'")
    if hypers["radial_basis"] != "basic_bernstein":
        raise ValueError(
            f"radial_basis must be 'basic_bernstein', got '{hypers['radial_basis']}'"
        )
