"""Born effective charges (``bec=True``): symmetries, sum rule, field forces, parity,
export and training."""

import io
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from _helpers import make_model, molecule, nacl_cell, nacl_cluster, random_rotation, transform
from metatomic.torch import ModelOutput

from lorem_mta.convert import backbone_from_jax, read_jax_npz
from lorem_mta.model import BORN_CHARGES, atomistic_model
from lorem_mta.modules.bec import cartesian_rank2_matrix, even_parity_paths
from lorem_mta.modules.spherical import SphericalHarmonics
from lorem_mta.utils import attach_neighbors, predict, system_from_atoms

RESOURCES = Path(__file__).parent / "resources"
PARITY = RESOURCES / "parity" / "bec.npz"

#: model variants with Born-effective-charge heads (backbone keyword arguments)
BEC_VARIANTS = {
    "lr-mp1": {"bec": True, "num_message_passing": 1, "equivariant_message_passing": False},
    "sr": {"bec": True, "lr": False, "initialize_node_features": False},
}
STRUCTURES = {"nacl-periodic": nacl_cell, "nacl-cluster": nacl_cluster, "ch3oh": molecule}
_MODELS = {}


def _model(name):
    if name not in _MODELS:
        _MODELS[name] = make_model(seed=7, **BEC_VARIANTS[name])
    return _MODELS[name]


def _born_charges(model, atoms):
    system = system_from_atoms(atoms, torch.float64)
    attach_neighbors(model, [system])
    with torch.no_grad():
        out = model([system], {BORN_CHARGES: ModelOutput(sample_kind="atom")})
    block = out[BORN_CHARGES].block()
    assert block.values.shape == (len(atoms), 3, 3, 1)
    assert block.components[0].names == ["xyz_1"]
    assert block.components[1].names == ["xyz_2"]
    return block.values[..., 0].numpy()


def test_cartesian_matrix_reproduces_outer_product():
    """The nine l <= 2 components of Y(u) x Y(v) coupled to l=0,1,2 give back u v^T."""
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=3), rng.normal(size=3)
    harmonics = SphericalHarmonics(1)
    yu = harmonics(torch.tensor(u).reshape(1, 3))[0, 1:] * np.linalg.norm(u)
    yv = harmonics(torch.tensor(v).reshape(1, 3))[0, 1:] * np.linalg.norm(v)
    from lorem_mta.modules.tensor_product import clebsch_gordan

    coupled = [
        np.einsum("a,b,abk->k", yu.numpy(), yv.numpy(), clebsch_gordan(1, 1, l))
        for l in range(3)
    ]
    t = torch.tensor(np.concatenate(coupled))
    matrix = torch.einsum("k,kab->ab", t, cartesian_rank2_matrix()).numpy()
    # C^{11l} is orthogonal with sum C^2 = 2 l + 1: the full coupling returns u v^T
    np.testing.assert_allclose(matrix, np.outer(u, v), atol=1e-12)


def test_even_parity_paths_include_cross_product():
    paths = even_parity_paths(2, 2, 2)
    assert (1, 1, 1) in paths and (2, 2, 1) in paths and (1, 1, 2) in paths
    assert (1, 2, 1) not in paths and (0, 1, 1) not in paths


@pytest.mark.parametrize("variant", BEC_VARIANTS)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_rotation_and_inversion(variant, structure):
    """Z* -> R Z* R^T under a joint rotation of positions and cell, also improper."""
    model = _model(variant)
    atoms = STRUCTURES[structure]()
    reference = _born_charges(model, atoms)
    assert np.abs(reference).max() > 1e-3  # not trivially zero
    rng = np.random.default_rng(42)
    for improper in (False, True):
        rotation = random_rotation(rng, improper)
        rotated = _born_charges(model, transform(atoms, rotation, np.array([0.3, -0.2, 0.1])))
        expected = np.einsum("ab,nbc,dc->nad", rotation, reference, rotation)
        np.testing.assert_allclose(rotated, expected, atol=1e-10 * np.abs(reference).max())


