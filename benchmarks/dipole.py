"""Dipole moments of SPICE dipeptides: training with and without the dipole loss.

Trains small LOREM models with ``mtt train`` on a subset of
``../shared/data/spice_dipeptides_dipolar`` (neutral dipeptides, 42-51 atoms,
non-periodic; energies, forces and dipoles from DFT) and evaluates the exported models on
its validation file, used here as the test set:

* ``energy+forces``: no dipole target; the dipole reported is the ``lorem::dipole`` of
  the latent charges, which nothing ties to the physical one;
* ``energy+forces+dipole``: the dipole as a second target, point charges only;
* ``energy+forces+dipole+atomic``: the same with learned atomic dipoles
  (``atomic_dipoles: true``).

All three have the same architecture (``total_charge: true``, the molecules are neutral)
and training settings. For context the results also give the root mean square of the
reference dipoles (the error of predicting zero) and the error of the point-charge dipole
of the MBIS charges stored with the test frames.

Usage (about 10 minutes on one core with the defaults)::

    OMP_NUM_THREADS=1 python benchmarks/dipole.py

writes ``benchmarks/results/dipole.json``.
"""

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from metatomic.torch import ModelOutput

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "data" / "spice_dipeptides_dipolar"
#: one e*Angstrom in Debye
DEBYE = 4.803204

VARIANTS = {
    "energy+forces": {"dipole": False, "atomic_dipoles": False},
    "energy+forces+dipole": {"dipole": True, "atomic_dipoles": False},
    "energy+forces+dipole+atomic": {"dipole": True, "atomic_dipoles": True},
}

DIPOLE_TARGET = """\
    mtt::dipole:
      key: dipole_moment
      unit: e*angstrom
      type:
        cartesian:
          rank: 1
      sample_kind: system
"""

DIPOLE_LOSS = """\
      mtt::dipole:
        type: mse
        weight: {weight}
"""


def options(variant: dict, args: argparse.Namespace) -> str:
    """``mtt train`` options of one variant."""
    dipole_target = DIPOLE_TARGET if variant["dipole"] else ""
    dipole_loss = DIPOLE_LOSS.format(weight=args.dipole_weight) if variant["dipole"] else ""
    per_structure = '["mtt::dipole"]' if variant["dipole"] else "[]"
    return f"""\
seed: {args.seed}
base_precision: 32
final_eval: false
architecture:
  name: experimental.lorem_mta
  model:
    cutoff: 5.0
    max_degree: 2
    max_degree_lr: 1
    num_features: {args.num_features}
    num_radial: 8
    num_species: 4
    num_spherical_features: 4
    total_charge: true
    atomic_dipoles: {str(variant["atomic_dipoles"]).lower()}
  training:
    batch_size: {args.batch_size}
    num_epochs: {args.epochs}
    learning_rate: {args.learning_rate}
    final_learning_rate: 1.0e-5
    decay_start_epoch: {args.epochs // 2}
    log_interval: 5
    checkpoint_interval: 100000
    num_workers: 0
    per_structure_targets: {per_structure}
    loss:
      energy:
        type: mse
        weight: 1.0
        forces:
          weight: 1.0
{dipole_loss}training_set:
  systems:
    read_from: train.xyz
    length_unit: angstrom
  targets: &targets
    energy:
      key: energy
      unit: eV
      forces:
        key: force
{dipole_target}  extra_data: &extra_data
    charge:
      key: total_charge
      unit: e
validation_set:
  systems:
    read_from: validation.xyz
    length_unit: angstrom
  targets: *targets
  extra_data: *extra_data
test_set: 0.0
"""


def prepare(workdir: Path, args: argparse.Namespace) -> list:
    """Write training/validation/test files; return the test frames."""
    spec = importlib.util.spec_from_file_location(
        "prepare_data", ROOT / "examples" / "dipole" / "prepare_data.py"
    )
    prepare_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_data)
    everything = workdir / "all-train.xyz"
    prepare_data.convert(DATA / "spice-dipep-dipolar_train.xyz", everything)
    frames = ase.io.read(everything, ":")
    order = np.random.default_rng(args.seed).permutation(len(frames))
    train = [frames[i] for i in order[: args.n_train]]
    validation = [frames[i] for i in order[args.n_train : args.n_train + args.n_val]]
    ase.io.write(workdir / "train.xyz", train, format="extxyz")
    ase.io.write(workdir / "validation.xyz", validation, format="extxyz")
    prepare_data.convert(DATA / "spice-dipep-dipolar_val.xyz", workdir / "test.xyz")
    return ase.io.read(DATA / "spice-dipep-dipolar_val.xyz", ":")


