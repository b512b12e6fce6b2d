"""The loss and errors of compiled energy batches on plain tensors
(:py:mod:`lorem_mta.architecture.flat_loss`) are metatrain's, to the last bit.

* the loss of a batch equals ``LossAggregator`` on metatrain's per-atom averaged
  tensor maps, for mse/mae/huber terms, weights, per-structure targets and NaN
  references;
* the RMSE and MAE sums equal those of metatrain's accumulators (blocks separate or
  not);
* what it does not compute (extra data, other dtypes, other losses, scaled targets,
  other targets) is refused, and goes through metatrain.
"""

import copy
import math
from collections import namedtuple

import pytest
import torch
from metatensor.torch import join
from metatrain.utils.data.target_info import get_energy_target_info
from metatrain.utils.loss import LossAggregator
from metatrain.utils.metrics import MAEAccumulator, RMSEAccumulator
from metatrain.utils.neighbor_lists import get_system_with_neighbor_lists_transform
from metatrain.utils.per_atom import average_by_num_atoms
from test_compiled_training import cumulene_data, metatrain_model

from lorem_mta.architecture.batching import PreparedDataset
from lorem_mta.architecture.compiled import CompiledEnergyForces
from lorem_mta.architecture.flat_loss import FlatLoss

DTYPE = torch.float64


def prepared_samples(model, dataset, indices, nan_at=None):
    """Prepared samples (neighbour lists attached once) of ``dataset[indices]``."""
    subset = torch.utils.data.Subset(dataset, indices)
    transform = get_system_with_neighbor_lists_transform(model.requested_neighbor_lists())
    samples = list(PreparedDataset(subset, ["energy"], [transform], DTYPE).samples)
    if nan_at is not None:  # one missing reference energy and one force component
        block = samples[nan_at].energy.block()
        block.values[0, 0] = math.nan
        block.gradient("positions").values[1, 2, 0] = math.nan
    return samples


def loss_config(energy, forces):
    return {"energy": {**energy, "gradients": {"positions": forces}}}


def metatrain_loss(loss_fn, predictions, samples, per_structure):
    systems = [sample.system for sample in samples]
    targets = {"energy": join([s.energy for s in samples], axis="samples")}
    keys = ["energy"] if per_structure else []
    predictions = average_by_num_atoms(predictions, systems, keys)
    targets = average_by_num_atoms(targets, systems, keys)
    return loss_fn(predictions, targets, {}), predictions, targets


LOSSES = [
    ({"type": "mse", "weight": 1.0, "reduction": "mean"},) * 2,
    (
        {"type": "mae", "weight": 0.3, "reduction": "sum"},
        {"type": "huber", "weight": 7.0, "reduction": "mean", "delta": 0.01},
    ),
]


