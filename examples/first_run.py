"""Train a small LOREM on the cumulene rotor scan, test it, and run MD with it in ASE.

This is the project's main job (see README): what a user does with LOREM, from data to
molecular dynamics, through the public tools only.

1. **Data.** ``examples/data/cumulene_scan.xyz``: 200 frames of the C9H4 cumulene rotor
   scan (DFT energies and forces, 13 atoms, non-periodic), split into 80 training,
   20 validation and 100 test frames (the ``split`` entry of every frame). The energy
   depends on the angle between the two CH2 rotor planes, whose carbons are
   10.3 Angstrom apart: further than the 5 Angstrom cutoff of the local features, so
   only a model that sees beyond its cutoff can learn it. The 21 randomly distorted
   cumulenes of ``examples/train/cumulene.xyz`` join the training set: the scan only
   moves the rotors, and without them the model knows nothing about bond stretching and
   bending, which MD explores (trained on the scan alone, NVE runs at 300 K collapsed
   two atoms onto each other within 100-1000 steps).
2. **Training.** ``mtt train`` (metatrain's command line, architecture
   ``experimental.lorem_mta``) trains the same small LOREM twice: with its long-range
   block, and with ``lr: false`` (a purely local model). The two runs go side by side,
   one CPU thread each; their progress lines are printed with a ``[lorem]`` or
   ``[lr: false]`` prefix.
3. **Test.** Both exported models run on the 100 held-out frames through metatomic-ase's
   ``MetatomicCalculator``; energy and force RMSEs are printed side by side, and
   ``profile.png`` shows the energy along the rotor angle (reference and both models).
4. **MD.** NVE molecular dynamics (velocity Verlet, 0.5 fs) of cumulene in ASE with the
   trained LOREM, starting at 300 K; ``md.png`` shows the energy conservation and the
   temperature.

Everything goes to ``--output`` (default ``outputs/first_run``); ``summary.json`` holds
the numbers. ``--quick`` trains for 30 epochs instead of 100 and runs 200 MD steps
instead of 1000 (a smoke test of the workflow: after 30 epochs the long-range model
was ahead in one run, 3.95 against 17.93 meV/atom, but this was not checked over seeds).

Usage: ``python examples/first_run.py [--quick] [--epochs N] [--md-steps N] [--seed N]
[--output DIR]``.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import ase.io
import matplotlib
import numpy as np
import yaml
from ase import units
from ase.md.velocitydistribution import (
    Stationary,
    ZeroRotation,
    force_temperature,
    thermalize_momenta,
)
from ase.md.verlet import VelocityVerlet
from metatomic_ase import MetatomicCalculator

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "cumulene_scan.xyz"
#: 21 randomly distorted cumulenes (lorem-jax's example data), added to the training set
DISTORTED = Path(__file__).resolve().parent / "train" / "cumulene.xyz"
SPLITS = ("train", "validation", "test")
#: the two trainings: name -> value of the ``lr`` hyperparameter
RUNS = {"lorem": True, "lr: false": False}
FOLDERS = {"lorem": "lorem", "lr: false": "lorem-no-lr"}

#: a small LOREM (the paper's model: max_degree 6, num_features 128, num_radial 32,
#: num_spherical_features 8); max_degree_lr 2 gives the equivariant charges that
#: resolve the orientation of the rotors
MODEL = {
    "cutoff": 5.0,
    "max_degree": 2,
    "max_degree_lr": 2,
    "num_features": 32,
    "num_radial": 16,
    "num_species": 8,
    "num_spherical_features": 4,
}


def options(epochs: int, lr: bool, seed: int = 0) -> dict:
    """The ``mtt train`` options of one run (written to ``options.yaml``)."""
    dataset = {
        "systems": {"length_unit": "angstrom"},
        "targets": {"energy": {"key": "energy", "unit": "eV", "forces": {"key": "forces"}}},
    }
    sets = {}
    for split in SPLITS:
        entry = json.loads(json.dumps(dataset))
        entry["systems"]["read_from"] = f"../{split}.xyz"
        sets["training_set" if split == "train" else f"{split}_set"] = entry
    return {
        "seed": seed,
        "base_precision": 32,
        "final_eval": False,  # the script tests the exported models itself
        "architecture": {
            "name": "experimental.lorem_mta",
            "model": {**MODEL, "lr": lr},
            "training": {
                "batch_size": 4,
                "num_epochs": epochs,
                "learning_rate": 5.0e-3,
                "scheduler": "linear_decay",  # constant, then linear decay to 1e-6
                "decay_start_epoch": min(10, epochs // 2),
                "log_interval": max(1, epochs // 10),
                "checkpoint_interval": 10000,
                # per-atom energy weighted 10x the forces: with the paper's 0.5 / 0.5 the
                # large forces of the distorted structures dominate the loss and the rotor
                # energy is barely learned in 100 epochs (test RMSE 14.99 against 1.16 meV/atom)
                "loss": {"energy": {"type": "mse", "weight": 1.0, "forces": {"weight": 0.1}}},
            },
        },
        **sets,
    }


def split_dataset(output: Path) -> dict:
    """Write ``train.xyz``, ``validation.xyz`` and ``test.xyz``; return the scan frames."""
    frames = ase.io.read(DATA, ":")
    splits = {name: [a for a in frames if a.info.get("split") == name] for name in SPLITS}
    distorted = ase.io.read(DISTORTED, ":")
    for name, selected in splits.items():
        if not selected:
            raise ValueError(f"{DATA}: no frame has split={name!r} in its info line")
        extra = distorted if name == "train" else []
        ase.io.write(output / f"{name}.xyz", selected + extra)
    counts = ", ".join(f"{len(selected)} {name}" for name, selected in splits.items())
    print(f"data: {DATA.name}, {counts} frames; {len(distorted)} distorted", flush=True)
    print(f"      cumulenes ({DISTORTED.name}) in the training set", flush=True)
    return splits


def mtt_executable() -> str:
    """metatrain's ``mtt`` command next to this interpreter (or on ``PATH``)."""
    executable = Path(sys.executable).parent / "mtt"
    if executable.exists():
        return str(executable)
    found = shutil.which("mtt")
    if found is None:
        raise FileNotFoundError(
            "metatrain's `mtt` command is not installed (pip install metatrain)"
        )
    return found


