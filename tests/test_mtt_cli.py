"""End-to-end ``mtt`` runs with ``experimental.lorem_mta`` (in subprocesses).

The plain ``mtt`` command finds the architecture through ``lorem_mta_mtt.pth``; the
fine-tuning run uses the ``lorem-mtt`` wrapper instead. Tiny model, one epoch.
"""

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import ase.io
import numpy as np
import pytest

BIN = Path(sys.executable).parent
DATASET = Path(__file__).resolve().parent / "resources" / "metatrain" / "hcno_lj.xyz"

MODEL = """\
    max_degree: 1
    max_degree_lr: 1
    num_features: 4
    num_spherical_features: 1
    num_radial: 4
    num_species: 2
"""


def options(dataset="train.xyz", training="", target="energy", forces="forces"):
    forces_section = f"\n      forces:\n        key: {forces}" if forces else ""
    return f"""\
seed: 42
base_precision: 32
final_eval: false
architecture:
  name: experimental.lorem_mta
  model:
{MODEL}  training:
    batch_size: 4
    num_epochs: 1
    log_interval: 1
{textwrap.indent(training, "    ")}
training_set:
  systems:
    read_from: {dataset}
    length_unit: angstrom
  targets:
    {target}:
      quantity: energy
      key: energy
      unit: eV{forces_section}
validation_set: 0.2
test_set: 0.0
"""


