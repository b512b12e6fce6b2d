"""Trainer of the ``experimental.lorem_mta`` architecture.

Follows the structure of ``metatrain/soap_bpnn/trainer.py`` of metatrain 2026.4.1
(release v2026.4, commit e2af06720): composition baseline and optional scaler fitted
first and removed from the targets in the collate function, per-atom energy and force
(and stress/virial) losses through ``LossAggregator``, validation every epoch with
best-model selection, ``MetricLogger`` logs, distributed data parallel with metatrain's
SLURM helpers. Differences, to keep in mind when re-syncing with upstream:

* learning-rate schedules: the paper's ``linear_decay`` (constant, then linear decay to
  ``final_learning_rate``), ``cosine`` (with warm-up) and ``constant``;
* Adam or AdamW with weight decay, optional gradient clipping;
* no atomic-basis target transforms (LOREM has a single energy target);
* fine-tuning starts with a fresh optimizer, schedule and best-model tracking;
* checkpoints are written atomically (temporary file in the same folder, then
  ``os.replace``), so an interrupted write never leaves a truncated ``.ckpt``;
* a string ``loss`` (``"mse"``, when the trainer is used outside ``mtt train``) is
  expanded to one term per target and gradient;
* the per-system inputs the model requests (``charge`` with ``total_charge: true``) are
  attached to the systems from the datasets' extra data, as metatrain's PET does, but a
  dataset without them is an error instead of a warning;
* an optional dipole target (see :py:mod:`lorem_mta.architecture.model`) is trained
  alongside the energy with its own loss term; its scale is fixed to 1 so that the
  model's dipoles stay those of its ``lorem::charges``;
* the datasets are checked before training and a diverging run stops with an error
  (:py:mod:`.guards`); the best-model selection skips non-finite metrics.
"""

import copy
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Union

import torch
import torch.distributed
from metatrain.composition import train_or_load_composition_model
from metatrain.scaler import train_or_load_scaler
from metatrain.utils.abc import ModelInterface, TrainerInterface
from metatrain.utils.additive import get_remove_additive_transform
from metatrain.utils.data import (
    CollateFn,
    CombinedDataLoader,
    Dataset,
    TargetInfo,
    build_train_dataloaders,
    build_val_dataloaders,
    get_num_workers,
    validate_num_workers,
)
from metatrain.utils.distributed.distributed_data_parallel import (
    DistributedDataParallel,
)
from metatrain.utils.distributed.slurm import (
    DistributedEnvironment,
    initialize_slurm_nccl_process_group,
    resolve_distributed,
)
from metatrain.utils.evaluate_model import evaluate_model
from metatrain.utils.io import check_file_extension
from metatrain.utils.logging import ROOT_LOGGER, MetricLogger
from metatrain.utils.loss import LossAggregator
from metatrain.utils.metrics import MAEAccumulator, RMSEAccumulator, get_selected_metric
from metatrain.utils.neighbor_lists import (
    get_requested_neighbor_lists,
    get_system_with_neighbor_lists_transform,
)
from metatrain.utils.per_atom import average_by_num_atoms
from metatrain.utils.scaler import get_remove_scale_transform
from metatrain.utils.system_data import get_system_data_transform
from metatrain.utils.transfer import batch_to
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DistributedSampler

from ..documentation import TrainerHypers
from ..files import write_atomically
from . import checkpoints, guards, reporting
from .batching import InProcessCollateFn, is_on_disk, prepare_datasets, unpack
from .budget import TimeBudget
from .model import LoremMta


