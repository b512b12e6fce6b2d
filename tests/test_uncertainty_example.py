"""``examples/uncertainty_llpr.py`` end to end (slow: about two CPU-minutes).

Trains the small LOREM on the cumulene rotor scan, fits metatrain's LLPR and compares
the predicted uncertainties with the errors on held-out frames. Checks that the model
learned the rotor (the point of the calibration plot: a model at the baseline plateau
has errors as large as the spread of the energies and no forces), that the printed
statistics are those of the saved per-structure predictions, and that the uncertainty
grows away from the training data.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "uncertainty_llpr.py"
DATA = ROOT.parent / "shared" / "data" / "cumulene"


@pytest.mark.slow
@pytest.mark.timeout(3600)  # two mtt train runs: minutes, more on a busy machine
@pytest.mark.skipif(not DATA.exists(), reason=f"no cumulene data in {DATA}")
def test_uncertainty_llpr_example(tmp_path):
    output = tmp_path / "llpr"
    figure = tmp_path / "figure.png"
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "LOREM_LLPR_OUTPUT": str(output),
        "LOREM_LLPR_FIGURE": str(figure),
    }
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(DATA)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=3000,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "WARNING: the validation force error" not in result.stdout
    assert figure.stat().st_size > 0 and (output / "uncertainty_llpr.png").stat().st_size > 0
    statistics = json.loads((output / "statistics.json").read_text())
    predictions = np.load(output / "predictions.npz")

    # the statistics are those of the saved predictions
    for name in ["interpolation", "extrapolation", "distorted"]:
        error = np.abs(predictions[f"{name}_predicted"] - predictions[f"{name}_reference"])
        sigma = predictions[f"{name}_sigma"]
        summary = statistics[name]
        assert summary["n"] == error.size
        assert summary["rmse_meV"] == pytest.approx(1e3 * np.sqrt(np.mean(error**2)))
        assert summary["rms_sigma_meV"] == pytest.approx(1e3 * np.sqrt(np.mean(sigma**2)))
        assert summary["within_1_sigma"] == pytest.approx(np.mean(error < sigma))
        assert summary["spearman"] == pytest.approx(spearmanr(sigma, error).statistic)
        assert np.all(sigma > 0)
    angles = predictions["interpolation_angle"]
    assert angles.min() >= 10 and predictions["extrapolation_angle"].max() < 10

    # the model learned the rotor: energy errors far below the spread of the energies,
    # forces well below their size, on held-out frames of the training range
    inside = statistics["interpolation"]
    assert inside["rmse_meV"] < 0.05 * inside["reference_std_meV"]
    assert inside["forces_rmse_meV_per_A"] < 0.25 * inside["forces_rms_meV_per_A"]
    log = statistics["training log"]["best"]
    assert log["validation_forces"] < 0.25 * inside["forces_rms_meV_per_A"]

    # the uncertainty grows away from the training data
    outside, distorted = statistics["extrapolation"], statistics["distorted"]
    assert outside["rms_sigma_meV"] > inside["rms_sigma_meV"]
    assert distorted["rms_sigma_meV"] > outside["rms_sigma_meV"]
    # the ensemble samples the distribution of the uncertainty (64 members)
    for name in ["interpolation", "extrapolation"]:
        assert 0.7 < statistics[name]["ensemble_std_over_sigma"] < 1.3
