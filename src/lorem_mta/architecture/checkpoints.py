"""Checkpoint upgrades of the ``experimental.lorem_mta`` architecture.

metatrain checkpoints carry ``model_ckpt_version`` and ``trainer_ckpt_version``. When a
change makes old checkpoints unreadable (a renamed or reshaped parameter or buffer, a new
or removed key in the checkpoint dictionary), bump
:py:attr:`LoremMta.__checkpoint_version__ <lorem_mta.architecture.model.LoremMta>` (or
:py:attr:`Trainer.__checkpoint_version__ <lorem_mta.architecture.trainer.Trainer>`) and
add here a function that edits the checkpoint dictionary **in place** from version ``v``
to ``v + 1``:

.. code-block:: python

    def model_update_v1_v2(checkpoint: dict) -> None:
        for key in ["model_state_dict", "best_model_state_dict"]:
            if (state_dict := checkpoint.get(key)) is not None:
                state_dict["lorem.new_name"] = state_dict.pop("lorem.old_name")


    def trainer_update_v1_v2(checkpoint: dict) -> None:
        checkpoint["train_hypers"]["new_option"] = "its default"

``upgrade_checkpoint`` of the model and of the trainer call these functions in a loop
(``v1 -> v2 -> ... -> current``; the version numbers themselves are updated by the loop),
and a reference checkpoint of every version is kept in ``tests/checkpoints/`` so that the
upgrade path stays tested (metatrain's ``CheckpointTests``).

History: model version 2 drops two index buffers of the Clebsch-Gordan tensor products
(``column_path`` and ``column_out``) that the contraction no longer uses; model version 3
stores ``norm_smoothing`` and ``neutral_charges`` (older models: exact norm, charges as
they come); trainer version 2 adds the ``time_budget``, ``time_budget_clock`` and
``cache_neighbor_lists`` options; trainer version 3 stores the epochs the learning-rate
schedule spans (``schedule_epochs``, kept on restart) and the errors of the best epoch
(``best_errors``); trainer version 4 adds the ``compile`` option.
"""

import os
from pathlib import Path
from typing import Any, Dict

import torch

from ..files import write_atomically


def model_update_v1_v2(checkpoint: Dict[str, Any]) -> None:
    """Drop the ``column_path`` / ``column_out`` buffers of the tensor products.

    :param checkpoint: the checkpoint dictionary, modified in place
    """
    for key in ["model_state_dict", "best_model_state_dict"]:
        state_dict = checkpoint.get(key)
        if state_dict is None:
            continue
        for name in [n for n in state_dict if n.endswith((".column_path", ".column_out"))]:
            del state_dict[name]


def model_update_v2_v3(checkpoint: Dict[str, Any]) -> None:
    """Keep the energy surface of models trained before the two smoothness fixes.

    Version 3 adds ``norm_smoothing`` and ``neutral_charges``, which are on by default
    for new models; older models were trained with the exact norm and the charges as
    they come, and must compute the same energies after the upgrade.

    :param checkpoint: the checkpoint dictionary, modified in place
    """
    hypers = checkpoint["model_data"]["model_hypers"]
    hypers.setdefault("norm_smoothing", 0.0)
    hypers.setdefault("neutral_charges", False)


def trainer_update_v1_v2(checkpoint: Dict[str, Any]) -> None:
    """Add the time-budget and data-preparation options with their defaults.

    :param checkpoint: the checkpoint dictionary, modified in place
    """
    hypers = checkpoint["train_hypers"]
    hypers.setdefault("time_budget", None)
    hypers.setdefault("time_budget_clock", "wall")
    hypers.setdefault("cache_neighbor_lists", True)


def trainer_update_v2_v3(checkpoint: Dict[str, Any]) -> None:
    """Add the schedule span (the run's ``num_epochs``) and empty best-epoch errors.

    :param checkpoint: the checkpoint dictionary, modified in place
    """
    checkpoint.setdefault("schedule_epochs", checkpoint["train_hypers"]["num_epochs"])
    checkpoint.setdefault("best_errors", None)


def trainer_update_v3_v4(checkpoint: Dict[str, Any]) -> None:
    """Add the ``compile`` option, off (eager training, as before).

    :param checkpoint: the checkpoint dictionary, modified in place
    """
    checkpoint["train_hypers"].setdefault("compile", False)


def upgrade(checkpoint: Dict[str, Any], kind: str, current: int) -> Dict[str, Any]:
    """Apply the ``{kind}_update_v{v}_v{v+1}`` functions up to version ``current``.

    :param checkpoint: the checkpoint dictionary, modified in place
    :param kind: ``"model"`` or ``"trainer"``
    :param current: the version of the code
    :return: the upgraded checkpoint
    :raises RuntimeError: if the checkpoint cannot be brought to ``current`` (the
        message is the one metatrain's checkpoint tests expect)
    """
    key = f"{kind}_ckpt_version"
    for version in range(1, current):
        if checkpoint[key] == version:
            globals()[f"{kind}_update_v{version}_v{version + 1}"](checkpoint)
            checkpoint[key] = version + 1
    if checkpoint[key] != current:
        raise RuntimeError(
            f"Unable to upgrade the checkpoint: the checkpoint is using {kind} version "
            f"{checkpoint[key]}, while the current {kind} version is {current}."
        )
    return checkpoint


def atomic_save(checkpoint: Dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it.

    An interrupted write never leaves a truncated checkpoint (see
    :py:func:`lorem_mta.files.write_atomically`).

    :param checkpoint: the checkpoint dictionary
    :param path: the checkpoint file
    """

    def write(temporary: str) -> None:
        with open(temporary, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())

    write_atomically(str(path), write)
