"""Checks that stop a LOREM training run early, with a message that names the cause.

Called by :py:class:`~lorem_mta.architecture.trainer.Trainer`:

* :py:func:`check_datasets`, once before the baseline is fitted: every structure of
  every dataset has finite positions, cell, targets, forces, stresses and extra data,
  and every training structure has the gradients (forces, stress) the target was
  declared with. The message names the file (read from the ``options_restart.yaml``
  that ``mtt train`` writes into the checkpoint folder), the frame index in that file,
  the field and the problem;
* :py:func:`check_force_keys`: a target trained without forces whose file has forces
  under another key is an error;
* :py:func:`check_atomic_types`: an element of the validation set that is not in the
  training set is an error (its energy baseline can not be fitted and the network never
  sees it);
* :py:class:`DivergenceGuard`: the run stops with :py:class:`TrainingDivergedError` when
  the loss of a training batch is not finite or more than :py:data:`DIVERGENCE_FACTOR`
  times that of the first batch of the run, when the training loss of an epoch is more
  than :py:data:`DIVERGENCE_FACTOR` times the lowest epoch loss of the run (from the
  second epoch of the run on), or when the validation loss is not finite; the epoch is
  then neither logged, nor selected as the best one, nor written to a checkpoint;
* :py:func:`is_improvement`: the best-model selection ignores non-finite metrics.
"""

import logging
import math
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
from metatrain.utils.data import Dataset, TargetInfo

#: a batch loss above this factor times the loss of the first batch of the run, or an
#: epoch loss above it times the lowest epoch loss of the run, means the run diverged.
#: The margin over the ordinary ups and downs of a learning curve is wide, and the loss
#: of the first epoch is only compared with later, lower ones
DIVERGENCE_FACTOR = 1e4

_GRADIENT_FIELDS = {"positions": "forces", "strain": "stress/virial"}

