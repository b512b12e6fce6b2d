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

:py:meth:`Trainer.train` reads as the steps of a run; the steps live in their own
modules: :py:mod:`.options` (checks of the options and the data),
:py:mod:`.distributed` (device and process group), :py:mod:`.loaders` (baseline, scaler
and data loaders), :py:mod:`.optimization` (optimizer and learning-rate schedule),
:py:mod:`.epoch` (one training and validation epoch), :py:mod:`.progress` (the
per-epoch log), :py:mod:`.budget` (the time budget) and :py:mod:`.checkpoints`
(writing and upgrading checkpoints).
"""

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

import torch
import torch.distributed
from metatrain.utils.abc import ModelInterface, TrainerInterface
from metatrain.utils.data import Dataset, TargetInfo
from metatrain.utils.distributed.distributed_data_parallel import (
    DistributedDataParallel,
)
from metatrain.utils.io import check_file_extension
from metatrain.utils.loss import LossAggregator
from metatrain.utils.metrics import get_selected_metric
from torch.optim.lr_scheduler import LambdaLR

from ..documentation import TrainerHypers
from . import budget as time_budget
from . import checkpoints, guards, options, reporting
from .distributed import Placement, place, same_on_all_ranks
from .epoch import EpochRunner
from .loaders import Loaders, build_dataloaders, fit_baseline
from .model import LoremMta
from .optimization import build_optimizer, get_scheduler, load_optimizer_state
from .progress import ProgressLog, progress_line

__all__ = ["Trainer", "get_scheduler", "progress_line"]


@dataclasses.dataclass
class _Run:
    """What the epochs of one :py:meth:`Trainer.train` call work with."""

    raw_model: LoremMta
    """the model itself (not its distributed wrapper)"""
    placement: Placement
    """device and distributed set-up of this process"""
    loaders: Loaders
    """training and validation loaders, distributed samplers of the training sets"""
    steps: EpochRunner
    """runs the epochs"""
    optimizer: torch.optim.Optimizer
    """the optimizer"""
    lr_scheduler: LambdaLR
    """the learning-rate schedule"""
    horizon: List[int]
    """one item: the epochs the run is expected to reach (read by the schedule)"""
    budget: time_budget.TimeBudget
    """the time budget"""
    best: reporting.BestEpoch
    """the errors of the best epoch"""
    start_epoch: int
    """the first epoch of this run (counted from 0)"""
    checkpoint_dir: str
    """folder of the intermediate checkpoints"""


class Trainer(TrainerInterface[TrainerHypers]):
    """Train a :py:class:`~lorem_mta.architecture.model.LoremMta` model.

    :param hypers: trainer hyperparameters, see
        :py:class:`lorem_mta.documentation.TrainerHypers`
    """

    __checkpoint_version__ = 4

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
        options.check_hypers(hypers)
        budget = time_budget.TimeBudget(hypers["time_budget"], hypers["time_budget_clock"])
        placement = place(hypers.get("distributed"), hypers["distributed_port"], devices, dtype)
        train_targets = model.dataset_info.targets
        options.check_before_training(
            hypers,
            list(model.requested_inputs().keys()),
            train_targets,
            train_datasets,
            val_datasets,
            checkpoint_dir,
        )
        fit_baseline(model, hypers, dtype, placement, train_datasets, checkpoint_dir)

        logging.info("Setting up data loaders")
        loaders = build_dataloaders(
            model, hypers, train_datasets, val_datasets, dtype, placement
        )
        wrapped = _distributed_model(model, placement)
        loss_fn = _loss_function(hypers, train_targets)
        optimizer = build_optimizer(wrapped, hypers)
        start_epoch = 0 if self.epoch is None else self.epoch + 1
        lr_scheduler, horizon = self._schedule(
            optimizer, len(loaders.train), start_epoch, restart=not model.has_new_targets
        )
        run = _Run(
            raw_model=model,
            placement=placement,
            loaders=loaders,
            steps=EpochRunner(
                wrapped, model, loss_fn, hypers, dtype, placement, loaders.kept_systems
            ),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            horizon=horizon,
            budget=budget,
            best=reporting.BestEpoch(model.dataset_info),
            start_epoch=start_epoch,
            checkpoint_dir=checkpoint_dir,
        )
        run.best.load(self.best_errors)
        if self.best_metric is None:
            self.best_metric = float("inf")
        self._run_epochs(run)
        if placement.is_distributed:
            torch.distributed.destroy_process_group()

    def _schedule(
        self,
        optimizer: torch.optim.Optimizer,
        steps_per_epoch: int,
        start_epoch: int,
        restart: bool,
    ) -> Tuple[LambdaLR, List[int]]:
        """The learning-rate schedule, continued where it stopped after a restart.

        :param optimizer: the optimizer (its state is restored on restart)
        :param steps_per_epoch: optimizer steps per epoch
        :param start_epoch: the first epoch of this run (counted from 0)
        :param restart: continue the stored optimizer and schedule (not fine-tuning)
        :return: the schedule, and a one-item list with the epochs the run is expected
            to reach, which the schedule reads at every step (a time budget updates it)
        """
        hypers = self.hypers
        # the epochs the schedule spans: `num_epochs` (a restart keeps the first run's),
        # or those that fit in the budget
        stored_span = self.schedule_epochs
        self.schedule_epochs = reporting.schedule_horizon(hypers, stored_span, start_epoch)
        horizon = [self.schedule_epochs]
        lr_scheduler = get_scheduler(
            optimizer,
            hypers,
            steps_per_epoch,
            horizon=lambda: horizon[0],
            span=self.schedule_epochs,
        )
        for number, line in enumerate(reporting.describe_schedule(hypers, horizon[0])):
            (logging.warning if number > 0 else logging.info)(line)
        reporting.log_restart_schedule(hypers, stored_span, self.schedule_epochs)
        if restart:
            # restart: continue the optimizer and the schedule where they stopped
            if self.optimizer_state_dict is not None:
                load_optimizer_state(optimizer, self.optimizer_state_dict)
            if self.scheduler_state_dict is not None:
                lr_scheduler.load_state_dict(self.scheduler_state_dict)
        logging.info(f"Initial learning rate: {optimizer.param_groups[0]['lr']}")
        return lr_scheduler, horizon

    def _run_epochs(self, run: _Run) -> None:
        """The epochs of the run, until ``num_epochs`` or the end of the time budget.

        :param run: what the epochs work with
        """
        hypers = self.hypers
        num_epochs = hypers["num_epochs"]
        train_dataloader, val_dataloader, epoch_samplers = run.loaders[:3]
        logging.info("Starting training")
        guard = guards.DivergenceGuard(hypers["learning_rate"])
        progress = ProgressLog(
            run.raw_model.dataset_info,
            run.start_epoch,
            num_epochs,
            hypers["log_interval"],
            run.placement.rank,
        )
        epoch = run.start_epoch
        last_in_budget = False
        for epoch in range(run.start_epoch, num_epochs):
            run.budget.start_epoch()
            for sampler in epoch_samplers:
                sampler.set_epoch(epoch)
            log_epoch = progress.is_due(epoch, last_in_budget)
            train_metrics, val_metrics = run.steps.run_epoch(
                epoch, train_dataloader, val_dataloader, run.optimizer, run.lr_scheduler, guard
            )
            if log_epoch:
                learning_rate = run.optimizer.param_groups[0]["lr"]
                progress.log(
                    epoch, train_metrics, val_metrics, learning_rate, run.horizon[0], run.budget
                )
            self._select_best(run, epoch, train_metrics, val_metrics)
            self._save_interval_checkpoint(run, epoch, guard)
            run.budget.end_epoch()
            if run.budget.seconds is not None and epoch < num_epochs - 1:
                decision = self._budget_decision(run, epoch)
                last_in_budget = decision.last_in_budget
                if decision.stop:
                    break

        # state for the checkpoint that `mtt train` writes after this function
        self.epoch = epoch
        self.optimizer_state_dict = run.optimizer.state_dict()
        self.scheduler_state_dict = run.lr_scheduler.state_dict()
        run.best.log(num_epochs, run.placement.rank)

    def _select_best(
        self,
        run: _Run,
        epoch: int,
        train_metrics: Dict[str, float],
        val_metrics: Dict[str, float],
    ) -> None:
        """Keep the model and optimizer state of a new best epoch (finite metrics only).

        :param run: what the epochs work with
        :param epoch: the epoch that just finished (counted from 0)
        :param train_metrics: its training metrics
        :param val_metrics: its validation metrics
        """
        val_metric = get_selected_metric(val_metrics, self.hypers["best_model_metric"])
        if not guards.is_improvement(val_metric, self.best_metric):
            return
        self.best_metric = val_metric
        self.best_model_state_dict = copy.deepcopy(run.raw_model.state_dict())
        self.best_epoch = epoch
        self.best_optimizer_state_dict = copy.deepcopy(run.optimizer.state_dict())
        run.best.update(epoch, train_metrics, val_metrics)
        self.best_errors = run.best.state()

    def _save_interval_checkpoint(
        self, run: _Run, epoch: int, guard: guards.DivergenceGuard
    ) -> None:
        """Write ``model_<epoch>.ckpt`` every ``checkpoint_interval`` epochs (rank 0).

        :param run: what the epochs work with
        :param epoch: the epoch that just finished (counted from 0)
        :param guard: told which checkpoint was written last (named when a later
            epoch diverges)
        """
        if (epoch + 1) % self.hypers["checkpoint_interval"] != 0:
            return
        if run.placement.is_distributed:
            torch.distributed.barrier()
        self.optimizer_state_dict = run.optimizer.state_dict()
        self.scheduler_state_dict = run.lr_scheduler.state_dict()
        self.epoch = epoch
        if run.placement.rank == 0:
            path = Path(run.checkpoint_dir) / f"model_{epoch + 1}.ckpt"
            self.save_checkpoint(run.raw_model, path)
            guard.checkpoint_written(epoch, str(path))

    def _budget_decision(self, run: _Run, epoch: int) -> time_budget.Decision:
        """After an epoch with a time budget: stop, or update the expected epochs.

        :param run: what the epochs work with (its ``horizon`` is updated)
        :param epoch: the epoch that just finished (counted from 0)
        :return: the decision of the budget
        """
        num_epochs = self.hypers["num_epochs"]
        placement = run.placement

        def share(values: List[int]) -> List[int]:
            return same_on_all_ranks(values, placement.is_distributed, placement.device)

        decision = time_budget.decide(run.budget, epoch + 1, num_epochs, share)
        run.horizon[0] = decision.horizon
        if decision.stop:
            logging.info(
                time_budget.stop_message(
                    run.budget, epoch + 1, num_epochs, self.best_epoch or 0
                )
            )
        return decision

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
        checkpoints.atomic_save(checkpoint, Path(check_file_extension(path, ".ckpt")))

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


def _distributed_model(model: LoremMta, placement: Placement) -> torch.nn.Module:
    """``model`` in metatrain's distributed wrapper for a distributed run.

    :param model: the model
    :param placement: device and distributed set-up of this process
    :return: the wrapper, or ``model`` itself without distributed training
    """
    if not placement.is_distributed:
        return model
    # CPU modules take no device_ids
    device_ids = None if placement.device.type == "cpu" else [placement.device]
    return DistributedDataParallel(model, device_ids=device_ids)


def _loss_function(hypers: TrainerHypers, targets: Dict[str, TargetInfo]) -> LossAggregator:
    """The loss of every target and gradient, logged at the start of training.

    :param hypers: trainer hyperparameters (``loss``)
    :param targets: the training targets
    :return: the loss
    """
    loss_fn = LossAggregator(
        targets=targets, config=options.loss_config(hypers["loss"], targets)
    )
    logging.info("Using the following loss functions:")
    for name, info in loss_fn.metadata.items():
        logging.info(f"{name}: {info}")
    return loss_fn
