"""Accuracy benchmark: lorem_mta (with and without long range) against lorem-jax.

Trains, with the same model hyperparameters, the same train/validation/test split, the
same epoch budget and the same optimizer and learning-rate schedule (as far as the two
trainers allow),

* ``mta``: lorem_mta with ``mtt train`` (architecture ``experimental.lorem_mta``);
* ``mta-nolr``: the same with ``lr: false`` (no long-range block);
* ``jax``: lorem-jax 0.2.0 with its own ``lorem-train``, run in the separate
  ``.venv-jax`` (see ``setup-jax-venv.sh``) by ``benchmarks/accuracy/jax_train.py``,
  and converted afterwards with ``lorem-mta convert-jax ... --dtype float64``;

then evaluates every exported ``model.pt`` on the held-out test split with the same code
(metatomic-ase's ``MetatomicCalculator``) and prints energy and force RMSEs side by side.

Data sets (``../shared/data``, next to the repository):

* ``cumulene``: the C9H4 rotor scan (800 frames, non-periodic) plus the 21 randomly
  distorted cumulenes of lorem-jax's example. The 21 distorted structures always go into
  the training set; ``--n-train`` random scan frames are added to it, and validation and
  test sets are disjoint random scan frames (see the docs for why);
* ``biodimers``: 130 charge-charge biodimers in a periodic 30 A box, split at random.

Usage (from the repository root)::

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/accuracy.py \\
        --dataset cumulene --epochs 60 --seeds 0,1

Equal compute instead of equal epochs (``--cpu-budget``): lorem_mta stops at the CPU-time
budget (``time_budget_clock: cpu``, the schedule follows the budget), lorem-jax trains
for the number of epochs that its per-epoch CPU time (``training_epoch.py --jax``) fits
in the same budget (see ``--jax-epochs`` for how lorem-train counts epochs);
``train_cpu_s`` in the results is the CPU time each run really used::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/accuracy.py \\
        --dataset cumulene --n-train 600 --n-val 100 --n-test 100 --batch-size 8 \\
        --threads 1 --cpu-budget 600 --epochs 100000 --decay-start-epoch 10 \\
        --jax-epochs N --seeds 0,1 --tag cumulene-600cpu

Results go to ``benchmarks/results/accuracy.json`` (merged per data set, so the data
sets can be run one after the other), split indices to
``benchmarks/results/accuracy_split_<dataset>.json``; training runs to ``--workdir``
(default ``outputs/accuracy``, ignored by git).
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import ase.io
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
JAX_PYTHON = ROOT / ".venv-jax" / "bin" / "python"
JAX_TRAIN = ROOT / "benchmarks" / "accuracy" / "jax_train.py"
BIN = Path(sys.executable).parent

MODELS = ("mta", "mta-nolr", "jax")
LABELS = {
    "mta": "lorem_mta",
    "mta-nolr": "lorem_mta, lr: false",
    "jax": "lorem-jax 0.2.0",
}

#: model hyperparameters shared by all models (lorem-jax names; ``lr`` is set per model)
HYPERS = {
    "cutoff": 5.0,
    "max_degree": 2,
    "max_degree_lr": 2,
    "num_features": 32,
    "num_radial": 16,
    "num_species": 8,
    "num_spherical_features": 4,
    "num_message_passing": 0,
}

DATASETS = {
    "cumulene": {"n_train": 80, "n_val": 20, "n_test": 200},
    "biodimers": {"n_train": 80, "n_val": 20, "n_test": 30},
}


# -- data and split ------------------------------------------------------------------


def split_order(order: np.ndarray, n_train: int, n_val: int, n_test: int) -> dict:
    """Test frames first, then validation, then training: runs with fewer training
    frames (same seed, ``n_test`` and ``n_val``) share the test and validation sets."""
    return {
        "test": order[:n_test],
        "validation": order[n_test : n_test + n_val],
        "train": order[n_test + n_val : n_test + n_val + n_train],
    }


def make_split(
    dataset: str, n_train: int, n_val: int, n_test: int, seed: int, distorted: bool = False
) -> dict:
    """Frames of the training, validation and test sets, and the indices behind them."""
    rng = np.random.default_rng(seed)
    if dataset == "cumulene":
        scan = ase.io.read(DATA / "cumulene" / "cumulene_profile_train800.extxyz", ":")
        if n_train + n_val + n_test > len(scan):
            raise ValueError(f"only {len(scan)} scan frames")
        order = rng.permutation(len(scan))
        idx = split_order(order, n_train, n_val, n_test)
        frames = {name: [scan[i] for i in sorted(ix)] for name, ix in idx.items()}
        indices = {
            "files": {"scan": "cumulene/cumulene_profile_train800.extxyz"},
            **{name: {"scan": sorted(int(i) for i in ix)} for name, ix in idx.items()},
        }
        if distorted:
            name = "lorem_jax_example_cumulene_21.xyz"
            extra = ase.io.read(DATA / "cumulene" / name, ":")
            frames["train"] = extra + frames["train"]
            indices["files"]["distorted"] = f"cumulene/{name}"
            indices["train"]["distorted"] = list(range(len(extra)))
    elif dataset == "biodimers":
        all_frames = ase.io.read(DATA / "biodimers_cc_cookbook" / "charge-charge.xyz", ":")
        if n_train + n_val + n_test > len(all_frames):
            raise ValueError(f"only {len(all_frames)} frames")
        order = rng.permutation(len(all_frames))
        idx = split_order(order, n_train, n_val, n_test)
        frames = {name: [all_frames[i] for i in sorted(ix)] for name, ix in idx.items()}
        indices = {
            "files": {"frames": "biodimers_cc_cookbook/charge-charge.xyz"},
            **{name: sorted(int(i) for i in ix) for name, ix in idx.items()},
        }
    else:
        raise ValueError(f"unknown dataset {dataset}")
    indices["split_seed"] = seed
    return {"frames": frames, "indices": indices}


def write_split(frames: dict, folder: Path) -> None:
    """Write ``train.xyz``, ``validation.xyz`` and ``test.xyz`` (energy and forces only)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, selected in frames.items():
        clean = []
        for atoms in selected:
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
            copy = atoms.copy()
            copy.info = {"energy": float(energy)}
            copy.arrays = {
                k: v for k, v in copy.arrays.items() if k in ("numbers", "positions")
            }
            copy.new_array("forces", np.asarray(forces, dtype=np.float64))
            clean.append(copy)
        ase.io.write(folder / f"{name}.xyz", clean, format="extxyz")