AnyDataset = Union[Dataset, torch.utils.data.Subset]


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite, or exploded."""


# -- datasets ----------------------------------------------------------------------------


def check_datasets(
    train_datasets: List[AnyDataset],
    val_datasets: List[AnyDataset],
    targets: Dict[str, TargetInfo],
    checkpoint_dir: Optional[str] = None,
) -> None:
    """Fail before training on a structure with non-finite data or missing gradients.

    :param train_datasets: training datasets
    :param val_datasets: validation datasets
    :param targets: the targets the model trains on (with their declared gradients)
    :param checkpoint_dir: folder of the run; its ``options_restart.yaml`` (written by
        ``mtt train``) gives the file names for the messages
    :raises ValueError: naming the file, the frame, the field and the problem
    """
    files = _dataset_files(checkpoint_dir)
    for split, datasets in [("training", train_datasets), ("validation", val_datasets)]:
        for number, dataset in enumerate(datasets):
            for index in range(len(dataset)):
                problem = _sample_problem(dataset[index], targets, split == "training")
                if problem is not None:
                    where = _where(split, number, len(datasets), dataset, index, files)
                    raise ValueError(f"{where}: {problem}")


def _sample_problem(
    sample: Any, targets: Dict[str, TargetInfo], needs_gradients: bool
) -> Optional[str]:
    """What is wrong with one sample (``None`` if nothing)."""
    fields = sample._asdict() if hasattr(sample, "_asdict") else dict(sample)
    system = fields["system"]
    if not bool(torch.isfinite(system.positions).all()):
        return "the positions contain NaN or infinite values"
    if not bool(torch.isfinite(system.cell).all()):
        return "the cell contains NaN or infinite values"
    for name, value in fields.items():
        if name == "system" or not hasattr(value, "blocks"):
            continue
        for block in value.blocks():
            if not bool(torch.isfinite(block.values).all()):
                return f"{_label(name, targets)} is {_bad_values(block.values)}"
            for parameter in block.gradients_list():
                gradient = block.gradient(parameter).values
                if not bool(torch.isfinite(gradient).all()):
                    what = _GRADIENT_FIELDS.get(parameter, f"'{parameter}' gradient")
                    return f"the {what} of target '{name}' contain {_bad_values(gradient)}"
        if needs_gradients and name in targets:
            missing = set(targets[name].gradients) - set(value.block(0).gradients_list())
            if missing:
                return _missing_gradients(name, sorted(missing))
    return None


def _label(name: str, targets: Dict[str, TargetInfo]) -> str:
    return f"target '{name}'" if name in targets else f"extra data '{name}'"


def _bad_values(values: torch.Tensor) -> str:
    """``NaN`` / ``infinite`` / ``N NaN or infinite values``, for the messages."""
    bad = ~torch.isfinite(values)
    if values.numel() == 1:
        return "NaN" if bool(torch.isnan(values).all()) else f"infinite ({values.item()})"
    return f"{int(bad.sum())} NaN or infinite values (of {values.numel()})"


def _missing_gradients(name: str, missing: List[str]) -> str:
    what = " and ".join(_GRADIENT_FIELDS.get(p, f"'{p}' gradients") for p in missing)
    return (
        f"target '{name}' has no {what}, but other training structures do (training "
        f"on a mix of structures with and without {what} is not supported). Give "
        f"{what} for every training set (`forces: {{key: <name of the forces array in "
        "the file>}` in the target's section of the options), or train on energies "
        "only with `forces: off` (`stress: off`, `virial: off`) in every training set"
    )


def _where(
    split: str,
    number: int,
    count: int,
    dataset: AnyDataset,
    index: int,
    files: Dict[Tuple[str, int], str],
) -> str:
    """``"training set 0 ('train.xyz'), frame 12"`` (the frame index in the file)."""
    frame = index
    while isinstance(dataset, torch.utils.data.Subset):
        frame = int(dataset.indices[frame])
        dataset = dataset.dataset
    name = f"{split} set" + (f" {number}" if count > 1 else "")
    file = files.get((split, number))
    if file is not None:
        return f"{name} ('{file}'), frame {frame} (counted from 0)"
    return f"{name}, structure {frame} (counted from 0)"


def _dataset_files(checkpoint_dir: Optional[str]) -> Dict[Tuple[str, int], str]:
    """``(split, number) -> file`` from the run's ``options_restart.yaml``, if any."""
    options = _restart_options(checkpoint_dir)
    files = {}
    training = _as_list(options.get("training_set"))
    validation = options.get("validation_set")
    for number, section in enumerate(training):
        files[("training", number)] = _file_of(section)
        if isinstance(validation, (int, float)):  # a split of the training sets
            files[("validation", number)] = _file_of(section)
    for number, section in enumerate(_as_list(validation)):
        files[("validation", number)] = _file_of(section)
    return {key: value for key, value in files.items() if value is not None}


def _restart_options(checkpoint_dir: Optional[str]) -> Dict[str, Any]:
    """The run's ``options_restart.yaml`` (written by ``mtt train``), or ``{}``."""
    if checkpoint_dir is None:
        return {}
    path = os.path.join(checkpoint_dir, "options_restart.yaml")
    if not os.path.isfile(path):
        return {}
    try:
        from omegaconf import OmegaConf

        options = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:  # the names are a help, never a reason to fail
        return {}
    return options if isinstance(options, dict) else {}


def _as_list(value: Any) -> List[Any]:
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, dict) else []


def _file_of(section: Any) -> Optional[str]:
    try:
        return str(section["systems"]["read_from"])
    except (KeyError, TypeError):
        return None


