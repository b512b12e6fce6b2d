"""One epoch of LOREM training: the optimizer steps, then the validation.

:py:class:`EpochRunner` evaluates the model on a batch (per atom and in scaled units,
as the loss sees it), steps the optimizer and the learning-rate schedule after every
training batch, and accumulates the errors of every batch in the units of the dataset
(RMSE, and MAE when they are logged or select the best model). The divergence guard
(:py:mod:`.guards`) sees the running loss after every batch and the losses of the
epoch.
"""

import logging
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import metatensor.torch
import torch
import torch.distributed
from metatensor.torch import TensorMap
from metatomic.torch import System
from metatrain.utils.evaluate_model import evaluate_model
from metatrain.utils.metrics import MAEAccumulator, RMSEAccumulator
from metatrain.utils.per_atom import average_by_num_atoms
from metatrain.utils.transfer import batch_to

from ..documentation import TrainerHypers
from .batching import PreparedBatch, unpack
from .compiled import CompiledEnergyForces
from .distributed import Placement
from .flat_loss import FlatEvaluation, FlatLoss
from .guards import DivergenceGuard
from .model import LoremMta

# systems, predictions, targets and extra data of a batch, or the plain tensors of a
# compiled energy batch
Batch = Union[Tuple[Any, Dict[str, Any], Dict[str, Any], Dict[str, Any]], FlatEvaluation]


