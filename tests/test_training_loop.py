"""The trainer's data preparation and time budget (``lorem_mta.architecture``).

* structures prepared once (neighbour lists, baseline and scale removed before the first
  epoch) train exactly as metatrain's per-batch collate function;
* the time budget stops training early, with the learning-rate schedule following the
  budget and the best model kept. Clocks are replaced by counters, so that nothing here
  depends on the speed of the machine.
"""

import copy
import logging
import types
from pathlib import Path

import metatensor.torch as mts
import pytest
import torch
from _helpers import energy_target
from metatrain.utils.architectures import get_default_hypers
from metatrain.utils.data import DatasetInfo, get_atomic_types, get_dataset

from lorem_mta.architecture import LoremMta, Trainer
from lorem_mta.architecture import budget as budget_module
from lorem_mta.architecture.batching import InProcessCollateFn, PreparedDataset, unpack
from lorem_mta.architecture.budget import TimeBudget
from lorem_mta.architecture.optimization import (
    build_optimizer,
    implementation,
    load_optimizer_state,
)
from lorem_mta.architecture.trainer import get_scheduler

DATASET = Path(__file__).resolve().parent / "resources" / "metatrain" / "hcno_lj.xyz"

MODEL = {
    "max_degree": 1,
    "max_degree_lr": 1,
    "num_features": 4,
    "num_spherical_features": 1,
    "num_radial": 4,
    "num_species": 2,
}


@pytest.fixture(scope="module")
def data():
    return load_data()


def load_data():
    """The small H/C/N/O data set: 14 training and 6 validation structures."""
    path = str(DATASET)
    dataset, targets, _ = get_dataset(
        {
            "systems": {"read_from": path, "reader": "ase"},
            "targets": {"energy": energy_target(path)},
        }
    )
    info = DatasetInfo(
        length_unit="angstrom", atomic_types=get_atomic_types(dataset), targets=targets
    )
    train = torch.utils.data.Subset(dataset, list(range(14)))
    val = torch.utils.data.Subset(dataset, list(range(14, len(dataset))))
    return train, val, info


def train(data, tmp_path, **training):
    train_set, val_set, info = data
    torch.manual_seed(0)
    model = LoremMta(MODEL, info)
    hypers = get_default_hypers("experimental.lorem_mta")["training"]
    hypers.update(**{"batch_size": 4, "num_workers": 0, "log_interval": 1, **training})
    trainer = Trainer(hypers)
    trainer.train(
        model, torch.float32, [torch.device("cpu")], [train_set], [val_set], str(tmp_path)
    )
    return model, trainer


def kept_systems_flags(monkeypatch) -> list:
    """Record whether the data loaders of every training run keep their systems."""
    from lorem_mta.architecture import trainer

    flags = []
    original = trainer.build_dataloaders

    def recording(*args, **kwargs):
        loaders = original(*args, **kwargs)
        flags.append(loaders.kept_systems)
        return loaders

    monkeypatch.setattr(trainer, "build_dataloaders", recording)
    return flags


def test_prepared_structures_train_as_per_batch_collate(data, tmp_path, monkeypatch):
    """Caching changes nothing: same weights, validation metric and best epoch."""
    training = {"num_epochs": 2, "scale_targets": True}
    flags = kept_systems_flags(monkeypatch)
    cached, cached_trainer = train(data, tmp_path, cache_neighbor_lists=True, **training)
    plain, plain_trainer = train(data, tmp_path, cache_neighbor_lists=False, **training)
    # only the prepared structures in this process are the same objects every epoch
    assert flags == [True, False]
    assert cached_trainer.best_metric == plain_trainer.best_metric
    assert cached_trainer.best_epoch == plain_trainer.best_epoch
    cached_state, plain_state = cached.state_dict(), plain.state_dict()
    assert cached_state.keys() == plain_state.keys()
    for name, value in cached_state.items():
        if name.endswith("type_to_index"):
            continue  # uninitialised entries for atomic types not in the data set
        torch.testing.assert_close(value, plain_state[name], rtol=0.0, atol=0.0, msg=name)


def test_prepared_structures_with_worker_processes(data, tmp_path, monkeypatch):
    """Prepared structures also go through worker processes (as byte buffers)."""
    training = {"num_epochs": 1, "num_workers": 1}
    flags = kept_systems_flags(monkeypatch)
    cached, _ = train(data, tmp_path, **training)
    plain, _ = train(data, tmp_path, cache_neighbor_lists=False, **training)
    assert flags == [False, False]  # the workers send copies
    for name, value in cached.state_dict().items():
        if not name.endswith("type_to_index"):
            torch.testing.assert_close(value, plain.state_dict()[name], rtol=0.0, atol=0.0)


