"""Where a LOREM training run happens: one device, or one process of a distributed run.

metatrain's SLURM helpers start NCCL (GPU) process groups only;
:py:func:`initialize_cpu_process_group` is the same set-up with the gloo backend, so
that ``srun mtt train`` with ``device: cpu`` spreads the batches over CPU processes.
"""

import logging
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.distributed
from metatrain.utils.distributed.slurm import (
    DistributedEnvironment,
    initialize_slurm_nccl_process_group,
    resolve_distributed,
)


class Placement(NamedTuple):
    """The device of this process and its place in a distributed run."""

    device: torch.device
    """the device this process trains on"""
    world_size: int
    """the number of processes (1 without distributed training)"""
    rank: int
    """the rank of this process (0 without distributed training)"""
    is_distributed: bool
    """whether the run is distributed"""


def place(
    distributed: Optional[bool], port: int, devices: List[torch.device], dtype: torch.dtype
) -> Placement:
    """Start the process group of a distributed run, or pick the single device.

    :param distributed: the ``distributed`` option (``None``: decided by metatrain from
        the environment)
    :param port: the TCP port of the rendezvous (``distributed_port``)
    :param devices: devices given by ``mtt train`` (only the first one is used)
    :param dtype: dtype of the training, for the log line
    :return: the device, number of processes and rank of this process
    """
    is_distributed = resolve_distributed(distributed)
    if not is_distributed:
        device = devices[0]
        logging.info(f"Training on device {device} with dtype {dtype}")
        return Placement(device, 1, 0, False)
    if len(devices) > 1:
        raise ValueError(
            "Requested distributed training with the `multi-gpu` device. To run "
            "distributed training with LOREM, set `device` to cuda."
        )
    if devices[0].type == "cpu":
        device, world_size, rank = initialize_cpu_process_group(port)
    else:
        device, world_size, rank = initialize_slurm_nccl_process_group(port)
    logging.info(f"Training on {world_size} devices with dtype {dtype}")
    return Placement(device, world_size, rank, True)


def initialize_cpu_process_group(port: int) -> Tuple[torch.device, int, int]:
    """Start a gloo process group for distributed training on CPUs.

    The same set-up as metatrain's NCCL launcher (one process per SLURM task, rank 0's
    node as the master) with the gloo backend.

    :param port: the TCP port of the rendezvous on the master node
    :return: the device (CPU), the number of processes and the rank of this one
    """
    environment = DistributedEnvironment(port)
    torch.distributed.init_process_group(
        backend="gloo", world_size=environment.world_size, rank=environment.rank
    )
    return torch.device("cpu"), torch.distributed.get_world_size(), torch.distributed.get_rank()


def same_on_all_ranks(
    values: List[int], is_distributed: bool, device: torch.device
) -> List[int]:
    """``values`` of rank 0 on every rank (decisions that all processes must share).

    :param values: the values of this process
    :param is_distributed: whether the run is distributed (otherwise returned as is)
    :param device: the device of this process (for the broadcast)
    :return: the values of rank 0
    """
    if not is_distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    torch.distributed.broadcast(tensor, src=0)
    return [int(v) for v in tensor.tolist()]
