"""Reliability of training and of the inputs around it (``docs/reliability.rst``).

* a diverging training (non-finite or exploding loss) stops with an error naming the
  epoch, the loss and the learning rate, exports nothing, and never selects a diverged
  epoch as the best model;
* datasets are checked once before training: NaN energies or forces name the file, the
  frame and the field; a training set without the forces of the others, or forces under
  another key than the options give, name the file and the options to change; elements
  only in the validation set are refused;
* lorem-jax hyperparameters: unknown keys (with close matches), wrong types, cutoff <= 0;
* a checkpoint of another architecture can not restart or fine-tune a LOREM run;
* ``lorem_mta.calculator.LoremCalculator``: no nan/inf stress for a structure without a
  cell volume, zero results for a structure without atoms.

Trainer tests call :py:class:`~lorem_mta.architecture.Trainer` directly on the small
H/C/N/O data set of ``tests/resources/metatrain`` with a tiny model (a few seconds each).
"""

import json
import math
import shutil
import warnings
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import torch
import yaml
from _helpers import energy_target, molecule, nacl_cell
from metatrain.utils.architectures import get_default_hypers
from metatrain.utils.data import DatasetInfo, get_atomic_types, get_dataset
from test_training_loop import DATASET, MODEL  # the tiny model and data set

import lorem_mta.architecture.trainer as trainer_module
from lorem_mta.architecture import LoremMta, Trainer
from lorem_mta.architecture.guards import (
    DIVERGENCE_FACTOR,
    DivergenceGuard,
    TrainingDivergedError,
    is_improvement,
)

TESTS = Path(__file__).resolve().parent


def _dataset(path: Path, forces: bool = True, indices=None):
    target = energy_target(str(path))
    if not forces:
        target["forces"] = False
    dataset, targets, _ = get_dataset(
        {"systems": {"read_from": str(path), "reader": "ase"}, "targets": {"energy": target}}
    )
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, indices)
    return dataset, targets


def _frames():
    return ase.io.read(DATASET, ":")


def _write(path: Path, frames, forces: bool = True) -> Path:
    """Write ``frames`` with their energies (and forces) as extended XYZ."""
    copies = []
    for atoms in frames:
        energy = atoms.get_potential_energy()
        force = atoms.get_forces()
        atoms = atoms.copy()
        atoms.calc = None
        atoms.info["energy"] = energy
        if forces:
            atoms.arrays["forces"] = force
        copies.append(atoms)
    ase.io.write(path, copies, format="extxyz")
    return path


def _train(train_sets, val_sets, targets, tmp_path, **training):
    """Train the tiny model (float32, CPU); returns the trainer."""
    all_sets = train_sets + val_sets
    types = sorted({t for d in all_sets for t in get_atomic_types(d)})
    info = DatasetInfo(length_unit="angstrom", atomic_types=types, targets=targets)
    torch.manual_seed(0)
    model = LoremMta(MODEL, info)
    hypers = get_default_hypers("experimental.lorem_mta")["training"]
    hypers.update(**{"batch_size": 4, "num_workers": 0, "log_interval": 1, **training})
    trainer = Trainer(hypers)
    trainer.train(
        model, torch.float32, [torch.device("cpu")], train_sets, val_sets, str(tmp_path)
    )
    return trainer


def _split(path: Path = DATASET, forces: bool = True):
    """14 training and 6 validation structures of ``path``."""
    train, targets = _dataset(path, forces, list(range(14)))
    val, _ = _dataset(path, forces, list(range(14, 20)))
    return [train], [val], targets


def _options_restart(folder: Path, training: list, validation) -> None:
    """The ``options_restart.yaml`` that ``mtt train`` writes into its output folder."""

    def section(file):
        return {"systems": {"read_from": str(file)}, "targets": {"energy": {"key": "energy"}}}

    options = {
        "training_set": [section(f) for f in training],
        "validation_set": validation
        if isinstance(validation, float)
        else [section(f) for f in validation],
    }
    (folder / "options_restart.yaml").write_text(yaml.safe_dump(options))


