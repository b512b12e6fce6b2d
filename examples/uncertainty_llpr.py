"""
Uncertainties with metatrain's LLPR
===================================

metatrain's LLPR wrapper (last-layer prediction rigidity, Bigi et al., Mach. Learn.:
Sci. Technol. 5, 045018 (2024)) turns a trained LOREM model into one that also predicts
the standard deviation of its energy, ``energy_uncertainty``, and an ensemble of
energies, ``energy_ensemble``, at the cost of one extra matrix-vector product. It needs
the last-layer features of the model (``mtt::aux::energy_last_layer_features``, the
inputs of the last linear layers of LOREM's energy readouts), which it collects on the
training set, and a calibration set on which it fits one scale factor.

This example trains a small LOREM on the cumulene (C9H4) rotor scan of
``../shared/data/cumulene/`` (MIT licence), fits the LLPR with ``mtt train``, and
compares the predicted uncertainties with the actual errors on held-out structures:

* **train / validation / calibration**: disjoint random frames (200 / 30 / 100) of the
  scan with rotor angles from 90 to 10 degrees;
* **held-out test**: every other frame of the scan, in two groups: angles from 90 to 10
  degrees (*interpolation*) and from 10 to 0 degrees, never seen in training
  (*extrapolation*, towards the planar rotor);
* the 21 randomly distorted cumulene structures of lorem-jax's example
  (``lorem_jax_example_cumulene_21.xyz``, BSD-3-Clause), far from the one-dimensional
  scan (*distorted*), reported on their own.

It takes about 2 minutes of CPU time on one core (``OMP_NUM_THREADS=1``) and writes
``uncertainty_llpr.png`` (in ``docs/_static/`` of the repository, or where
``LOREM_LLPR_FIGURE`` says) and, in ``outputs/uncertainty-llpr/`` (or
``LOREM_LLPR_OUTPUT``), the numbers quoted in :doc:`/uncertainty` (``statistics.json``)
and the energies and uncertainties of every held-out structure (``predictions.npz``)::

    python examples/uncertainty_llpr.py [folder with the cumulene data]
"""

# %%
# Data and splits
# ---------------

import csv
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import matplotlib
import numpy as np
import torch
from metatomic.torch import ModelEvaluationOptions, ModelOutput, load_atomistic_model
from scipy.stats import spearmanr

from lorem_mta.utils import attach_neighbors, system_from_atoms

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
REPOSITORY = HERE.parent
DATA = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/cumulene")
if not DATA.is_absolute():
    DATA = (REPOSITORY / DATA).resolve()
OUTPUT = Path(os.environ.get("LOREM_LLPR_OUTPUT", "outputs/uncertainty-llpr"))
#: the figure of the docs; ``LOREM_LLPR_FIGURE`` writes it elsewhere (tests)
FIGURE = Path(
    os.environ.get(
        "LOREM_LLPR_FIGURE", REPOSITORY / "docs" / "_static" / "uncertainty_llpr.png"
    )
)
#: frames of each split taken from the part of the scan above HELD_OUT_ANGLE
SIZES = {"train": 200, "validation": 30, "calibration": 100}
#: rotor angle (degrees) below which the scan is held out of training
HELD_OUT_ANGLE = 10.0

scan = ase.io.read(DATA / "cumulene_profile_train800.extxyz", ":")
distorted = ase.io.read(DATA / "lorem_jax_example_cumulene_21.xyz", ":")
angles = np.array([frame.info["rotor_plane_angle_deg"] for frame in scan])
seen = np.flatnonzero(angles >= HELD_OUT_ANGLE)
order = np.random.default_rng(0).permutation(seen)
splits, start = {}, 0
for name, size in SIZES.items():
    splits[name] = order[start : start + size]
    start += size
splits["interpolation"] = np.sort(order[start:])
splits["extrapolation"] = np.flatnonzero(angles < HELD_OUT_ANGLE)

if OUTPUT.exists():
    shutil.rmtree(OUTPUT)
OUTPUT.mkdir(parents=True)
for name, indices in splits.items():
    ase.io.write(OUTPUT / f"{name}.xyz", [scan[i] for i in indices])
ase.io.write(OUTPUT / "distorted.xyz", distorted)
print({name: len(indices) for name, indices in splits.items()}, "distorted:", len(distorted))

