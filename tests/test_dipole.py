"""Dipole moments of molecules (``lorem::dipole`` and a metatrain dipole target).

The dipole is :math:`\\sum_i q_i (r_i - c) + \\sum_i p_i` with the scalar latent charges
``q_i`` (channel 0 of ``lorem::charges``), the geometric centre ``c`` and, with
``atomic_dipoles``, learned atomic dipoles ``p_i`` from the ``l = 1`` features. These
tests check its symmetries (rotations with inversion, translations, permutations), that
it is the point-charge dipole of the ``lorem::charges`` output, the refusal of periodic
systems, per-atom contributions, batching, the exported TorchScript model, the metatrain
model with a dipole target (layout, scale, checkpoints) and ``mtt train`` with energies,
forces and dipoles on small synthetic molecules.
"""

import copy
import os
import subprocess
import sys
from pathlib import Path

import ase
import ase.build
import ase.io
import numpy as np
import pytest
import torch
from _helpers import make_model, molecule, nacl_cell, random_rotation, transform
from metatensor.torch import Labels
from metatomic.torch import ModelEvaluationOptions, ModelOutput

from lorem_mta.model import atomistic_model, export
from lorem_mta.modules import LoremBackbone
from lorem_mta.utils import attach_neighbors, system_from_atoms

BIN = Path(sys.executable).parent
TYPES = [1, 6, 7, 8]


def dipole_model(atomic_dipoles: bool = False, **kwargs):
    return make_model(seed=5, atomic_types=TYPES, atomic_dipoles=atomic_dipoles, **kwargs)


def evaluate(model, structures, sample_kind="system", charges=None):
    """``lorem::dipole`` (per system or per atom) and the scalar charges (per atom)."""
    systems = [system_from_atoms(atoms) for atoms in structures]
    if charges is not None:
        from test_total_charge import charge_map

        for system, charge in zip(systems, charges, strict=True):
            system.add_data("charge", charge_map(charge))
    attach_neighbors(model, systems)
    requested = {
        "lorem::dipole": ModelOutput(sample_kind=sample_kind),
        "lorem::charges": ModelOutput(sample_kind="atom"),
    }
    with torch.no_grad():
        results = model(systems, requested)
    dipoles = results["lorem::dipole"].block().values[..., 0]
    charges = results["lorem::charges"].block({"o3_lambda": 0}).values[:, 0, 0]
    return dipoles, charges


def methanol(seed: int = 2) -> ase.Atoms:
    return molecule(seed=seed, name="CH3OH")