# -- training ------------------------------------------------------------------------


def mtt_options(args: argparse.Namespace, lr: bool, seed: int) -> dict:
    target = {"key": "energy", "unit": "eV", "forces": {"key": "forces"}}

    def dataset(name: str) -> dict:
        return {
            "systems": {"read_from": f"../{name}.xyz", "length_unit": "angstrom"},
            "targets": {"energy": target},
        }

    return {
        "seed": seed,
        "base_precision": 32,
        "final_eval": False,
        "architecture": {
            "name": "experimental.lorem_mta",
            "model": {**HYPERS, "lr": lr},
            "training": {
                "batch_size": args.batch_size,
                "num_epochs": args.epochs,
                **(
                    {"time_budget": args.cpu_budget, "time_budget_clock": "cpu"}
                    if args.cpu_budget
                    else {}
                ),
                "learning_rate": args.learning_rate,
                "final_learning_rate": 1e-6,
                "scheduler": "linear_decay",
                "decay_start_epoch": args.decay_start_epoch,
                "optimizer": "adam",
                "log_interval": max(1, args.epochs // 10),
                "checkpoint_interval": 100000,
                "num_workers": 0,
                "compile": args.compile,
                "loss": {"energy": {"type": "mse", "weight": 0.5, "forces": {"weight": 0.5}}},
            },
        },
        "training_set": dataset("train"),
        "validation_set": dataset("validation"),
        "test_set": dataset("test"),
    }


def jax_config(args: argparse.Namespace, seed: int) -> dict:
    return {
        "model": {**HYPERS, "lr": True},
        "settings": {
            "seed": seed,
            # lorem-jax holds at most batch_size - 1 real structures per batch
            "batcher": {"batch_size": args.batch_size + 1},
            "loss_weights": {"energy": 0.5, "forces": 0.5},
            "optimizer": "adam",
            "start_learning_rate": args.learning_rate,
            "min_learning_rate": 1e-6,
            "max_epochs": args.jax_epochs or args.epochs,
            "valid_every_epoch": 1,
            "start_decay_after": args.decay_start_epoch,
            "decay_style": "linear",
            "benchmark_pipeline": False,
            "use_wandb": False,
            "default_matmul_precision": "float32",
            "worker_count": 0,
        },
    }


#: CPU seconds (user + system) of every command of :py:func:`run`, in order
CPU_TIMES: list = []


def children_cpu() -> float:
    """CPU seconds used so far by the finished child processes of this one."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(command: list, cwd: Path, log: Path) -> float:
    """Run ``command`` with its output in ``log``; return the wall time.

    The CPU time of the command (its process tree) is appended to ``CPU_TIMES``."""
    print("$ " + " ".join(str(c) for c in command), flush=True)
    start, cpu_start = time.monotonic(), children_cpu()
    with open(log, "w") as file:
        result = subprocess.run(
            [str(c) for c in command], cwd=cwd, stdout=file, stderr=subprocess.STDOUT
        )
    elapsed = time.monotonic() - start
    CPU_TIMES.append(children_cpu() - cpu_start)
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"command failed ({result.returncode}), {log}:\n{tail}")
    return elapsed


def mtt_loop_time(log: Path) -> float:
    """Seconds from "Starting training" to the last epoch line of an ``mtt train`` log."""
    stamps = {}
    for line in log.read_text().splitlines():
        match = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\]", line)
        if match and ("Starting training" in line or "Epoch:" in line):
            key = "start" if "Starting training" in line else "end"
            stamps.setdefault(key, match.group(1))
            if key == "end":
                stamps["end"] = match.group(1)
    if "start" not in stamps or "end" not in stamps:
        return float("nan")
    start, end = (datetime.datetime.fromisoformat(stamps[k]) for k in ("start", "end"))
    return (end - start).total_seconds()


def train(model: str, seed: int, args: argparse.Namespace, data_dir: Path) -> dict:
    """Train one model; return the path of its exported model and the wall times."""
    import yaml

    folder = data_dir / f"{model}-seed{seed}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if model in ("mta", "mta-nolr"):
        options = mtt_options(args, lr=(model == "mta"), seed=seed)
        (folder / "options.yaml").write_text(yaml.safe_dump(options, sort_keys=False))
        wall = run([BIN / "mtt", "train", "options.yaml"], folder, folder / "train.log")
        return {
            "model_pt": folder / "model.pt",
            "train_wall_s": wall,
            "train_cpu_s": CPU_TIMES[-1],
            "train_loop_wall_s": mtt_loop_time(folder / "train.log"),
        }

    config = folder / "config.json"
    config.write_text(json.dumps(jax_config(args, seed), indent=1))
    wall = run(
        [
            JAX_PYTHON,
            JAX_TRAIN,
            "--train",
            data_dir / "train.xyz",
            "--valid",
            data_dir / "validation.xyz",
            "--workdir",
            folder,
            "--config",
            config,
            *([] if args.cpu_budget is None else ["--cpu-budget", args.cpu_budget]),
        ],
        folder,
        folder / "driver.log",
    )
    timing = json.loads((folder / "timing.json").read_text())
    train_wall = timing["train_wall_s"]
    train_cpu = CPU_TIMES[-1]  # data preparation, compilation and training
    # lorem-train's own timing of its training loop (after start-up, before wrap-up)
    loop = re.search(r"\U0001f684\s+\S+\s+\(([0-9.]+)s\)", (folder / "train.log").read_text())
    convert_wall = run(
        [
            BIN / "lorem-mta",
            "convert-jax",
            "experiment",
            "-o",
            "model.pt",
            "--dtype",
            "float64",
        ],
        folder,
        folder / "convert.log",
    )
    return {
        "model_pt": folder / "model.pt",
        "train_wall_s": train_wall,
        "prepare_and_train_wall_s": wall,
        "prepare_and_train_cpu_s": train_cpu,
        # lorem-train's own process (compilation and training), and whether the CPU
        # budget stopped it
        "train_cpu_s": timing.get("train_cpu_s"),
        "stopped_at_cpu_budget": timing.get("stopped_at_cpu_budget", False),
        "train_loop_wall_s": float(loop.group(1)) if loop else None,
        "convert_wall_s": convert_wall,
    }


# -- evaluation ----------------------------------------------------------------------


def evaluate(model_pt: Path, test_file: Path) -> dict:
    """Energy (meV/atom) and force (meV/A) RMSEs of an exported model on ``test_file``."""
    from metatomic_ase import MetatomicCalculator

    extensions = model_pt.parent / "extensions"
    calculator = MetatomicCalculator(
        str(model_pt),
        extensions_directory=str(extensions) if extensions.is_dir() else None,
    )
    e_err, f_err, energies = [], [], []
    start = time.monotonic()
    warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
    for atoms in ase.io.read(test_file, ":"):
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = calculator
        energies.append((energy, atoms.get_potential_energy()))
        e_err.append((energies[-1][1] - energy) / len(atoms))
        f_err.append((atoms.get_forces() - forces).reshape(-1))
    e_err, f_err = np.array(e_err), np.concatenate(f_err)
    return {
        "energy_rmse_meV_per_atom": 1000 * float(np.sqrt(np.mean(e_err**2))),
        "forces_rmse_meV_per_A": 1000 * float(np.sqrt(np.mean(f_err**2))),
        "energy_mae_meV_per_atom": 1000 * float(np.mean(np.abs(e_err))),
        "forces_mae_meV_per_A": 1000 * float(np.mean(np.abs(f_err))),
        "num_test": int(len(e_err)),
        "eval_wall_s": time.monotonic() - start,
        "_energies": np.array(energies),
    }


def reference_stats(train_file: Path, test_file: Path) -> dict:
    """Test RMSEs of the composition baseline alone (zero forces), for scale.

    The baseline is a per-species least-squares fit of the training energies (as both
    trainers fit before training); with one composition (cumulene) it is the mean.
    """
    train, test = ase.io.read(train_file, ":"), ase.io.read(test_file, ":")
    species = sorted({int(z) for a in train + test for z in a.numbers})

    def counts(frames: list) -> np.ndarray:
        return np.array([[np.sum(a.numbers == z) for z in species] for a in frames], float)

    energies = np.array([a.get_potential_energy() for a in train])
    weights = np.linalg.lstsq(counts(train), energies, rcond=None)[0]
    e = np.array(
        [
            (a.get_potential_energy() - c @ weights) / len(a)
            for a, c in zip(test, counts(test), strict=True)
        ]
    )
    f = np.concatenate([a.get_forces().reshape(-1) for a in test])
    return {
        "energy_rmse_meV_per_atom": 1000 * float(np.sqrt(np.mean(e**2))),
        "forces_rmse_meV_per_A": 1000 * float(np.sqrt(np.mean(f**2))),
    }


def parameter_count(folder: Path, model: str) -> int:
    """Number of parameters, from the training log."""
    if model == "jax":
        text, pattern = (folder / "train.log").read_text(), r"Parameter count: (\d+)"
    else:
        text, pattern = (folder / "train.log").read_text(), r"actual number: (\d+)"
    match = re.search(pattern, text)
    return int(match.group(1)) if match else -1


def set_threads(threads: int) -> None:
    """Limit this process and the training subprocesses to ``threads`` CPU threads."""
    import torch

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
        + f" intra_op_parallelism_threads={threads}"
    ).strip()
    torch.set_num_threads(threads)


def provenance() -> dict:
    """Where ``lorem_mta`` is imported from (set ``PYTHONPATH`` to test a clean copy), and
    the repository commit and state."""

    def output(command: list) -> str:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        return result.stdout.strip()

    source = output([sys.executable, "-c", "import lorem_mta; print(lorem_mta.__file__)"])
    return {
        "lorem_mta_imported_from": str(Path(source).parent) if source else None,
        "repository_commit": output(["git", "rev-parse", "HEAD"]),
        "repository_src_modified": bool(output(["git", "status", "--porcelain", "src"])),
        "versions": output(
            [
                sys.executable,
                "-c",
                "from importlib.metadata import version as v; "
                "print({n: v(n) for n in ['torch', 'metatrain', 'metatomic-torch', "
                "'metatomic-ase', 'torch-pme']})",
            ]
        ),
    }


# -- report --------------------------------------------------------------------------


def profile_plot(angles: list, profiles: dict, path: Path) -> None:
    """Energy of the test frames of the rotor scan against the rotor-plane angle, one
    panel per training seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    angles = np.array(angles)
    order = np.argsort(angles)
    figure, axes = plt.subplots(
        1, len(profiles), figsize=(4.2 * len(profiles) + 0.6, 3.8), sharey=True, squeeze=False
    )
    for axis, (seed, models) in zip(axes[0], profiles.items(), strict=True):
        reference = next(iter(models.values()))[:, 0]
        axis.plot(
            angles[order],
            reference[order] - reference.mean(),
            "k-",
            lw=2,
            label="reference (DFT)",
        )
        for model, energies in models.items():
            predicted = energies[:, 1]
            axis.plot(
                angles[order],
                predicted[order] - predicted.mean(),
                ".",
                ms=3,
                label=LABELS[model],
            )
        axis.set_xlabel("angle between the rotor planes (degrees)")
        axis.set_title(f"training seed {seed}", fontsize=10)
    axes[0, 0].set_ylabel("energy minus its test-set mean (eV)")
    axes[0, 0].legend(fontsize=8)
    figure.suptitle("cumulene rotor scan, test frames", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def summarize(runs: list) -> dict:
    summary = {}
    for model in MODELS:
        selected = [r for r in runs if r["model"] == model]
        if not selected:
            continue
        entry = {"seeds": [r["seed"] for r in selected]}
        for key in (
            "energy_rmse_meV_per_atom",
            "forces_rmse_meV_per_A",
            "train_wall_s",
        ):
            values = np.array([r[key] for r in selected])
            entry[key] = {
                "mean": float(values.mean()),
                "min": float(values.min()),
                "max": float(values.max()),
                "values": [float(v) for v in values],
            }
        summary[model] = entry
    return summary


def format_value(stats: dict, digits: int) -> str:
    if len(stats["values"]) == 1:
        return f"{stats['mean']:.{digits}f}"
    half = (stats["max"] - stats["min"]) / 2
    return f"{stats['mean']:.{digits}f} ± {half:.{digits}f}"


def table(results: dict) -> str:
    header = (
        f"{'dataset':<10} {'model':<22} {'seeds':>5} {'E RMSE (meV/atom)':>20} "
        f"{'F RMSE (meV/Å)':>20} {'train wall (s)':>16}"
    )
    lines = [header, "-" * len(header)]
    for dataset, result in results.items():
        for model, entry in result["summary"].items():
            lines.append(
                f"{dataset:<10} {LABELS[model]:<22} {len(entry['seeds']):>5} "
                f"{format_value(entry['energy_rmse_meV_per_atom'], 3):>20} "
                f"{format_value(entry['forces_rmse_meV_per_A'], 1):>20} "
                f"{format_value(entry['train_wall_s'], 0):>16}"
            )
        ref = result["test_reference"]
        lines.append(
            f"{dataset:<10} {'(baseline only)':<22} {'':>5} "
            f"{ref['energy_rmse_meV_per_atom']:>20.3f} {ref['forces_rmse_meV_per_A']:>20.1f}"
        )
    return "\n".join(lines)


def entry(
    args: argparse.Namespace,
    dataset: str,
    counts: dict,
    split_file: Path,
    reference: dict,
    runs: list,
    source_info: dict,
) -> dict:
    """The results of one configuration (data set and settings)."""
    return {
        "dataset": dataset,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "provenance": source_info,
        "machine": {
            "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "xla_flags": os.environ.get("XLA_FLAGS"),
            "load_average_at_end": os.getloadavg(),
            "processor": platform.processor() or platform.machine(),
        },
        "split": {
            **counts,
            "split_seed": args.split_seed,
            "file": split_file.name,
            "cumulene_distorted_in_train": bool(
                dataset == "cumulene" and args.cumulene_distorted
            ),
        },
        "hypers": HYPERS,
        "training": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": "adam",
            "learning_rate": args.learning_rate,
            "final_learning_rate": 1e-6,
            "schedule": f"constant for {args.decay_start_epoch} epochs, then linear",
            "loss_weights": {"energy_per_atom": 0.5, "forces": 0.5},
            "precision": "float32",
            "compile": args.compile,
        },
        "test_reference": reference,
        "runs": runs,
        "summary": summarize(runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=[*DATASETS, "all"], default="all")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-size", type=int, default=4)
    # the rate of the documented runs and of the recipes in docs/training.rst
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument(
        "--decay-start-epoch",
        type=int,
        default=None,
        help="epochs at constant learning rate (default: epochs // 10)",
    )
    parser.add_argument(
        "--n-train",
        type=int,
        default=None,
        help="training frames (cumulene: scan frames added to the 21)",
    )
    parser.add_argument(
        "--cpu-budget",
        type=float,
        default=None,
        help="equal compute instead of equal epochs: lorem_mta trains with "
        "`time_budget` of this many CPU seconds (`--epochs` is then an upper limit); "
        "lorem-jax, which has no such option, trains for --jax-epochs epochs and is "
        "stopped when its process has used the budget (its best checkpoint so far is "
        "evaluated)",
    )
    parser.add_argument(
        "--jax-epochs",
        type=int,
        default=None,
        help="epochs of lorem-jax (its `max_epochs`, default --epochs); with --cpu-budget, "
        "the number of lorem-train epochs that fit in the budget. Careful: on a "
        "600-structure training set with batch 8, lorem-train logged 'run for 220 epochs, "
        "132000 steps' and 'estimated batches/epoch: 75', i.e. 8x more steps than epochs "
        "of 75 batches; check the step count in its log against the CPU time per step of "
        "benchmarks/training_epoch.py --jax before a long run",
    )
    parser.add_argument("--n-val", type=int, default=None)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=ROOT / "outputs" / "accuracy")
    parser.add_argument("--output", type=Path, default=RESULTS / "accuracy.json")
    parser.add_argument(
        "--cumulene-distorted",
        action="store_true",
        help="add lorem-jax's 21 distorted cumulenes to the cumulene training set",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of every run (OMP_NUM_THREADS for torch, XLA's intra-op "
        "threads for jax); default: leave the environment as it is",
    )
    parser.add_argument(
        "--tag",
        default=None,
        help="name of this configuration in the results (default: dataset)",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="evaluate existing runs in --workdir, do not train",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="train lorem_mta with `compile: true` (the CPU budget then includes the "
        "compilation done in the training process)",
    )
    args = parser.parse_args()
    if args.decay_start_epoch is None:
        args.decay_start_epoch = max(1, args.epochs // 10)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for model in models:
        if model not in MODELS:
            parser.error(f"unknown model {model}; choose from {', '.join(MODELS)}")
    if args.tag is not None and args.dataset == "all":
        parser.error("--tag needs a single --dataset")
    if "jax" in models and not JAX_PYTHON.exists():
        parser.error(f"{JAX_PYTHON} not found: run benchmarks/setup-jax-venv.sh first")

    datasets = list(DATASETS) if args.dataset == "all" else [args.dataset]
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    results.setdefault("datasets", {})
    args.output.parent.mkdir(parents=True, exist_ok=True)

    if args.threads is not None:
        set_threads(args.threads)
    source_info = provenance()
    print(f"lorem_mta from {source_info['lorem_mta_imported_from']}", flush=True)
    tags = []
    for dataset in datasets:
        sizes = {k: getattr(args, k) or v for k, v in DATASETS[dataset].items()}
        split = make_split(
            dataset, seed=args.split_seed, distorted=args.cumulene_distorted, **sizes
        )
        tag = args.tag or dataset
        tags.append(tag)
        data_dir = args.workdir.resolve() / tag
        write_split(split["frames"], data_dir)
        split_file = args.output.parent / f"accuracy_split_{tag}.json"
        split_file.write_text(json.dumps(split["indices"]) + "\n")
        counts = {name: len(f) for name, f in split["frames"].items()}
        print(f"== {dataset}: {counts} (split indices in {split_file})", flush=True)

        # runs of other (model, seed) pairs from earlier invocations are kept, so models
        # can be trained one after the other; each record names its own command
        wanted = {(m, s) for m in models for s in seeds}
        earlier = results["datasets"].get(tag, {}).get("runs", [])
        runs = [r for r in earlier if (r["model"], r["seed"]) not in wanted]
        profiles = {}
        reference = reference_stats(data_dir / "train.xyz", data_dir / "test.xyz")

        for seed in seeds:
            for model in models:
                if args.evaluate_only:
                    # keep the training times of an earlier run of this configuration
                    folder = data_dir / f"{model}-seed{seed}"
                    previous = results["datasets"].get(tag, {}).get("runs", [])
                    previous = [r for r in previous if (r["model"], r["seed"]) == (model, seed)]
                    trained = {
                        "model_pt": folder / "model.pt",
                        "train_wall_s": float("nan"),
                        **{k: v for k, v in (previous or [{}])[0].items() if "wall" in k},
                    }
                else:
                    trained = train(model, seed, args, data_dir)
                metrics = evaluate(trained["model_pt"], data_dir / "test.xyz")
                profiles.setdefault(seed, {})[model] = metrics["_energies"]
                del metrics["_energies"]
                record = {
                    "model": model,
                    "seed": seed,
                    "command": " ".join(sys.argv),
                    "date": datetime.datetime.now().isoformat(timespec="seconds"),
                    "num_parameters": parameter_count(trained["model_pt"].parent, model),
                    **{k: v for k, v in trained.items() if k != "model_pt"},
                    **metrics,
                }
                runs.append(record)
                results["datasets"][tag] = entry(
                    args, dataset, counts, split_file, reference, runs, source_info
                )
                args.output.write_text(json.dumps(results, indent=1) + "\n")
                print(
                    f"   {LABELS[model]:<22} seed {seed}: "
                    f"E {metrics['energy_rmse_meV_per_atom']:.3f} meV/atom, "
                    f"F {metrics['forces_rmse_meV_per_A']:.1f} meV/Å, "
                    f"train {trained['train_wall_s']:.0f} s",
                    flush=True,
                )

        if dataset == "cumulene" and profiles:
            angles = [a.info["rotor_plane_angle_deg"] for a in split["frames"]["test"]]
            plot = args.output.parent / f"accuracy_{tag}_profile.png"
            profile_plot(angles, profiles, plot)
            print(f"rotor profile of the test frames: {plot}")

    print()
    print(table({t: results["datasets"][t] for t in tags}))
    print(f"\nresults in {args.output}")


if __name__ == "__main__":
    main()