def test_prepared_dataset_matches_collate_function(data):
    """A batch of prepared samples equals metatrain's collate of the raw samples."""
    from metatrain.utils.data import CollateFn, unpack_batch
    from metatrain.utils.neighbor_lists import (
        get_requested_neighbor_lists,
        get_system_with_neighbor_lists_transform,
    )

    train_set, _, info = data
    model = LoremMta(MODEL, info)

    def shift(systems, targets, extra):  # a transform of the targets
        return systems, {"energy": mts.add(targets["energy"], -1.0)}, extra

    transforms = [
        get_system_with_neighbor_lists_transform(get_requested_neighbor_lists(model)),
        shift,
    ]
    prepared = PreparedDataset(train_set, ["energy"], transforms)
    indices = [3, 0, 7, 5]
    batch = InProcessCollateFn(["energy"])([prepared[i] for i in indices])
    reference = CollateFn(["energy"], callables=transforms)([train_set[i] for i in indices])
    systems, targets, _ = unpack(batch)
    ref_systems, ref_targets, _ = unpack_batch(reference)
    assert len(systems) == len(ref_systems) == 4
    options = model.requested_neighbor_lists()[0]
    for system, ref in zip(systems, ref_systems, strict=True):
        torch.testing.assert_close(system.positions, ref.positions)
        pairs = system.get_neighbor_list(options)
        ref_pairs = ref.get_neighbor_list(options)
        assert pairs.samples == ref_pairs.samples
        torch.testing.assert_close(pairs.values, ref_pairs.values)
    block, ref_block = targets["energy"].block(), ref_targets["energy"].block()
    assert block.samples == ref_block.samples
    torch.testing.assert_close(block.values, ref_block.values)
    forces, ref_forces = block.gradient("positions"), ref_block.gradient("positions")
    assert forces.samples == ref_forces.samples
    torch.testing.assert_close(forces.values, ref_forces.values)


class Counter:
    """A clock that advances by ``step`` seconds every time it is read."""

    def __init__(self, step: float = 1.0):
        self.step = step
        self.value = 0.0

    def __call__(self) -> float:
        self.value += self.step
        return self.value


def test_budget_rejects_bad_values():
    with pytest.raises(ValueError, match="time_budget must be positive, got -1"):
        TimeBudget(-1.0)
    with pytest.raises(ValueError, match="time_budget_clock must be 'wall' or 'cpu'"):
        TimeBudget(10.0, "gpu")


def test_schedule_follows_the_budget():
    """Epochs of 10 s in a 100 s budget: the decay ends where the budget does."""
    hypers = get_default_hypers("experimental.lorem_mta")["training"]
    hypers.update(num_epochs=1000, decay_start_epoch=3, learning_rate=1e-3)
    budget = TimeBudget(100.0)
    clock = {"t": 0.0}
    budget._clock = lambda: clock["t"]
    budget.start = budget.now()
    horizon = [hypers["num_epochs"]]
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-3)
    scheduler = get_scheduler(optimizer, hypers, steps_per_epoch=4, horizon=lambda: horizon[0])
    rates, epochs = [], 0
    while True:
        budget.start_epoch()
        for _ in range(4):
            optimizer.step()
            scheduler.step()
            rates.append(optimizer.param_groups[0]["lr"])
        clock["t"] += 10.0
        budget.end_epoch()
        epochs += 1
        horizon[0] = budget.expected_epochs(epochs, hypers["num_epochs"])
        if not budget.fits(1):
            break
    assert epochs == 10
    assert rates[: 3 * 4] == [1e-3] * (3 * 4)  # constant until decay_start_epoch
    assert all(a > b for a, b in zip(rates[12:], rates[13:], strict=False))
    assert rates[-1] == pytest.approx(1e-6)  # final_learning_rate at the end of the budget


def test_a_long_first_epoch_does_not_shorten_the_schedule():
    """A first epoch of 50 s (e.g. compilation) then epochs of 2 s in a 250 s budget:
    100 epochs fit after the first; the estimate uses the epochs after the first."""
    budget = TimeBudget(250.0)
    clock = {"t": 0.0}
    budget._clock = lambda: clock["t"]
    budget.start = budget.now()
    estimates = []
    for epoch in range(1, 21):
        budget.start_epoch()
        clock["t"] += 50.0 if epoch == 1 else 2.0
        budget.end_epoch()
        estimates.append(budget.expected_epochs(epoch, 100000))
    assert estimates[0] == 1 + int(200.0 // 50.0)  # only the first epoch known yet
    assert estimates[1:] == [101] * 19  # 50 + 100 x 2 = 250 s
    # with the mean of all epochs it would have been 20 + floor(162 / 4.4) = 56 at epoch 20


def test_decay_starts_at_half_when_the_budget_is_short():
    hypers = get_default_hypers("experimental.lorem_mta")["training"]
    hypers.update(num_epochs=100, decay_start_epoch=8, learning_rate=1e-3)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-3)
    scheduler = get_scheduler(optimizer, hypers, steps_per_epoch=1, horizon=lambda: 10)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    rates.append(optimizer.param_groups[0]["lr"])
    assert rates[:6] == [1e-3] * 6 and rates[6] < 1e-3
    assert rates[-1] == pytest.approx(1e-6)