class EpochRunner:
    """Training and validation epochs of one training run.

    :param model: the model, or its distributed wrapper
    :param raw_model: the model itself (its scaler and dataset information)
    :param loss_fn: the loss (metatrain's ``LossAggregator``)
    :param hypers: trainer hyperparameters (``per_structure_targets``, ``log_mae``,
        ``best_model_metric``, ``log_separate_blocks``, ``grad_clip_norm``)
    :param dtype: dtype of the training
    :param placement: device and distributed set-up of this process
    :param kept_systems: the batches are made of structures kept in memory for the whole
        run (see :py:class:`~.loaders.Loaders`); the compiled function then keeps their
        flat tensors
    """

    def __init__(
        self,
        model: torch.nn.Module,
        raw_model: LoremMta,
        loss_fn: Any,
        hypers: TrainerHypers,
        dtype: torch.dtype,
        placement: Placement,
        kept_systems: bool = False,
    ) -> None:
        self.model = model
        self.scaler = raw_model.scaler
        self.loss_fn = loss_fn
        self.hypers = hypers
        self.dtype = dtype
        self.placement = placement
        self.targets = raw_model.dataset_info.targets
        self.per_structure_targets = hypers["per_structure_targets"]
        # scaling steps that would multiply by one are skipped (same numbers, less time)
        self.has_per_property_scales = any(
            name in self.scaler.model.multi_property_target_names for name in self.targets
        )
        self.unit_scales = _unit_scales(self.scaler, list(self.targets))
        self.use_mae = hypers["log_mae"] or hypers["best_model_metric"] == "mae_prod"
        self.compiled: Optional[CompiledEnergyForces] = None
        # numbers of structures of the training batches that went through the compiled
        # function (it is compiled again for every new one: the batch's lists of atom
        # and pair offsets have one entry per structure)
        self.compiled_sizes: Set[int] = set()
        if hypers["compile"] and placement.is_distributed:
            logging.warning(
                "compile: not used in distributed training (the compiled function "
                "bypasses the gradient synchronisation); training runs in eager mode"
            )
        elif hypers["compile"]:
            self.compiled = CompiledEnergyForces(raw_model)
        self.kept_systems = kept_systems
        self.flat_loss = self._flat_loss(raw_model)

    def run_epoch(
        self,
        epoch: int,
        train_dataloader: Any,
        val_dataloader: Any,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any,
        guard: DivergenceGuard,
    ) -> Tuple[Dict[str, float], Dict[str, float]]:
        """Train on every training batch once, then evaluate the validation set.

        :param epoch: the epoch (counted from 0)
        :param train_dataloader: the training batches
        :param val_dataloader: the validation batches
        :param optimizer: the optimizer
        :param lr_scheduler: the learning-rate schedule, stepped after every batch
        :param guard: stops the run when the loss diverges
        :return: the training and the validation metrics (``loss`` and errors)
        """
        train_accumulators, train_loss = self.train(
            epoch, train_dataloader, optimizer, lr_scheduler, guard
        )
        guard.check_epoch(epoch, train_loss)
        val_accumulators, val_loss = self.validate(val_dataloader)
        guard.check_validation(epoch, val_loss)
        val_metrics = self.finalize(val_accumulators, val_loss)
        train_metrics = self.finalize(train_accumulators, train_loss)
        return train_metrics, val_metrics

    def train(
        self,
        epoch: int,
        dataloader: Any,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any,
        guard: DivergenceGuard,
    ) -> Tuple[List[Any], float]:
        """One optimizer step per batch.

        :param epoch: the epoch (counted from 0)
        :param dataloader: the training batches
        :param optimizer: the optimizer
        :param lr_scheduler: the learning-rate schedule, stepped after every batch
        :param guard: sees the running loss after every batch
        :return: the error accumulators and the summed loss of the epoch
        """
        self.model.train()
        accumulators = self.new_accumulators()
        total = 0.0
        for batch in dataloader:
            loss, evaluated = self.step(batch, optimizer, lr_scheduler)
            total += loss
            guard.check_batch(epoch, total)
            # every epoch: the errors of the best epoch are logged at the end
            self.accumulate(accumulators, evaluated)
        return accumulators, total

    def step(
        self, batch: Any, optimizer: torch.optim.Optimizer, lr_scheduler: Any
    ) -> Tuple[float, Batch]:
        """The optimizer and schedule step of one training batch.

        :param batch: the batch, as the data loader gives it
        :param optimizer: the optimizer
        :param lr_scheduler: the learning-rate schedule
        :return: the loss of the batch (summed over the processes) and the evaluated
            batch
        """
        optimizer.zero_grad()
        loss, evaluated = self.loss_of(batch, is_training=True)
        if self.placement.is_distributed:
            # every parameter must take part in the graph for DDP
            for parameter in self.model.parameters():
                loss = loss + 0.0 * parameter.sum()
        loss.backward()
        if self.hypers["grad_clip_norm"] is not None:
            torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.hypers["grad_clip_norm"]
            )
        optimizer.step()
        lr_scheduler.step()

        if self.placement.is_distributed:
            torch.distributed.all_reduce(loss)
        return loss.item(), evaluated

    def validate(self, dataloader: Any) -> Tuple[List[Any], float]:
        """The errors and the loss on the validation set.

        :param dataloader: the validation batches
        :return: the error accumulators and the summed loss
        """
        accumulators = self.new_accumulators()
        total = 0.0
        # gradients stay on when forces or stresses are evaluated
        with torch.set_grad_enabled(any(info.gradients for info in self.targets.values())):
            for batch in dataloader:
                loss, evaluated = self.loss_of(batch, is_training=False)
                if self.placement.is_distributed:
                    torch.distributed.all_reduce(loss)
                total += loss.item()
                self.accumulate(accumulators, evaluated)
        return accumulators, total

    def loss_of(self, batch: Any, is_training: bool) -> Tuple[torch.Tensor, Batch]:
        """The loss of a batch and the batch as evaluated for it.

        On plain tensors (:py:meth:`evaluate_flat`) when it can, otherwise with
        metatrain's loss on the tensor maps of :py:meth:`evaluate`.

        :param batch: the batch, as the data loader gives it
        :param is_training: a training batch (gradients kept for the loss)
        :return: the loss of this process and the evaluated batch
        """
        flat = self.evaluate_flat(batch, is_training)
        if flat is not None:
            return flat.loss, flat
        evaluated = self.evaluate(batch, is_training)
        _, predictions, targets, extra_data = evaluated
        return self.loss_fn(predictions, targets, extra_data), evaluated

    def evaluate_flat(self, batch: Any, is_training: bool) -> Optional[FlatEvaluation]:
        """A batch through the compiled function and :py:mod:`.flat_loss`, if it can.

        That is: a :py:class:`~.batching.PreparedBatch` of kept structures, in the
        training dtype and on its device, with only the energy, that the compiled
        function supports (validation batches: with as many structures as a training
        batch, see :py:meth:`predict`), in a run whose loss :py:class:`.FlatLoss`
        computes.

        :param batch: the batch, as the data loader gives it
        :param is_training: a training batch (gradients kept for the loss)
        :return: the evaluated batch, or ``None``: evaluate it with :py:meth:`evaluate`
        """
        if self.flat_loss is None or self.compiled is None or not self.kept_systems:
            return None
        if not isinstance(batch, PreparedBatch):
            return None
        references = self.flat_loss.references(batch.samples, self.dtype, self.placement.device)
        if references is None:
            return None
        systems = [sample.system for sample in batch.samples]
        if self.compiled.unsupported(systems, self.targets) is not None:
            return None
        if not is_training and len(systems) not in self.compiled_sizes:
            return None
        with torch.enable_grad():
            evaluated = self.compiled.evaluate(systems, kept=True)
        if evaluated is None:
            return None
        energies, gradients, flat = evaluated
        if is_training:
            self.compiled_sizes.add(len(systems))
        else:
            energies, gradients = energies.detach(), gradients.detach()
        with_forces = "positions" in self.targets[self.compiled.model.target_name].gradients
        return self.flat_loss.evaluate(
            references, energies, gradients if with_forces else None, flat.atom_ptr
        )

    def _flat_loss(self, raw_model: LoremMta) -> Optional[FlatLoss]:
        """The :py:class:`.FlatLoss` of this run, or ``None`` if it does not apply.

        :param raw_model: the model (its energy target)
        :return: the flat loss, when the run is compiled and its loss supported
        """
        if self.compiled is None:
            return None
        name = raw_model.target_name
        reason = FlatLoss.unsupported(
            self.loss_fn,
            self.targets,
            name,
            self.unit_scales and not self.has_per_property_scales,
        )
        if reason is not None:
            logging.info(f"compile: the loss runs on metatrain's tensor maps ({reason})")
            return None
        block_name: Optional[str] = None
        if self.hypers["log_separate_blocks"]:
            key = self.targets[name].layout.keys
            entries = [f"{n}={int(v)}" for n, v in zip(key.names, key.values[0], strict=True)]
            block_name = " (" + ",".join(entries) + ")"
        return FlatLoss(self.loss_fn, name, name in self.per_structure_targets, block_name)

    def evaluate(self, batch: Any, is_training: bool) -> Batch:
        """Predictions and targets of one batch, per atom and in scaled units.

        :param batch: the batch, as the data loader gives it
        :param is_training: evaluate the model in training mode
        :return: systems, predictions, targets and extra data, on the training device
        """
        systems, targets, extra_data = unpack(batch)
        kept = self.kept_systems
        if not _is_on(systems, targets, extra_data, self.dtype, self.placement.device):
            # new systems, in the training dtype and device
            systems, targets, extra_data = batch_to(
                systems, targets, extra_data, dtype=self.dtype, device=self.placement.device
            )
            kept = False
        batch_targets = {key: self.targets[key] for key in targets}
        predictions = self.predict(systems, batch_targets, is_training, kept)
        predictions = average_by_num_atoms(predictions, systems, self.per_structure_targets)
        targets = average_by_num_atoms(targets, systems, self.per_structure_targets)
        # per-property scales (multi-property targets only) before the loss; the
        # dataloader already removed the per-target scales from the targets
        if self.has_per_property_scales:
            predictions = self.scaler.apply_scales(
                systems,
                predictions,
                remove=False,
                use_per_target_scales=False,
                use_per_property_scales=True,
            )
        return systems, predictions, targets, extra_data

    def predict(
        self,
        systems: List[System],
        targets: Dict[str, Any],
        is_training: bool,
        kept: bool = False,
    ) -> Dict[str, TensorMap]:
        """The model's predictions of a batch, compiled when possible.

        With ``compile: true``, training batches that the compiled function supports go
        through it, the others through metatrain's ``evaluate_model``. Validation
        batches go through it too (with gradients on, so that the training graph serves
        them, and their predictions detached) when a training batch had as many
        structures: a batch of another size (the last, smaller, validation batch) would
        cost a compilation for one batch per epoch, and runs in eager mode.

        :param systems: the batch, on the training device
        :param targets: the target infos of the batch, by name
        :param is_training: a training batch (gradients kept for the loss)
        :param kept: the systems are kept in memory for the whole run (see
            :py:class:`~.compiled.CompiledEnergyForces`)
        :return: the predictions, by target name
        """
        if self.compiled is None:
            return evaluate_model(self.model, systems, targets, is_training=is_training)
        reason = self.compiled.unsupported(systems, targets)
        if reason is not None:
            self.compiled.tell_once(reason)
            return evaluate_model(self.model, systems, targets, is_training=is_training)
        if is_training:
            predictions = self.compiled(systems, targets, kept)
            if predictions is None:  # too many compiled variants
                return evaluate_model(self.model, systems, targets, is_training=True)
            self.compiled_sizes.add(len(systems))
            return predictions
        if len(systems) in self.compiled_sizes:
            with torch.enable_grad():
                predictions = self.compiled(systems, targets, kept)
            if predictions is not None:
                return {name: metatensor.torch.detach(v) for name, v in predictions.items()}
        return evaluate_model(self.model, systems, targets, is_training=False)

    def new_accumulators(self) -> List[Any]:
        """Fresh error accumulators: RMSE, and MAE when it is used.

        :return: the accumulators
        """
        separate = self.hypers["log_separate_blocks"]
        if self.use_mae:
            return [RMSEAccumulator(separate), MAEAccumulator(separate)]
        return [RMSEAccumulator(separate)]

    def accumulate(self, accumulators: List[Any], evaluated: Batch) -> None:
        """Add a batch to the error accumulators, in the units of the dataset.

        :param accumulators: the accumulators of the epoch
        :param evaluated: the batch, as :py:meth:`evaluate` returns it
        """
        if isinstance(evaluated, FlatEvaluation):
            if self.flat_loss is not None:
                self.flat_loss.accumulate(accumulators, evaluated)
            return
        systems, predictions, targets, extra = evaluated
        scaled = [predictions, targets]
        # numbers only: no autograd graph of the errors of training predictions
        with torch.no_grad():
            if not self.unit_scales:
                scaled = [
                    self.scaler.apply_scales(
                        systems,
                        values,
                        remove=False,
                        use_per_target_scales=True,
                        use_per_property_scales=False,
                    )
                    for values in scaled
                ]
            for accumulator in accumulators:
                accumulator.update(scaled[0], scaled[1], extra)

    def finalize(self, accumulators: List[Any], loss: float) -> Dict[str, float]:
        """The metrics of an epoch (summed over the processes).

        :param accumulators: the accumulators of the epoch
        :param loss: the summed loss of the epoch
        :return: ``loss`` and the errors, by metatrain's metric names
        """
        metrics: Dict[str, float] = {"loss": loss}
        for accumulator in accumulators:
            metrics.update(
                accumulator.finalize(
                    not_per_atom=["positions_gradients"] + self.per_structure_targets,
                    is_distributed=self.placement.is_distributed,
                    device=self.placement.device,
                )
            )
        return metrics