def test_inversion_keeps_born_charges():
    """Z* is a true rank-2 tensor: an inversion (R = -1) leaves it unchanged, unlike the
    antisymmetric part of a pseudotensor-odd head would."""
    model = _model("lr-mp1")
    atoms = molecule()
    reference = _born_charges(model, atoms)
    inverted = _born_charges(model, transform(atoms, -np.eye(3)))
    antisymmetric = reference - np.transpose(reference, (0, 2, 1))
    assert np.abs(antisymmetric).max() > 1e-4  # the l = 1 (pseudovector) part is used
    np.testing.assert_allclose(inverted, reference, atol=1e-12)


@pytest.mark.parametrize("variant", BEC_VARIANTS)
def test_acoustic_sum_rule(variant):
    model = _model(variant)
    systems = [system_from_atoms(f(), torch.float64) for f in STRUCTURES.values()]
    attach_neighbors(model, systems)
    with torch.no_grad():
        out = model(systems, {BORN_CHARGES: ModelOutput(sample_kind="atom")})
    block = out[BORN_CHARGES].block()
    values = block.values[..., 0]
    structure = block.samples.column("system")
    for k in range(len(systems)):
        total = values[structure == k].sum(dim=0)
        assert float(values[structure == k].abs().max()) > 1e-3
        assert float(total.abs().max()) < 1e-12


def test_electric_field_force_is_born_charge_times_field():
    model = make_model(seed=3, **BEC_VARIANTS["lr-mp1"])
    atoms = nacl_cell()
    without = predict(model, [atoms])
    born = _born_charges(model, atoms)
    field = [0.05, -0.1, 0.2]
    model.set_electric_field(field)
    try:
        with_field = predict(model, [atoms])
    finally:
        model.set_electric_field([0.0, 0.0, 0.0])
    difference = (with_field.forces[0] - without.forces[0]).detach().numpy()
    expected = born @ np.array(field)
    assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(difference, expected, atol=1e-12)


def test_default_models_have_no_bec_parameters():
    plain = make_model(seed=1)
    assert not any("bec_heads" in name for name in plain.state_dict())
    assert BORN_CHARGES not in plain.outputs()
    with pytest.raises(ValueError, match="Born effective charges"):
        plain.set_electric_field([0.0, 0.0, 1.0])


# -- parity with lorem-jax ---------------------------------------------------------------


def _evaluate_fixture(model, data, k, field=None):
    get = lambda key: torch.tensor(data[f"s{k}/{key}"])  # noqa: E731
    positions = get("positions").requires_grad_(True)
    cell = get("cell")
    centers, others = get("nl_centers").long(), get("nl_others").long()
    vectors = positions[others] - positions[centers] + get("nl_cell_shifts").double() @ cell
    output = model(
        get("numbers").long(),
        positions,
        centers,
        others,
        vectors,
        cell.unsqueeze(0),
        [0, positions.shape[0]],
        [0, centers.shape[0]],
        [bool(data[f"s{k}/pbc"].all())],
        electric_field=field,
    )
    forces = -torch.autograd.grad(output.energies.sum(), positions)[0]
    return output, forces


@pytest.fixture(scope="module")
def parity_model():
    params, hypers = read_jax_npz(str(PARITY))
    assert hypers.get("bec") is True  # recognised from the PerParticleTensorPredictor leaves
    return backbone_from_jax(params, hypers), dict(np.load(PARITY))