def run(command, cwd, check=True):
    """Run ``command`` (a list; the first item is a script next to this python)."""
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def _environment():
    import os

    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "2"
    return env


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Directory with ``model.ckpt`` and ``model.pt`` written by ``mtt train``."""
    directory = tmp_path_factory.mktemp("trained")
    shutil.copy(DATASET, directory / "train.xyz")
    (directory / "options.yaml").write_text(options())
    result = run(["mtt", "train", "options.yaml"], directory)
    assert "Starting training from scratch" in result.stderr + result.stdout
    assert "Progress: epoch 1/1 (100 %)" in result.stderr + result.stdout
    for name in ["model.ckpt", "model.pt"]:
        assert (directory / name).exists(), name
    return directory


def copy_of(trained, tmp_path):
    for name in ["model.ckpt", "model.pt", "train.xyz", "options.yaml"]:
        shutil.copy(trained / name, tmp_path / name)
    if (trained / "extensions").is_dir():  # only if the model needs compiled extensions
        shutil.copytree(trained / "extensions", tmp_path / "extensions")
    return tmp_path


def test_checkpoint_names_the_architecture(trained):
    import metatomic.torch  # noqa: F401 (checkpoints hold metatomic objects)
    import torch

    checkpoint = torch.load(trained / "model.ckpt", weights_only=False)
    assert checkpoint["architecture_name"] == "experimental.lorem_mta"
    from lorem_mta.architecture import LoremMta, Trainer

    assert checkpoint["model_ckpt_version"] == LoremMta.__checkpoint_version__
    assert checkpoint["trainer_ckpt_version"] == Trainer.__checkpoint_version__
    assert checkpoint["epoch"] == 0


def test_restart_one_more_epoch(trained, tmp_path):
    directory = copy_of(trained, tmp_path)
    result = run(
        [
            "mtt",
            "train",
            "options.yaml",
            "--restart",
            "model.ckpt",
            "-o",
            "restarted.pt",
            "-r",
            "architecture.training.num_epochs=2",
        ],
        directory,
    )
    log = result.stderr + result.stdout
    assert "Restarting training from 'model.ckpt'" in log
    # epochs counted from 1 in the log: the restart runs the second epoch (the summary of
    # the best epoch at the end may name the first one)
    assert "Epoch:    2 | learning rate" in log and "Epoch:    1 | learning rate" not in log
    assert "Using latest model from epoch 1" in log

    import metatomic.torch  # noqa: F401
    import torch

    checkpoint = torch.load(directory / "restarted.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 1
    assert (directory / "restarted.pt").exists()


def test_time_budget_ends_training_early(tmp_path):
    """A budget shorter than one epoch: one epoch runs, the log says why it stopped, and
    the best checkpoint of that epoch is exported."""
    shutil.copy(DATASET, tmp_path / "train.xyz")
    training = "time_budget: 0.001\ntime_budget_clock: cpu\nnum_epochs: 5\n"
    (tmp_path / "options.yaml").write_text(
        options(training=training).replace("    num_epochs: 1\n", "")
    )
    result = run(["mtt", "train", "options.yaml"], tmp_path)
    log = result.stderr + result.stdout
    assert "Stopping after epoch 1 of 5: another epoch" in log
    assert "cpu-clock budget used); the best model, from epoch 1, is the one exported" in log
    assert "Epoch:    1" in log and "Epoch:    2" not in log

    import metatomic.torch  # noqa: F401
    import torch

    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 0 and checkpoint["best_epoch"] == 0
    assert checkpoint["best_model_state_dict"] is not None
    assert (tmp_path / "model.pt").exists()


def _checkpoints(directory):
    """Intermediate checkpoints ``outputs/<date>/<time>/model_<epoch>.ckpt``, by epoch
    (counted from 1 in the name, from 0 in the checkpoint)."""
    found = list(Path(directory).glob("outputs/*/*/model_*.ckpt"))
    return sorted(found, key=lambda path: int(path.stem.split("_")[1]))


@pytest.mark.slow
def test_restart_after_killed_training(tmp_path):
    """``mtt train`` killed mid-run leaves a loadable checkpoint; ``--restart`` continues.

    The run is killed (SIGKILL, as a crash or an out-of-time job) as soon as the first
    intermediate checkpoint appears. Checkpoints are renamed into place once complete, so
    every ``.ckpt`` present is whole; ``--restart auto`` finds the newest one and the
    training continues at the following epoch. 20 s on an idle machine, 120 s under load.
    """
    import signal
    import time

    import metatomic.torch  # noqa: F401 (checkpoints hold metatomic objects)
    import torch

    shutil.copy(DATASET, tmp_path / "train.xyz")
    # far more epochs than the run lives: it is always killed while training
    training = "checkpoint_interval: 1\n"
    (tmp_path / "options.yaml").write_text(
        options(training=training).replace("num_epochs: 1", "num_epochs: 1000")
    )
    process = subprocess.Popen(
        [str(BIN / "mtt"), "train", "options.yaml"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_environment(),
    )
    try:
        deadline = time.monotonic() + 600
        while not _checkpoints(tmp_path):
            assert process.poll() is None, "mtt train ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 600 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "model.pt").exists()
    assert not (tmp_path / "model.ckpt").exists()

    # every checkpoint left behind loads, and is at the epoch its name says
    written = _checkpoints(tmp_path)
    for path in written:
        checkpoint = torch.load(path, weights_only=False)
        assert f"model_{checkpoint['epoch'] + 1}.ckpt" == path.name
    last = torch.load(written[-1], weights_only=False)["epoch"]
    print(f"killed with {len(written)} checkpoint(s) written, the newest at epoch {last}")

    total = last + 3
    result = run(
        ["mtt", "train", "options.yaml", "--restart", "auto"]
        + ["-r", f"architecture.training.num_epochs={total}"],
        tmp_path,
    )
    log = result.stderr + result.stdout
    assert f"Restarting training from '{written[-1].relative_to(tmp_path)}'" in log
    # the checkpoint's epoch counts from 0, the log from 1
    assert f"Epoch: {last + 2:4d} | learning rate" in log
    assert f"Epoch: {last + 1:4d} | learning rate" not in log
    assert "Epoch:    1 | learning rate" not in log
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=False)
    assert checkpoint["epoch"] == total - 1
    assert (tmp_path / "model.pt").exists()


def test_export_and_eval(trained, tmp_path):
    directory = copy_of(trained, tmp_path)
    run(["mtt", "export", "model.ckpt", "-o", "exported.pt"], directory)
    assert (directory / "exported.pt").exists()

    (directory / "eval.yaml").write_text(
        "systems:\n  read_from: train.xyz\n  length_unit: angstrom\n"
        "targets:\n  energy:\n    key: energy\n    unit: eV\n"
        "    forces:\n      key: forces\n"
    )
    extensions = ["-e", "extensions/"] if (directory / "extensions").is_dir() else []
    result = run(
        ["mtt", "eval", "exported.pt", "eval.yaml", *extensions, "-o", "predictions.xyz"]
        + ["--no-warm-up"],
        directory,
    )
    assert "energy RMSE" in result.stderr + result.stdout
    predictions = ase.io.read(directory / "predictions.xyz", ":")
    assert len(predictions) == len(ase.io.read(DATASET, ":"))
    energies = [atoms.get_potential_energy() for atoms in predictions]
    assert np.all(np.isfinite(energies))


def test_finetune_with_lorem_mtt(trained, tmp_path):
    directory = copy_of(trained, tmp_path)
    (directory / "finetune.yaml").write_text(
        options(training="finetune:\n  read_from: model.ckpt\nlearning_rate: 1.0e-4\n")
    )
    result = run(["lorem-mtt", "train", "finetune.yaml", "-o", "finetuned.pt"], directory)
    log = result.stderr + result.stdout
    assert "Starting finetuning from 'model.ckpt'" in log
    assert (directory / "finetuned.pt").exists()


FRESH_PROCESS = """
import importlib.abc
import json
import os
import sys


