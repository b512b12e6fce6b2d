"""A wall-clock or CPU-time budget for a training run.

Training stops after the last epoch that ends within the budget: after every epoch, the
run stops if one more epoch (as long as the last one) would not fit in what is left.
The learning-rate schedule follows the budget instead of ``num_epochs``: after every
epoch, :py:meth:`TimeBudget.expected_epochs` estimates from the mean epoch time (the
first epoch left out once others ended: it carries one-off costs such as compilation)
how many epochs the run will reach, and the schedule of
:py:func:`.optimization.get_scheduler` decays to ``final_learning_rate`` at that epoch.
The best model is selected on the validation set after every epoch as usual, so the
checkpoint that ``mtt train`` exports at the end is the best one of the epochs that
were run. :py:func:`decide` makes these decisions after every epoch.
"""

import math
import time
from typing import Callable, List, NamedTuple, Optional


class TimeBudget:
    """Seconds of wall-clock or CPU time that a training run may use.

    The clock starts when the object is created (at the start of the trainer's
    ``train``, so that fitting the baseline and preparing the data count as well).

    :param seconds: the budget, ``None`` for no limit
    :param clock: ``"wall"`` (elapsed real time) or ``"cpu"`` (CPU time of the training
        process, all its threads; data-loader worker processes are not counted)
    """

    def __init__(self, seconds: Optional[float], clock: str = "wall") -> None:
        if clock not in ("wall", "cpu"):
            raise ValueError(f"time_budget_clock must be 'wall' or 'cpu', got '{clock}'")
        if seconds is not None and not seconds > 0.0:
            raise ValueError(f"time_budget must be positive, got {seconds}")
        self.seconds = seconds
        self.clock = clock
        self._clock = time.process_time if clock == "cpu" else time.monotonic
        self.start = self.now()
        self.epoch_times: List[float] = []
        self._epoch_start = self.start

    def now(self) -> float:
        """Current reading of the clock, in seconds."""
        return self._clock()

    def used(self) -> float:
        """Seconds used since the start."""
        return self.now() - self.start

    def start_epoch(self) -> None:
        """Mark the start of an epoch."""
        self._epoch_start = self.now()

    def end_epoch(self) -> None:
        """Mark the end of an epoch and record its duration."""
        self.epoch_times.append(self.now() - self._epoch_start)

    def expected_epochs(self, epochs_done: int, num_epochs: int) -> int:
        """Number of epochs (counted from 0, as ``num_epochs``) the run will reach.

        :param epochs_done: epochs finished so far, including those of earlier runs
            that this one restarts from
        :param num_epochs: the configured number of epochs
        :return: ``num_epochs`` without a budget or before the first epoch ended;
            otherwise the epochs done plus those that fit in the rest of the budget at
            the mean time of this run's epochs after the first (of the first while it
            is the only one), at most ``num_epochs`` and at least the epochs done
        """
        if self.seconds is None or len(self.epoch_times) == 0:
            return num_epochs
        # the first epoch carries one-off costs (compile: true compiles during its first
        # batch, which can take longer than a hundred epochs): once others ended, they
        # alone give the epoch time
        times = self.epoch_times[1:] if len(self.epoch_times) > 1 else self.epoch_times
        mean = sum(times) / len(times)
        left = max(0.0, self.seconds - self.used())
        more = math.floor(left / mean) if mean > 0.0 else num_epochs
        return max(epochs_done, min(num_epochs, epochs_done + more))

    def fits(self, epochs: int = 1) -> bool:
        """Whether ``epochs`` more epochs as long as the last one fit in the budget.

        :param epochs: number of further epochs
        :return: always true without a budget or before the first epoch ended
        """
        if self.seconds is None or len(self.epoch_times) == 0:
            return True
        return self.used() + epochs * self.epoch_times[-1] <= self.seconds

    def describe(self) -> str:
        """The budget and its use so far, for the log."""
        return f"{self.used():.0f} s of the {self.seconds:g} s {self.clock}-clock budget used"


class Decision(NamedTuple):
    """What the time budget decides after an epoch."""

    stop: bool
    """stop now: one more epoch would not fit"""
    horizon: int
    """the epochs the run is expected to reach (the schedule decays to that epoch)"""
    last_in_budget: bool
    """the next epoch may be the last one (it is logged)"""


def decide(
    budget: TimeBudget,
    epochs_done: int,
    num_epochs: int,
    share: Callable[[List[int]], List[int]],
) -> Decision:
    """Whether to stop, and the epochs the run will reach, after an epoch.

    :param budget: the budget, with the epoch that just ended recorded
    :param epochs_done: epochs finished so far, including those of earlier runs
    :param num_epochs: the configured number of epochs
    :param share: gives every process the values of rank 0 (the epochs, logs and
        learning rates of a distributed run must agree)
    :return: the decision
    """
    values = [
        int(not budget.fits(1)),
        budget.expected_epochs(epochs_done, num_epochs),
        int(not budget.fits(3)),  # the next epoch may be the last one
    ]
    stop, horizon, last_in_budget = share(values)
    return Decision(bool(stop), horizon, bool(last_in_budget))


def stop_message(budget: TimeBudget, epochs_done: int, num_epochs: int, best_epoch: int) -> str:
    """The log line when the budget stops training.

    :param budget: the budget
    :param epochs_done: epochs finished so far (the last one counted from 1)
    :param num_epochs: the configured number of epochs
    :param best_epoch: the epoch of the best model (counted from 0)
    :return: the line
    """
    return (
        f"Stopping after epoch {epochs_done} of {num_epochs}: another epoch "
        f"({budget.epoch_times[-1]:.1f} s) would not fit in the time budget "
        f"({budget.describe()}); the best model, from epoch "
        f"{best_epoch + 1}, is the one exported"
    )