def get_scheduler(
    optimizer: torch.optim.Optimizer,
    hypers: TrainerHypers,
    steps_per_epoch: int,
    horizon: Optional[Callable[[], int]] = None,
    span: Optional[int] = None,
) -> LambdaLR:
    """Learning-rate schedule, stepped after every optimizer step.

    :param optimizer: the optimizer
    :param hypers: trainer hyperparameters (``scheduler``, ``learning_rate``,
        ``final_learning_rate``, ``num_epochs``, ``decay_start_epoch``,
        ``warmup_fraction``)
    :param steps_per_epoch: number of optimizer steps per epoch
    :param horizon: the number of epochs the schedule spans, read at every step
        (``num_epochs`` if not given); with a time budget, the epochs that fit in it
        (see :py:mod:`.budget`). When it is shorter than ``num_epochs``, the linear
        decay starts at ``decay_start_epoch`` or half of it, whichever comes first.
    :param span: the epochs of the full schedule (``num_epochs`` if not given; after a
        restart, see :py:func:`.reporting.schedule_horizon`); later epochs run at
        ``final_learning_rate``
    :return: the scheduler
    """
    num_epochs = hypers["num_epochs"] if span is None else span
    final_ratio = hypers["final_learning_rate"] / hypers["learning_rate"]
    name = hypers["scheduler"]

    def epochs() -> int:
        return num_epochs if horizon is None else min(num_epochs, horizon())

    if name == "constant":

        def factor(step: int) -> float:
            return 1.0

    elif name == "linear_decay":

        def factor(step: int) -> float:
            total_epochs = epochs()
            total_steps = max(1, total_epochs * steps_per_epoch)
            decay_epoch = hypers["decay_start_epoch"]
            if total_epochs < num_epochs:  # shortened by a time budget
                decay_epoch = min(decay_epoch, total_epochs // 2)
            decay_start = decay_epoch * steps_per_epoch
            if step <= decay_start:
                return 1.0
            progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
            return 1.0 + (final_ratio - 1.0) * progress

    elif name == "cosine":

        def factor(step: int) -> float:
            total_steps = max(1, epochs() * steps_per_epoch)
            warmup_steps = int(hypers["warmup_fraction"] * total_steps)
            if step < warmup_steps:
                return step / max(1, warmup_steps)
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return final_ratio + (1.0 - final_ratio) * 0.5 * (
                1.0 + math.cos(math.pi * progress)
            )

    else:
        raise ValueError(f"unknown learning-rate scheduler '{name}'")

    return LambdaLR(optimizer, lr_lambda=factor)


class Trainer(TrainerInterface[TrainerHypers]):
    """Train a :py:class:`~lorem_mta.architecture.model.LoremMta` model.

    :param hypers: trainer hyperparameters, see
        :py:class:`lorem_mta.documentation.TrainerHypers`
    """

    __checkpoint_version__ = 3

    def __init__(self, hypers: TrainerHypers):
        super().__init__(hypers)
        self.optimizer_state_dict: Optional[Dict[str, Any]] = None
        self.scheduler_state_dict: Optional[Dict[str, Any]] = None
        self.epoch: Optional[int] = None
        self.best_epoch: Optional[int] = None
        self.best_metric: Optional[float] = None
        self.best_model_state_dict: Optional[Dict[str, Any]] = None
        self.best_optimizer_state_dict: Optional[Dict[str, Any]] = None
        # epochs spanned by the learning-rate schedule, errors of the best epoch
        self.schedule_epochs: Optional[int] = None
        self.best_errors: Optional[Dict[str, Any]] = None

    def train(
        self,
        model: LoremMta,
        dtype: torch.dtype,
        devices: List[torch.device],
        train_datasets: List[Union[Dataset, torch.utils.data.Subset]],
        val_datasets: List[Union[Dataset, torch.utils.data.Subset]],
        checkpoint_dir: str,
    ) -> None:
        """Train ``model``; its weights are updated in place.

        :param model: the model
        :param dtype: dtype of the network during training (float32 or float64)
        :param devices: devices to train on (only the first one is used without DDP)
        :param train_datasets: training datasets
        :param val_datasets: validation datasets
        :param checkpoint_dir: folder for intermediate checkpoints and the fitted
            baseline
        """
        if dtype not in LoremMta.__supported_dtypes__:
            raise ValueError(f"LOREM can be trained in float32 or float64, not {dtype}")
        hypers = self.hypers
        _check_hypers(hypers)
        budget = TimeBudget(hypers["time_budget"], hypers["time_budget_clock"])

        is_distributed = resolve_distributed(hypers.get("distributed"))
        if is_distributed:
            if len(devices) > 1:
                raise ValueError(
                    "Requested distributed training with the `multi-gpu` device. To run "
                    "distributed training with LOREM, set `device` to cuda."
                )
            if devices[0].type == "cpu":
                device, world_size, rank = _initialize_cpu_process_group(
                    hypers["distributed_port"]
                )
            else:
                device, world_size, rank = initialize_slurm_nccl_process_group(
                    hypers["distributed_port"]
                )
            logging.info(f"Training on {world_size} devices with dtype {dtype}")
        else:
            device, world_size, rank = devices[0], 1, 0
            logging.info(f"Training on device {device} with dtype {dtype}")

        _check_system_inputs(
            list(model.requested_inputs().keys()), train_datasets, val_datasets
        )
        train_targets = model.dataset_info.targets
        _check_loss_gradients(_loss_config(hypers["loss"], train_targets), train_targets)
        guards.check_datasets(train_datasets, val_datasets, train_targets, checkpoint_dir)
        guards.check_force_keys(train_targets, checkpoint_dir)
        guards.check_atomic_types(train_datasets, val_datasets)

        # the network in `dtype`; baseline and scaler in float64 (large, exact values)
        model.to(device=device, dtype=dtype)
        model.additive_models.to(dtype=torch.float64)
        model.scaler.to(dtype=torch.float64)

        train_or_load_composition_model(
            composition_model=model.additive_models[0],
            atomic_baseline=hypers["atomic_baseline"],
            train_datasets=train_datasets,
            other_additive_models=list(model.additive_models[1:]),
            batch_size=hypers["batch_size"],
            is_distributed=is_distributed,
            checkpoint_dir=checkpoint_dir,
        )
        if hypers["scale_targets"]:
            if isinstance(hypers["fixed_scaling_weights"], str) and not isinstance(
                hypers["atomic_baseline"], str
            ):
                raise ValueError(
                    "a scaler checkpoint (`fixed_scaling_weights`) needs a composition "
                    "checkpoint as `atomic_baseline` too"
                )
            train_or_load_scaler(
                scaler=model.scaler,
                fixed_weights=_fixed_scaling_weights(
                    hypers["fixed_scaling_weights"], model.dipole_target
                ),
                train_datasets=train_datasets,
                additive_models=model.additive_models,
                batch_size=hypers["batch_size"],
                is_distributed=is_distributed,
                checkpoint_dir=checkpoint_dir,
                per_structure_targets=hypers["per_structure_targets"],
            )

        logging.info("Setting up data loaders")
        train_dataloader, val_dataloader, epoch_samplers = self._dataloaders(
            model, train_datasets, val_datasets, dtype, device, is_distributed, world_size, rank
        )

        raw_model = model
        if is_distributed:
            # CPU modules take no device_ids
            device_ids = None if device.type == "cpu" else [device]
            model = DistributedDataParallel(model, device_ids=device_ids)

        loss_config = _loss_config(hypers["loss"], train_targets)
        loss_fn = LossAggregator(targets=train_targets, config=loss_config)
        logging.info("Using the following loss functions:")
        for name, info in loss_fn.metadata.items():
            logging.info(f"{name}: {info}")

        optimizer = _optimizer(model, hypers)
        start_epoch = 0 if self.epoch is None else self.epoch + 1
        # the epochs the schedule spans: `num_epochs` (a restart keeps the first run's),
        # or those that fit in the budget
        stored_span = self.schedule_epochs
        self.schedule_epochs = reporting.schedule_horizon(hypers, stored_span, start_epoch)
        horizon = [self.schedule_epochs]
        lr_scheduler = get_scheduler(
            optimizer,
            hypers,
            len(train_dataloader),
            horizon=lambda: horizon[0],
            span=self.schedule_epochs,
        )
        for number, line in enumerate(reporting.describe_schedule(hypers, horizon[0])):
            (logging.warning if number > 0 else logging.info)(line)
        reporting.log_restart_schedule(hypers, stored_span, self.schedule_epochs)
        if not raw_model.has_new_targets:
            # restart: continue the optimizer and the schedule where they stopped
            if self.optimizer_state_dict is not None:
                optimizer.load_state_dict(self.optimizer_state_dict)
            if self.scheduler_state_dict is not None:
                lr_scheduler.load_state_dict(self.scheduler_state_dict)
        logging.info(f"Initial learning rate: {optimizer.param_groups[0]['lr']}")

        per_structure_targets = hypers["per_structure_targets"]
        # scaling steps that would multiply by one are skipped (same numbers, less time)
        has_per_property_scales = any(
            name in raw_model.scaler.model.multi_property_target_names for name in train_targets
        )
        unit_scales = _unit_scales(raw_model.scaler, list(train_targets))
        use_mae = hypers["log_mae"] or hypers["best_model_metric"] == "mae_prod"
        num_epochs = hypers["num_epochs"]
        best = reporting.BestEpoch(raw_model.dataset_info)
        best.load(self.best_errors)
        if self.best_metric is None:
            self.best_metric = float("inf")

        def run_batch(batch: Any, is_training: bool) -> Tuple[Any, ...]:
            """Predictions and targets of one batch, per atom and in scaled units."""
            systems, targets, extra_data = unpack(batch)
            systems, targets, extra_data = batch_to(
                systems, targets, extra_data, dtype=dtype, device=device
            )
            predictions = evaluate_model(
                model,
                systems,
                {key: train_targets[key] for key in targets},
                is_training=is_training,
            )
            predictions = average_by_num_atoms(predictions, systems, per_structure_targets)
            targets = average_by_num_atoms(targets, systems, per_structure_targets)
            # per-property scales (multi-property targets only) before the loss; the
            # dataloader already removed the per-target scales from the targets
            if has_per_property_scales:
                predictions = raw_model.scaler.apply_scales(
                    systems,
                    predictions,
                    remove=False,
                    use_per_target_scales=False,
                    use_per_property_scales=True,
                )
            return systems, predictions, targets, extra_data

        def accumulate(
            accumulators: List[Any], systems: Any, predictions: Any, targets: Any, extra: Any
        ) -> None:
            """Add a batch to the error accumulators, in the units of the dataset."""
            scaled = [predictions, targets]
            if not unit_scales:
                scaled = [
                    raw_model.scaler.apply_scales(
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

        def finalize(accumulators: List[Any], loss: float) -> Dict[str, float]:
            metrics: Dict[str, float] = {"loss": loss}
            for accumulator in accumulators:
                metrics.update(
                    accumulator.finalize(
                        not_per_atom=["positions_gradients"] + per_structure_targets,
                        is_distributed=is_distributed,
                        device=device,
                    )
                )
            return metrics

        def new_accumulators() -> List[Any]:
            separate = hypers["log_separate_blocks"]
            if use_mae:
                return [RMSEAccumulator(separate), MAEAccumulator(separate)]
            return [RMSEAccumulator(separate)]

        logging.info("Starting training")
        guard = guards.DivergenceGuard(hypers["learning_rate"])
        metric_logger: Optional[MetricLogger] = None
        epoch = start_epoch
        started = time.monotonic()
        last_in_budget = False
        for epoch in range(start_epoch, num_epochs):
            budget.start_epoch()
            for sampler in epoch_samplers:
                sampler.set_epoch(epoch)
            log_epoch = (
                epoch == start_epoch
                or (epoch + 1) % hypers["log_interval"] == 0  # epochs counted from 1
                or epoch == num_epochs - 1
                or last_in_budget
            )

            # -- training --
            model.train()
            train_accumulators = new_accumulators()
            train_loss = 0.0
            for batch in train_dataloader:
                optimizer.zero_grad()
                systems, predictions, targets, extra_data = run_batch(batch, True)
                loss = loss_fn(predictions, targets, extra_data)
                if is_distributed:
                    # every parameter must take part in the graph for DDP
                    for parameter in model.parameters():
                        loss = loss + 0.0 * parameter.sum()
                loss.backward()
                if hypers["grad_clip_norm"] is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), hypers["grad_clip_norm"])
                optimizer.step()
                lr_scheduler.step()

                if is_distributed:
                    torch.distributed.all_reduce(loss)
                train_loss += loss.item()
                guard.check_batch(epoch, train_loss)
                # every epoch: the errors of the best epoch are logged at the end
                accumulate(train_accumulators, systems, predictions, targets, extra_data)

            guard.check_epoch(epoch, train_loss)

            # -- validation --
            # gradients stay on when forces or stresses are evaluated
            with torch.set_grad_enabled(any(info.gradients for info in train_targets.values())):
                val_accumulators = new_accumulators()
                val_loss = 0.0
                for batch in val_dataloader:
                    systems, predictions, targets, extra_data = run_batch(batch, False)
                    loss = loss_fn(predictions, targets, extra_data)
                    if is_distributed:
                        torch.distributed.all_reduce(loss)
                    val_loss += loss.item()
                    accumulate(val_accumulators, systems, predictions, targets, extra_data)
            guard.check_validation(epoch, val_loss)
            val_metrics = finalize(val_accumulators, val_loss)
            train_metrics = finalize(train_accumulators, train_loss)

            # -- logging, best model, checkpoints --
            if log_epoch:
                if metric_logger is None:
                    metric_logger = MetricLogger(
                        log_obj=ROOT_LOGGER,
                        dataset_info=raw_model.dataset_info,
                        initial_metrics=[train_metrics, val_metrics],
                        names=["training", "validation"],
                    )
                metric_logger.log(
                    metrics=[train_metrics, val_metrics],
                    epoch=epoch + 1,  # counted from 1 in the log
                    rank=rank,
                    learning_rate=optimizer.param_groups[0]["lr"],
                )
                if rank == 0:
                    elapsed = time.monotonic() - started
                    # with a time budget: out of the epochs expected to fit in it
                    expected = max(horizon[0], epoch + 1)
                    line = progress_line(epoch, start_epoch, expected, elapsed)
                    if budget.seconds is not None:
                        line += f" ({budget.describe()})"
                    logging.info(line)

            val_metric = get_selected_metric(val_metrics, hypers["best_model_metric"])
            if guards.is_improvement(val_metric, self.best_metric):
                self.best_metric = val_metric
                self.best_model_state_dict = copy.deepcopy(raw_model.state_dict())
                self.best_epoch = epoch
                self.best_optimizer_state_dict = copy.deepcopy(optimizer.state_dict())
                best.update(epoch, train_metrics, val_metrics)
                self.best_errors = best.state()

            if (epoch + 1) % hypers["checkpoint_interval"] == 0:
                if is_distributed:
                    torch.distributed.barrier()
                self.optimizer_state_dict = optimizer.state_dict()
                self.scheduler_state_dict = lr_scheduler.state_dict()
                self.epoch = epoch
                if rank == 0:
                    path = Path(checkpoint_dir) / f"model_{epoch + 1}.ckpt"
                    self.save_checkpoint(raw_model, path)
                    guard.checkpoint_written(epoch, str(path))

            # -- time budget: stop before an epoch that would not end within it --
            budget.end_epoch()
            if budget.seconds is not None and epoch < num_epochs - 1:
                # (rank 0 decides for all: the epochs, logs and rates must agree)
                stop, horizon[0], last_in_budget = _same_on_all_ranks(
                    [
                        int(not budget.fits(1)),
                        budget.expected_epochs(epoch + 1, num_epochs),
                        int(not budget.fits(3)),  # the next epoch may be the last one
                    ],
                    is_distributed,
                    device,
                )
                if stop:
                    logging.info(
                        f"Stopping after epoch {epoch + 1} of {num_epochs}: another epoch "
                        f"({budget.epoch_times[-1]:.1f} s) would not fit in the time budget "
                        f"({budget.describe()}); the best model, from epoch "
                        f"{(self.best_epoch or 0) + 1}, is the one exported"
                    )
                    break

        # state for the checkpoint that `mtt train` writes after this function
        self.epoch = epoch
        self.optimizer_state_dict = optimizer.state_dict()
        self.scheduler_state_dict = lr_scheduler.state_dict()
        best.log(num_epochs, rank)

        if is_distributed:
            torch.distributed.destroy_process_group()

    def _dataloaders(
        self,
        model: LoremMta,
        train_datasets: List[Union[Dataset, torch.utils.data.Subset]],
        val_datasets: List[Union[Dataset, torch.utils.data.Subset]],
        dtype: torch.dtype,
        device: torch.device,
        is_distributed: bool,
        world_size: int,
        rank: int,
    ) -> Tuple[CombinedDataLoader, CombinedDataLoader, List[Any]]:
        """Training and validation data loaders.

        The neighbour lists are attached to the systems and the baseline and the scale
        are removed from the targets, once per structure before training (see
        :py:mod:`.batching`) or, with ``cache_neighbor_lists: false`` and for datasets
        on disk, by the collate function for every batch.
        """
        hypers = self.hypers
        if is_distributed:
            train_samplers: List[Optional[DistributedSampler]] = [
                DistributedSampler(
                    dataset, num_replicas=world_size, rank=rank, shuffle=True, drop_last=True
                )
                for dataset in train_datasets
            ]
            val_samplers: List[Optional[DistributedSampler]] = [
                DistributedSampler(
                    dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=False
                )
                for dataset in val_datasets
            ]
        else:
            train_samplers = [None] * len(train_datasets)
            val_samplers = [None] * len(val_datasets)

        # CPU/float64 copies of the baseline and scaler for the collate function
        model.additive_models[0].weights_to(device="cpu", dtype=torch.float64)
        additive_models = copy.deepcopy(
            model.additive_models.to(dtype=torch.float64, device="cpu")
        )
        model.additive_models.to(device)
        model.additive_models[0].weights_to(device=device, dtype=torch.float64)
        model.scaler.scales_to(device="cpu", dtype=torch.float64)
        scaler = copy.deepcopy(model.scaler.to(dtype=torch.float64, device="cpu"))
        model.scaler.to(device)
        model.scaler.scales_to(device=device, dtype=torch.float64)

        train_targets = model.dataset_info.targets
        system_inputs = list(model.requested_inputs().keys())
        input_transforms = (
            [get_system_data_transform(system_inputs)] if len(system_inputs) > 0 else []
        )
        transforms = [
            get_system_with_neighbor_lists_transform(get_requested_neighbor_lists(model)),
            *input_transforms,
            get_remove_additive_transform(additive_models, train_targets),
            get_remove_scale_transform(scaler),
        ]

        if hypers["num_workers"] is None:
            num_workers = get_num_workers()
            logging.info(f"Using {num_workers} workers for data loading")
        else:
            num_workers = hypers["num_workers"]
            validate_num_workers(num_workers)

        # the neighbour lists, baseline and scale of fixed structures once, not per batch
        # (datasets read from disk on demand keep metatrain's per-batch pipeline)
        on_disk = any(is_on_disk(dataset) for dataset in train_datasets + val_datasets)
        if hypers["cache_neighbor_lists"] and not on_disk:
            logging.info("Computing the neighbour lists of all structures once")
            target_keys = list(train_targets.keys())
            # in the training dtype once, unless worker processes serialise them
            prepared_dtype = dtype if num_workers == 0 else None
            train_datasets = prepare_datasets(
                train_datasets, target_keys, transforms, prepared_dtype
            )
            val_datasets = prepare_datasets(
                val_datasets, target_keys, transforms, prepared_dtype
            )
            transforms = []
        collate_class = InProcessCollateFn if num_workers == 0 else CollateFn
        collate_fn = collate_class(target_keys=list(train_targets.keys()), callables=transforms)

        train_dataloaders, epoch_samplers = build_train_dataloaders(
            train_datasets=train_datasets,
            train_distributed_samplers=train_samplers,
            collate_fn_train=collate_fn,
            batch_size=hypers["batch_size"],
            max_atoms_per_batch=hypers["max_atoms_per_batch"],
            min_atoms_per_batch=hypers["min_atoms_per_batch"],
            num_workers=num_workers,
        )
        val_dataloaders = build_val_dataloaders(
            val_datasets=val_datasets,
            val_distributed_samplers=val_samplers,
            collate_fn_val=collate_fn,
            batch_size=hypers["batch_size"],
            max_atoms_per_batch=hypers["max_atoms_per_batch"],
            num_workers=num_workers,
        )
        return (
            CombinedDataLoader(train_dataloaders, shuffle=True),
            CombinedDataLoader(val_dataloaders, shuffle=False),
            epoch_samplers,
        )

    def save_checkpoint(self, model: ModelInterface, path: Union[str, Path]) -> None:
        """Write model and trainer state to ``path`` (atomically).

        :param model: the model
        :param path: the checkpoint file (``.ckpt``)
        """
        checkpoint = model.get_checkpoint()
        checkpoint.update(
            {
                "train_hypers": self.hypers,
                "trainer_ckpt_version": self.__checkpoint_version__,
                "epoch": self.epoch,
                "optimizer_state_dict": self.optimizer_state_dict,
                "scheduler_state_dict": self.scheduler_state_dict,
                "best_epoch": self.best_epoch,
                "best_metric": self.best_metric,
                "best_optimizer_state_dict": self.best_optimizer_state_dict,
                "schedule_epochs": self.schedule_epochs,
                "best_errors": self.best_errors,
            }
        )
        if self.best_model_state_dict is not None:
            checkpoint["best_model_state_dict"] = self.best_model_state_dict
        _atomic_save(checkpoint, Path(check_file_extension(path, ".ckpt")))

    @classmethod
    def load_checkpoint(
        cls,
        checkpoint: Dict[str, Any],
        hypers: TrainerHypers,
        context: Literal["restart", "finetune"],
    ) -> "Trainer":
        """Trainer state from a checkpoint.

        :param checkpoint: the checkpoint dictionary
        :param hypers: trainer hyperparameters of the new run
        :param context: ``"restart"`` continues optimizer, schedule, epoch count and
            best-model tracking; ``"finetune"`` starts all of them afresh
        :return: the trainer
        """
        trainer = cls(hypers)
        if context == "restart":
            trainer.optimizer_state_dict = checkpoint["optimizer_state_dict"]
            trainer.scheduler_state_dict = checkpoint["scheduler_state_dict"]
            trainer.epoch = checkpoint["epoch"]
            trainer.best_epoch = checkpoint["best_epoch"]
            trainer.best_metric = checkpoint["best_metric"]
            trainer.best_model_state_dict = checkpoint["best_model_state_dict"]
            trainer.best_optimizer_state_dict = checkpoint["best_optimizer_state_dict"]
            trainer.schedule_epochs = checkpoint["schedule_epochs"]
            trainer.best_errors = checkpoint["best_errors"]
        elif context != "finetune":
            raise ValueError(f"unknown context '{context}' for loading a trainer")
        return trainer

    @classmethod
    def upgrade_checkpoint(cls, checkpoint: Dict[str, Any]) -> Dict[str, Any]:
        """Upgrade the trainer part of an older checkpoint, see :py:mod:`.checkpoints`.

        :param checkpoint: the checkpoint dictionary, modified in place
        :return: the upgraded checkpoint
        """
        return checkpoints.upgrade(checkpoint, "trainer", cls.__checkpoint_version__)


def _check_hypers(hypers: TrainerHypers) -> None:
    """Reject invalid combinations with a message naming the offending value."""
    if not hypers["learning_rate"] > 0.0:
        raise ValueError(f"learning_rate must be positive, got {hypers['learning_rate']}")
    if not 0.0 < hypers["final_learning_rate"] <= hypers["learning_rate"]:
        raise ValueError(
            "final_learning_rate must be positive and at most learning_rate "
            f"({hypers['learning_rate']}), got {hypers['final_learning_rate']}"
        )
    if not 0.0 <= hypers["warmup_fraction"] < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {hypers['warmup_fraction']}")
    if hypers["decay_start_epoch"] < 0:
        raise ValueError(
            f"decay_start_epoch must be non-negative, got {hypers['decay_start_epoch']}"
        )
    if hypers["grad_clip_norm"] is not None and not hypers["grad_clip_norm"] > 0.0:
        raise ValueError(f"grad_clip_norm must be positive, got {hypers['grad_clip_norm']}")
    if hypers["weight_decay"] < 0.0:
        raise ValueError(f"weight_decay must be non-negative, got {hypers['weight_decay']}")
    for name in ["log_interval", "checkpoint_interval", "batch_size"]:
        if hypers[name] < 1:
            raise ValueError(f"{name} must be at least 1, got {hypers[name]}")


def _check_system_inputs(
    names: List[str],
    train_datasets: List[Union[Dataset, torch.utils.data.Subset]],
    val_datasets: List[Union[Dataset, torch.utils.data.Subset]],
) -> None:
    """Fail before training when a dataset lacks a per-system input the model needs.

    metatrain's PET only warns and trains on default values; for LOREM's
    ``total_charge`` that would silently train a model that cannot tell charge states
    apart, so it is an error naming the dataset, the missing field and the fix.
    """
    if len(names) == 0:
        return
    splits = [("training", train_datasets), ("validation", val_datasets)]
    for split, datasets in splits:
        for index, dataset in enumerate(datasets):
            if len(dataset) == 0:
                continue
            sample = dataset[0]
            fields = set(sample._asdict() if hasattr(sample, "_asdict") else sample)
            missing = [name for name in names if name not in fields]
            if len(missing) == 0:
                continue
            which = f"{split} set" + (f" number {index}" if len(datasets) > 1 else "")
            others = sorted(fields - {"system"})
            raise ValueError(
                f"the model has `total_charge: true` and needs the per-structure input(s) "
                f"{missing}, but the {which} has no such field (it has {others}). Add "
                "the total charge of every structure to the `extra_data` section of this "
                "dataset in the options file, under the name 'charge', with `key` the "
                "per-structure (atoms.info) entry of the file that holds it, e.g.\n"
                "  extra_data:\n    charge:\n      key: total_charge\n      unit: e\n"
                "or train with `total_charge: false`"
            )


def _fixed_scaling_weights(weights: Any, dipole_target: str) -> Any:
    """The user's fixed scaler weights, with the dipole target's scale fixed to 1.

    The dipole is computed from the charges that the model outputs as
    ``lorem::charges``; a scale other than 1 would make the two inconsistent.
    """
    if dipole_target == "" or isinstance(weights, str):
        return weights
    weights = dict(weights)
    given = weights.get(dipole_target, 1.0)
    if given != 1.0:
        raise ValueError(
            f"the scale of the dipole target '{dipole_target}' is fixed to 1 (the "
            f"dipole is computed from the learned charges), got {given} in "
            "`fixed_scaling_weights`"
        )
    weights[dipole_target] = 1.0
    return weights


def _same_on_all_ranks(
    values: List[int], is_distributed: bool, device: torch.device
) -> List[int]:
    """``values`` of rank 0 on every rank (the time budget's decisions must agree)."""
    if not is_distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    torch.distributed.broadcast(tensor, src=0)
    return [int(v) for v in tensor.tolist()]


def _unit_scales(scaler: torch.nn.Module, names: List[str]) -> bool:
    """Whether the per-target scales of all ``names`` are exactly one (not fitted)."""
    scales = scaler.model.per_target_scales
    return all(
        name not in scales
        or all(bool((block.values == 1.0).all()) for block in scales[name].blocks())
        for name in names
    )


def _optimizer(model: torch.nn.Module, hypers: TrainerHypers) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    # the multi-tensor ("foreach") update, which torch only picks by itself on GPUs: the
    # same arithmetic, without a Python loop over the parameters
    options = {"lr": hypers["learning_rate"], "weight_decay": hypers["weight_decay"]}
    if hypers["optimizer"] == "adamw":
        return torch.optim.AdamW(parameters, foreach=True, **options)
    if hypers["optimizer"] == "adam":
        return torch.optim.Adam(parameters, foreach=True, **options)
    raise ValueError(f"unknown optimizer '{hypers['optimizer']}'")


def _loss_config(loss: Any, targets: Dict[str, TargetInfo]) -> Dict[str, Any]:
    """The per-target loss configuration (``mtt train`` already expanded strings)."""
    if not isinstance(loss, str):
        return loss

    def term() -> Dict[str, Any]:
        return {"type": loss, "weight": 1.0, "reduction": "mean"}

    return {
        name: {**term(), "gradients": {gradient: term() for gradient in info.gradients}}
        for name, info in targets.items()
    }


_GRADIENT_NAMES = {"positions": "forces", "strain": "stress or virial"}
_DEFAULT_GRADIENT_LOSS = {"type": "mse", "weight": 1.0, "reduction": "mean"}


def _check_loss_gradients(loss: Dict[str, Any], targets: Dict[str, TargetInfo]) -> None:
    """Fail when a configured force/stress loss has no data to act on.

    metatrain only logs "No forces found" when the forces of a target can not be read,
    and then silently drops the force term of the loss. A gradient loss that was
    configured explicitly (anything but metatrain's default expansion) on a dataset
    without that gradient is almost always a wrong key in the options: make it an error.
    """
    for name, config in loss.items():
        if name not in targets:
            continue
        for gradient, settings in (config.get("gradients") or {}).items():
            if gradient in targets[name].gradients:
                continue
            explicit = {k: settings[k] for k in settings if k in _DEFAULT_GRADIENT_LOSS}
            if explicit == _DEFAULT_GRADIENT_LOSS and len(settings) == len(explicit):
                continue  # metatrain's default: energy-only training is fine
            label = _GRADIENT_NAMES.get(gradient, f"'{gradient}' gradients")
            raise ValueError(
                f"the loss asks for {label} of target '{name}' ({dict(settings)}), but "
                f"the training set has no {label} for it: check the '{label.split()[0]}' "
                f"entry (file and key) of the '{name}' target in the options, or remove "
                "the corresponding loss entry"
            )


def _atomic_save(checkpoint: Dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it."""

    def write(temporary: str) -> None:
        with open(temporary, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())

    write_atomically(str(path), write)


def progress_line(epoch: int, start_epoch: int, num_epochs: int, elapsed: float) -> str:
    """How far training is and how long the rest will take, for the log.

    :param epoch: the epoch that just finished (counted from 0)
    :param start_epoch: the first epoch of this run (after a restart, not 0)
    :param num_epochs: the last epoch plus one
    :param elapsed: seconds since the first epoch of this run started
    :return: e.g. ``"Progress: epoch 12/30 (40 %), 41.2 s/epoch, about 12 min left"``
    """
    done = epoch + 1
    per_epoch = elapsed / max(1, done - start_epoch)
    remaining = per_epoch * (num_epochs - done)
    if remaining >= 5400:
        left = f"{remaining / 3600:.1f} h"
    elif remaining >= 90:
        left = f"{remaining / 60:.0f} min"
    else:
        left = f"{remaining:.0f} s"
    return (
        f"Progress: epoch {done}/{num_epochs} ({100 * done / num_epochs:.0f} %), "
        f"{per_epoch:.1f} s/epoch, about {left} left"
    )


def _initialize_cpu_process_group(port: int) -> Tuple[torch.device, int, int]:
    """Start a gloo process group for distributed training on CPUs.

    metatrain's SLURM launcher starts NCCL (GPU) process groups only; this is the same
    set-up (one process per SLURM task, rank 0's node as the master) with the gloo
    backend, so that ``srun mtt train`` with ``device: cpu`` spreads the batches over
    CPU processes.

    :param port: the TCP port of the rendezvous on the master node
    :return: the device (CPU), the number of processes and the rank of this one
    """
    environment = DistributedEnvironment(port)
    torch.distributed.init_process_group(
        backend="gloo", world_size=environment.world_size, rank=environment.rank
    )
    return torch.device("cpu"), torch.distributed.get_world_size(), torch.distributed.get_rank()
