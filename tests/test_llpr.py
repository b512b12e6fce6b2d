"""Last-layer features (``mtt::aux::energy_last_layer_features``) and metatrain's LLPR.

The features must be what the last linear layers of the energy readouts see: their
product with the concatenated last-layer weights, plus the biases of those layers, is
the energy of the network (without the atomic baseline). The weights are read from the
state dict under the names the model gives (``last_layer_parameter_names``), so the
check also covers the bookkeeping metatrain's LLPR ensembles rely on.
"""

import copy
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from _helpers import VARIANTS, make_model, molecule, nacl_cell
from metatensor.torch import Labels
from metatomic.torch import (
    ModelEvaluationOptions,
    ModelOutput,
    load_atomistic_model,
)
from metatrain.llpr import LLPRUncertaintyModel
from metatrain.utils.architectures import get_default_hypers
from metatrain.utils.data import DatasetInfo, get_atomic_types, get_dataset

from lorem_mta.architecture import LoremMta
from lorem_mta.architecture.model import last_layer_features_name
from lorem_mta.model import LAST_LAYER_FEATURES, atomistic_model
from lorem_mta.utils import attach_neighbors, system_from_atoms

TESTS = Path(__file__).resolve().parent
DATASET = TESTS / "resources" / "metatrain" / "hcno_lj.xyz"
BIN = Path(sys.executable).parent
TINY = {
    "max_degree": 1,
    "max_degree_lr": 1,
    "num_features": 4,
    "num_spherical_features": 1,
    "num_radial": 4,
    "num_species": 2,
}


def _structures():
    return {"nacl-periodic": nacl_cell(), "ch3oh": molecule()}


def _systems(model, atoms_list, requires_grad=False):
    systems = []
    for atoms in atoms_list:
        system = system_from_atoms(atoms, torch.float64)
        if requires_grad:
            system.positions.requires_grad_(True)
        systems.append(system)
    attach_neighbors(model, systems)
    return systems


def _last_layer(state_dict, names):
    """Concatenated last-layer weights ``(1, n_features)`` and the summed biases."""
    weights = torch.cat([state_dict[name] for name in names], dim=1)
    bias = sum(state_dict[name.replace(".weight", ".bias")] for name in names)
    return weights, bias


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("structure", ["nacl-periodic", "ch3oh"])
def test_features_times_weights_give_the_energy(variant, structure):
    model = copy.deepcopy(make_model(seed=7, **VARIANTS[variant]))
    # a non-zero atomic baseline, which the features must not contain
    torch.manual_seed(3)
    model.atomic_baseline.copy_(torch.randn(100, dtype=torch.float64))
    atoms = _structures()[structure]
    systems = _systems(model, [atoms])
    requested = {
        "energy": ModelOutput(sample_kind="atom"),
        LAST_LAYER_FEATURES: ModelOutput(sample_kind="atom"),
    }
    with torch.no_grad():
        outputs = model(systems, requested)
    block = outputs[LAST_LAYER_FEATURES].block()
    backbone = model.backbone
    n_readouts = 1 + len(backbone.steps) + int(backbone.long_range is not None)
    assert backbone.last_layer_feature_size == 16 * n_readouts
    assert block.values.shape == (len(atoms), backbone.last_layer_feature_size)
    assert block.samples.names == ["system", "atom"]
    assert block.samples.values[:, 1].tolist() == list(range(len(atoms)))
    assert block.properties.names == ["feature"]
    assert block.components == []

    names = backbone.last_layer_parameter_names()
    assert len(names) == n_readouts
    weights, bias = _last_layer(backbone.state_dict(), names)
    assert weights.shape == (1, backbone.last_layer_feature_size)
    energies = outputs["energy"].block().values
    baseline = model.atomic_baseline[systems[0].types.long()].unsqueeze(-1)
    np.testing.assert_allclose(
        block.values @ weights.T + bias, energies - baseline, rtol=1e-10, atol=1e-12
    )
    # the features are not the energy itself: a changed last layer changes the energy
    assert float(torch.abs(baseline).max()) > 0.1