# %%
# Train LOREM
# -----------
#
# A small model (the ``small`` size of ``benchmarks/pes_accuracy.py``) on energies and
# forces, with the recipe of ``examples/first_run.py``: batches of 4, learning rate
# 5e-3, the per-atom energy weighted 10x the forces. The energy of the rotor depends on
# the angle between the two CH2 groups 10 Angstrom apart, which only the long-range block
# sees; its response to the twist starts tiny, and training sits on a plateau (the error
# of the mean energy, no forces) until it grows (docs/training.rst, "Runs that stay at the
# baseline"). With this seed and data the model left it at epoch 22 on the machine where
# the docs' numbers were measured; the rate stays constant for 30 epochs, to leave
# some margin, and then decays linearly to 1e-6 at epoch 45. The validation set selects
# the best epoch.

TARGETS = """
  targets:
    energy:
      key: energy
      unit: eV{forces}"""
FORCES = """
      forces:
        key: forces"""


def dataset(name: str, forces: bool = True) -> str:
    """Options section reading ``name``.xyz, with or without the forces."""
    targets = TARGETS.format(forces=FORCES if forces else "")
    return f"\n  systems:\n    read_from: {name}.xyz\n    length_unit: angstrom{targets}"


LOREM_OPTIONS = f"""seed: 0
base_precision: 32
final_eval: false
architecture:
  name: experimental.lorem_mta
  model:
    cutoff: 5.0
    max_degree: 2
    max_degree_lr: 2
    num_features: 32
    num_radial: 8
    num_species: 4
    num_spherical_features: 4
  training:
    batch_size: 4
    num_epochs: 45
    learning_rate: 5.0e-3
    final_learning_rate: 1.0e-6
    scheduler: linear_decay
    decay_start_epoch: 30
    log_interval: 5
    checkpoint_interval: 1000
    loss:
      energy:
        type: mse
        weight: 1.0
        forces:
          weight: 0.1
training_set:{dataset("train")}
validation_set:{dataset("validation")}
test_set: 0.0
"""


def mtt(*arguments: str) -> None:
    """Run metatrain's command line (the ``mtt`` next to this interpreter)."""
    executable = Path(sys.executable).parent / "mtt"
    if not executable.exists():
        executable = Path(shutil.which("mtt") or "mtt")
    print("$ mtt " + " ".join(arguments), flush=True)
    subprocess.run([str(executable), *arguments], cwd=OUTPUT, check=True)


(OUTPUT / "options.yaml").write_text(LOREM_OPTIONS)
mtt("train", "options.yaml", "-o", "model.pt")

# %%
# ``train.csv`` (in ``outputs/DATE/TIME/`` of the run) has the errors of every epoch:
# per-atom energy and force RMSEs, training (averaged over the epoch) and validation.


def training_log() -> list[dict]:
    """The epochs of ``train.csv``: epoch, then the RMSEs in meV (per atom) and meV/A."""
    path = sorted(OUTPUT.glob("outputs/*/*/train.csv"))[-1]
    rows = list(csv.reader(path.open()))
    keys = {
        "training energy RMSE (per atom)": "train_energy",
        "training forces RMSE": "train_forces",
        "validation energy RMSE (per atom)": "validation_energy",
        "validation forces RMSE": "validation_forces",
    }
    columns = {keys[name]: i for i, name in enumerate(rows[0]) if name in keys}
    epochs = []
    for row in rows[2:]:
        epoch = {"epoch": int(row[0])}
        epoch.update({key: float(row[i]) for key, i in columns.items()})
        epochs.append(epoch)
    return epochs


log = training_log()
best = min(log, key=lambda epoch: epoch["validation_energy"] * epoch["validation_forces"])
if best["validation_forces"] > 0.5 * log[0]["validation_forces"]:
    print(
        "WARNING: the validation force error stayed near that of the first epoch: the model "
        "has not left the baseline plateau, and the calibration below says little. Try "
        "another `seed` (docs/training.rst, 'Runs that stay at the baseline')."
    )
for epoch in log:
    if epoch["epoch"] % 5 == 0 or epoch is best:
        print(
            f"epoch {epoch['epoch']:3d}: validation {epoch['validation_energy']:8.3f} meV/atom"
            f" {epoch['validation_forces']:8.3f} meV/A"
        )

# %%
# Fit the LLPR
# ------------
#
# ``architecture: name: llpr`` wraps the checkpoint given as ``model_checkpoint``. The
# training set gives the covariance of the last-layer features, the validation set
# (here the calibration split) the scale factor; ``num_ensemble_members`` also samples
# an ensemble of last-layer weights. Energies only: the LLPR does not use forces. No
# ``num_epochs``: the ensemble weights are not trained further.

