"""What ``mtt train`` tells a user about a LOREM run.

Kept apart from the training loop (:py:mod:`.trainer`) so that the loop only calls:

* :py:func:`describe_schedule`: one start-of-run line that states the learning-rate
  schedule, and a warning when ``linear_decay`` never decays;
* :py:func:`schedule_horizon`: the epochs the schedule spans after a restart (a restart
  with more epochs keeps the decay of the first run and runs the extra epochs at
  ``final_learning_rate``, instead of stretching the decay and raising the rate again);
* :py:class:`BestEpoch`: the training and validation errors of the epoch selected as the
  best model, logged at the end of training;
* :py:func:`quiet_third_party`: targeted filters for warnings and log lines of other
  packages that are noise for LOREM users (installed when the architecture is imported).

This module imports only the standard library at import time, so that
:py:func:`quiet_third_party` runs before metatensor and metatrain are imported.
Epochs are counted from 1 in everything a user reads ("epoch 30 of 30"); the trainer
counts from 0 internally and in the checkpoint's ``epoch`` and ``best_epoch``.
"""

import logging
import math
import warnings
from typing import Any, Dict, List, Optional


def _rate(value: float) -> str:
    return f"{value:.3g}"


def _epochs(first: int, last: int) -> str:
    """``"epochs 3-4"``, or ``"epoch 3"`` for a single one (counted from 1)."""
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def describe_schedule(hypers: Dict[str, Any], schedule_epochs: int) -> List[str]:
    """The learning-rate schedule in words, and the warnings it calls for.

    :param hypers: trainer hyperparameters (``scheduler``, ``learning_rate``,
        ``final_learning_rate``, ``num_epochs``, ``decay_start_epoch``,
        ``warmup_fraction``)
    :param schedule_epochs: the epochs the schedule spans (``num_epochs``, or the
        ``num_epochs`` of the first run after a restart, see :py:func:`schedule_horizon`)
    :return: the description (first item) and warnings (the other items)
    """
    name = hypers["scheduler"]
    start, final = _rate(hypers["learning_rate"]), _rate(hypers["final_learning_rate"])
    num_epochs = hypers["num_epochs"]
    decay_start = hypers["decay_start_epoch"]
    warnings_: List[str] = []
    if name == "constant":
        line = f"constant at {start} for all {num_epochs} epochs"
    elif name == "cosine":
        line = (
            f"linear warm-up over {100 * hypers['warmup_fraction']:.3g} % of the steps to "
            f"{start}, then cosine decay to {final} at the end of epoch {schedule_epochs}"
        )
    elif decay_start >= schedule_epochs:
        line = f"constant at {start} for all {num_epochs} epochs (no decay)"
        warnings_.append(
            f"decay_start_epoch ({decay_start}) is not smaller than num_epochs "
            f"({schedule_epochs}): the linear decay never starts, the learning rate stays "
            f"at {start} and never reaches final_learning_rate ({final}). Set "
            f"decay_start_epoch below num_epochs (for example num_epochs // 3 = "
            f"{max(1, schedule_epochs // 3)}) or use scheduler: constant"
        )
    elif decay_start == 0:
        line = f"linear decay from {start} to {final} at the end of epoch {schedule_epochs}"
    else:
        line = (
            f"constant at {start} for {_epochs(1, decay_start)}, then linear decay to {final} "
            f"at the end of epoch {schedule_epochs}"
        )
    if schedule_epochs < num_epochs and name != "constant":
        line += f", then {final} for {_epochs(schedule_epochs + 1, num_epochs)}"
    if hypers.get("time_budget") is not None and name != "constant":
        line += " (or at the last epoch that fits in the time budget)"
    return [f"Learning-rate schedule ({name}): {line}", *warnings_]