# -- diverging training -----------------------------------------------------------------


def test_divergence_criterion():
    """Non-finite losses stop at once; a finite loss only beyond the factor."""
    guard = DivergenceGuard(learning_rate=0.5)
    guard.check_epoch(0, 1e3)  # a large first epoch is only compared with later ones
    guard.check_epoch(1, 1.0)
    guard.check_epoch(2, 100.0)  # a bad epoch, but within the factor: training goes on
    with pytest.raises(TrainingDivergedError) as error:
        guard.check_epoch(3, 1.0001 * DIVERGENCE_FACTOR)
    message = str(error.value)
    assert "training diverged at epoch 4" in message
    assert "more than 10000 times the lowest one of this run (1, epoch 2)" in message
    assert "learning_rate (now 0.5)" in message
    assert "No checkpoint was written" in message

    # batches: the running sum of the epoch, compared with the first batch of the run
    guard = DivergenceGuard(learning_rate=0.5)
    guard.check_batch(0, 2.0)  # first batch: 2
    guard.check_batch(0, 2.0 + 3e3)  # 1500x the first batch
    guard.check_batch(1, 1.0)  # a new epoch starts a new sum
    guard.check_batch(1, 1.0 + 2e4)  # exactly the factor
    with pytest.raises(TrainingDivergedError) as error:
        guard.check_batch(1, 1.0 + 2e4 + 2.1e4)
    assert "epoch 2: the training loss of a batch is 2.1e+04, more than 10000 times the " in (
        str(error.value)
    )
    assert "loss of the first batch of this run (2)" in str(error.value)

    for value in [math.nan, math.inf]:
        with pytest.raises(TrainingDivergedError, match=f"loss of a batch is {value}"):
            DivergenceGuard(1e-3).check_batch(0, value)
        with pytest.raises(TrainingDivergedError, match=f"training loss is {value}"):
            DivergenceGuard(1e-3).check_epoch(0, value)


def test_best_model_ignores_non_finite_metrics():
    assert not is_improvement(math.nan, math.inf)
    assert not is_improvement(math.inf, math.inf)
    assert not is_improvement(math.nan, None)
    assert is_improvement(1.0, None) and is_improvement(1.0, 2.0)
    assert not is_improvement(2.0, 1.0)


def test_huge_learning_rate_stops_with_a_clear_error(tmp_path):
    """learning_rate 1e8: NaN in the first epoch ("cannot convert float NaN to integer"
    in metatrain's logger before); now an error naming the epoch and the fix."""
    train, val, targets = _split()
    with pytest.raises(TrainingDivergedError) as error:
        _train(train, val, targets, tmp_path, num_epochs=3, learning_rate=1e8)
    message = str(error.value)
    assert "training diverged at epoch 1: the training loss of a batch is nan" in message
    assert "Lower the learning_rate (now 1e+08)" in message
    assert "No model is exported" in message


def test_nan_validation_loss_stops(tmp_path):
    """Energies only, learning_rate 1: every training batch of epoch 0 is finite, the
    model after its last step gives NaN (before: ``cannot convert float NaN to integer``
    from metatrain's logger)."""
    train, val, targets = _split(forces=False)
    with pytest.raises(TrainingDivergedError) as error:
        _train(train, val, targets, tmp_path, num_epochs=3, learning_rate=1.0)
    assert str(error.value).startswith(
        "training diverged at epoch 1: the validation loss is nan (the model gives NaN or "
        "infinite values after the last optimizer step of the epoch). No model is exported."
    )


