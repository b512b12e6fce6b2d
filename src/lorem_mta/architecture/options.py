"""Checks of a LOREM training run's options and data, before anything is trained.

Invalid options, a loss term without data and missing per-system inputs are errors with
a message that names the offending value, the dataset or the option to change. The
checks of the structures and targets themselves are in :py:mod:`.guards`.
"""

from typing import Any, Dict, List, Union

import torch
from metatrain.utils.data import Dataset, TargetInfo

from ..documentation import TrainerHypers
from . import guards

AnyDataset = Union[Dataset, torch.utils.data.Subset]


def check_before_training(
    hypers: TrainerHypers,
    system_inputs: List[str],
    targets: Dict[str, TargetInfo],
    train_datasets: List[AnyDataset],
    val_datasets: List[AnyDataset],
    checkpoint_dir: str,
) -> None:
    """All checks of the data and of the loss, in the order a user should fix them.

    :param hypers: trainer hyperparameters
    :param system_inputs: the per-system inputs the model requests
    :param targets: the training targets
    :param train_datasets: training datasets
    :param val_datasets: validation datasets
    :param checkpoint_dir: the run's folder (its options name the dataset files)
    """
    check_system_inputs(system_inputs, train_datasets, val_datasets)
    check_loss_gradients(loss_config(hypers["loss"], targets), targets)
    guards.check_datasets(train_datasets, val_datasets, targets, checkpoint_dir)
    guards.check_force_keys(targets, checkpoint_dir)
    guards.check_atomic_types(train_datasets, val_datasets)


def check_hypers(hypers: TrainerHypers) -> None:
    """Reject invalid values with a message naming the offending value.

    :param hypers: trainer hyperparameters
    """
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


def check_system_inputs(
    names: List[str],
    train_datasets: List[AnyDataset],
    val_datasets: List[AnyDataset],
) -> None:
    """Fail before training when a dataset lacks a per-system input the model needs.

    metatrain's PET only warns and trains on default values; for LOREM's
    ``total_charge`` that would silently train a model that cannot tell charge states
    apart, so it is an error naming the dataset, the missing field and the fix.

    :param names: the per-system inputs the model requests
    :param train_datasets: training datasets
    :param val_datasets: validation datasets
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


def fixed_scaling_weights(weights: Any, dipole_target: str) -> Any:
    """The user's fixed scaler weights, with the dipole target's scale fixed to 1.

    The dipole is computed from the charges that the model outputs as
    ``lorem::charges``; a scale other than 1 would make the two inconsistent.

    :param weights: the ``fixed_scaling_weights`` option (a dictionary, or the path of
        a scaler checkpoint, returned as is)
    :param dipole_target: name of the dipole target (``""``: none)
    :return: the weights to give metatrain's scaler
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


def loss_config(loss: Any, targets: Dict[str, TargetInfo]) -> Dict[str, Any]:
    """The per-target loss configuration (``mtt train`` already expanded strings).

    :param loss: the ``loss`` option: a dictionary per target, or a loss name
        (``"mse"``) applied to every target and gradient
    :param targets: the training targets
    :return: the configuration per target
    """
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


def check_loss_gradients(loss: Dict[str, Any], targets: Dict[str, TargetInfo]) -> None:
    """Fail when a configured force/stress loss has no data to act on.

    metatrain only logs "No forces found" when the forces of a target can not be read,
    and then silently drops the force term of the loss. A gradient loss that was
    configured explicitly (anything but metatrain's default expansion) on a dataset
    without that gradient is almost always a wrong key in the options: make it an error.

    :param loss: the per-target loss configuration (see :py:func:`loss_config`)
    :param targets: the training targets
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
