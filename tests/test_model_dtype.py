"""Systems in the model's dtype: ``utils.model_dtype``, ``system_from_atoms`` and the
``visualize_charges`` example with float32 and float64 models."""

import copy
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from _helpers import molecule, variant_model
from metatomic.torch import load_atomistic_model

from lorem_mta.model import export
from lorem_mta.utils import model_dtype, predict, system_from_atoms

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=[torch.float32, torch.float64], ids=str)
def exported(request, tmp_path_factory):
    """A small LOREM exported in float32 or float64: (dtype, path)."""
    path = tmp_path_factory.mktemp("dtype") / "model.pt"
    export(variant_model("lr2"), str(path), dtype=request.param)
    return request.param, path


def test_model_dtype_of_exported_and_eager_models(exported):
    dtype, path = exported
    assert model_dtype(load_atomistic_model(str(path))) == dtype
    eager = copy.deepcopy(variant_model("lr2")).to(dtype)
    assert model_dtype(eager) == dtype


def test_system_from_atoms_takes_the_model_dtype(exported):
    dtype, path = exported
    model = load_atomistic_model(str(path))
    system = system_from_atoms(molecule(), model=model)
    assert system.positions.dtype == dtype and system.cell.dtype == dtype
    other = torch.float64 if dtype == torch.float32 else torch.float32
    with pytest.raises(ValueError, match="differs from the model's"):
        system_from_atoms(molecule(), other, model=model)
    # without a model, the historical default
    assert system_from_atoms(molecule()).positions.dtype == torch.float64


def test_predict_in_the_model_dtype():
    """An eager float32 model evaluates without naming the dtype, close to float64."""
    atoms = molecule()
    model64 = variant_model("lr2")
    model32 = copy.deepcopy(model64).float()
    energy32 = predict(model32, [atoms]).energies
    assert energy32.dtype == torch.float32
    energy64 = predict(model64, [atoms]).energies
    np.testing.assert_allclose(energy32.detach().numpy(), energy64.detach().numpy(), rtol=1e-4)


def test_visualize_charges_runs_with_either_dtype(exported, tmp_path):
    """The example that crashed on float32 models (``wrong dtype for the systems``)."""
    dtype, path = exported
    structure = tmp_path / "molecule.xyz"
    ase.io.write(structure, molecule())
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "visualize_charges.py"),
            "--model",
            str(path),
            "--structure",
            str(structure),
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "charges.png").stat().st_size > 0
    lines = result.stdout.splitlines()
    charges = [line for line in lines if " q = " in line and "sum" not in line]
    assert len(charges) == len(molecule())
    values = [float(line.split("q =")[1].split()[0]) for line in charges]
    assert np.all(np.isfinite(values))