def schedule_horizon(hypers: Dict[str, Any], stored: Optional[int], start_epoch: int) -> int:
    """The number of epochs the learning-rate schedule spans in this run.

    A fresh run (``stored`` is ``None``) spans ``num_epochs``. A restart keeps the span
    of the run it continues, so that the learning rate continues where it stopped: with
    more epochs, the extra ones run at ``final_learning_rate`` (the decay keeps its
    original end); with fewer, training stops earlier on the original schedule. Only a
    restart before the schedule has started to change (``linear_decay`` before
    ``decay_start_epoch``) takes the new ``num_epochs``, which changes nothing so far.

    :param hypers: trainer hyperparameters of this run
    :param stored: the span saved in the checkpoint (``None`` for a fresh run)
    :param start_epoch: the first epoch of this run (counted from 0)
    :return: the span, in epochs
    """
    num_epochs = hypers["num_epochs"]
    if stored is None or stored == num_epochs:
        return num_epochs
    not_started = hypers["scheduler"] == "constant" or (
        hypers["scheduler"] == "linear_decay" and start_epoch <= hypers["decay_start_epoch"]
    )
    return num_epochs if not_started else stored


def log_restart_schedule(hypers: Dict[str, Any], stored: Optional[int], span: int) -> None:
    """Say how a restart with a different ``num_epochs`` continues the schedule.

    :param hypers: trainer hyperparameters of this run
    :param stored: the span saved in the checkpoint (``None`` for a fresh run)
    :param span: the span of this run (:py:func:`schedule_horizon`)
    """
    num_epochs = hypers["num_epochs"]
    if stored is None or stored == num_epochs:
        return
    if span == num_epochs:
        logging.info(
            f"Restart with num_epochs {num_epochs} instead of {stored}: the schedule had not "
            f"started to change, it now spans {num_epochs} epochs"
        )
    elif num_epochs > stored:
        logging.info(
            f"Restart with num_epochs {num_epochs} instead of {stored}: the learning-rate "
            f"schedule of the first run is kept (it ends at epoch {stored}); "
            f"{_epochs(stored + 1, num_epochs)} run at final_learning_rate "
            f"({_rate(hypers['final_learning_rate'])})"
        )
    else:
        logging.warning(
            f"Restart with num_epochs {num_epochs} instead of {stored}: the learning-rate "
            f"schedule of the first run is kept, so training stops at epoch {num_epochs} "
            "before the learning rate reaches final_learning_rate"
        )


class BestEpoch:
    """The errors of the epoch selected as the best model, for the end of training.

    :param dataset_info: the model's dataset information (targets and units)
    """

    def __init__(self, dataset_info: Any):
        self.dataset_info = dataset_info
        self.epoch: Optional[int] = None
        self.metrics: Optional[List[Dict[str, float]]] = None

    def update(
        self, epoch: int, train_metrics: Dict[str, float], val_metrics: Dict[str, float]
    ) -> None:
        """Remember the errors of a new best epoch.

        :param epoch: the epoch (counted from 0)
        :param train_metrics: training metrics of that epoch (in the dataset's units)
        :param val_metrics: validation metrics of that epoch
        """
        self.epoch = epoch
        self.metrics = [dict(train_metrics), dict(val_metrics)]

    def state(self) -> Optional[Dict[str, Any]]:
        """What a checkpoint keeps, ``None`` before the first epoch.

        :return: the epoch and the metrics
        """
        if self.epoch is None:
            return None
        return {"epoch": self.epoch, "metrics": self.metrics}

    def load(self, state: Optional[Dict[str, Any]]) -> None:
        """Restore :py:meth:`state` (from a checkpoint).

        :param state: the stored state, or ``None``
        """
        if state is not None:
            self.epoch, self.metrics = state["epoch"], state["metrics"]

    def log(self, num_epochs: int, rank: int = 0) -> None:
        """Log the best epoch (counted from 1) and its errors, in the dataset's units.

        :param num_epochs: the number of epochs of the run
        :param rank: the process rank (only rank 0 logs)
        """
        if rank != 0 or self.metrics is None or self.epoch is None:
            return
        # imported here: this module is imported before the filters are installed
        from metatrain.utils.logging import MetricLogger

        logging.info(
            f"Best model: epoch {self.epoch + 1} of {num_epochs} (the exported model); "
            "its errors:"
        )
        metric_logger = MetricLogger(
            # a plain logger: metatrain's own would add this line to train.csv again
            log_obj=logging.getLogger(__name__),
            dataset_info=self.dataset_info,
            initial_metrics=self.metrics,
            names=["training", "validation"],
        )
        metric_logger.log(metrics=self.metrics, epoch=self.epoch + 1)


