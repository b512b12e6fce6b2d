"""The README's main job, ``examples/first_run.py``, end to end (``--quick``).

Trains the small LOREM twice with ``mtt train`` (with and without the long-range block)
on the shipped cumulene scan (plus 21 distorted cumulenes), tests both on the held-out
frames, and runs NVE MD with the trained model in ASE. Checks the files it promises,
that the printed errors are the RMSEs of the predictions it saved, that the local model
stays at the error of the mean energy (the rotor's energy depends on atoms 10 A apart,
beyond the 5 A cutoff), that neither training diverged, and that the MD conserves
energy. Whether the long-range model is ahead after the 30 epochs of ``--quick``
depends on the seed, so it is not asserted.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "first_run.py"
DATA = ROOT / "examples" / "data" / "cumulene_scan.xyz"


def test_shipped_data_is_complete():
    """The data set ships with the repository: 80 / 20 / 100 frames, energies, forces."""
    frames = ase.io.read(DATA, ":")
    splits = [atoms.info["split"] for atoms in frames]
    assert {name: splits.count(name) for name in set(splits)} == {
        "train": 80,
        "validation": 20,
        "test": 100,
    }
    for atoms in frames:
        assert atoms.get_chemical_formula() == "C9H4" and not atoms.pbc.any()
        assert np.isfinite(atoms.get_potential_energy())
        assert atoms.get_forces().shape == (13, 3)
    indices = [atoms.info["profile_index"] for atoms in frames]
    assert len(set(indices)) == len(indices)  # no frame in two splits
    licence = (DATA.parent / "README.md").read_text()
    assert "MIT" in licence and "euclidean_fast_attention" in licence


@pytest.mark.slow
@pytest.mark.timeout(3600)  # two trainings of 30 epochs: minutes, more on a busy machine
def test_first_run_quick(tmp_path):
    output = tmp_path / "first_run"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=3000,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # progress lines of both trainings, the table and the paths
    assert "[lorem] " in result.stdout and "[lr: false] " in result.stdout
    assert "test RMSE on 100 held-out frames" in result.stdout
    for name in [
        "profile.png",
        "md.png",
        "summary.json",
        "lorem/model.pt",
        "lorem-no-lr/model.pt",
    ]:
        assert (output / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert str(output / name) in result.stdout

    summary = json.loads((output / "summary.json").read_text())
    assert summary["epochs"] == 30 and summary["n_test"] == 100
    test = [atoms for atoms in ase.io.read(DATA, ":") if atoms.info["split"] == "test"]
    reference = np.array([atoms.get_potential_energy() for atoms in test])
    for name in ["lorem", "lr: false"]:
        errors = summary["test_rmse"][name]
        assert np.isfinite(errors["energy_rmse_meV_per_atom"])
        assert np.isfinite(errors["forces_rmse_meV_per_A"])
        # the printed RMSE is the one of the saved predictions
        predicted = np.array(summary["test_energy_eV"][name])
        rmse = 1000 * np.sqrt(np.mean(((predicted - reference) / 13) ** 2))
        assert errors["energy_rmse_meV_per_atom"] == pytest.approx(rmse, rel=1e-9)
    lr, local = summary["test_rmse"]["lorem"], summary["test_rmse"]["lr: false"]
    mean = summary["test_rmse"]["mean energy"]
    # the local model cannot see the rotor angle: it stays at the error of the mean energy
    assert local["energy_rmse_meV_per_atom"] == pytest.approx(
        mean["energy_rmse_meV_per_atom"], rel=0.25
    )
    # after 30 epochs the long-range model was ahead in one run (3.95 against 17.93
    # meV/atom) and not in another with the earlier 0.5 / 0.5 loss weights (19.8 against
    # 17.9): not asserted; only check that neither training diverged
    assert lr["energy_rmse_meV_per_atom"] < 3 * mean["energy_rmse_meV_per_atom"]
    # NVE in float32: the total energy stays within 1 meV/atom over 200 steps
    assert 0 < summary["md_total_energy_range_eV_per_atom"] < 1e-3
    assert 10 < summary["md_mean_temperature_K"] < 1000