def test_per_structure_features_and_selected_atoms():
    model = make_model(seed=5, **VARIANTS["lr1-mp1-eq"])
    structures = [nacl_cell(), molecule()]
    systems = _systems(model, structures)
    per_atom = {LAST_LAYER_FEATURES: ModelOutput(sample_kind="atom")}
    per_system = {LAST_LAYER_FEATURES: ModelOutput(sample_kind="system")}
    with torch.no_grad():
        atoms_block = model(systems, per_atom)[LAST_LAYER_FEATURES].block()
        systems_block = model(systems, per_system)[LAST_LAYER_FEATURES].block()
    assert systems_block.samples.names == ["system"]
    assert systems_block.values.shape == (2, atoms_block.values.shape[1])
    for k, atoms in enumerate(structures):
        rows = atoms_block.samples.values[:, 0] == k
        assert int(rows.sum()) == len(atoms)
        np.testing.assert_allclose(
            systems_block.values[k], atoms_block.values[rows].sum(dim=0), rtol=1e-12
        )

    chosen = [[0, 1], [0, 4], [1, 0], [1, 2]]
    selected = Labels(["system", "atom"], torch.tensor(chosen))
    with torch.no_grad():
        sub_atoms = model(systems, per_atom, selected)[LAST_LAYER_FEATURES].block()
        sub_systems = model(systems, per_system, selected)[LAST_LAYER_FEATURES].block()
    assert sub_atoms.samples.values.tolist() == chosen
    offsets = [0, len(structures[0])]
    for row, (k, i) in enumerate(chosen):
        np.testing.assert_allclose(
            sub_atoms.values[row], atoms_block.values[offsets[k] + i], rtol=1e-10
        )
    np.testing.assert_allclose(
        sub_systems.values[0], sub_atoms.values[:2].sum(dim=0), rtol=1e-10
    )


def test_no_explicit_gradients_but_differentiable():
    """No gradient blocks; the values stay in the graph (LLPR ensembles' forces)."""
    model = make_model(seed=5, **VARIANTS["lr2"])
    systems = _systems(model, [molecule()], requires_grad=True)
    outputs = model(systems, {LAST_LAYER_FEATURES: ModelOutput(sample_kind="system")})
    block = outputs[LAST_LAYER_FEATURES].block()
    assert block.gradients_list() == []
    (gradient,) = torch.autograd.grad(block.values.sum(), systems[0].positions)
    assert bool(torch.isfinite(gradient).all())
    assert float(gradient.abs().max()) > 0.0


def test_only_computed_when_requested():
    model = make_model(seed=5, **VARIANTS["lr2"])
    systems = _systems(model, [molecule()])
    with torch.no_grad():
        outputs = model(systems, {"energy": ModelOutput(sample_kind="system")})
    assert list(outputs) == ["energy"]
    assert model.outputs()[LAST_LAYER_FEATURES].sample_kind == "atom"


@pytest.mark.parametrize("sample_kind", ["atom", "system"])
def test_exported_model_with_metatomic_checks(tmp_path, sample_kind):
    model = make_model(seed=5, **VARIANTS["lr1-mp1-eq"])
    structures = [nacl_cell(), molecule()]
    requested = {
        "energy": ModelOutput(unit="eV", sample_kind=sample_kind),
        LAST_LAYER_FEATURES: ModelOutput(sample_kind=sample_kind),
    }
    with torch.no_grad():
        eager = model(_systems(model, structures), requested)

    exported = atomistic_model(model, torch.float64)
    assert LAST_LAYER_FEATURES in exported.capabilities().outputs
    exported.save(str(tmp_path / "model.pt"))
    loaded = load_atomistic_model(str(tmp_path / "model.pt"))
    options = ModelEvaluationOptions(length_unit="angstrom", outputs=requested)
    systems = _systems(loaded, structures)
    with torch.no_grad():
        result = loaded(systems, options, check_consistency=True)
    for name in requested:
        np.testing.assert_allclose(
            result[name].block().values, eager[name].block().values, rtol=1e-10
        )
        assert result[name].block().gradients_list() == []


# ---------------------------------------------------------------------------------------
# the metatrain model (LoremMta)
# ---------------------------------------------------------------------------------------


def _dataset(target):
    targets = {
        target: {
            "quantity": "energy",
            "read_from": str(DATASET),
            "reader": "ase",
            "key": "energy",
            "unit": "eV",
            "type": "scalar",
            "sample_kind": "system",
            "num_subtargets": 1,
            "forces": False,
            "stress": False,
            "virial": False,
        }
    }
    dataset, targets_info, _ = get_dataset(
        {"systems": {"read_from": str(DATASET), "reader": "ase"}, "targets": targets}
    )
    info = DatasetInfo(
        length_unit="angstrom",
        atomic_types=get_atomic_types(dataset),
        targets=targets_info,
    )
    return dataset, info


