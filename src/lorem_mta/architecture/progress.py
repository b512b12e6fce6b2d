"""The per-epoch lines of a LOREM training run: errors, learning rate and progress.

:py:class:`ProgressLog` decides which epochs are logged (the first, every
``log_interval``-th, the last, and the last one that fits in a time budget), writes their
errors through metatrain's :py:class:`~metatrain.utils.logging.MetricLogger` (which also
fills ``train.csv``) and adds a line with the progress and the time left.
"""

import logging
import time
from typing import Dict, Optional

from metatrain.utils.logging import ROOT_LOGGER, MetricLogger

from .budget import TimeBudget


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


class ProgressLog:
    """The log of the epochs of one training run; its clock starts on creation.

    :param dataset_info: the model's dataset information (targets and units)
    :param start_epoch: the first epoch of this run (counted from 0)
    :param num_epochs: the ``num_epochs`` option
    :param log_interval: the ``log_interval`` option
    :param rank: the process rank (only rank 0 writes the progress line)
    """

    def __init__(
        self,
        dataset_info: object,
        start_epoch: int,
        num_epochs: int,
        log_interval: int,
        rank: int,
    ) -> None:
        self.dataset_info = dataset_info
        self.start_epoch = start_epoch
        self.num_epochs = num_epochs
        self.log_interval = log_interval
        self.rank = rank
        self.metric_logger: Optional[MetricLogger] = None
        self.started = time.monotonic()

    def is_due(self, epoch: int, last_in_budget: bool) -> bool:
        """Whether ``epoch`` is logged.

        :param epoch: the epoch (counted from 0)
        :param last_in_budget: whether it is probably the last one of a time budget
        :return: the first, every ``log_interval``-th, the last and ``last_in_budget``
        """
        return (
            epoch == self.start_epoch
            or (epoch + 1) % self.log_interval == 0  # epochs counted from 1
            or epoch == self.num_epochs - 1
            or last_in_budget
        )

    def log(
        self,
        epoch: int,
        train_metrics: Dict[str, float],
        val_metrics: Dict[str, float],
        learning_rate: float,
        horizon: int,
        budget: TimeBudget,
    ) -> None:
        """Log the errors of an epoch, then the progress of the run.

        :param epoch: the epoch that just finished (counted from 0)
        :param train_metrics: its training metrics
        :param val_metrics: its validation metrics
        :param learning_rate: the current learning rate
        :param horizon: the epochs the run is expected to reach (``num_epochs``, or
            those that fit in the time budget)
        :param budget: the time budget (described in the progress line, if any)
        """
        metrics = [train_metrics, val_metrics]
        if self.metric_logger is None:
            self.metric_logger = MetricLogger(
                log_obj=ROOT_LOGGER,
                dataset_info=self.dataset_info,
                initial_metrics=metrics,
                names=["training", "validation"],
            )
        self.metric_logger.log(
            metrics=metrics,
            epoch=epoch + 1,  # counted from 1 in the log
            rank=self.rank,
            learning_rate=learning_rate,
        )
        if self.rank != 0:
            return
        elapsed = time.monotonic() - self.started
        # with a time budget: out of the epochs expected to fit in it
        expected = max(horizon, epoch + 1)
        line = progress_line(epoch, self.start_epoch, expected, elapsed)
        if budget.seconds is not None:
            line += f" ({budget.describe()})"
        logging.info(line)