def _is_metatrain_stats_message(record: logging.LogRecord) -> bool:
    return record.getMessage().startswith("Datasets are too large (>1M total structures)")


class _DropMetatrainStatsMessage(logging.Filter):
    """Drop metatrain's "Datasets are too large" line (see :py:func:`quiet_third_party`)."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return not _is_metatrain_stats_message(record)


_STATS_FILTER = _DropMetatrainStatsMessage()


def quiet_third_party() -> None:
    """Hide warnings and log lines of other packages that are noise for LOREM users.

    Each filter names the message and the module it comes from; nothing else is hidden:

    * those of :py:func:`_lorem_mta_mtt.quiet_warnings` (TorchScript deprecations of
      torch and one of metatrain's own), installed again here for interpreters started
      without the ``.pth`` hook;
    * metatrain's "Requested dataset of zero length" (``test_set: 0``, an explicit
      choice);
    * metatrain 2026.4's "Datasets are too large (>1M total structures)": ``mtt train``
      logs it for every dataset size when ``print_stats`` is ``auto``, even when it then
      prints the statistics (``cli/train.py``); for really large datasets metatrain
      still logs "Skipping dataset statistics." right after it. It is dropped by a
      filter on the root logger (metatrain logs it there).

    ``mtt`` turns deprecation warnings on when it sets up its log
    (``warnings.simplefilter("default", DeprecationWarning)``), before the architecture
    is imported; these filters, installed when it is imported, take precedence.
    """
    from _lorem_mta_mtt import quiet_warnings

    quiet_warnings()
    warnings.filterwarnings(
        "ignore",
        message="Requested dataset of zero length",
        category=UserWarning,
        module=r"metatrain\.",
    )
    root = logging.getLogger()
    if _STATS_FILTER not in root.filters:
        root.addFilter(_STATS_FILTER)


def float32_steps(energy: float) -> float:
    """The spacing of float32 numbers at ``energy`` (eV), e.g. 2^-10 eV at 10 000 eV.

    :param energy: a total energy
    :return: the distance to the next float32 number of larger magnitude
    """
    magnitude = abs(energy)
    if magnitude == 0.0:
        return 0.0
    return 2.0 ** (math.floor(math.log2(magnitude)) - 23)


def float32_export_note(max_baseline: float, unit: str = "eV") -> Optional[str]:
    """What float32 rounding does to the total energies of an exported model.

    :param max_baseline: the largest magnitude of the per-species baseline (energy per
        atom of the composition model)
    :param unit: the energy unit of the model
    :return: the note for the export log, ``None`` when the baseline is below 1 (the
        rounding is then far below any model error)
    """
    if not max_baseline >= 1.0:
        return None
    scale, shown = (1000.0, "meV") if unit.lower() == "ev" else (1.0, unit)
    steps = ", ".join(
        f"{count} atoms: {scale * float32_steps(count * max_baseline):.2g} {shown}"
        for count in [10, 100, 1000]
    )
    return (
        f"float32 model: total energies are rounded to float32 numbers, whose spacing "
        f"grows with |E|. With this model's per-species baseline (up to "
        f"{max_baseline:.4g} {unit} per atom) the steps are about: {steps}. For "
        "energy differences finer than that, export in float64: "
        "lorem-mta export MODEL -o NEW.pt --dtype float64"
    )