@pytest.mark.parametrize("k", range(3))
def test_parity_with_lorem_jax(parity_model, k):
    """float64 weight-level parity with lorem-jax's LoremBEC (exact-binomial columns)."""
    model, data = parity_model
    output, forces = _evaluate_fixture(model, data, k)
    apt = data[f"s{k}/apt_exactbinom"]
    scale = max(1.0, np.abs(apt).max())
    np.testing.assert_allclose(output.born_charges.detach().numpy(), apt, atol=1e-8 * scale)
    np.testing.assert_allclose(
        output.energies.detach().numpy(), data[f"s{k}/energies_exactbinom"], atol=1e-8
    )
    np.testing.assert_allclose(forces.numpy(), data[f"s{k}/forces_exactbinom"], atol=1e-8)
    field = torch.tensor(data["electric_field"]).reshape(1, 3)
    _, forces_field = _evaluate_fixture(model, data, k, field)
    np.testing.assert_allclose(
        forces_field.numpy(), data[f"s{k}/forces_field_exactbinom"], atol=1e-8
    )


# -- export ------------------------------------------------------------------------------


def test_torchscript_export_with_born_charges(tmp_path):
    model = make_model(seed=5, **BEC_VARIANTS["lr-mp1"])
    atoms = nacl_cell()
    reference = _born_charges(model, atoms)
    exported = atomistic_model(model, torch.float64)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(exported), buffer)
    buffer.seek(0)
    path = tmp_path / "bec.pt"
    exported.save(str(path))
    from metatomic.torch import load_atomistic_model

    loaded = load_atomistic_model(str(path))
    assert BORN_CHARGES in loaded.capabilities().outputs
    system = system_from_atoms(atoms, torch.float64)
    attach_neighbors(model, [system])
    from metatomic.torch import ModelEvaluationOptions

    options = ModelEvaluationOptions(
        length_unit="angstrom",
        outputs={BORN_CHARGES: ModelOutput(sample_kind="atom")},
    )
    out = loaded([system], options, check_consistency=True)
    values = out[BORN_CHARGES].block().values[..., 0].detach().numpy()
    np.testing.assert_allclose(values, reference, atol=1e-12)


# -- metatrain ---------------------------------------------------------------------------

BIN = Path(sys.executable).parent

MTT_OPTIONS = """\
seed: 0
base_precision: 64
architecture:
  name: experimental.lorem_mta
  model:
    max_degree: 1
    max_degree_lr: 1
    num_features: 4
    num_spherical_features: 1
    num_radial: 4
    num_species: 2
    bec: true
  training:
    batch_size: 1
    num_epochs: 1
    log_interval: 1
    num_workers: 0
training_set:
  systems:
    read_from: data.xyz
    length_unit: angstrom
  targets:
    energy:
      key: energy
      unit: eV
      forces:
        key: forces
    mtt::apt:
      key: apt
      unit: e
      per_atom: true
      type:
        cartesian:
          rank: 2
validation_set: 0.34
test_set: 0.0
"""