def check_force_keys(targets: Dict[str, TargetInfo], checkpoint_dir: Optional[str]) -> None:
    """Refuse energy-only training when the file has forces under another key.

    metatrain only logs "No forces found" when the ``forces`` key of a target is not in
    its file, and trains on energies alone. When the file (read with ASE) holds per-atom
    vectors that look like forces under another name, that is almost always a wrong key.

    :param targets: the targets of the model (with the gradients that were found)
    :param checkpoint_dir: folder of the run, with the ``options_restart.yaml`` of
        ``mtt train`` (nothing is checked without it)
    :raises ValueError: naming the target, the file, the key and the arrays found
    """
    options = _restart_options(checkpoint_dir)
    for section in _as_list(options.get("training_set")):
        for name, config in (section.get("targets") or {}).items():
            info = targets.get(name)
            if info is None or info.quantity != "energy" or "positions" in info.gradients:
                continue  # forces only belong to energies
            forces = config.get("forces") if isinstance(config, dict) else None
            if not isinstance(forces, dict) or forces.get("reader") not in (None, "ase"):
                continue
            found = _force_like_arrays(str(forces.get("read_from")))
            if found:
                raise ValueError(
                    f"target '{name}' would be trained without forces: the forces key "
                    f"'{forces.get('key')}' is not in '{forces.get('read_from')}', which "
                    f"has the per-atom vectors {found}. Set `forces: {{key: {found[0]}}}` "
                    f"in the '{name}' section of the options to train on them, or "
                    "`forces: off` to train on energies only"
                )


def _force_like_arrays(path: str) -> List[str]:
    """Names of per-atom 3-vectors in the first frame of ``path`` that may be forces."""
    if not os.path.isfile(path):
        return []
    try:
        import ase.io

        atoms = ase.io.read(path, index=0)
    except Exception:  # not a file ASE reads: metatrain has read it already
        return []
    found = [
        name
        for name, values in atoms.arrays.items()
        if "forc" in name.lower() and values.shape == (len(atoms), 3)
    ]
    if atoms.calc is not None and "forces" in atoms.calc.results:
        found.append("forces")
    return sorted(set(found))


# -- atomic types -----------------------------------------------------------------------


def check_atomic_types(
    train_datasets: List[AnyDataset], val_datasets: List[AnyDataset]
) -> None:
    """Refuse elements that are in the validation set but not in the training set.

    The energy baseline of such an element is not fitted (it stays 0, e.g. -16.9 eV off
    for methanol) and the network never sees it, so its validation errors, and every
    prediction of the exported model for it, are meaningless.

    :param train_datasets: training datasets
    :param val_datasets: validation datasets
    :raises ValueError: naming the elements and the number of validation structures
    """
    trained = set()
    for sample in _samples(train_datasets):
        trained.update(sample["system"].types.tolist())
    unseen: Dict[int, int] = {}
    for sample in _samples(val_datasets):
        for atomic_type in set(sample["system"].types.tolist()) - trained:
            unseen[atomic_type] = unseen.get(atomic_type, 0) + 1
    if unseen:
        from ase.data import chemical_symbols

        names = ", ".join(
            f"{chemical_symbols[t] if 0 < t < len(chemical_symbols) else t} "
            f"(atomic type {t}, in {n} validation structures)"
            for t, n in sorted(unseen.items())
        )
        raise ValueError(
            f"elements in the validation set but not in the training set: {names}. "
            "Their energy baseline can not be fitted and the network never sees them, "
            "so the model would predict nonsense for them. Move some structures with "
            "these elements into the training set (with `validation_set: <fraction>` "
            "the random split may have put all of them into the validation set: change "
            "`seed` or the fraction) or remove them from the validation set"
        )


def _samples(datasets: List[AnyDataset]) -> Iterator[Dict[str, Any]]:
    for dataset in datasets:
        for index in range(len(dataset)):
            sample = dataset[index]
            yield sample._asdict() if hasattr(sample, "_asdict") else dict(sample)


# -- divergence ---------------------------------------------------------------------------