def test_budget_stops_training_early(data, tmp_path, monkeypatch, caplog):
    """Every clock reading takes 1 s: a 40 s budget ends a 50-epoch run early."""
    counter = Counter()
    fake_time = types.SimpleNamespace(monotonic=counter, process_time=counter)
    monkeypatch.setattr(budget_module, "time", fake_time)
    with caplog.at_level(logging.INFO):
        model, trainer = train(
            data, tmp_path, num_epochs=50, time_budget=40.0, time_budget_clock="cpu"
        )
    assert 0 < trainer.epoch < 49
    assert f"Stopping after epoch {trainer.epoch + 1} of 50" in caplog.text
    assert "40 s cpu-clock budget used" in caplog.text
    # the progress lines count the epochs expected to fit in the budget, not all 50
    assert f"Progress: epoch {trainer.epoch + 1}/50" not in caplog.text
    # the schedule decayed to the final rate within the budget (50 epochs would have
    # kept it constant for decay_start_epoch = 10 epochs)
    last_rate = trainer.scheduler_state_dict["_last_lr"][0]
    assert last_rate < 0.5 * trainer.hypers["learning_rate"]
    # the best model of the epochs that ran is kept for the export
    assert trainer.best_epoch is not None and trainer.best_epoch <= trainer.epoch
    assert trainer.best_model_state_dict is not None
    assert f"best model, from epoch {trainer.best_epoch + 1}," in caplog.text


def test_no_budget_runs_all_epochs(data, tmp_path):
    _, trainer = train(data, tmp_path, num_epochs=2)
    assert trainer.epoch == 1


def _adam_steps(implementation: dict, steps: int = 5, state: dict = None):
    """``steps`` AdamW steps on a fixed quadratic, from ``state`` if given."""
    torch.manual_seed(0)
    parameters = [torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))]
    target = torch.randn(4, 3, dtype=torch.float64)
    optimizer = torch.optim.AdamW(parameters, lr=1e-2, weight_decay=0.01, **implementation)
    if state is not None:
        load_optimizer_state(optimizer, copy.deepcopy(state))  # loading shares tensors
    for _ in range(steps):
        optimizer.zero_grad()
        ((parameters[0] - target) ** 3).abs().sum().backward()
        optimizer.step()
    return parameters[0].detach(), optimizer


def test_fused_optimizer_is_chosen_on_cpu():
    hypers = get_default_hypers("experimental.lorem_mta")["training"]
    model = torch.nn.Linear(3, 2)
    for name in ("adam", "adamw"):
        optimizer = build_optimizer(model, {**hypers, "optimizer": name})
        assert optimizer.param_groups[0]["fused"] is True
        assert not optimizer.param_groups[0]["foreach"]
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        build_optimizer(model, {**hypers, "optimizer": "sgd"})
    # no fused kernel for these dtypes: the multi-tensor update
    assert implementation([torch.zeros(2, dtype=torch.bfloat16)]) == {
        "fused": None,
        "foreach": True,
    }


def test_fused_and_multi_tensor_updates_agree_and_restart_keeps_fused():
    fused, _ = _adam_steps(implementation([torch.zeros(1)]))
    foreach, written = _adam_steps({"foreach": True})
    assert not torch.equal(fused, torch.zeros_like(fused))
    torch.testing.assert_close(fused, foreach, rtol=1e-12, atol=1e-14)
    # a checkpoint written by the multi-tensor update continues with the fused one
    state = written.state_dict()
    assert state["param_groups"][0]["foreach"] is True
    continued, optimizer = _adam_steps({"fused": True}, steps=3, state=state)
    assert optimizer.param_groups[0]["fused"] is True
    assert not optimizer.param_groups[0]["foreach"]
    assert float(optimizer.state[optimizer.param_groups[0]["params"][0]]["step"]) == 8
    reference, _ = _adam_steps({"foreach": True}, steps=3, state=state)
    torch.testing.assert_close(continued, reference, rtol=1e-12, atol=1e-14)


def test_batches_already_in_training_form_skip_the_conversion():
    from metatensor.torch import Labels, TensorBlock, TensorMap
    from metatomic.torch import System

    from lorem_mta.architecture.epoch import _is_on

    def tensor_map(dtype):
        values = torch.zeros(2, 1, dtype=dtype)
        block = TensorBlock(values, Labels.range("system", 2), [], Labels.range("p", 1))
        return TensorMap(Labels.range("_", 1), [block])

    def system(dtype):
        return System(
            types=torch.tensor([1, 8]),
            positions=torch.zeros(2, 3, dtype=dtype),
            cell=torch.zeros(3, 3, dtype=dtype),
            pbc=torch.tensor([False, False, False]),
        )

    cpu, f64 = torch.device("cpu"), torch.float64
    systems, targets = [system(f64)] * 2, {"energy": tensor_map(f64)}
    assert _is_on(systems, targets, {"energy_mask": tensor_map(torch.bool)}, f64, cpu)
    assert _is_on(systems, targets, None, f64, cpu)
    assert not _is_on(systems, targets, {}, torch.float32, cpu)
    assert not _is_on([system(torch.float32)], targets, {}, f64, cpu)
    assert not _is_on(systems, {"energy": tensor_map(torch.float32)}, {}, f64, cpu)
    assert not _is_on(systems, targets, {"energy_mask": tensor_map(f64)}, f64, cpu)
