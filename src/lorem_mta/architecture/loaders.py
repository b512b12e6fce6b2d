"""What a LOREM training run does with its data before the first epoch.

* :py:func:`fit_baseline`: the network in the training dtype, the composition baseline
  and the optional scaler fitted (in float64: large, exact values);
* :py:func:`build_dataloaders`: training and validation data loaders whose batches
  carry the neighbour lists and the per-system inputs, with the baseline and the scale
  removed from the targets, once per structure before training (see
  :py:mod:`.batching`) or, with ``cache_neighbor_lists: false`` and for datasets on
  disk, by the collate function for every batch.
"""

import copy
import logging
from typing import Any, List, NamedTuple, Optional, Union

import torch
from metatrain.composition import train_or_load_composition_model
from metatrain.scaler import train_or_load_scaler
from metatrain.utils.additive import get_remove_additive_transform
from metatrain.utils.data import (
    CollateFn,
    CombinedDataLoader,
    Dataset,
    build_train_dataloaders,
    build_val_dataloaders,
    get_num_workers,
    validate_num_workers,
)
from metatrain.utils.neighbor_lists import (
    get_requested_neighbor_lists,
    get_system_with_neighbor_lists_transform,
)
from metatrain.utils.scaler import get_remove_scale_transform
from metatrain.utils.system_data import get_system_data_transform
from torch.utils.data import DistributedSampler

from ..documentation import TrainerHypers
from .batching import InProcessCollateFn, is_on_disk, prepare_datasets
from .distributed import Placement
from .model import LoremMta
from .options import fixed_scaling_weights

AnyDataset = Union[Dataset, torch.utils.data.Subset]


class Loaders(NamedTuple):
    """The data loaders of a training run."""

    #: the training batches
    train: CombinedDataLoader
    #: the validation batches
    val: CombinedDataLoader
    #: the distributed samplers of the training sets (their epoch is set every epoch)
    samplers: List[Any]
    #: every batch is made of the same ``System`` objects every epoch, kept in memory
    #: for the whole run (prepared datasets, no worker processes)
    kept_systems: bool


def fit_baseline(
    model: LoremMta,
    hypers: TrainerHypers,
    dtype: torch.dtype,
    placement: Placement,
    train_datasets: List[AnyDataset],
    checkpoint_dir: str,
) -> None:
    """Move the model to its device and dtype, fit its baseline and its scaler.

    :param model: the model, modified in place
    :param hypers: trainer hyperparameters (``atomic_baseline``, ``scale_targets``,
        ``fixed_scaling_weights``, ``batch_size``, ``per_structure_targets``)
    :param dtype: dtype of the network during training
    :param placement: device and distributed set-up of this process
    :param train_datasets: training datasets
    :param checkpoint_dir: folder for the fitted baseline and scaler
    """
    # the network in `dtype`; baseline and scaler in float64 (large, exact values)
    model.to(device=placement.device, dtype=dtype)
    model.additive_models.to(dtype=torch.float64)
    model.scaler.to(dtype=torch.float64)

    train_or_load_composition_model(
        composition_model=model.additive_models[0],
        atomic_baseline=hypers["atomic_baseline"],
        train_datasets=train_datasets,
        other_additive_models=list(model.additive_models[1:]),
        batch_size=hypers["batch_size"],
        is_distributed=placement.is_distributed,
        checkpoint_dir=checkpoint_dir,
    )
    if not hypers["scale_targets"]:
        return
    if isinstance(hypers["fixed_scaling_weights"], str) and not isinstance(
        hypers["atomic_baseline"], str
    ):
        raise ValueError(
            "a scaler checkpoint (`fixed_scaling_weights`) needs a composition "
            "checkpoint as `atomic_baseline` too"
        )
    train_or_load_scaler(
        scaler=model.scaler,
        fixed_weights=fixed_scaling_weights(
            hypers["fixed_scaling_weights"], model.dipole_target
        ),
        train_datasets=train_datasets,
        additive_models=model.additive_models,
        batch_size=hypers["batch_size"],
        is_distributed=placement.is_distributed,
        checkpoint_dir=checkpoint_dir,
        per_structure_targets=hypers["per_structure_targets"],
    )