def test_exploding_loss_stops_before_the_epoch_is_kept(tmp_path, monkeypatch):
    """A finite explosion (x1e6 from epoch 2 on, as a diverging run reaching 1e12):
    training stops in epoch 2, before it is validated or checkpointed; the best model is
    an earlier epoch and the message names the last checkpoint, which exports."""
    scale = [1.0]

    class ScaledLoss(trainer_module.LossAggregator):
        def __call__(self, *args, **kwargs):
            return super().__call__(*args, **kwargs) * scale[0]

    save = Trainer.save_checkpoint

    def save_and_explode(self, model, path):
        save(self, model, path)
        if self.epoch == 1:
            scale[0] = 1e6

    monkeypatch.setattr(trainer_module, "LossAggregator", ScaledLoss)
    monkeypatch.setattr(Trainer, "save_checkpoint", save_and_explode)
    train, val, targets = _split()
    with pytest.raises(TrainingDivergedError) as error:
        _train(train, val, targets, tmp_path, num_epochs=5, checkpoint_interval=1)
    message = str(error.value)
    # the first batch of epoch 2 is already 1e6 times larger than the first of the run
    assert "training diverged at epoch 3: the training loss of a batch is " in message
    assert f"more than {DIVERGENCE_FACTOR:g} times the loss of the first batch" in message
    last = tmp_path / "model_2.ckpt"
    assert f"'{last}' (epoch 2)" in message
    assert sorted(p.name for p in tmp_path.glob("model_*.ckpt")) == [
        "model_1.ckpt",
        "model_2.ckpt",
    ]
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["best_epoch"] in (0, 1)
    assert math.isfinite(checkpoint["best_metric"])
    model = LoremMta.load_checkpoint(checkpoint, context="export")
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.slow
def test_mtt_train_diverging_exports_nothing(tmp_path):
    """``mtt train`` with learning_rate 10: exit code 1 with the divergence message, no
    model.pt or model.ckpt (before: a NaN error from the logger, or a garbage model)."""
    from test_mtt_cli import options, run

    shutil.copy(DATASET, tmp_path / "train.xyz")
    (tmp_path / "options.yaml").write_text(
        options(training="learning_rate: 10.0\nfinal_learning_rate: 1.0")
    )
    result = run(["mtt", "train", "options.yaml"], tmp_path, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "training diverged at epoch 1" in output
    assert "Lower the learning_rate (now 10)" in output
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "model.ckpt").exists()


# -- datasets checked before training ----------------------------------------------------


@pytest.mark.parametrize(
    "field, split, frame, message",
    [
        ("energy", "training", 5, "target 'energy' is NaN"),
        ("forces", "training", 3, "the forces of target 'energy' contain 1 NaN or "),
        ("energy", "validation", 16, "target 'energy' is NaN"),
    ],
)
def test_nan_in_one_frame_names_file_frame_and_field(tmp_path, field, split, frame, message):
    """One NaN energy or force component (before: ``ZeroDivisionError: float division by
    zero``); the message names the file, the frame and the field."""
    frames = _frames()
    if field == "energy":
        frames[frame].calc.results["energy"] = math.nan
    else:
        frames[frame].calc.results["forces"][1, 2] = math.nan
    path = _write(tmp_path / "data.xyz", frames)
    train, val, targets = _split(path)
    run = tmp_path / "run"
    run.mkdir()
    _options_restart(run, [path], 0.2)
    with pytest.raises(ValueError) as error:
        _train(train, val, targets, run, num_epochs=1, checkpoint_interval=1)
    assert str(error.value).startswith(
        f"{split} set ('{path}'), frame {frame} (counted from 0): "
    )
    assert message in str(error.value)
    assert not (run / "model_1.ckpt").exists()

    # without the options of `mtt train`, the set and the frame are still named
    with pytest.raises(ValueError, match=f"^{split} set, structure {frame} .*{message}"):
        _train(train, val, targets, tmp_path / "other", num_epochs=1)


