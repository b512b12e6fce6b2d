"""Measure the recommended training recipes of ``docs/training.rst``.

For each use case, splits a shared data set at random (seed 0), writes ``train.xyz``
and ``validation.xyz`` next to a copy of ``examples/recipes/<case>.yaml``, runs
``mtt train`` and prints the validation errors of the exported (best) model and the
mean time per epoch from the training log:

* ``molecules``: the cumulene rotor scan (``cumulene``), 80 + 20 frames;
* ``periodic``: 64 water molecules in a periodic cell (``water_bec_lorem_example``),
  18 + 5 cells;
* ``boxed``: charged-pair biodimers in a 30 A periodic box (``biodimers_cc_cookbook``),
  60 + 20 dimers.

Usage (from the repository root; one CPU thread, as measured in the docs)::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/recipes.py molecules \\
        --data ../shared/data --workdir outputs/recipes
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "molecules": ("cumulene/cumulene_profile_train800.extxyz", 80, 20),
    "periodic": ("water_bec_lorem_example/bec_example.xyz", 18, 5),
    "boxed": ("biodimers_cc_cookbook/charge-charge.xyz", 60, 20),
}


def prepare(case: str, data: Path, directory: Path) -> None:
    """Write the random split and the options of ``case`` into ``directory``."""
    path, n_train, n_val = CASES[case]
    frames = ase.io.read(data / path, ":")
    order = np.random.default_rng(0).permutation(len(frames))
    directory.mkdir(parents=True, exist_ok=True)
    for name, indices in [
        ("train", order[:n_train]),
        ("validation", order[n_train : n_train + n_val]),
    ]:
        selected = []
        for index in indices:
            atoms = frames[index]
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
            atoms.calc = None
            atoms.info = {"energy": energy}
            atoms.arrays = {k: atoms.arrays[k] for k in ["numbers", "positions"]}
            atoms.arrays["forces"] = forces
            selected.append(atoms)
        ase.io.write(directory / f"{name}.xyz", selected)
    shutil.copy(ROOT / "examples" / "recipes" / f"{case}.yaml", directory / "options.yaml")


def summary(log: str) -> dict:
    """Best epoch, its validation errors and the mean time per epoch, from the log."""
    best = re.search(r"Best model: epoch (\d+) of (\d+)", log)
    errors = re.findall(
        r"validation (energy RMSE \(per atom\)|forces RMSE):\s+([0-9.]+) (\S+)", log
    )
    per_epoch = re.findall(r"Progress: epoch \d+/\d+ \(\d+ %\), ([0-9.]+) s/epoch", log)
    return {
        "best_epoch": int(best.group(1)) if best else None,
        "num_epochs": int(best.group(2)) if best else None,
        # the last values are the ones of the best epoch (logged at the end)
        "validation": {name: f"{value} {unit}" for name, value, unit in errors[-2:]},
        "seconds_per_epoch": float(per_epoch[-1]) if per_epoch else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--workdir", type=Path, default=ROOT / "outputs" / "recipes")
    arguments = parser.parse_args()

    directory = arguments.workdir / arguments.case
    prepare(arguments.case, arguments.data, directory)
    mtt = Path(sys.executable).parent / "mtt"
    result = subprocess.run(
        [str(mtt), "train", "options.yaml"],
        cwd=directory,
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = usage.ru_utime + usage.ru_stime
    log = result.stdout + result.stderr
    (directory / "mtt-train.log").write_text(log)
    if result.returncode != 0:
        raise SystemExit(f"mtt train failed:\n{log[-3000:]}")
    # wall-clock s/epoch depends on the load of the machine; the CPU time of the whole
    # run (data preparation and export included) does less
    results = {"case": arguments.case, **summary(log), "cpu_seconds_total": cpu_seconds}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