@pytest.mark.slow
def test_mtt_train_on_water_born_charges(tmp_path):
    """``mtt train`` with an energy and a per-atom Cartesian rank-2 target (~1 min)."""
    data = RESOURCES / "water_bec" / "water_bec_3.xyz"
    (tmp_path / "data.xyz").write_bytes(data.read_bytes())
    (tmp_path / "options.yaml").write_text(MTT_OPTIONS)
    result = subprocess.run(
        [str(BIN / "mtt"), "train", "options.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "validation mtt::apt RMSE" in result.stdout + result.stderr

    import metatomic.torch  # noqa: F401 (checkpoints hold metatomic objects)

    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=False)
    assert checkpoint["model_data"]["model_hypers"]["bec"] is True

    from metatomic.torch import ModelEvaluationOptions, load_atomistic_model

    model = load_atomistic_model(str(tmp_path / "model.pt"))
    assert "mtt::apt" in model.capabilities().outputs
    atoms = ase.io.read(data, index=0)
    system = system_from_atoms(atoms, torch.float64)
    attach_neighbors(model, [system])
    options = ModelEvaluationOptions(
        length_unit="angstrom", outputs={"mtt::apt": ModelOutput(sample_kind="atom")}
    )
    block = model([system], options, check_consistency=True)["mtt::apt"].block()
    assert block.values.shape == (len(atoms), 3, 3, 1)
    assert block.properties.names == ["apt"]
    assert float(block.values.abs().max()) > 1e-4
    assert float(block.values.sum(dim=0).abs().max()) < 1e-10


def test_convert_jax_command_exports_born_charges(tmp_path, parity_model):
    """``lorem-mta convert-jax`` on the LoremBEC parameters: the exported model returns
    lorem-jax's Born charges for the periodic water frame (own neighbour list)."""
    from metatomic.torch import ModelEvaluationOptions, load_atomistic_model

    from lorem_mta.cli import main

    _, data = parity_model
    output = tmp_path / "bec.pt"
    arguments = ["convert-jax", str(PARITY), "-o", str(output), "--dtype", "float64"]
    assert main(arguments + ["--long-range-method", "ewald"]) == 0
    model = load_atomistic_model(str(output))
    assert BORN_CHARGES in model.capabilities().outputs
    atoms = ase.Atoms(
        numbers=data["s0/numbers"],
        positions=data["s0/positions"],
        cell=data["s0/cell"],
        pbc=True,
    )
    system = system_from_atoms(atoms, torch.float64)
    attach_neighbors(model, [system])
    options = ModelEvaluationOptions(
        length_unit="angstrom", outputs={BORN_CHARGES: ModelOutput(sample_kind="atom")}
    )
    values = model([system], options, check_consistency=True)[BORN_CHARGES].block().values
    np.testing.assert_allclose(
        values[..., 0].detach().numpy(), data["s0/apt_exactbinom"], atol=1e-8
    )


def _bec_architecture(bec_target=True):
    from metatrain.utils.data import DatasetInfo
    from metatrain.utils.data.target_info import (
        get_energy_target_info,
        get_generic_target_info,
    )

    from lorem_mta.architecture import LoremMta

    targets = {"energy": get_energy_target_info("energy", {"quantity": "energy", "unit": "eV"})}
    if bec_target:
        targets["mtt::apt"] = get_generic_target_info(
            "mtt::apt",
            {
                "quantity": "",
                "unit": "e",
                "type": {"cartesian": {"rank": 2}},
                "num_subtargets": 1,
                "sample_kind": "atom",
            },
        )
    hypers = {"max_degree": 1, "num_features": 4, "num_spherical_features": 1, "bec": True}
    info = DatasetInfo(length_unit="angstrom", atomic_types=[1, 8], targets=targets)
    return LoremMta(hypers, info).to(torch.float64)


def test_architecture_checkpoint_round_trip():
    """metatrain model with ``bec: true``: the rank-2 target under its own name (with the
    target's property name), the same values after a checkpoint round trip."""
    from lorem_mta.architecture import LoremMta

    model = _bec_architecture().eval()
    assert "mtt::apt" in model.supported_outputs()
    atoms = ase.io.read(RESOURCES / "water_bec" / "water_bec_3.xyz", index=0)
    system = system_from_atoms(atoms, torch.float64)
    attach_neighbors(model, [system])
    request = {"mtt::apt": ModelOutput(sample_kind="atom")}
    block = model([system], request)["mtt::apt"].block()
    assert block.properties.names == ["apt"]
    assert block.values.shape == (len(atoms), 3, 3, 1)

    checkpoint = model.get_checkpoint()
    assert checkpoint["model_data"]["model_hypers"]["bec"] is True
    loaded = LoremMta.load_checkpoint(checkpoint, "export").eval()
    again = loaded([system], request)["mtt::apt"].block().values
    np.testing.assert_allclose(again.detach().numpy(), block.values.detach().numpy())


def test_architecture_needs_a_rank2_target():
    with pytest.raises(ValueError, match="exactly one per-atom Cartesian rank-2"):
        _bec_architecture(bec_target=False)