class NoLorem(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "lorem_mta" or name.startswith("lorem_mta."):
            raise ImportError("the exported model must not need lorem_mta")


sys.meta_path.insert(0, NoLorem())

import ase.io
from metatomic_ase import MetatomicCalculator

extensions = "extensions/" if os.path.isdir("extensions") else None
calculator = MetatomicCalculator("model.pt", extensions_directory=extensions)
results = []
for atoms in ase.io.read("train.xyz", ":"):
    atoms.calc = calculator
    results.append([atoms.get_potential_energy(), atoms.get_forces().tolist()])
# nothing registered from Python (e.g. autograd formulas) may be needed for the forces
assert not any(name.startswith(("lorem_mta", "sphericart")) for name in sys.modules)
print(json.dumps(results))
"""


def test_exported_model_in_fresh_process(trained, tmp_path):
    """The exported model runs without lorem_mta and gives the checkpoint's forces."""
    directory = copy_of(trained, tmp_path)
    (directory / "load.py").write_text(FRESH_PROCESS)
    result = subprocess.run(
        [sys.executable, "load.py"],
        cwd=directory,
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])

    import torch
    from metatrain.utils.io import load_model

    from lorem_mta.utils import predict

    model = load_model(str(trained / "model.ckpt")).eval()
    frames = ase.io.read(DATASET, ":")
    expected = predict(model, frames, dtype=torch.float32)
    energies = np.array([energy for energy, _ in results])
    np.testing.assert_allclose(energies, expected.energies.detach().numpy(), atol=1e-4)
    for (_, forces), reference in zip(results, expected.forces, strict=True):
        np.testing.assert_allclose(forces, reference.detach().numpy(), atol=1e-4)


# -- clear errors --------------------------------------------------------------------


def test_error_force_loss_without_forces(tmp_path):
    frames = ase.io.read(DATASET, ":")
    for atoms in frames:
        energy = atoms.get_potential_energy()
        atoms.calc = None
        atoms.info["energy"] = energy
        atoms.arrays.pop("forces", None)
    ase.io.write(tmp_path / "train.xyz", frames)
    (tmp_path / "options.yaml").write_text(
        options(training="loss:\n  energy:\n    weight: 0.5\n    forces:\n      weight: 0.5\n")
    )
    result = run(["mtt", "train", "options.yaml"], tmp_path, check=False)
    assert result.returncode != 0
    log = result.stderr + result.stdout
    assert "the loss asks for forces of target 'energy'" in log
    assert not (tmp_path / "model.pt").exists()


def test_error_unreadable_dataset(tmp_path):
    (tmp_path / "train.xyz").write_text("this is not\nan xyz file\n")
    (tmp_path / "options.yaml").write_text(options())
    result = run(["mtt", "train", "options.yaml"], tmp_path, check=False)
    assert result.returncode != 0
    assert "Failed to read" in result.stderr + result.stdout
    assert not (tmp_path / "model.ckpt").exists()


@pytest.mark.parametrize("command", ["restart", "export"])
def test_error_truncated_checkpoint(trained, tmp_path, command):
    directory = copy_of(trained, tmp_path)
    data = (directory / "model.ckpt").read_bytes()
    (directory / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    before = {name: digest(directory / name) for name in ["model.ckpt", "model.pt"]}

    if command == "restart":
        arguments = ["mtt", "train", "options.yaml", "--restart", "truncated.ckpt"]
    else:
        arguments = ["mtt", "export", "truncated.ckpt", "-o", "model.pt"]
    result = run(arguments, directory, check=False)

    assert result.returncode != 0
    assert "corrupted" in result.stderr + result.stdout
    after = {name: digest(directory / name) for name in ["model.ckpt", "model.pt"]}
    assert before == after
    assert not (directory / "truncated.pt").exists()


def test_error_unknown_atomic_types_at_finetuning(trained, tmp_path):
    """Fine-tuning on a dataset with an element the model never saw fails before training."""
    directory = copy_of(trained, tmp_path)
    frames = ase.io.read(DATASET, ":")
    frames[0].numbers[0] = 16  # one sulfur atom
    ase.io.write(directory / "new.xyz", frames)
    (directory / "finetune.yaml").write_text(
        options(dataset="new.xyz", training="finetune:\n  read_from: model.ckpt\n")
    )
    before = digest(directory / "model.ckpt")
    result = run(
        ["mtt", "train", "finetune.yaml", "-o", "finetuned.pt"], directory, check=False
    )
    assert result.returncode != 0
    log = result.stderr + result.stdout
    assert "[16]" in log and "was not trained on" in log, log[-2000:]
    assert not (directory / "finetuned.pt").exists()
    assert digest(directory / "model.ckpt") == before


def test_progress_line():
    from lorem_mta.architecture.trainer import progress_line

    # 3 epochs of a restarted run (from epoch 10) in 30 s: 10 s/epoch, 17 left = 170 s
    line = progress_line(12, 10, 30, 30.0)
    assert line == "Progress: epoch 13/30 (43 %), 10.0 s/epoch, about 3 min left"
    assert progress_line(0, 0, 1000, 20.0).endswith("about 5.5 h left")
    assert progress_line(0, 0, 11, 60.0).endswith("about 10 min left")
    assert progress_line(9, 0, 10, 5.0).endswith("about 0 s left")