def _stream(process: subprocess.Popen, prefix: str, log: Path) -> None:
    """Copy the output of ``process`` to ``log``; print the progress lines with a prefix."""
    with open(log, "w") as handle:
        for line in process.stdout:
            handle.write(line)
            if "Epoch" in line or "error" in line.lower():
                print(f"[{prefix}] {line.rstrip()}", flush=True)


def train(output: Path, epochs: int, seed: int = 0) -> dict:
    """Run the two ``mtt train`` side by side; return the exported model of each."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    processes = {}
    for name, lr in RUNS.items():
        folder = output / FOLDERS[name]
        folder.mkdir()
        with open(folder / "options.yaml", "w") as handle:
            yaml.safe_dump(options(epochs, lr, seed), handle, sort_keys=False)
        command = [mtt_executable(), "train", "options.yaml"]
        print(f"$ (cd {folder}; mtt train options.yaml)   # lr: {str(lr).lower()}", flush=True)
        process = subprocess.Popen(
            command,
            cwd=folder,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        thread = threading.Thread(target=_stream, args=(process, name, folder / "train.log"))
        thread.start()
        processes[name] = (process, thread)
    models = {}
    for name, (process, thread) in processes.items():
        process.wait()
        thread.join()
        folder = output / FOLDERS[name]
        if process.returncode != 0:
            tail = (folder / "train.log").read_text().splitlines()[-20:]
            raise RuntimeError(
                f"mtt train ({name}) failed; the end of {folder / 'train.log'}:\n"
                + "\n".join(tail)
            )
        models[name] = folder / "model.pt"
    return models


def calculator(model: Path) -> MetatomicCalculator:
    """An ASE calculator for an exported model (energy and forces, no stress: molecules)."""
    return MetatomicCalculator(str(model), do_gradients_with_energy=False)


def predict(model: Path, frames: list) -> tuple:
    """Energies (eV) and forces (eV/A) of the exported ``model`` on ``frames``."""
    ase_calculator = calculator(model)
    energies, forces = [], []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = ase_calculator
        forces.append(atoms.get_forces())  # energy and forces in one evaluation
        energies.append(atoms.get_potential_energy())
    return np.array(energies), np.array(forces)


def evaluate(models: dict, frames: list) -> dict:
    """Test RMSEs of every model: energy in meV/atom, forces in meV/A."""
    n_atoms = np.array([len(a) for a in frames])
    energy = np.array([a.get_potential_energy() for a in frames])
    forces = np.array([a.get_forces() for a in frames])
    errors = {}
    for name, model in models.items():
        predicted_energy, predicted_forces = predict(model, frames)
        errors[name] = {
            "energy_rmse_meV_per_atom": 1000 * _rmse((predicted_energy - energy) / n_atoms),
            "forces_rmse_meV_per_A": 1000 * _rmse(predicted_forces - forces),
            "energy_eV": predicted_energy.tolist(),
        }
    # the best a model that does not resolve the angle can do: the mean energy
    errors["mean energy"] = {
        "energy_rmse_meV_per_atom": 1000 * _rmse((energy - energy.mean()) / n_atoms),
        "forces_rmse_meV_per_A": 1000 * _rmse(forces),
    }
    return errors


def _rmse(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


def print_errors(errors: dict, n_test: int) -> None:
    print(f"\ntest RMSE on {n_test} held-out frames")
    print(f"{'model':<14} {'energy (meV/atom)':>18} {'forces (meV/A)':>15}")
    for name, values in errors.items():
        print(
            f"{name:<14} {values['energy_rmse_meV_per_atom']:>18.2f} "
            f"{values['forces_rmse_meV_per_A']:>15.1f}"
        )
    ratio = errors["lr: false"]["energy_rmse_meV_per_atom"] / max(
        errors["lorem"]["energy_rmse_meV_per_atom"], 1e-12
    )
    print(f"the long-range block divides the energy error by {ratio:.1f}\n", flush=True)


def plot_profile(errors: dict, frames: list, path: Path) -> None:
    """Energy along the rotor angle: reference and the two models."""
    angle = np.array([a.info["rotor_plane_angle_deg"] for a in frames])
    order = np.argsort(angle)
    reference = np.array([a.get_potential_energy() for a in frames])
    shift = reference.min()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(angle[order], reference[order] - shift, "k-", lw=2, label="DFT")
    for name, style in [("lorem", "C0o"), ("lr: false", "C3s")]:
        energy = np.array(errors[name]["energy_eV"])
        label = "LOREM" if name == "lorem" else f"LOREM, {name}"
        axis.plot(angle[order], energy[order] - shift, style, ms=3, label=label)
    axis.set_xlabel("angle between the CH2 rotor planes (degrees)")
    axis.set_ylabel("energy (eV)")
    axis.set_title("cumulene rotor scan, held-out frames")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_md(model: Path, start: "ase.Atoms", steps: int, output: Path) -> dict:
    """NVE MD of ``start`` with ``model``; returns time, energies and temperature."""
    atoms = start.copy()
    atoms.calc = calculator(model)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    ZeroRotation(atoms)
    force_temperature(atoms, 300)
    timestep_fs = 0.5
    dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    record = {"time_fs": [], "potential_eV": [], "kinetic_eV": [], "temperature_K": []}
    interval = max(1, steps // 10)

    def observe():
        record["time_fs"].append(dynamics.nsteps * timestep_fs)
        atoms.get_forces()  # energy and forces in one evaluation (cached for the step)
        record["potential_eV"].append(atoms.get_potential_energy())
        record["kinetic_eV"].append(atoms.get_kinetic_energy())
        record["temperature_K"].append(atoms.get_temperature())
        if dynamics.nsteps % interval == 0:
            total = record["potential_eV"][-1] + record["kinetic_eV"][-1]
            print(
                f"[md] step {dynamics.nsteps:5d}/{steps}  E_tot {total:.5f} eV  "
                f"T {record['temperature_K'][-1]:6.1f} K",
                flush=True,
            )

    dynamics.attach(observe, interval=1)
    dynamics.run(steps)
    ase.io.write(output / "md_final.xyz", atoms)
    return record


def plot_md(record: dict, n_atoms: int, path: Path) -> None:
    """Energy conservation (top) and temperature (bottom) of the NVE run."""
    time_fs = np.array(record["time_fs"])
    potential = np.array(record["potential_eV"])
    kinetic = np.array(record["kinetic_eV"])
    total = potential + kinetic
    figure, axes = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    for values, label in [(kinetic, "kinetic"), (potential, "potential"), (total, "total")]:
        axes[0].plot(time_fs, 1000 * (values - values[0]) / n_atoms, label=label)
    axes[0].set_ylabel("E(t) - E(0) (meV/atom)")
    axes[0].legend()
    axes[0].set_title("NVE MD of cumulene with the trained LOREM (ASE)")
    axes[1].plot(time_fs, record["temperature_K"], color="C3")
    axes[1].set_ylabel("temperature (K)")
    axes[1].set_xlabel("time (fs)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few epochs and MD steps")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (100)")
    parser.add_argument("--md-steps", type=int, default=None, help="NVE MD steps (1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training runs")
    parser.add_argument("--output", default="outputs/first_run", help="working directory")
    args = parser.parse_args()
    epochs = args.epochs or (30 if args.quick else 100)
    md_steps = args.md_steps or (200 if args.quick else 1000)

    start = time.perf_counter()
    output = Path(args.output).resolve()
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    splits = split_dataset(output)

    print(f"\ntraining two small LOREM models for {epochs} epochs each", flush=True)
    models = train(output, epochs, args.seed)
    train_s = time.perf_counter() - start

    errors = evaluate(models, splits["test"])
    print_errors(errors, len(splits["test"]))
    plot_profile(errors, splits["test"], output / "profile.png")

    minimum = min(splits["test"], key=lambda a: a.get_potential_energy())
    print(f"NVE MD: {md_steps} steps of 0.5 fs, {len(minimum)} atoms, from 300 K", flush=True)
    record = run_md(models["lorem"], minimum, md_steps, output)
    plot_md(record, len(minimum), output / "md.png")
    total = np.array(record["potential_eV"]) + np.array(record["kinetic_eV"])
    drift = float(np.ptp(total) / len(minimum))

    summary = {
        "epochs": epochs,
        "seed": args.seed,
        "md_steps": md_steps,
        "n_test": len(splits["test"]),
        "test_rmse": {
            name: {key: value for key, value in values.items() if key != "energy_eV"}
            for name, values in errors.items()
        },
        "test_energy_eV": {name: errors[name]["energy_eV"] for name in RUNS},
        "md_total_energy_range_eV_per_atom": drift,
        "md_mean_temperature_K": float(np.mean(record["temperature_K"])),
        "models": {name: str(path) for name, path in models.items()},
        "train_wall_s": train_s,
        "total_wall_s": time.perf_counter() - start,
    }
    with open(output / "summary.json", "w") as handle:
        json.dump(summary, handle, indent=2)

    print(f"\nNVE total energy range: {1000 * drift:.3f} meV/atom")
    print(f"mean temperature: {summary['md_mean_temperature_K']:.0f} K")
    print(f"energy profile plot:    {output / 'profile.png'}")
    print(f"MD plot (energy, T):    {output / 'md.png'}")
    print(f"trained model:          {models['lorem']}")
    print(f"numbers:                {output / 'summary.json'}")
    print(f"done in {summary['total_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