def _unit_scales(scaler: torch.nn.Module, names: List[str]) -> bool:
    """Whether the per-target scales of all ``names`` are exactly one (not fitted).

    :param scaler: the model's scaler
    :param names: the target names
    :return: whether scaling would multiply every value by one
    """
    scales = scaler.model.per_target_scales
    return all(
        name not in scales
        or all(bool((block.values == 1.0).all()) for block in scales[name].blocks())
        for name in names
    )


def _is_on(
    systems: List[System],
    targets: Dict[str, TensorMap],
    extra_data: Optional[Dict[str, TensorMap]],
    dtype: torch.dtype,
    device: torch.device,
) -> bool:
    """Whether a batch already has the training dtype and device.

    ``batch_to`` would then only rebuild every system and tensor map unchanged (0.6 ms
    a batch of 8 molecules; the prepared datasets are converted once, before training).

    :param systems: the systems of the batch
    :param targets: its targets
    :param extra_data: its extra data (``*_mask`` entries are boolean)
    :param dtype: the training dtype
    :param device: the training device
    :return: whether every system and every block has ``dtype`` and ``device``
    """
    expected = [(system.positions, dtype) for system in systems]
    for name, tensor_map in list(targets.items()) + list((extra_data or {}).items()):
        wanted = torch.bool if name.endswith("_mask") else dtype
        expected += [(block.values, wanted) for block in tensor_map.blocks()]
    return all(
        tensor.dtype == wanted and tensor.device == device for tensor, wanted in expected
    )
