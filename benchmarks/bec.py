"""Training benchmark of Born effective charges: ``mtt train`` on periodic water.

Trains a small LOREM model with ``bec: true`` (energy, forces and the per-atom atomic
polar tensors ``apt``) on the 23-frame water set of
``../shared/data/water_bec_lorem_example`` (64 H2O, periodic, lorem-jax's BEC example)
with ``mtt train``, then evaluates the exported model on the held-out frames and writes
the RMSEs of energy (meV/atom), forces (meV/A) and Born effective charges (e, over all
9 components of every atom) to a JSON file. For scale, the JSON also gives the RMSE of
the per-species mean tensor of the training frames (the best model that ignores the
environment).

Split (fixed, seed 0): 15 training, 4 validation, 4 test frames.

Usage (about 10 minutes on one core)::

    OMP_NUM_THREADS=1 python benchmarks/bec.py --epochs 10 \
        --output benchmarks/results/bec.json --keep /tmp/bec-run
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "water_bec_lorem_example" / "bec_example.xyz"
SPLIT = {"train": 15, "val": 4, "test": 4}

OPTIONS = """\
seed: 0
base_precision: 32
architecture:
  name: experimental.lorem_mta
  model:
    max_degree: 2
    max_degree_lr: 2
    num_features: {features}
    num_spherical_features: 4
    num_radial: 8
    bec: true
    equivariant_message_passing: false
    initialize_node_features: false
  training:
    batch_size: 1
    num_epochs: {epochs}
    log_interval: 1
    num_workers: 0
    learning_rate: 5.0e-3
    final_learning_rate: 1.0e-4
    decay_start_epoch: {decay}
    loss:
      energy:
        weight: 1.0
        gradients:
          positions:
            weight: 1.0
      mtt::apt:
        weight: 10.0
training_set:
  systems: {{read_from: train.xyz, length_unit: angstrom}}
  targets: &targets
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
validation_set:
  systems: {{read_from: val.xyz, length_unit: angstrom}}
  targets: *targets
test_set:
  systems: {{read_from: test.xyz, length_unit: angstrom}}
  targets: *targets
"""


def split_frames(seed: int = 0):
    frames = ase.io.read(DATA, index=":")
    order = np.random.default_rng(seed).permutation(len(frames))
    out, start = {}, 0
    for name, size in SPLIT.items():
        out[name] = [frames[i] for i in order[start : start + size]]
        start += size
    return out


def predict(model_path: Path, frames):
    """Energies, forces and Born charges of the exported model."""
    from metatomic.torch import ModelEvaluationOptions, ModelOutput, load_atomistic_model

    from lorem_mta.utils import attach_neighbors, system_from_atoms

    model = load_atomistic_model(str(model_path))
    dtype = getattr(torch, model.capabilities().dtype)
    energies, forces, born = [], [], []
    for atoms in frames:
        positions = torch.tensor(atoms.positions, dtype=dtype).requires_grad_(True)
        system = system_from_atoms(atoms, dtype, positions)
        attach_neighbors(model, [system])  # neighbour vectors tied to the positions
        options = ModelEvaluationOptions(
            length_unit="angstrom",
            outputs={
                "energy": ModelOutput(sample_kind="system"),
                "mtt::apt": ModelOutput(sample_kind="atom"),
            },
        )
        out = model([system], options, check_consistency=False)
        energy = out["energy"].block().values.sum()
        (gradient,) = torch.autograd.grad(energy, positions)
        energies.append(float(energy.detach()))
        forces.append(-gradient.detach().double().numpy())
        born.append(out["mtt::apt"].block().values[..., 0].detach().double().numpy())
    return np.array(energies), forces, born


def errors(frames, energies, forces, born):
    n_atoms = np.array([len(a) for a in frames])
    ref_e = np.array([a.get_potential_energy() for a in frames])
    ref_f = np.concatenate([a.get_forces() for a in frames])
    ref_z = np.concatenate([a.arrays["apt"].reshape(-1, 3, 3) for a in frames])
    return {
        "energy_rmse_meV_per_atom": float(
            np.sqrt(np.mean(((energies - ref_e) / n_atoms) ** 2)) * 1e3
        ),
        "forces_rmse_meV_per_A": float(
            np.sqrt(np.mean((np.concatenate(forces) - ref_f) ** 2)) * 1e3
        ),
        "bec_rmse_e": float(np.sqrt(np.mean((np.concatenate(born) - ref_z) ** 2))),
        "bec_std_e": float(np.std(ref_z)),
    }


def species_mean_rmse(train, test) -> float:
    """RMSE of predicting every atom's tensor by its species' mean over the training set."""
    numbers = np.concatenate([a.numbers for a in train])
    tensors = np.concatenate([a.arrays["apt"].reshape(-1, 3, 3) for a in train])
    means = {z: tensors[numbers == z].mean(axis=0) for z in np.unique(numbers)}
    ref = np.concatenate([a.arrays["apt"].reshape(-1, 3, 3) for a in test])
    pred = np.stack([means[z] for a in test for z in a.numbers])
    return float(np.sqrt(np.mean((pred - ref) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "bec.json")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folder here")
    args = parser.parse_args()

    frames = split_frames()
    workdir = Path(tempfile.mkdtemp(prefix="lorem-bec-"))
    for name, subset in frames.items():
        ase.io.write(workdir / f"{name}.xyz", subset)
    options = OPTIONS.format(
        epochs=args.epochs, features=args.features, decay=max(1, args.epochs // 2)
    )
    (workdir / "options.yaml").write_text(options)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mtt"), "train", "options.yaml"],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
    )
    train_time = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(result.stdout[-3000:] + result.stderr[-3000:])

    report = {
        "dataset": "water_bec_lorem_example (23 frames, 64 H2O, periodic)",
        "split": SPLIT,
        "epochs": args.epochs,
        "num_features": args.features,
        "train_seconds": round(train_time, 1),
        "threads": int(env["OMP_NUM_THREADS"]),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    for name in ("train", "test"):
        report[name] = errors(frames[name], *predict(workdir / "model.pt", frames[name]))
    report["test"]["bec_rmse_species_mean_e"] = species_mean_rmse(
        frames["train"], frames["test"]
    )
    log = [line for line in (result.stdout + result.stderr).splitlines() if "Epoch:" in line]
    report["last_epoch_log"] = log[-1].split("] - ")[-1] if log else ""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    if args.keep is not None:
        if args.keep.exists():
            shutil.rmtree(args.keep)
        shutil.copytree(workdir, args.keep)
    shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