@pytest.mark.parametrize("atomic_dipoles", [False, True])
@pytest.mark.parametrize("improper", [False, True])
def test_rotation_equivariance(atomic_dipoles, improper):
    model = dipole_model(atomic_dipoles)
    atoms = molecule(seed=3, name="CH3CONH2")
    rotation = random_rotation(np.random.default_rng(7), improper=improper)
    dipole, _ = evaluate(model, [atoms])
    rotated, _ = evaluate(model, [transform(atoms, rotation)])
    expected = dipole[0].numpy() @ rotation.T
    assert np.abs(dipole[0].numpy()).max() > 1e-2  # not vacuous
    np.testing.assert_allclose(rotated[0].numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("total_charge", [False, True])
@pytest.mark.parametrize("atomic_dipoles", [False, True])
def test_translation_invariance(total_charge, atomic_dipoles):
    # lorem-jax's raw charges (not neutral), the harder case
    model = dipole_model(atomic_dipoles, total_charge=total_charge, neutral_charges=False)
    atoms = methanol()
    shifted = transform(atoms, np.eye(3), np.array([3.0, -17.0, 41.0]))
    neutral = [0.0] if total_charge else None  # a missing charge is taken as 0 with a warning
    dipole, charges = evaluate(model, [atoms], charges=neutral)
    moved, _ = evaluate(model, [shifted], charges=neutral)
    np.testing.assert_allclose(moved.numpy(), dipole.numpy(), atol=1e-10)
    if not total_charge:
        # the raw charges are not neutral: the dipole is still translation invariant
        assert abs(float(charges.sum())) > 1e-2


@pytest.mark.parametrize("atomic_dipoles", [False, True])
def test_permutation_invariance(atomic_dipoles):
    model = dipole_model(atomic_dipoles)
    atoms = methanol()
    permutation = np.random.default_rng(3).permutation(len(atoms))
    dipole, charges = evaluate(model, [atoms])
    permuted, permuted_charges = evaluate(model, [atoms[permutation]])
    np.testing.assert_allclose(permuted.numpy(), dipole.numpy(), atol=1e-10)
    np.testing.assert_allclose(permuted_charges.numpy(), charges[permutation].numpy())


def test_equals_point_charge_dipole_of_the_charges_output():
    atoms = methanol()
    positions = torch.tensor(atoms.positions)
    centre = positions.mean(dim=0)

    # any charges: the dipole of the neutralised charges, about the geometric centre
    dipole, charges = evaluate(dipole_model(), [atoms])
    expected = (charges.unsqueeze(-1) * (positions - centre)).sum(dim=0)
    torch.testing.assert_close(dipole[0], expected, atol=1e-12, rtol=0)
    neutralised = charges - charges.mean()
    expected = (neutralised.unsqueeze(-1) * positions).sum(dim=0)
    torch.testing.assert_close(dipole[0], expected, atol=1e-12, rtol=0)

    # neutral charges (total_charge): plainly sum_i q_i r_i, for any origin
    model = dipole_model(total_charge=True)
    dipole, charges = evaluate(model, [atoms], charges=[0.0])
    assert abs(float(charges.sum())) < 1e-12
    torch.testing.assert_close(
        dipole[0], (charges.unsqueeze(-1) * positions).sum(dim=0), atol=1e-12, rtol=0
    )

    # a charged molecule: about the geometric centre
    dipole, charges = evaluate(model, [atoms], charges=[1.0])
    assert abs(float(charges.sum()) - 1.0) < 1e-12
    expected = (charges.unsqueeze(-1) * (positions - centre)).sum(dim=0)
    torch.testing.assert_close(dipole[0], expected, atol=1e-12, rtol=0)


def test_atomic_dipoles_add_to_the_point_charges():
    atoms = methanol()
    positions = torch.tensor(atoms.positions)
    model = dipole_model(atomic_dipoles=True)
    dipole, charges = evaluate(model, [atoms])
    point = (charges.unsqueeze(-1) * (positions - positions.mean(dim=0))).sum(dim=0)
    assert float(torch.linalg.norm(dipole[0] - point)) > 1e-3
    # without the head's weights only the point charges remain
    with torch.no_grad():
        model.backbone.atomic_dipoles.weight.zero_()
    dipole, _ = evaluate(model, [atoms])
    torch.testing.assert_close(dipole[0], point, atol=1e-12, rtol=0)


def test_per_atom_contributions_and_batches():
    model = dipole_model(atomic_dipoles=True)
    structures = [methanol(), molecule(seed=4, name="H2O"), molecule(seed=5, name="NH3")]
    batch, _ = evaluate(model, structures)
    contributions, _ = evaluate(model, structures, sample_kind="atom")
    offsets = np.cumsum([0] + [len(atoms) for atoms in structures])
    for k, atoms in enumerate(structures):
        single, _ = evaluate(model, [atoms])
        torch.testing.assert_close(batch[k], single[0], atol=1e-12, rtol=0)
        summed = contributions[offsets[k] : offsets[k + 1]].sum(dim=0)
        torch.testing.assert_close(summed, single[0], atol=1e-12, rtol=0)


def test_position_gradients():
    """d mu / d r (atomic polar tensors, IR intensities) by autograd."""
    model = dipole_model(atomic_dipoles=True, neutral_charges=False)
    atoms = methanol()
    positions = torch.tensor(atoms.positions, requires_grad=True)
    system = system_from_atoms(atoms, torch.float64, positions)
    attach_neighbors(model, [system])
    result = model([system], {"lorem::dipole": ModelOutput(sample_kind="system")})
    dipole = result["lorem::dipole"].block().values[0, :, 0]
    jacobian = torch.stack(
        [torch.autograd.grad(d, positions, retain_graph=True)[0] for d in dipole]
    )
    assert torch.isfinite(jacobian).all()
    # translating every atom changes nothing: the atomic polar tensors add up to zero
    # (up to the total charge, here not fixed)
    _, charges = evaluate(model, [atoms])
    total = jacobian.sum(dim=1)  # [3 (mu), 3 (r)]
    torch.testing.assert_close(total, torch.zeros(3, 3, dtype=total.dtype), atol=1e-10, rtol=0)
    assert abs(float(charges.sum())) > 1e-2


def test_periodic_systems_are_refused():
    model = make_model(seed=5, atomic_types=[11, 17])
    with pytest.raises(ValueError, match=r"periodic system \(system 1\) is not defined"):
        evaluate(model, [ase.Atoms("NaCl", [[0, 0, 0], [2.5, 0, 0]]), nacl_cell()])


def test_needs_long_range_and_l1_features():
    with pytest.raises(ValueError, match="atomic_dipoles=True needs"):
        LoremBackbone(atomic_dipoles=True, lr=False)
    with pytest.raises(ValueError, match="max_degree >= 1"):
        LoremBackbone(atomic_dipoles=True, max_degree=0, max_degree_lr=0)
    model = make_model(seed=1, atomic_types=TYPES, lr=False)
    assert "lorem::dipole" not in model.outputs()
    with pytest.raises(ValueError, match="needs the long-range block"):
        evaluate(model, [methanol()])


def test_default_models_are_unchanged():
    """The point-charge dipole adds no parameters; atomic dipoles add ``s`` of them."""
    plain = make_model(seed=5, atomic_types=TYPES)
    on = dipole_model(atomic_dipoles=True)
    names = set(plain.state_dict())
    assert set(on.state_dict()) - names == {"backbone.atomic_dipoles.weight"}
    assert on.backbone.atomic_dipoles.weight.numel() == 4
    # the energy does not depend on the dipole head
    copied = copy.deepcopy(on)
    copied.backbone.atomic_dipoles = None
    system = system_from_atoms(methanol())
    attach_neighbors(on, [system])
    request = {"energy": ModelOutput(sample_kind="system")}
    with torch.no_grad():
        energy = on([system], request)["energy"].block().values
        reference = copied([system], request)["energy"].block().values
    torch.testing.assert_close(energy, reference, atol=0, rtol=0)


@pytest.mark.parametrize("atomic_dipoles", [False, True])
def test_exported_model(tmp_path, atomic_dipoles):
    model = dipole_model(atomic_dipoles)
    atoms = methanol()
    expected, _ = evaluate(model, [atoms])
    path = tmp_path / "model.pt"
    export(model, str(path), dtype=torch.float64)

    from metatomic.torch import load_atomistic_model

    loaded = load_atomistic_model(str(path))
    output = loaded.capabilities().outputs["lorem::dipole"]
    assert output.unit == "e*angstrom"
    system = system_from_atoms(atoms)
    attach_neighbors(model, [system])
    options = ModelEvaluationOptions(
        length_unit="angstrom",
        outputs={"lorem::dipole": ModelOutput(unit="e*angstrom", sample_kind="system")},
    )
    result = loaded([system], options, check_consistency=True)
    block = result["lorem::dipole"].block()
    assert block.components[0] == Labels(["xyz"], torch.arange(3).reshape(-1, 1))
    torch.testing.assert_close(block.values[0, :, 0], expected[0], atol=1e-12, rtol=0)

    # the unexported atomistic model gives the same
    wrapped = atomistic_model(model, torch.float64)
    result = wrapped([system], options, check_consistency=True)
    torch.testing.assert_close(result["lorem::dipole"].block().values[0, :, 0], expected[0])


# -- metatrain -------------------------------------------------------------------------


def dataset_info(dipole: bool = True, **dipole_options):
    from metatrain.utils.data import DatasetInfo
    from metatrain.utils.data.target_info import (
        get_energy_target_info,
        get_generic_target_info,
    )

    targets = {"energy": get_energy_target_info("energy", {"unit": "eV"})}
    if dipole:
        options = {
            "quantity": "",
            "unit": "e*angstrom",
            "type": {"cartesian": {"rank": 1}},
            "sample_kind": "system",
            "num_subtargets": 1,
            **dipole_options,
        }
        targets["mtt::dipole"] = get_generic_target_info("mtt::dipole", options)
    return DatasetInfo(length_unit="angstrom", atomic_types=TYPES, targets=targets)


SMALL = {"max_degree": 1, "max_degree_lr": 1, "num_features": 8, "num_spherical_features": 2}


def test_metatrain_model_with_dipole_target():
    from metatrain.utils.architectures import get_default_hypers

    from lorem_mta.architecture import LoremMta

    hypers = {**get_default_hypers("experimental.lorem_mta")["model"], **SMALL}
    assert hypers["atomic_dipoles"] is False
    model = LoremMta(hypers, dataset_info()).eval()
    assert model.dipole_target == "mtt::dipole"
    assert model.supported_outputs()["mtt::dipole"].sample_kind == "system"

    atoms = methanol()
    system = system_from_atoms(atoms, torch.float32)
    attach_neighbors(model.lorem, [system])
    requested = {
        "mtt::dipole": ModelOutput(sample_kind="system"),
        "lorem::charges": ModelOutput(sample_kind="atom"),
    }
    with torch.no_grad():
        results = model([system], requested)
    assert set(results) == {"mtt::dipole", "lorem::charges"}
    block = results["mtt::dipole"].block()
    assert block.properties == Labels.range("dipole", 1)
    assert block.values.shape == (1, 3, 1)
    charges = results["lorem::charges"].block({"o3_lambda": 0}).values[:, 0, 0]
    positions = torch.tensor(atoms.positions, dtype=torch.float32)
    expected = (charges.unsqueeze(-1) * (positions - positions.mean(dim=0))).sum(dim=0)
    torch.testing.assert_close(block.values[0, :, 0], expected, atol=1e-5, rtol=1e-5)

    # checkpoints: `atomic_dipoles` only stored when on; the dipole target survives
    checkpoint = model.get_checkpoint()
    assert "atomic_dipoles" not in checkpoint["model_data"]["model_hypers"]
    reloaded = LoremMta.load_checkpoint(checkpoint, "export")
    assert reloaded.dipole_target == "mtt::dipole"
    on = LoremMta({**hypers, "atomic_dipoles": True}, dataset_info())
    checkpoint = on.get_checkpoint()
    assert checkpoint["model_data"]["model_hypers"]["atomic_dipoles"] is True
    assert LoremMta.load_checkpoint(checkpoint, "finetune").lorem.backbone.atomic_dipoles

    # fine-tuning an energy-only model on dipoles adds the output (no new parameters)
    energy_only = LoremMta(hypers, dataset_info(dipole=False))
    assert energy_only.dipole_target == ""
    energy_only.restart(dataset_info(), model_hypers=hypers)
    assert "mtt::dipole" in energy_only.supported_outputs()


def test_metatrain_target_errors():
    from metatrain.utils.architectures import get_default_hypers

    from lorem_mta.architecture import LoremMta

    hypers = {**get_default_hypers("experimental.lorem_mta")["model"], **SMALL}
    with pytest.raises(ValueError, match="optionally one dipole target"):
        LoremMta(hypers, dataset_info(sample_kind="atom"))
    with pytest.raises(ValueError, match="optionally one dipole target"):
        LoremMta(hypers, dataset_info(num_subtargets=2))
    with pytest.raises(ValueError, match="lr: true"):
        LoremMta({**hypers, "lr": False}, dataset_info())
    with pytest.raises(ValueError, match="atomic_dipoles: true needs"):
        LoremMta({**hypers, "lr": False, "atomic_dipoles": True}, dataset_info())


def test_dipole_scale_is_fixed_to_one():
    from lorem_mta.architecture.options import fixed_scaling_weights

    assert fixed_scaling_weights({}, "") == {}
    assert fixed_scaling_weights({"energy": 2.0}, "mtt::dipole") == {
        "energy": 2.0,
        "mtt::dipole": 1.0,
    }
    with pytest.raises(ValueError, match="fixed to 1"):
        fixed_scaling_weights({"mtt::dipole": 3.0}, "mtt::dipole")


# -- mtt train --------------------------------------------------------------------------

#: point charges of the synthetic molecules (e)
CHARGES = {1: 0.25, 6: -0.1, 7: -0.6, 8: -0.5}


def synthetic_molecules(n: int, seed: int = 0):
    """Rattled small molecules with a pair-potential energy and point-charge dipoles."""
    rng = np.random.default_rng(seed)
    names = ["H2O", "NH3", "CH3OH", "CH4", "HCOOH", "HCN"]
    frames = []
    for k in range(n):
        atoms = ase.build.molecule(names[k % len(names)])
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)))
        atoms.pbc = False
        q = np.array([CHARGES[int(z)] for z in atoms.numbers])
        q = q - q.mean()
        positions = atoms.positions
        delta = positions[:, None, :] - positions[None, :, :]
        distances = np.linalg.norm(delta, axis=-1) + np.eye(len(atoms))
        pair = np.exp(-distances) * (1 - np.eye(len(atoms)))
        energy = 0.5 * pair.sum() - len(atoms)
        forces = (pair / distances)[..., None] * delta
        atoms.info["energy"] = float(energy)
        atoms.info["dipole_moment"] = (q[:, None] * positions).sum(axis=0)
        atoms.info["total_charge"] = 0.0
        atoms.arrays["force"] = forces.sum(axis=1)
        frames.append(atoms)
    return frames


