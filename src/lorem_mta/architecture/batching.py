"""Training batches from structures prepared once, before the first epoch.

metatrain's :py:class:`~metatrain.utils.data.CollateFn` does, for every batch of every
epoch: join the samples' targets, compute the neighbour lists of every structure, remove
the composition baseline and the scale from the targets, and serialise systems and
targets into one byte buffer (so that data-loader worker processes can send them),
which the training loop then deserialises again. For structures that do not change
during training, everything but the join gives the same result every epoch, and the
buffers are only needed with worker processes.

:py:func:`prepare_datasets` therefore runs the collate function's transforms once per
structure (each of them acts on every structure on its own, so a batch of one gives the
same values as the batch the structure ends up in) and keeps the results in memory;
the batches then only join the prepared samples. Without worker processes,
:py:class:`InProcessCollateFn` also skips the buffers, and batches of prepared samples
are joined only when they are unpacked (:py:class:`PreparedBatch`): the compiled
training of :py:mod:`.flat_loss` reads the samples' tensors directly. Datasets read from disk on
demand (metatrain's ``DiskDataset`` and ``MemmapDataset``, meant for data sets larger
than the memory) keep metatrain's per-batch pipeline.
"""

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from metatensor.learn.data import group_and_join
from metatensor.learn.data._namedtuple import namedtuple
from metatensor.torch import TensorMap
from metatomic.torch import System
from metatrain.utils.data import CollateFn, Dataset, unpack_batch
from metatrain.utils.data.dataset import DiskDataset, MemmapDataset
from metatrain.utils.transfer import batch_to

DatasetLike = Union[Dataset, torch.utils.data.Subset]
Transform = Callable[..., Tuple[List[System], Dict[str, TensorMap], Dict[str, TensorMap]]]


class PreparedDataset(torch.utils.data.Dataset):
    """Samples of a dataset after the collate transforms, computed once.

    Every sample keeps the fields (and their order) of the original sample: the
    ``system`` with its neighbour lists attached and the targets and extra data with
    the baseline and scale removed, converted to ``dtype`` if given.

    :param dataset: the original dataset (in memory)
    :param target_keys: names of the fields that are targets (the others are extra
        data)
    :param transforms: the collate function's transforms, called as
        ``transform(systems, targets, extra)`` on one structure at a time
    :param dtype: floating-point type to convert the prepared samples to, once; ``None``
        keeps the dtype of the dataset (needed with worker processes: metatomic's byte
        buffers only take systems in the dtype they were read in)
    """

    def __init__(
        self,
        dataset: DatasetLike,
        target_keys: List[str],
        transforms: List[Transform],
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.samples: List[Any] = []
        for index in range(len(dataset)):
            sample = dataset[index]
            fields = sample._fields
            data = group_and_join([sample], join_kwargs={"different_keys": "union"})._asdict()
            systems = data.pop("system")
            targets = {k: v for k, v in data.items() if k in target_keys}
            extra = {k: v for k, v in data.items() if k not in target_keys}
            for transform in transforms:
                systems, targets, extra = transform(systems, targets, extra)
            if dtype is not None:
                systems, targets, new_extra = batch_to(systems, targets, extra, dtype=dtype)
                extra = extra if new_extra is None else new_extra
            values = {"system": systems[0], **targets, **extra}
            self.samples.append(namedtuple("Sample", fields)(*[values[f] for f in fields]))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        return self.samples[index]


def is_on_disk(dataset: DatasetLike) -> bool:
    """Whether ``dataset`` reads its samples from disk on demand."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return isinstance(dataset, (DiskDataset, MemmapDataset))


def prepare_datasets(
    datasets: List[DatasetLike],
    target_keys: List[str],
    transforms: List[Transform],
    dtype: Optional[torch.dtype] = None,
) -> List[DatasetLike]:
    """:py:class:`PreparedDataset` of every in-memory dataset (others unchanged).

    :param datasets: training or validation datasets
    :param target_keys: names of the target fields
    :param transforms: the collate function's transforms
    :param dtype: floating-point type of the prepared samples (``None``: unchanged)
    :return: the datasets to build the data loaders from
    """
    return [
        dataset
        if is_on_disk(dataset)
        else PreparedDataset(dataset, target_keys, transforms, dtype)
        for dataset in datasets
    ]


class PreparedBatch(NamedTuple):
    """A batch of prepared samples, not joined yet (:py:func:`unpack` joins them)."""

    #: the samples, as the prepared datasets hold them
    samples: List[Any]
    #: names of the fields that are targets (the others are extra data)
    target_keys: List[str]
    #: keyword arguments of ``metatensor.torch.join``
    join_kwargs: Dict[str, Any]


class InProcessCollateFn(CollateFn):
    """metatrain's collate function without the byte buffers.

    Returns ``(systems, targets, extra)`` directly, for data loaders without worker
    processes; :py:func:`unpack` accepts both this and metatrain's buffers. Batches of
    prepared samples (no transforms left to apply) are returned as a
    :py:class:`PreparedBatch`, joined when unpacked.
    """

    def __call__(  # type: ignore[override]
        self, batch: List[Any]
    ) -> Union[PreparedBatch, Tuple[List[System], Dict[str, TensorMap], Dict[str, TensorMap]]]:
        """Join the samples of a batch and apply the transforms.

        :param batch: samples from the dataset
        :return: ``(systems, targets, extra)``, or the samples of prepared datasets
        """
        if len(self.callables) == 0:
            return PreparedBatch(list(batch), list(self.target_keys), self.join_kwargs)
        return _join(batch, self.target_keys, self.join_kwargs, self.callables)


def _join(
    batch: List[Any],
    target_keys: List[str],
    join_kwargs: Dict[str, Any],
    transforms: List[Transform],
) -> Tuple[List[System], Dict[str, TensorMap], Dict[str, TensorMap]]:
    """Join samples into systems, targets and extra data, then apply the transforms.

    :param batch: samples from the dataset
    :param target_keys: names of the fields that are targets
    :param join_kwargs: keyword arguments of ``metatensor.torch.join``
    :param transforms: called as ``transform(systems, targets, extra)``
    :return: ``(systems, targets, extra)``
    """
    data = group_and_join(batch, join_kwargs=join_kwargs)._asdict()
    systems = list(data.pop("system"))
    targets = {k: v for k, v in data.items() if k in target_keys}
    extra = {k: v for k, v in data.items() if k not in target_keys}
    for transform in transforms:
        systems, targets, extra = transform(systems, targets, extra)
    return systems, targets, extra


def unpack(batch: Any) -> Tuple[List[System], Dict[str, TensorMap], Dict[str, TensorMap]]:
    """Systems, targets and extra data of a batch of either collate function.

    :param batch: a batch from :py:class:`InProcessCollateFn` or from metatrain's
        :py:class:`~metatrain.utils.data.CollateFn`
    :return: ``(systems, targets, extra)``
    """
    if isinstance(batch, PreparedBatch):
        return _join(batch.samples, batch.target_keys, batch.join_kwargs, [])
    if len(batch) == 3:
        return batch
    return unpack_batch(batch)