def _lorem_mta(target="energy"):
    dataset, info = _dataset(target)
    hypers = {**get_default_hypers("experimental.lorem_mta")["model"], **TINY}
    torch.manual_seed(0)
    model = LoremMta(hypers, info).to(torch.float64)
    with torch.no_grad():
        for parameter in model.lorem.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model, dataset


@pytest.mark.parametrize("target", ["energy", "mtt::U0"])
def test_lorem_mta_offers_metatrain_names(target):
    model, dataset = _lorem_mta(target)
    name = last_layer_features_name(target)
    assert (
        name
        == {"energy": LAST_LAYER_FEATURES, "mtt::U0": "mtt::aux::U0_last_layer_features"}[
            target
        ]
    )
    assert name in model.supported_outputs()
    assert model.last_layer_feature_size == 4 * 2  # initial step + long range
    state_dict = model.state_dict()
    for parameter in model.last_layer_parameter_names[target]:
        assert state_dict[parameter].shape == (1, 4)

    systems = [s.to(torch.float64) for s in [dataset[k]["system"] for k in range(3)]]
    attach_neighbors(model, systems)
    requested = {
        target: ModelOutput(sample_kind="system"),
        name: ModelOutput(sample_kind="system"),
    }
    weights, bias = _last_layer(state_dict, model.last_layer_parameter_names[target])
    n_atoms = torch.tensor([[len(s)] for s in systems], dtype=torch.float64)
    model.train()  # the raw network: no scaler, no composition baseline
    with torch.no_grad():
        raw = model(systems, requested)
    assert set(raw) == {target, name}
    features = raw[name].block().values
    assert features.shape == (3, model.last_layer_feature_size)
    np.testing.assert_allclose(
        features @ weights.T + n_atoms * bias, raw[target].block().values, rtol=1e-10
    )
    # the scaler and the composition model leave the features alone
    model.eval()
    with torch.no_grad():
        evaluated = model(systems, requested)
    np.testing.assert_allclose(evaluated[name].block().values, features, rtol=1e-12)


def test_llpr_wrapper_in_python():
    """metatrain's LLPR on a LoremMta: covariance, calibration, ensembles, export."""
    model, dataset = _lorem_mta()
    hypers = get_default_hypers("llpr")
    hypers["model"]["num_ensemble_members"] = {"energy": 16}
    llpr = LLPRUncertaintyModel(hypers["model"], model.dataset_info)
    llpr.set_wrapped_model(model)
    llpr.to(torch.float64)
    train = torch.utils.data.Subset(dataset, range(0, 12))
    calibration = torch.utils.data.Subset(dataset, range(12, 20))
    llpr.compute_covariance([train], 4, False)
    llpr.compute_cholesky_decomposition(None)
    llpr.calibrate([calibration], 4, False, "absolute_residuals")
    torch.manual_seed(0)
    llpr.generate_ensemble()

    systems = _systems(model, ase.io.read(DATASET, "14:20"))
    requested = {
        "energy": ModelOutput(sample_kind="system"),
        "energy_uncertainty": ModelOutput(sample_kind="system"),
        "energy_ensemble": ModelOutput(sample_kind="system"),
    }
    llpr.eval()
    with torch.no_grad():
        outputs = llpr(systems, requested)
    energy = outputs["energy"].block().values
    sigma = outputs["energy_uncertainty"].block().values
    ensemble = outputs["energy_ensemble"].block().values
    assert sigma.shape == energy.shape == (6, 1)
    assert bool((sigma > 0).all()) and bool(torch.isfinite(sigma).all())
    assert ensemble.shape == (6, 16)
    np.testing.assert_allclose(ensemble.mean(dim=1), energy[:, 0], rtol=1e-10)
    # the ensemble samples the same distribution as the uncertainty (16 members)
    ratio = (ensemble.std(dim=1) / sigma[:, 0]).median()
    assert 0.5 < float(ratio) < 1.6

    exported = llpr.export()
    assert "energy_uncertainty" in exported.capabilities().outputs
    scripted = torch.jit.script(exported)
    options = ModelEvaluationOptions(length_unit="angstrom", outputs=requested)
    with torch.no_grad():
        again = scripted(systems, options, check_consistency=True)
    np.testing.assert_allclose(again["energy_uncertainty"].block().values, sigma, rtol=1e-8)


# ---------------------------------------------------------------------------------------
# mtt train of the LLPR wrapper on a trained LOREM checkpoint
# ---------------------------------------------------------------------------------------

