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

Model and trainer are both at version 1: there is nothing to upgrade yet.
"""
