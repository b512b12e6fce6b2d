"""``LoremMta.export`` leaves the model it is called on as it was.

A float32 network keeps its baseline and scaler in float64 for training; the export casts
the whole model to the network's dtype and moves the baseline's weights to the CPU. It
does so on a copy, so that a model that is exported (e.g. between two training runs in a
script) keeps training and predicting exactly as before: same dtypes, devices and values,
its parameters still trainable (metatomic's ``AtomisticModel`` freezes the parameters of
the module it wraps). A model that the export would not change (frozen, in the dtype of
its network) is not copied.
"""

import copy

import pytest
import torch
from metatomic.torch import ModelOutput
from test_metatrain_suites import DATASET, _systems, _train_one_epoch


def _tensors(model):
    """Every parameter and buffer, and the composition baseline's weights, cloned."""
    tensors = {
        name: value.detach().clone()
        for name, value in [*model.named_parameters(), *model.named_buffers()]
    }
    for target, weights in model.additive_models[0].model.weights.items():
        for index, block in enumerate(weights.blocks()):
            tensors[f"baseline:{target}:{index}"] = block.values.detach().clone()
    return tensors


def _dtypes(module):
    return {t.dtype for t in module.buffers() if t.is_floating_point()}


def _energies(model, systems):
    outputs = model(systems, {"energy": ModelOutput(sample_kind="system")})
    return outputs["energy"].block().values.detach().clone()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained for one epoch in float32 (baseline and scaler in float64)."""
    directory = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(directory)
        baseline = {"energy": {1: -13.6, 6: -1030.5, 7: -1485.3, 8: -2041.7}}
        model, _ = _train_one_epoch(str(DATASET), {"atomic_baseline": baseline})
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_export_leaves_the_model_alone(trained, dtype):
    model = copy.deepcopy(trained)
    if dtype == torch.float64:
        model.to(torch.float64)
    assert next(model.lorem.parameters()).dtype == dtype
    assert _dtypes(model.scaler) == {torch.float64}
    model.eval()
    systems = _systems(model, dtype)[:4]
    before = _tensors(model)
    energies = _energies(model, systems)

    exported = model.export()

    after = _tensors(model)
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert after[name].dtype == value.dtype, name
        assert after[name].device == value.device, name
        assert torch.equal(after[name], value), name
    assert all(parameter.requires_grad for parameter in model.parameters())
    torch.testing.assert_close(_energies(model, systems), energies, rtol=0.0, atol=0.0)
    assert exported.capabilities().dtype == str(dtype).removeprefix("torch.")
    assert exported.module is not model
    assert not any(parameter.requires_grad for parameter in exported.module.parameters())
    # the float64 baseline and scaler of a float32 network are cast in the exported model
    assert _dtypes(exported.module.scaler) == {dtype}


def test_export_without_changes_shares_the_model(trained):
    """A frozen float64 model is exported as it is (no copy)."""
    model = copy.deepcopy(trained).to(torch.float64).eval()
    model.requires_grad_(False)
    before = _tensors(model)
    exported = model.export()
    assert exported.module is model
    for name, value in _tensors(model).items():
        assert torch.equal(value, before[name]) and value.dtype == before[name].dtype, name


def test_export_of_a_model_in_train_mode_keeps_its_mode(trained):
    """A frozen float64 model in train mode is exported as an eval copy."""
    model = copy.deepcopy(trained).to(torch.float64).train()
    model.requires_grad_(False)
    exported = model.export()
    assert exported.module is not model and not exported.module.training
    assert model.training