LOREM_OPTIONS = """\
seed: 42
base_precision: 64
final_eval: false
architecture:
  name: experimental.lorem_mta
  model:
{model}  training:
    batch_size: 4
    num_epochs: 2
    log_interval: 1
training_set:
  systems:
    read_from: train.xyz
    length_unit: angstrom
  targets:
    energy:
      key: energy
      unit: eV
validation_set: 0.2
test_set: 0.0
"""

LLPR_OPTIONS = """\
seed: 42
base_precision: 64
architecture:
  name: llpr
  model:
    num_ensemble_members: {energy: 8}
  training:
    model_checkpoint: model.ckpt
    batch_size: 4
training_set:
  systems:
    read_from: train.xyz
    length_unit: angstrom
  targets:
    energy:
      key: energy
      unit: eV
validation_set: 0.2
test_set: 0.1
"""


def _mtt(arguments, cwd):
    result = subprocess.run(
        [str(BIN / "mtt"), *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"mtt {' '.join(arguments)} failed:\n{result.stdout[-3000:]}\n"
            f"{result.stderr[-5000:]}"
        )
    return result.stdout + result.stderr


def _check_trained_checkpoint(path):
    """On a trained model: features times weights give the energy minus composition.

    In evaluation mode the energy is ``scale * (network) + composition``: with the
    composition removed, it must be one constant factor (the scaler) times the energy
    from the last-layer features.
    """
    from metatrain.utils.io import model_from_checkpoint

    model = model_from_checkpoint(torch.load(path, weights_only=False), "export")
    model = model.to(torch.float64).eval()
    frames = ase.io.read(DATASET, ":6")
    systems = _systems(model, frames)
    requested = {
        "energy": ModelOutput(sample_kind="system"),
        LAST_LAYER_FEATURES: ModelOutput(sample_kind="system"),
    }
    with torch.no_grad():
        outputs = model(systems, requested)
        composition = model.additive_models[0](
            systems, {"energy": ModelOutput(sample_kind="system")}
        )["energy"]
    weights, bias = _last_layer(model.state_dict(), model.last_layer_parameter_names["energy"])
    n_atoms = torch.tensor([[len(frame)] for frame in frames], dtype=torch.float64)
    network = outputs[LAST_LAYER_FEATURES].block().values @ weights.T + n_atoms * bias
    scaled = outputs["energy"].block().values - composition.block().values
    ratio = scaled / network
    assert float(composition.block().values.abs().max()) > 0.0
    np.testing.assert_allclose(ratio, ratio[0, 0].expand_as(ratio), rtol=1e-8)


@pytest.mark.slow
def test_mtt_train_llpr_on_a_lorem_checkpoint(tmp_path):
    shutil.copy(DATASET, tmp_path / "train.xyz")
    model = textwrap.indent("".join(f"{k}: {v}\n" for k, v in TINY.items()), "    ")
    (tmp_path / "options.yaml").write_text(LOREM_OPTIONS.format(model=model))
    _mtt(["train", "options.yaml"], tmp_path)
    (tmp_path / "options-llpr.yaml").write_text(LLPR_OPTIONS)
    _check_trained_checkpoint(tmp_path / "model.ckpt")
    log = _mtt(["train", "options-llpr.yaml", "-o", "model-llpr.pt"], tmp_path)
    assert "LLPR complete!" in log

    loaded = load_atomistic_model(str(tmp_path / "model-llpr.pt"))
    outputs = loaded.capabilities().outputs
    for name in ["energy", "energy_uncertainty", "energy_ensemble", LAST_LAYER_FEATURES]:
        assert name in outputs, name
    frames = ase.io.read(tmp_path / "train.xyz", ":8")
    systems = _systems(loaded, frames)
    requested = {
        name: ModelOutput(unit="eV", sample_kind="system")
        for name in ["energy", "energy_uncertainty", "energy_ensemble"]
    }
    options = ModelEvaluationOptions(length_unit="angstrom", outputs=requested)
    with torch.no_grad():
        result = loaded(systems, options, check_consistency=True)
    sigma = result["energy_uncertainty"].block().values
    ensemble = result["energy_ensemble"].block().values
    assert bool((sigma > 0).all()) and bool(torch.isfinite(sigma).all())
    assert ensemble.shape == (8, 8)
    np.testing.assert_allclose(
        ensemble.mean(dim=1), result["energy"].block().values[:, 0], rtol=1e-8
    )