LLPR_OPTIONS = f"""seed: 42
base_precision: 64
architecture:
  name: llpr
  model:
    num_ensemble_members: {{energy: 64}}
  training:
    model_checkpoint: model.ckpt
    batch_size: 4
training_set:{dataset("train", forces=False)}
validation_set:{dataset("calibration", forces=False)}
test_set: 0.0
"""
(OUTPUT / "options-llpr.yaml").write_text(LLPR_OPTIONS)
mtt("train", "options-llpr.yaml", "-o", "model-llpr.pt")

# %%
# Predicted uncertainty against the actual error
# ----------------------------------------------
#
# The exported LLPR model is a metatomic model like any other: request ``energy`` and
# ``energy_uncertainty`` (per structure, eV) next to each other.

model = load_atomistic_model(str(OUTPUT / "model-llpr.pt"))
options = ModelEvaluationOptions(
    length_unit="angstrom",
    outputs={
        "energy": ModelOutput(unit="eV", sample_kind="system"),
        "energy_uncertainty": ModelOutput(unit="eV", sample_kind="system"),
        "energy_ensemble": ModelOutput(unit="eV", sample_kind="system"),
    },
)


def predict(frames: list) -> dict:
    """Reference and predicted energies and forces, uncertainty and ensemble spread."""
    positions = [
        torch.tensor(frame.positions, dtype=torch.float64, requires_grad=True)
        for frame in frames
    ]
    systems = [
        system_from_atoms(frame, torch.float64, leaf)
        for frame, leaf in zip(frames, positions, strict=True)
    ]
    attach_neighbors(model, systems)
    outputs = model(systems, options, check_consistency=True)
    energy = outputs["energy"].block().values[:, 0]
    forces = torch.autograd.grad(-energy.sum(), positions)
    return {
        "reference": np.array([frame.get_potential_energy() for frame in frames]),
        "predicted": energy.detach().numpy(),
        "sigma": outputs["energy_uncertainty"].block().values[:, 0].detach().numpy(),
        "ensemble": outputs["energy_ensemble"].block().values.detach().numpy(),
        "reference_forces": np.concatenate([frame.get_forces() for frame in frames]),
        "forces": torch.cat(forces).numpy(),
    }


groups = {name: [scan[i] for i in splits[name]] for name in ["interpolation", "extrapolation"]}
groups["distorted"] = distorted
results = {name: predict(frames) for name, frames in groups.items()}
calibration = predict([scan[i] for i in splits["calibration"]])


def summary(result: dict) -> dict:
    """Error and uncertainty statistics (meV per structure; forces in meV/A)."""
    error = np.abs(result["predicted"] - result["reference"])
    sigma = result["sigma"]
    force_error = result["forces"] - result["reference_forces"]
    return {
        "n": int(error.size),
        "rmse_meV": 1e3 * float(np.sqrt(np.mean(error**2))),
        "reference_std_meV": 1e3 * float(np.std(result["reference"])),
        "forces_rmse_meV_per_A": 1e3 * float(np.sqrt(np.mean(force_error**2))),
        "forces_rms_meV_per_A": 1e3 * float(np.sqrt(np.mean(result["reference_forces"] ** 2))),
        "rms_sigma_meV": 1e3 * float(np.sqrt(np.mean(sigma**2))),
        "error_range_meV": [1e3 * float(error.min()), 1e3 * float(error.max())],
        "sigma_range_meV": [1e3 * float(sigma.min()), 1e3 * float(sigma.max())],
        "error_over_sigma_range": [float((error / sigma).min()), float((error / sigma).max())],
        "spearman": float(spearmanr(sigma, error).statistic),
        "within_1_sigma": float(np.mean(error < sigma)),
        "within_2_sigma": float(np.mean(error < 2 * sigma)),
        "ensemble_std_over_sigma": float(np.median(result["ensemble"].std(axis=1) / sigma)),
    }


statistics = {name: summary(result) for name, result in results.items()}
statistics["calibration"] = summary(calibration)
statistics["train"] = summary(predict([scan[i] for i in splits["train"]]))
# the distorted molecules are far outside the one-dimensional scan the model was trained
# on; they are reported on their own and left out of the calibration bins
scan_results = [results["interpolation"], results["extrapolation"]]
everything = {
    key: np.concatenate([result[key] for result in scan_results])
    for key in ["reference", "predicted", "sigma", "ensemble", "reference_forces", "forces"]
}
statistics["held-out scan"] = summary(everything)