def evaluate(model_path: Path, frames: list) -> dict:
    """Test-set errors of an exported model."""
    from metatomic_ase import MetatomicCalculator

    calculator = MetatomicCalculator(str(model_path))
    energy_errors, n_atoms, force_errors, dipole_errors = [], [], [], []
    for reference in frames:
        atoms = ase.Atoms(reference.numbers, reference.positions)
        atoms.info["charge"] = 0
        atoms.calc = calculator
        energy_errors.append(atoms.get_potential_energy() - reference.get_potential_energy())
        n_atoms.append(len(atoms))
        force_errors.append(atoms.get_forces() - reference.arrays["force"])
        outputs = calculator.run_model(
            atoms, {"lorem::dipole": ModelOutput(sample_kind="system")}
        )
        dipole = outputs["lorem::dipole"].block().values[0, :, 0].detach().numpy()
        dipole_errors.append(dipole - reference.get_dipole_moment().reshape(3))
    energy_errors = np.array(energy_errors)
    # the energies of the dataset are shifted per structure: compare after removing the
    # mean error (the composition baseline fits the same shift)
    centred = energy_errors - energy_errors.mean()
    forces = np.concatenate(force_errors)
    dipoles = np.array(dipole_errors)
    dipole_rmse = float(np.sqrt((dipoles**2).sum(axis=1).mean()))
    return {
        "energy_rmse_meV_per_structure": 1e3 * float(np.sqrt((energy_errors**2).mean())),
        "energy_rmse_meV_per_atom": 1e3
        * float(np.sqrt(((energy_errors / np.array(n_atoms)) ** 2).mean())),
        "energy_rmse_centred_meV_per_structure": 1e3 * float(np.sqrt((centred**2).mean())),
        "forces_rmse_meV_per_angstrom": 1e3 * float(np.sqrt((forces**2).mean())),
        "dipole_rmse_e_angstrom": dipole_rmse,
        "dipole_rmse_debye": dipole_rmse * DEBYE,
    }


def baselines(frames: list) -> dict:
    """Errors of a zero dipole and of the MBIS point-charge dipole."""
    reference = np.array([atoms.get_dipole_moment().reshape(3) for atoms in frames])
    mbis = np.array(
        [
            (atoms.arrays["mbi_charges"][:, None] * atoms.positions).sum(axis=0)
            - atoms.arrays["mbi_charges"].sum() * atoms.positions.mean(axis=0)
            for atoms in frames
        ]
    )
    zero = float(np.sqrt((reference**2).sum(axis=1).mean()))
    mbis_rmse = float(np.sqrt(((mbis - reference) ** 2).sum(axis=1).mean()))
    return {
        "zero_dipole_rmse_e_angstrom": zero,
        "zero_dipole_rmse_debye": zero * DEBYE,
        "mbis_point_charge_dipole_rmse_e_angstrom": mbis_rmse,
        "mbis_point_charge_dipole_rmse_debye": mbis_rmse * DEBYE,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-train", type=int, default=128)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--num-features", type=int, default=32)
    parser.add_argument("--dipole-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--output", type=Path, default=HERE / "results" / "dipole.json")
    args = parser.parse_args()

    results = {
        "settings": {k: v for k, v in vars(args).items() if k != "output"}
        | {"data": "spice_dipeptides_dipolar", "test_frames": "all 55 of the val file"},
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
            "torch": torch.__version__,
        },
        "variants": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        test_frames = prepare(workdir, args)
        results["baselines"] = baselines(test_frames)
        print(json.dumps(results["baselines"], indent=2), flush=True)
        for name in args.variants:
            run = workdir / name
            run.mkdir()
            for split in ["train.xyz", "validation.xyz"]:
                (run / split).symlink_to(workdir / split)
            (run / "options.yaml").write_text(options(VARIANTS[name], args))
            start = time.perf_counter()
            process = subprocess.run(
                [str(Path(sys.executable).parent / "mtt"), "train", "options.yaml"],
                cwd=run,
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
            )
            elapsed = time.perf_counter() - start
            if process.returncode != 0:
                print(process.stdout[-3000:], process.stderr[-3000:])
                raise RuntimeError(f"mtt train failed for {name}")
            metrics = evaluate(run / "model.pt", test_frames)
            metrics["train_seconds"] = round(elapsed, 1)
            results["variants"][name] = metrics
            print(name, json.dumps(metrics, indent=2), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