OPTIONS = """\
seed: 0
base_precision: 64
architecture:
  name: experimental.lorem_mta
  model:
    max_degree: 1
    max_degree_lr: 1
    num_features: 8
    num_spherical_features: 2
    num_radial: 4
    num_species: 2
    total_charge: true
    atomic_dipoles: true
  training:
    batch_size: 4
    num_epochs: 2
    log_interval: 1
    num_workers: 0
    scale_targets: true
    per_structure_targets: ["mtt::dipole"]
    loss:
      energy:
        weight: 1.0
        forces:
          weight: 1.0
      mtt::dipole:
        weight: 10.0
training_set:
  systems:
    read_from: data.xyz
    length_unit: angstrom
  targets:
    energy:
      key: energy
      unit: eV
      forces:
        key: force
    mtt::dipole:
      key: dipole_moment
      unit: e*angstrom
      type:
        cartesian:
          rank: 1
      sample_kind: system
  extra_data:
    charge:
      key: total_charge
      unit: e
validation_set: 0.25
test_set: 0.0
"""


def test_mtt_train_with_dipoles(tmp_path):
    frames = synthetic_molecules(12)
    ase.io.write(tmp_path / "data.xyz", frames, format="extxyz")
    (tmp_path / "options.yaml").write_text(OPTIONS)
    result = subprocess.run(
        [str(BIN / "mtt"), "train", "options.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "validation mtt::dipole RMSE" in log

    from metatomic_ase import MetatomicCalculator

    calculator = MetatomicCalculator(str(tmp_path / "model.pt"))
    outputs = calculator.run_model(
        frames[0],
        {
            "mtt::dipole": ModelOutput(sample_kind="system"),
            "lorem::dipole": ModelOutput(sample_kind="system"),
        },
    )
    dipole = outputs["mtt::dipole"].block().values[0, :, 0]
    torch.testing.assert_close(dipole, outputs["lorem::dipole"].block().values[0, :, 0])
    assert torch.isfinite(dipole).all()

    # the scaler kept the dipole's scale at 1
    import metatomic.torch  # noqa: F401 (checkpoints hold metatomic objects)

    from lorem_mta.architecture import LoremMta

    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=False)
    model = LoremMta.load_checkpoint(checkpoint, "export")
    scales = model.scaler.model.scales
    assert scales["mtt::dipole"].block().values.tolist() == [[1.0]]
    assert scales["energy"].block().values.tolist() != [[1.0]]
