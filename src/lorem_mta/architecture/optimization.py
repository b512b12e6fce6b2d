"""Optimizer and learning-rate schedule of a LOREM training run.

* :py:func:`build_optimizer`: Adam or AdamW with weight decay, with torch's fused
  update (its multi-tensor update where there is no fused kernel);
* :py:func:`get_scheduler`: the paper's ``linear_decay`` (constant, then linear decay to
  ``final_learning_rate``), ``cosine`` (with warm-up) and ``constant``, stepped after
  every optimizer step. The epochs it spans can follow a time budget
  (:py:mod:`.budget`) and are kept on restart (:py:func:`.reporting.schedule_horizon`).
"""

import math
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..documentation import TrainerHypers


def build_optimizer(model: torch.nn.Module, hypers: TrainerHypers) -> torch.optim.Optimizer:
    """Adam or AdamW over the trainable parameters of ``model``.

    The update runs in torch's fused kernel (one loop in C++ over all parameters) where
    torch has one for the parameters' device and dtype, else in the multi-tensor
    ("foreach") implementation; both do Adam's arithmetic, they differ by float
    round-off.

    :param model: the model (or its distributed wrapper)
    :param hypers: trainer hyperparameters (``optimizer``, ``learning_rate``,
        ``weight_decay``)
    :return: the optimizer
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    options = {
        "lr": hypers["learning_rate"],
        "weight_decay": hypers["weight_decay"],
        **implementation(parameters),
    }
    if hypers["optimizer"] == "adamw":
        return torch.optim.AdamW(parameters, **options)
    if hypers["optimizer"] == "adam":
        return torch.optim.Adam(parameters, **options)
    raise ValueError(f"unknown optimizer '{hypers['optimizer']}'")


#: devices on which torch has a fused Adam kernel
FUSED_DEVICES = ("cpu", "cuda")


def implementation(parameters: List[torch.Tensor]) -> Dict[str, Optional[bool]]:
    """Fused Adam where torch has it for these parameters, else the multi-tensor update.

    torch picks neither by itself on CPUs (it loops over the parameters in Python).

    :param parameters: the trainable parameters
    :return: the ``fused`` and ``foreach`` options of the optimizer
    """
    fused = all(
        p.device.type in FUSED_DEVICES and p.dtype in (torch.float32, torch.float64)
        for p in parameters
    )
    return {"fused": True, "foreach": None} if fused else {"fused": None, "foreach": True}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
    """Restore an optimizer's state and keep this run's implementation.

    The state of a checkpoint holds the ``fused``/``foreach`` options of the run that
    wrote it (an older version, or another device); the moments and steps are the same
    in all of them, so the choice of :py:func:`implementation` is kept.

    :param optimizer: the optimizer of this run
    :param state: its state dict, from a checkpoint
    """
    chosen = [{"fused": g["fused"], "foreach": g["foreach"]} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, options in zip(optimizer.param_groups, chosen, strict=True):
        group.update(options)


def get_scheduler(
    optimizer: torch.optim.Optimizer,
    hypers: TrainerHypers,
    steps_per_epoch: int,
    horizon: Optional[Callable[[], int]] = None,
    span: Optional[int] = None,
) -> LambdaLR:
    """Learning-rate schedule, stepped after every optimizer step.

    :param optimizer: the optimizer
    :param hypers: trainer hyperparameters (``scheduler``, ``learning_rate``,
        ``final_learning_rate``, ``num_epochs``, ``decay_start_epoch``,
        ``warmup_fraction``)
    :param steps_per_epoch: number of optimizer steps per epoch
    :param horizon: the number of epochs the schedule spans, read at every step
        (``num_epochs`` if not given); with a time budget, the epochs that fit in it
        (see :py:mod:`.budget`). When it is shorter than ``num_epochs``, the linear
        decay starts at ``decay_start_epoch`` or half of it, whichever comes first.
    :param span: the epochs of the full schedule (``num_epochs`` if not given; after a
        restart, see :py:func:`.reporting.schedule_horizon`); later epochs run at
        ``final_learning_rate``
    :return: the scheduler
    """
    num_epochs = hypers["num_epochs"] if span is None else span

    def epochs() -> int:
        return num_epochs if horizon is None else min(num_epochs, horizon())

    schedules = {"constant": _constant, "linear_decay": _linear_decay, "cosine": _cosine}
    name = hypers["scheduler"]
    if name not in schedules:
        raise ValueError(f"unknown learning-rate scheduler '{name}'")
    factor = schedules[name](hypers, steps_per_epoch, num_epochs, epochs)
    return LambdaLR(optimizer, lr_lambda=factor)


# the factors of the learning rate by optimizer step: `num_epochs` is the span of the
# full schedule, `epochs()` the epochs it spans now (fewer with a time budget)
Factor = Callable[[int], float]


def _constant(
    hypers: TrainerHypers, steps_per_epoch: int, num_epochs: int, epochs: Callable[[], int]
) -> Factor:
    """``learning_rate`` throughout.

    :param hypers: trainer hyperparameters
    :param steps_per_epoch: optimizer steps per epoch
    :param num_epochs: the epochs of the full schedule
    :param epochs: the epochs the schedule spans, read at every step
    :return: the factor of ``learning_rate`` at a step
    """

    def factor(step: int) -> float:
        return 1.0

    return factor


def _linear_decay(
    hypers: TrainerHypers, steps_per_epoch: int, num_epochs: int, epochs: Callable[[], int]
) -> Factor:
    """Constant until ``decay_start_epoch``, then linear to ``final_learning_rate``.

    :param hypers: trainer hyperparameters (``decay_start_epoch``, ``learning_rate``,
        ``final_learning_rate``)
    :param steps_per_epoch: optimizer steps per epoch
    :param num_epochs: the epochs of the full schedule
    :param epochs: the epochs the schedule spans, read at every step; when fewer than
        ``num_epochs`` (a time budget), the decay starts at half of them at the latest
    :return: the factor of ``learning_rate`` at a step
    """
    final_ratio = hypers["final_learning_rate"] / hypers["learning_rate"]

    def factor(step: int) -> float:
        total_epochs = epochs()
        total_steps = max(1, total_epochs * steps_per_epoch)
        decay_epoch = hypers["decay_start_epoch"]
        if total_epochs < num_epochs:  # shortened by a time budget
            decay_epoch = min(decay_epoch, total_epochs // 2)
        decay_start = decay_epoch * steps_per_epoch
        if step <= decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
        return 1.0 + (final_ratio - 1.0) * progress

    return factor


def _cosine(
    hypers: TrainerHypers, steps_per_epoch: int, num_epochs: int, epochs: Callable[[], int]
) -> Factor:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay.

    :param hypers: trainer hyperparameters (``warmup_fraction``, ``learning_rate``,
        ``final_learning_rate``)
    :param steps_per_epoch: optimizer steps per epoch
    :param num_epochs: the epochs of the full schedule
    :param epochs: the epochs the schedule spans, read at every step
    :return: the factor of ``learning_rate`` at a step
    """
    final_ratio = hypers["final_learning_rate"] / hypers["learning_rate"]

    def factor(step: int) -> float:
        total_steps = max(1, epochs() * steps_per_epoch)
        warmup_steps = int(hypers["warmup_fraction"] * total_steps)
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