def test_training_set_without_forces_names_the_file(tmp_path):
    """Two training sets, one without forces (before: ``can not find gradients with
    respect to 'positions' in this block``)."""
    with_forces = _write(tmp_path / "forces.xyz", _frames()[:14])
    without = _write(tmp_path / "noforces.xyz", _frames()[14:], forces=False)
    first, targets = _dataset(with_forces)
    second, _ = _dataset(without, forces=False)
    val, _ = _dataset(with_forces, indices=[0, 1])
    _options_restart(tmp_path, [with_forces, without], [with_forces])
    with pytest.raises(ValueError) as error:
        _train([first, second], [val], targets, tmp_path, num_epochs=1)
    message = str(error.value)
    assert message.startswith(f"training set 1 ('{without}'), frame 0 (counted from 0): ")
    assert "target 'energy' has no forces, but other training structures do" in message
    assert "`forces: off`" in message and "forces: {key:" in message


@pytest.mark.parametrize("forces", [{"key": "force", "reader": None}, False])
def test_forces_under_another_key(tmp_path, forces):
    """The forces key of the options is not in the file, which has forces under another
    name (before: metatrain logged "No forces found" and trained on energies alone)."""
    train, val, targets = _split(forces=False)  # what metatrain reads with a wrong key
    _options_restart(tmp_path, [DATASET], 0.2)
    options = yaml.safe_load((tmp_path / "options_restart.yaml").read_text())
    section = options["training_set"][0]["targets"]["energy"]
    section["forces"] = {**forces, "read_from": str(DATASET)} if forces else False
    (tmp_path / "options_restart.yaml").write_text(yaml.safe_dump(options))
    if forces:
        with pytest.raises(ValueError) as error:
            _train(train, val, targets, tmp_path, num_epochs=1)
        assert str(error.value) == (
            "target 'energy' would be trained without forces: the forces key 'force' is "
            f"not in '{DATASET}', which has the per-atom vectors ['forces']. Set "
            "`forces: {key: forces}` in the 'energy' section of the options to train on "
            "them, or `forces: off` to train on energies only"
        )
    else:  # `forces: off`: energies only, as asked
        trainer = _train(train, val, targets, tmp_path, num_epochs=1)
        assert trainer.best_epoch == 0


def test_element_only_in_validation_set_is_refused(tmp_path):
    """Nitrogen only in the validation set: its baseline would stay unfitted (0 eV)."""
    frames = _frames()
    with_n = [i for i, atoms in enumerate(frames) if 7 in atoms.numbers]
    without_n = [i for i, atoms in enumerate(frames) if 7 not in atoms.numbers]
    train, targets = _dataset(DATASET, indices=without_n)
    val, _ = _dataset(DATASET, indices=with_n[:3])
    with pytest.raises(ValueError) as error:
        _train([train], [val], targets, tmp_path, num_epochs=1)
    message = str(error.value)
    assert message.startswith(
        "elements in the validation set but not in the training set: N (atomic type 7, "
        "in 3 validation structures)"
    )
    assert "baseline can not be fitted" in message


def test_clean_data_still_trains(tmp_path):
    """The checks pass on valid data, and the run keeps a finite best model."""
    train, val, targets = _split()
    trainer = _train(train, val, targets, tmp_path, num_epochs=2)
    assert trainer.best_epoch in (0, 1) and math.isfinite(trainer.best_metric)