def build_dataloaders(
    model: LoremMta,
    hypers: TrainerHypers,
    train_datasets: List[AnyDataset],
    val_datasets: List[AnyDataset],
    dtype: torch.dtype,
    placement: Placement,
) -> Loaders:
    """Training and validation data loaders.

    :param model: the model, with its fitted baseline and scaler
    :param hypers: trainer hyperparameters (``batch_size``, ``num_workers``,
        ``cache_neighbor_lists``, ``max_atoms_per_batch``, ``min_atoms_per_batch``)
    :param train_datasets: training datasets
    :param val_datasets: validation datasets
    :param dtype: dtype of the training (prepared structures are stored in it)
    :param placement: device and distributed set-up of this process
    :return: the training and validation loaders, the distributed samplers of the
        training sets (whose epoch is set before every epoch), and whether the batches
        are made of structures kept in memory
    """
    train_samplers = _samplers(train_datasets, placement, shuffle=True)
    val_samplers = _samplers(val_datasets, placement, shuffle=False)
    transforms = _collate_transforms(model, placement.device)
    num_workers = _num_workers(hypers)

    # the neighbour lists, baseline and scale of fixed structures once, not per batch
    # (datasets read from disk on demand keep metatrain's per-batch pipeline)
    target_keys = list(model.dataset_info.targets.keys())
    on_disk = any(is_on_disk(dataset) for dataset in train_datasets + val_datasets)
    prepared = hypers["cache_neighbor_lists"] and not on_disk
    if prepared:
        logging.info("Computing the neighbour lists of all structures once")
        # in the training dtype once, unless worker processes serialise them
        prepared_dtype = dtype if num_workers == 0 else None
        train_datasets = prepare_datasets(
            train_datasets, target_keys, transforms, prepared_dtype
        )
        val_datasets = prepare_datasets(val_datasets, target_keys, transforms, prepared_dtype)
        transforms = []
    collate_class = InProcessCollateFn if num_workers == 0 else CollateFn
    collate_fn = collate_class(target_keys=target_keys, callables=transforms)

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
    return Loaders(
        train=CombinedDataLoader(train_dataloaders, shuffle=True),
        val=CombinedDataLoader(val_dataloaders, shuffle=False),
        samplers=epoch_samplers,
        # worker processes send copies of the systems
        kept_systems=prepared and num_workers == 0,
    )


def _samplers(
    datasets: List[AnyDataset], placement: Placement, shuffle: bool
) -> List[Optional[DistributedSampler]]:
    """One distributed sampler per dataset (``None`` without distributed training).

    :param datasets: the datasets
    :param placement: device and distributed set-up of this process
    :param shuffle: shuffle and drop the last incomplete batch (training sets)
    :return: the samplers
    """
    if not placement.is_distributed:
        return [None] * len(datasets)
    return [
        DistributedSampler(
            dataset,
            num_replicas=placement.world_size,
            rank=placement.rank,
            shuffle=shuffle,
            drop_last=shuffle,
        )
        for dataset in datasets
    ]


def _collate_transforms(model: LoremMta, device: torch.device) -> List[Any]:
    """Neighbour lists, per-system inputs, baseline and scale removal, per batch.

    The transforms hold CPU/float64 copies of the model's baseline and scaler; the
    model's own stay on ``device`` (their weights in float64).

    :param model: the model, with its fitted baseline and scaler
    :param device: the training device
    :return: the transforms of metatrain's collate function, in order
    """
    model.additive_models[0].weights_to(device="cpu", dtype=torch.float64)
    additive_models = copy.deepcopy(model.additive_models.to(dtype=torch.float64, device="cpu"))
    model.additive_models.to(device)
    model.additive_models[0].weights_to(device=device, dtype=torch.float64)
    model.scaler.scales_to(device="cpu", dtype=torch.float64)
    scaler = copy.deepcopy(model.scaler.to(dtype=torch.float64, device="cpu"))
    model.scaler.to(device)
    model.scaler.scales_to(device=device, dtype=torch.float64)

    system_inputs = list(model.requested_inputs().keys())
    input_transforms = (
        [get_system_data_transform(system_inputs)] if len(system_inputs) > 0 else []
    )
    return [
        get_system_with_neighbor_lists_transform(get_requested_neighbor_lists(model)),
        *input_transforms,
        get_remove_additive_transform(additive_models, model.dataset_info.targets),
        get_remove_scale_transform(scaler),
    ]


def _num_workers(hypers: TrainerHypers) -> int:
    """The data-loader worker processes: the option, or metatrain's choice.

    :param hypers: trainer hyperparameters (``num_workers``)
    :return: the number of worker processes (0: in the training process)
    """
    if hypers["num_workers"] is None:
        num_workers = get_num_workers()
        logging.info(f"Using {num_workers} workers for data loading")
        return num_workers
    validate_num_workers(hypers["num_workers"])
    return hypers["num_workers"]
