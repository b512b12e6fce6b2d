"""A wall-clock or CPU-time budget for a training run.

Training stops after the last epoch that ends within the budget: after every epoch, the
run stops if one more epoch (as long as the last one) would not fit in what is left.
The learning-rate schedule follows the budget instead of ``num_epochs``: after every
epoch, :py:meth:`TimeBudget.expected_epochs` estimates from the mean epoch time how many
epochs the run will reach, and the schedule of :py:func:`.trainer.get_scheduler` decays
to ``final_learning_rate`` at that epoch. The best model is selected on the validation
set after every epoch as usual, so the checkpoint that ``mtt train`` exports at the end
is the best one of the epochs that were run.
"""

import math
import time
from typing import List, Optional


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
            the mean epoch time of this run, at most ``num_epochs`` and at least the
            epochs done
        """
        if self.seconds is None or len(self.epoch_times) == 0:
            return num_epochs
        mean = sum(self.epoch_times) / len(self.epoch_times)
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