@pytest.mark.parametrize("terms", LOSSES)
@pytest.mark.parametrize("per_structure", [False, True])
@pytest.mark.parametrize("nan_at", [None, 2])
def test_loss_equals_metatrain(terms, per_structure, nan_at):
    dataset, info = cumulene_data()
    model = metatrain_model(info)
    samples = prepared_samples(model, dataset, [0, 3, 1, 4], nan_at)
    loss_fn = LossAggregator(info.targets, loss_config(*terms))
    assert FlatLoss.unsupported(loss_fn, info.targets, "energy", True) is None
    flat_loss = FlatLoss(loss_fn, "energy", per_structure, None)
    compiled = CompiledEnergyForces(model, backend=None)
    systems = [sample.system for sample in samples]

    energies, gradients, flat = compiled.evaluate(systems, kept=True)
    references = flat_loss.references(samples, DTYPE, torch.device("cpu"))
    found = flat_loss.evaluate(references, energies, gradients, flat.atom_ptr)
    targets = {"energy": info.targets["energy"]}
    expected, _, _ = metatrain_loss(
        loss_fn, compiled(systems, targets, kept=True), samples, per_structure
    )
    assert torch.isfinite(expected)
    assert found.complete == (nan_at is None)  # both selections of the references
    assert torch.equal(found.loss, expected)
    # and the same parameter gradients
    parameters = [p for p in model.parameters() if p.requires_grad]
    found_grads = torch.autograd.grad(found.loss, parameters, allow_unused=True)
    energies, gradients, flat = compiled.evaluate(systems, kept=True)
    again = flat_loss.evaluate(references, energies, gradients, flat.atom_ptr)
    assert torch.equal(again.loss, found.loss)
    expected_grads = torch.autograd.grad(again.loss, parameters, allow_unused=True)
    for a, b in zip(found_grads, expected_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


@pytest.mark.parametrize("separate", [False, True])
def test_error_sums_equal_metatrain(separate):
    dataset, info = cumulene_data()
    model = metatrain_model(info)
    terms = ({"type": "mse", "weight": 1.0, "reduction": "mean"},) * 2
    loss_fn = LossAggregator(info.targets, loss_config(*terms))
    block_name = " (_=0)" if separate else None
    flat_loss = FlatLoss(loss_fn, "energy", False, block_name)
    compiled = CompiledEnergyForces(model, backend=None)
    found = [RMSEAccumulator(separate), MAEAccumulator(separate)]
    expected = copy.deepcopy(found)
    for indices, nan_at in [([0, 1, 2], None), ([3, 5, 4, 6], 1)]:
        samples = prepared_samples(model, dataset, indices, nan_at)
        systems = [sample.system for sample in samples]
        references = flat_loss.references(samples, DTYPE, torch.device("cpu"))
        energies, gradients, flat = compiled.evaluate(systems, kept=True)
        evaluated = flat_loss.evaluate(references, energies, gradients, flat.atom_ptr)
        flat_loss.accumulate(found, evaluated)
        predictions = compiled(systems, {"energy": info.targets["energy"]}, kept=True)
        _, predictions, targets = metatrain_loss(loss_fn, predictions, samples, False)
        for accumulator in expected:
            accumulator.update(predictions, targets, {})
    for mine, theirs in zip(found, expected, strict=True):
        assert list(mine.information) == list(theirs.information)
        assert len(mine.information) == 2
        for name, (total, count) in theirs.information.items():
            assert mine.information[name][1] == count
            assert mine.information[name][0] == pytest.approx(total, rel=1e-14, abs=0)
        kwargs = {"not_per_atom": ["positions_gradients"], "is_distributed": False}
        assert mine.finalize(**kwargs) == pytest.approx(theirs.finalize(**kwargs), rel=1e-14)


def test_what_it_does_not_compute_is_refused():
    dataset, info = cumulene_data()
    model = metatrain_model(info)
    mse = {"type": "mse", "weight": 1.0, "reduction": "mean"}
    loss_fn = LossAggregator(info.targets, loss_config(mse, mse))
    assert FlatLoss.unsupported(loss_fn, info.targets, "energy", False) == "scaled targets"
    masked = LossAggregator(info.targets, loss_config({**mse, "type": "masked_mse"}, mse))
    reason = FlatLoss.unsupported(masked, info.targets, "energy", True)
    assert reason == "loss TensorMapMaskedMSELoss"
    stress = get_energy_target_info(
        "energy",
        {"quantity": "energy", "unit": "eV", "per_atom": False, "num_subtargets": 1},
        add_position_gradients=True,
        add_strain_gradients=True,
    )
    other = {"energy": stress}
    assert FlatLoss.unsupported(LossAggregator(other, {}), other, "energy", True) == (
        "per-atom energies, stress or virial"
    )
    two = {**info.targets, "dipole": info.targets["energy"]}
    assert FlatLoss.unsupported(loss_fn, two, "energy", True) == (
        "targets other than the energy"
    )

    flat_loss = FlatLoss(loss_fn, "energy", False, None)
    samples = prepared_samples(model, dataset, [0, 1])
    cpu = torch.device("cpu")
    assert flat_loss.references(samples, torch.float32, cpu) is None  # dtype
    extra_type = namedtuple("Sample", ["system", "energy", "energy_mask"])
    with_extra = [extra_type(s.system, s.energy, s.energy) for s in samples]
    fresh = FlatLoss(loss_fn, "energy", False, None)
    assert fresh.references(with_extra, DTYPE, cpu) is None
    assert fresh.references(samples, DTYPE, cpu) is not None