# -- lorem-jax hyperparameters (hypers_json) --------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"max_degre": 3, "num_featrues": 8},
            r"unknown lorem-jax hyperparameters \['max_degre', 'num_featrues'\] "
            r"\('max_degre': did you mean 'max_degree' or 'max_degree_lr'\?; "
            r"'num_featrues': did you mean 'num_features'",
        ),
        ({"cutoff": -5.0}, r"hyperparameter 'cutoff' must be > 0, got -5.0"),
        ({"cutoff": "5"}, r"hyperparameter 'cutoff' must be a number, got '5' \(str\)"),
        ({"max_degree": 2.5}, r"'max_degree' must be an integer, got 2.5 \(float\)"),
        ({"lr": "yes"}, r"'lr' must be true or false, got 'yes' \(str\)"),
        ({"num_features": 0}, r"'num_features' must be at least 1, got 0"),
    ],
    ids=["unknown", "negative-cutoff", "string-cutoff", "float-degree", "string-bool", "zero"],
)
def test_jax_hypers_are_checked(tmp_path, capsys, change, message):
    """Before: unknown keys ignored, cutoff -5 failed about ``interaction_range``,
    cutoff "5" in TorchScript; now one line naming the key."""
    from lorem_mta.cli import main
    from lorem_mta.convert import read_jax_npz

    with np.load(TESTS / "resources" / "parity" / "no_lr.npz") as data:
        arrays = {key: data[key] for key in data.files}
    hypers = {**json.loads(str(arrays["hypers_json"])), **change}
    arrays["hypers_json"] = np.array(json.dumps(hypers))
    source = tmp_path / "params.npz"
    np.savez(source, **arrays)
    with pytest.raises(ValueError, match=message):
        read_jax_npz(str(source))
    assert main(["convert-jax", str(source), "-o", str(tmp_path / "model.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "model.pt").exists()


# -- checkpoints of another architecture --------------------------------------------------


def test_checkpoint_of_another_architecture(tmp_path):
    """Restart or fine-tune a LOREM run from another architecture's checkpoint (before:
    ``KeyError: 'max_degree'`` from that architecture's ``restart``)."""
    from _lorem_mta_mtt import check_checkpoint_architecture

    foreign = tmp_path / "pet.ckpt"
    torch.save({"architecture_name": "pet", "model_ckpt_version": 9}, foreign)
    lorem = {"architecture": {"name": "experimental.lorem_mta"}}
    with pytest.raises(ValueError) as error:
        check_checkpoint_architecture(lorem, str(foreign))
    assert str(error.value).startswith(
        f"'{foreign}' is a checkpoint of the 'pet' architecture, but these options train "
        "'experimental.lorem_mta': a checkpoint can only restart a run of its own"
    )
    finetune = {
        "architecture": {
            "name": "experimental.lorem_mta",
            "training": {"finetune": {"read_from": str(foreign)}},
        }
    }
    with pytest.raises(ValueError, match="can only fine-tune a run of its own"):
        check_checkpoint_architecture(finetune)
    # the other way round, and cases left to metatrain
    own = tmp_path / "lorem.ckpt"
    torch.save({"architecture_name": "experimental.lorem_mta"}, own)
    with pytest.raises(ValueError, match="of the 'experimental.lorem_mta' architecture"):
        check_checkpoint_architecture({"architecture": {"name": "pet"}}, str(own))
    check_checkpoint_architecture(lorem, str(own))
    check_checkpoint_architecture({"architecture": {"name": "soap_bpnn"}}, str(foreign))
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint")
    check_checkpoint_architecture(lorem, str(tmp_path / "broken.ckpt"))


def test_mtt_train_restart_from_another_architecture(tmp_path):
    """``mtt train --restart`` stops before reading the data, naming both architectures."""
    from test_mtt_cli import options, run

    shutil.copy(DATASET, tmp_path / "train.xyz")
    (tmp_path / "options.yaml").write_text(options())
    torch.save({"architecture_name": "pet", "model_ckpt_version": 9}, tmp_path / "pet.ckpt")
    result = run(
        ["mtt", "train", "options.yaml", "--restart", "pet.ckpt"], tmp_path, check=False
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "'pet.ckpt' is a checkpoint of the 'pet' architecture" in output
    assert "KeyError" not in output


# -- ASE: stress without a cell volume, systems without atoms ----------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from _helpers import make_model

    from lorem_mta.model import export

    path = str(tmp_path_factory.mktemp("export") / "model.pt")
    model = make_model(seed=7, atomic_types=[1, 6, 8, 11, 17], max_degree_lr=1)
    export(model, path, torch.float64)
    return path


def test_ase_stress_of_a_molecule(exported):
    """metatomic-ase: ``[nan/inf ...]`` (the finite virial over a zero volume);
    LoremCalculator: ``PropertyNotImplementedError``, same energy and forces."""
    from ase.calculators.calculator import PropertyNotImplementedError
    from metatomic_ase import MetatomicCalculator

    from lorem_mta.calculator import LoremCalculator
    from lorem_mta.utils import predict

    atoms = molecule()
    plain = atoms.copy()
    plain.calc = MetatomicCalculator(exported)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not np.isfinite(plain.get_stress()).all()  # what metatomic-ase returns

    atoms.calc = LoremCalculator(exported)
    np.testing.assert_allclose(atoms.get_potential_energy(), plain.get_potential_energy())
    np.testing.assert_allclose(atoms.get_forces(), plain.get_forces())
    with pytest.raises(PropertyNotImplementedError, match="without a cell volume"):
        atoms.get_stress()
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()  # also after energy and forces were computed and cached

    # the model's virial (dE/dstrain) of the molecule is finite: only the volume is 0
    from _helpers import make_model

    virial = predict(
        make_model(seed=7, atomic_types=[1, 6, 8, 11, 17], max_degree_lr=1), [atoms]
    ).virials
    assert bool(torch.isfinite(virial).all()) and float(virial.abs().max()) > 0

    # a periodic structure: the same stress as metatomic-ase
    crystal = nacl_cell()
    crystal.calc = LoremCalculator(exported)
    other = crystal.copy()
    other.calc = MetatomicCalculator(exported)
    np.testing.assert_allclose(crystal.get_stress(), other.get_stress(), rtol=1e-12)


@pytest.mark.parametrize("pbc", [False, True])
def test_ase_system_without_atoms(exported, pbc):
    """metatomic-ase fails in vesin (``points can not be a NULL pointer``);
    LoremCalculator returns energy 0 and empty forces (and a zero stress if periodic)."""
    from metatomic_ase import MetatomicCalculator

    from lorem_mta.calculator import LoremCalculator

    empty = ase.Atoms(cell=np.eye(3) * 8 if pbc else None, pbc=pbc)
    plain = empty.copy()
    plain.calc = MetatomicCalculator(exported)
    with pytest.raises(RuntimeError, match="NULL pointer"):
        plain.get_potential_energy()

    empty.calc = LoremCalculator(exported)
    assert empty.get_potential_energy() == 0.0
    assert empty.get_forces().shape == (0, 3)
    if pbc:
        assert empty.get_stress().tolist() == [0.0] * 6


def test_metatrain_model_on_a_system_without_atoms(tmp_path):
    """``LoremMta`` and its export (``mtt export``, ``mtt eval``) give 0 for a system
    without atoms, also next to other systems (before: ``inputs to 'add' should have the
    same samples`` when the fitted composition baseline was added)."""
    from metatomic.torch import ModelEvaluationOptions, ModelOutput

    from lorem_mta.utils import attach_neighbors, system_from_atoms

    train, val, targets = _split()
    model = LoremMta.load_checkpoint(
        _trained_checkpoint(train, val, targets, tmp_path), context="export"
    ).eval()
    exported = model.export()
    requested = {"energy": ModelOutput(sample_kind="system", unit="eV")}
    options = ModelEvaluationOptions(length_unit="angstrom", outputs=requested)

    def energies(structures, how):
        systems = [system_from_atoms(atoms, torch.float32) for atoms in structures]
        attach_neighbors(model, systems)
        if how == "model":  # trainable parameters: the export works on a copy
            return model(systems, requested)["energy"].block().values[:, 0].detach()
        result = exported(systems, options, check_consistency=False)
        return result["energy"].block().values[:, 0]

    for how in ["model", "exported"]:
        alone = energies([molecule()], how)
        batch = energies(
            [ase.Atoms(), molecule(), ase.Atoms(cell=np.eye(3) * 8, pbc=True)], how
        )
        assert batch[0] == 0.0 and batch[2] == 0.0, how
        torch.testing.assert_close(batch[1], alone[0], msg=how)
        assert abs(float(alone[0])) > 1e-3  # the baseline is in it


def _trained_checkpoint(train, val, targets, folder):
    _train(train, val, targets, folder, num_epochs=1, checkpoint_interval=1)
    return torch.load(folder / "model_1.ckpt", weights_only=False)