# %%
# Calibration by bins
# -------------------
#
# Sort the held-out frames of the scan by predicted uncertainty into bins of equal size and
# compare, in every bin, the root mean square of the predicted sigma with the actual
# RMSE: a calibrated model lies on the diagonal. The expected normalised calibration
# error (ENCE, Levi et al., Sensors 22, 5540 (2022)) averages
# ``|RMS sigma - RMSE| / RMS sigma`` over the bins.

N_BINS = 8
error = np.abs(everything["predicted"] - everything["reference"])
bins = np.array_split(np.argsort(everything["sigma"]), N_BINS)
rms_sigma = np.array([np.sqrt(np.mean(everything["sigma"][b] ** 2)) for b in bins])
rmse = np.array([np.sqrt(np.mean(error[b] ** 2)) for b in bins])
statistics["held-out scan"]["ence"] = float(np.mean(np.abs(rms_sigma - rmse) / rms_sigma))
print(json.dumps(statistics, indent=2))

# %%
# The plot
# --------

figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4))
colors = {"interpolation": "C0", "extrapolation": "C1"}
labels = {
    "interpolation": f"{HELD_OUT_ANGLE:.0f}-90° (interpolation)",
    "extrapolation": f"0-{HELD_OUT_ANGLE:.0f}° (extrapolation)",
}
for name, result in zip(colors, scan_results, strict=True):
    left.scatter(
        1e3 * result["sigma"],
        1e3 * np.abs(result["predicted"] - result["reference"]),
        s=8,
        alpha=0.6,
        color=colors[name],
        label=labels[name],
    )
limits = (
    1e3 * min(everything["sigma"].min(), error[error > 0].min()) / 2,
    1e3 * max(everything["sigma"].max(), error.max()) * 2,
)
line = np.geomspace(*limits, 50)
left.plot(line, line, "k-", lw=1, label="|error| = sigma")
left.fill_between(line, 0 * line + limits[0], 1.96 * line, color="k", alpha=0.07, label="95 %")
left.set(
    xscale="log",
    yscale="log",
    xlim=limits,
    ylim=limits,
    xlabel="predicted uncertainty sigma (meV)",
    ylabel="actual |error| (meV)",
    title="held-out frames of the scan",
)
left.legend(fontsize=8, loc="upper left")
right.plot(1e3 * rms_sigma, 1e3 * rmse, "o-", color="C2", label=f"{N_BINS} bins of equal size")
low, high = (
    0.5 * 1e3 * min(rms_sigma.min(), rmse.min()),
    2 * 1e3 * max(rms_sigma.max(), rmse.max()),
)
right.plot([low, high], [low, high], "k-", lw=1, label="ideal")
right.set(
    xscale="log",
    yscale="log",
    xlim=(low, high),
    ylim=(low, high),
    xlabel="RMS of predicted sigma in the bin (meV)",
    ylabel="RMSE in the bin (meV)",
    title=(
        f"Spearman {statistics['held-out scan']['spearman']:.2f}, "
        f"ENCE {statistics['held-out scan']['ence']:.2f}"
    ),
)
right.legend(fontsize=8, loc="upper left")
figure.suptitle("LOREM + LLPR on the cumulene rotor scan (energy per structure)")
figure.tight_layout()
if os.access(FIGURE.parent, os.W_OK):
    figure.savefig(FIGURE, dpi=120)
figure.savefig(OUTPUT / "uncertainty_llpr.png", dpi=120)
statistics["training log"] = {"best": best, "last": log[-1]}
usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
statistics["cpu_seconds"] = sum(u.ru_utime + u.ru_stime for u in usage)
print(f"CPU time (this script and mtt): {statistics['cpu_seconds']:.0f} s")
(OUTPUT / "statistics.json").write_text(json.dumps(statistics, indent=2))
# per-structure values of every held-out group, in eV (angles in degrees; NaN for the
# distorted molecules)
angle = {name: angles[splits[name]] for name in ["interpolation", "extrapolation"]}
angle["distorted"] = np.full(len(distorted), np.nan)
np.savez(
    OUTPUT / "predictions.npz",
    **{
        f"{name}_{key}": value
        for name, result in results.items()
        for key, value in [*result.items(), ("angle", angle[name])]
        if key in ("reference", "predicted", "sigma", "angle")
    },
)