class DivergenceGuard:
    """Stop training when the loss becomes non-finite or explodes.

    A run has diverged when the loss of a training batch is NaN or infinite, when the
    loss of a batch is more than ``factor`` times the loss of the first batch of the run
    (the untrained or restarted model: a loss that is huge from the first epoch on), or
    when the training loss of an epoch is more than ``factor`` times the lowest epoch
    loss of the run (checked from the second epoch of the run).

    :param learning_rate: the configured learning rate, for the message
    :param factor: see above
    """

    def __init__(self, learning_rate: float, factor: float = DIVERGENCE_FACTOR) -> None:
        self.learning_rate = learning_rate
        self.factor = factor
        self.lowest: Optional[float] = None
        self.lowest_epoch: Optional[int] = None
        self.first_batch: Optional[float] = None
        self.last_checkpoint: Optional[Tuple[int, str]] = None
        self._epoch: Optional[int] = None
        self._total = 0.0

    def check_batch(self, epoch: int, epoch_total: float) -> None:
        """Raise at once when the loss of a training batch is not finite or exploded.

        :param epoch: the epoch (counted from 0)
        :param epoch_total: the training loss of the epoch so far, this batch included
            (the sum that the trainer logs as the loss of the epoch)
        """
        if epoch != self._epoch:
            self._epoch, self._total = epoch, 0.0
        loss, self._total = epoch_total - self._total, epoch_total
        if not math.isfinite(epoch_total):
            self._stop(epoch, f"the training loss of a batch is {epoch_total}")
        if self.first_batch is None:
            self.first_batch = loss
        elif self.first_batch > 0.0 and loss > self.factor * self.first_batch:
            self._stop(
                epoch,
                f"the training loss of a batch is {loss:.4g}, more than {self.factor:g} "
                f"times the loss of the first batch of this run ({self.first_batch:.4g})",
            )

    def check_epoch(self, epoch: int, loss: float) -> None:
        """Raise when the training loss of an epoch is not finite or has exploded.

        :param epoch: the epoch (counted from 0)
        :param loss: the training loss of the epoch (as logged)
        """
        if not math.isfinite(loss):
            self._stop(epoch, f"the training loss is {loss}")
        if self.lowest is not None and loss > self.factor * self.lowest:
            self._stop(
                epoch,
                f"the training loss is {loss:.4g}, more than {self.factor:g} times the "
                f"lowest one of this run ({self.lowest:.4g}, epoch {self.lowest_epoch + 1})",
            )
        if self.lowest is None or loss < self.lowest:
            self.lowest, self.lowest_epoch = loss, epoch

    def check_validation(self, epoch: int, loss: float) -> None:
        """Raise when the validation loss is not finite (the training loss was).

        The parameters after the last optimizer step of the epoch can give NaN or
        infinite values although every training batch before that step was finite.

        :param epoch: the epoch (counted from 0)
        :param loss: the validation loss of the epoch
        """
        if not math.isfinite(loss):
            self._stop(
                epoch,
                f"the validation loss is {loss} (the model gives NaN or infinite values "
                "after the last optimizer step of the epoch)",
            )

    def checkpoint_written(self, epoch: int, path: str) -> None:
        """Remember the last checkpoint written (they are written after the checks).

        :param epoch: the epoch of the checkpoint
        :param path: the checkpoint file
        """
        self.last_checkpoint = (epoch, str(path))

    def _stop(self, epoch: int, what: str) -> None:
        # epochs are stored counted from 0 and shown counted from 1, as in the log
        if self.last_checkpoint is None:
            saved = "No checkpoint was written by this run before it diverged."
        else:
            checkpoint_epoch, path = self.last_checkpoint
            saved = (
                f"The last checkpoint written before the divergence is '{path}' (epoch "
                f"{checkpoint_epoch + 1}); it holds the best model up to that epoch, which "
                "`mtt export` exports."
            )
        message = (
            f"training diverged at epoch {epoch + 1}: {what}. No model is exported. Lower "
            f"the learning_rate (now {self.learning_rate:g}), e.g. by a factor of 10, or "
            f"limit the steps with grad_clip_norm. {saved}"
        )
        logging.error(message)
        raise TrainingDivergedError(message)


def is_improvement(metric: float, best: Optional[float]) -> bool:
    """Whether a validation ``metric`` is a new best one (never when it is not finite).

    :param metric: the validation metric of the epoch (lower is better)
    :param best: the best metric so far (``None`` or ``inf`` when there is none)
    :return: whether the epoch becomes the best one
    """
    if not math.isfinite(metric):
        logging.warning(
            f"the validation metric is {metric}: this epoch can not be the best model"
        )
        return False
    return best is None or metric < best
