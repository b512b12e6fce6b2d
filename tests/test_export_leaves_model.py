"""``atomistic_model`` and ``export`` leave the :py:class:`LoremModel` they are given alone.

metatomic's ``AtomisticModel`` freezes the parameters of the module it wraps and the
export casts the model to its dtype and puts it in eval mode: both happen on a copy when
they would change the caller's model (a float64 model exported to float32, trainable
parameters, train mode), so that a model exported in a script keeps its dtype, its
trainable parameters, its mode and its energies. A frozen model in eval mode and in the
export dtype is wrapped as it is, without a copy.
"""

import copy

import pytest
import torch
from _helpers import molecule, nacl_cell, nacl_cluster, relative_error, variant_model
from metatomic.torch import ModelEvaluationOptions, ModelOutput, load_atomistic_model

from lorem_mta.model import atomistic_model, export
from lorem_mta.utils import attach_neighbors, predict, system_from_atoms

VARIANT = "lr2"


def _structures():
    return [nacl_cell(), molecule(), nacl_cluster()]


def _state(model):
    """Every parameter and buffer: (dtype, requires_grad, detached copy), and the mode."""
    tensors = {
        name: (value.dtype, value.requires_grad, value.detach().clone())
        for name, value in [*model.named_parameters(), *model.named_buffers()]
    }
    return tensors, model.training


def _assert_same_state(model, before):
    tensors, training = _state(model)
    assert training == before[1]
    assert tensors.keys() == before[0].keys()
    for name, (dtype, requires_grad, value) in tensors.items():
        old_dtype, old_requires_grad, old_value = before[0][name]
        assert (dtype, requires_grad) == (old_dtype, old_requires_grad), name
        assert torch.equal(value, old_value), name


def _energies(model):
    return predict(model, _structures()).energies.detach()


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("to_file", [False, True], ids=["atomistic_model", "export"])
def test_export_leaves_a_trainable_float64_model_alone(tmp_path, dtype, train, to_file):
    model = copy.deepcopy(variant_model(VARIANT)).train(train)
    assert all(p.requires_grad and p.dtype == torch.float64 for p in model.parameters())
    before = _state(model)
    energies = _energies(model)

    if to_file:
        wrapped = export(model, str(tmp_path / "model.pt"), dtype)
    else:
        wrapped = atomistic_model(model, dtype)

    _assert_same_state(model, before)
    assert torch.equal(_energies(model), energies)
    # the exported model is a frozen copy in the export dtype, in eval mode
    assert wrapped.module is not model
    assert not wrapped.module.training
    for parameter in wrapped.module.parameters():
        assert parameter.dtype == dtype and not parameter.requires_grad
    exported = load_atomistic_model(str(tmp_path / "model.pt")) if to_file else wrapped
    atoms = nacl_cell()
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    assert relative_error(_energies_of(exported, atoms, dtype), energies[0]) < tolerance


def _energies_of(exported, atoms, dtype):
    """The energy of ``atoms`` with an exported (wrapped) model."""
    system = system_from_atoms(atoms, dtype)
    attach_neighbors(exported, [system])
    options = ModelEvaluationOptions(
        length_unit="angstrom", outputs={"energy": ModelOutput(sample_kind="system")}
    )
    outputs = exported([system], options, check_consistency=True)
    return outputs["energy"].block().values.detach().to(torch.float64).reshape(())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_a_frozen_model_in_the_export_dtype_is_not_copied(dtype):
    model = copy.deepcopy(variant_model(VARIANT)).to(dtype).eval().requires_grad_(False)
    before = _state(model)
    wrapped = atomistic_model(model, dtype)
    assert wrapped.module is model
    _assert_same_state(model, before)


@pytest.mark.parametrize("change", ["trainable", "dtype", "train mode"])
def test_any_one_change_makes_a_copy(change):
    """Each of the three changes alone makes the export work on a copy."""
    model = copy.deepcopy(variant_model(VARIANT)).float().eval().requires_grad_(False)
    dtype = torch.float32
    if change == "trainable":
        next(model.parameters()).requires_grad_(True)
    elif change == "dtype":
        dtype = torch.float64
    else:
        model.train()
    before = _state(model)
    wrapped = atomistic_model(model, dtype)
    assert wrapped.module is not model
    _assert_same_state(model, before)
