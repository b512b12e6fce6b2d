"""Accuracy of the energy-surface fixes: old (lorem-jax) against new model defaults.

Trains the same LOREM with ``mtt train`` twice per data set, same split, seed, epochs
and recipe, once with lorem-jax's form of the model (``norm_smoothing: 0``,
``neutral_charges: false``) and once with the new defaults, then evaluates both exported
models on the validation frames with metatomic-ase and prints energy and force RMSEs
side by side. For the cumulene scan it also reports the force error on the central
carbon of the frames closest to planarity (rotor angle below 10 degrees), where the
exact norm has its cusp, and for a trained model the convergence of a molecule in
periodic boxes of 20-60 A to its isolated energy.

Data (``../shared/data``):

* ``cumulene``: the C9H4 rotor scan, 800 frames, split 700 / 100 with
  ``np.random.default_rng(0).permutation(800)``;
* ``biodimers``: 130 charge-charge biodimers in a 30 A periodic box, split 100 / 30 with
  ``np.random.default_rng(0).permutation(130)``.

Model: cutoff 5, max_degree 2, max_degree_lr 2, num_features 32, num_spherical_features
4, num_radial 8, no message passing, float32 (``--size paper`` for the paper's model).

Usage::

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/pes_accuracy.py \\
        --dataset cumulene --epochs 40

Results are merged into ``benchmarks/results/pes_accuracy.json``.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "pes_accuracy.json"
BIN = Path(sys.executable).parent

SIZES = {
    "small": {
        "cutoff": 5.0,
        "max_degree": 2,
        "max_degree_lr": 2,
        "num_features": 32,
        "num_spherical_features": 4,
        "num_radial": 8,
        "num_message_passing": 0,
    },
    "paper": {},
}
FORMS = {
    "lorem-jax form": {"norm_smoothing": 0.0, "neutral_charges": False},
    "new defaults": {"norm_smoothing": 0.1, "neutral_charges": True},
}
DATASETS = {
    "cumulene": ("cumulene/cumulene_profile_train800.extxyz", 700),
    "biodimers": ("biodimers_cc_cookbook/charge-charge.xyz", 100),
}


def write_split(dataset: str, folder: Path) -> None:
    path, n_train = DATASETS[dataset]
    frames = ase.io.read(DATA / path, ":")
    order = np.random.default_rng(0).permutation(len(frames))
    ase.io.write(folder / "train.xyz", [frames[i] for i in order[:n_train]])
    ase.io.write(folder / "validation.xyz", [frames[i] for i in order[n_train:]])


def options(model: dict, epochs: int, batch_size: int, seed: int) -> dict:
    def dataset(name: str) -> dict:
        return {
            "systems": {"read_from": name, "length_unit": "angstrom"},
            "targets": {"energy": {"key": "energy", "unit": "eV", "forces": {"key": "forces"}}},
        }

    return {
        "seed": seed,
        "base_precision": 32,
        "final_eval": False,
        "architecture": {
            "name": "experimental.lorem_mta",
            "model": model,
            "training": {
                "batch_size": batch_size,
                "num_epochs": epochs,
                "learning_rate": 2.0e-3,
                "scheduler": "linear_decay",
                "decay_start_epoch": max(1, epochs // 4),
                "log_interval": max(1, epochs // 10),
                "checkpoint_interval": 100000,
                "loss": {"energy": {"type": "mse", "weight": 0.5, "forces": {"weight": 0.5}}},
            },
        },
        "training_set": dataset("train.xyz"),
        "validation_set": dataset("validation.xyz"),
        "test_set": dataset("validation.xyz"),
    }


def evaluate(model_pt: Path, frames: list) -> dict:
    from metatomic_ase import MetatomicCalculator

    calculator = MetatomicCalculator(str(model_pt))
    e_err, f_err, centre_err = [], [], []
    for atoms in frames:
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms = atoms.copy()
        atoms.calc = calculator
        e_err.append((atoms.get_potential_energy() - energy) / len(atoms))
        predicted = atoms.get_forces()
        f_err.append((predicted - forces).reshape(-1))
        angle = atoms.info.get("rotor_plane_angle_deg")
        if angle is not None and angle < 10.0:
            centre = int(
                np.argmin(np.linalg.norm(atoms.positions - atoms.positions.mean(0), axis=1))
            )
            centre_err.append(predicted[centre] - forces[centre])
    result = {
        "energy_rmse_meV_per_atom": 1000 * float(np.sqrt(np.mean(np.square(e_err)))),
        "forces_rmse_meV_per_A": 1000
        * float(np.sqrt(np.mean(np.square(np.concatenate(f_err))))),
    }
    if centre_err:
        result["central_carbon_force_rmse_meV_per_A_near_planar"] = 1000 * float(
            np.sqrt(np.mean(np.square(centre_err)))
        )
        result["num_near_planar"] = len(centre_err)
    return result


def box_errors(model_pt: Path, atoms: ase.Atoms) -> dict:
    """|E(box L) - E(pbc=False)| in meV for cubic boxes around a molecule."""
    from metatomic_ase import MetatomicCalculator

    calculator = MetatomicCalculator(str(model_pt))
    molecule = atoms.copy()
    molecule.pbc = False
    molecule.cell = np.zeros((3, 3))
    molecule.calc = calculator
    isolated = molecule.get_potential_energy()
    errors = {}
    for size in (20.0, 30.0, 40.0, 60.0):
        boxed = molecule.copy()
        boxed.cell = [size] * 3
        boxed.pbc = True
        boxed.center()
        boxed.calc = calculator
        errors[str(int(size))] = 1000 * abs(boxed.get_potential_energy() - isolated)
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cumulene")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workdir", default="outputs/pes_accuracy")
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--seed", type=int, default=0, help="training seed (same split)")
    args = parser.parse_args()

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    key = f"{args.dataset}-{args.size}" + (f"-seed{args.seed}" if args.seed else "")
    entry = results.setdefault(key, {})
    entry["settings"] = {
        "model": SIZES[args.size],
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "split": f"default_rng(0).permutation, {DATASETS[args.dataset][1]} train",
        "seed": args.seed,
    }
    for form in args.forms.split(","):
        folder = Path(args.workdir) / key / form.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        write_split(args.dataset, folder)
        model = {**SIZES[args.size], **FORMS[form]}
        (folder / "options.yaml").write_text(
            yaml.safe_dump(options(model, args.epochs, args.batch_size, args.seed))
        )
        start, cpu = time.monotonic(), os.times()
        if not (folder / "model.ckpt").exists():
            subprocess.run(
                [str(BIN / "mtt"), "train", "options.yaml"],
                cwd=folder,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        end = os.times()
        if not (folder / "model.pt").exists():
            # a run whose export failed (or was interrupted after training)
            subprocess.run(
                [str(BIN / "mtt"), "export", "model.ckpt", "-o", "model.pt"],
                cwd=folder,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        validation = ase.io.read(folder / "validation.xyz", ":")
        result = evaluate(folder / "model.pt", validation)
        result["train_wall_s"] = time.monotonic() - start
        result["train_cpu_s"] = (end.children_user + end.children_system) - (
            cpu.children_user + cpu.children_system
        )
        previous = entry.get(form, {})
        if result["train_cpu_s"] < 1.0 and "train_cpu_s" in previous:
            # evaluated again from an existing run: keep its training times
            result["train_wall_s"] = previous["train_wall_s"]
            result["train_cpu_s"] = previous["train_cpu_s"]
        if args.dataset == "cumulene":
            result["box_error_meV"] = box_errors(folder / "model.pt", validation[0])
        entry[form] = result
        print(form, json.dumps(result, indent=1), flush=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")

    print(f"\n{key}, {args.epochs} epochs, validation RMSE")
    print(f"{'form':<16} {'E meV/atom':>11} {'F meV/A':>9} {'F centre (planar)':>18}")
    for form in FORMS:
        if form in entry:
            r = entry[form]
            centre = r.get("central_carbon_force_rmse_meV_per_A_near_planar", float("nan"))
            print(
                f"{form:<16} {r['energy_rmse_meV_per_atom']:>11.3f} "
                f"{r['forces_rmse_meV_per_A']:>9.2f} {centre:>18.2f}"
            )


if __name__ == "__main__":
    main()
