"""Training-step throughput: lorem_mta against lorem-jax 0.2.0, same batches, same CPU.

A training step is what both trainers do for every batch: energies and forces (forces by
autograd, with the graph kept), the per-atom energy + force MSE loss, its gradient with
respect to every parameter (double backward) and an Adam update. Cases:

* ``biodimers``: batches of 8 charge-charge biodimers (15-23 atoms, periodic 30 A box,
  Ewald) from ``../shared/data/biodimers_cc_cookbook``;
* ``biodimers-vacuum``: the same molecules without periodicity (direct 1/r sum);
* ``nacl64``: batches of 8 rattled 64-atom rock-salt NaCl cells (periodic).

lorem_mta runs with the reference Ewald settings (``ewald-ref``, exact lorem-jax parity)
and with ``long_range_accuracy=1e-5`` (``ewald-1e-5``); its steps include building the
metatomic systems and neighbour lists, as metatrain does for every batch. lorem-jax runs
its own jitted ``value_and_grad`` + optax Adam step (the body of ``lorem-train``'s loop)
on batches prepared beforehand, in ``.venv-jax`` (see ``setup-jax-venv.sh``), in the same
run. Medians over ``--steps`` steps after warm-up (and compilation for jax).

Usage::

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/training.py --steps 5
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.build
import ase.io
import numpy as np
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from metatomic.torch import ModelOutput

from lorem_mta.model import LoremModel
from lorem_mta.modules import LoremBackbone
from lorem_mta.utils import attach_neighbors, system_from_atoms

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
JAX_PYTHON = HERE.parent / ".venv-jax" / "bin" / "python"
BATCH = 8

VARIANTS = {
    "ewald-ref": {},
    "ewald-1e-5": {"long_range_accuracy": 1e-5},
}


def labelled(atoms: ase.Atoms, energy: float, forces: np.ndarray) -> ase.Atoms:
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def cases(n_batches: int) -> dict:
    """Structures of every case, ``n_batches * BATCH`` of each."""
    n = n_batches * BATCH
    dimers = ase.io.read(DATA / "biodimers_cc_cookbook" / "charge-charge.xyz", f":{n}")
    dimers = [labelled(a, a.get_potential_energy(), a.get_forces()) for a in dimers]
    vacuum = []
    for atoms in dimers:
        copy = atoms.copy()
        copy.pbc = False
        copy.cell = None
        vacuum.append(labelled(copy, atoms.get_potential_energy(), atoms.get_forces()))
    rng = np.random.default_rng(0)
    nacl = []
    for k in range(n):
        atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
        atoms.rattle(0.1, seed=k)
        forces = rng.normal(scale=0.5, size=(len(atoms), 3))
        nacl.append(labelled(atoms, -3.0 * len(atoms) + rng.normal(), forces))
    return {"biodimers": dimers, "biodimers-vacuum": vacuum, "nacl64": nacl}


def make_step(model: LoremModel, dtype: torch.dtype):
    """A training step of ``model`` on a list of labelled ASE structures."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    requested = {"energy": ModelOutput(unit="eV", sample_kind="system")}

    def step(batch: list) -> float:
        optimizer.zero_grad()
        positions = [torch.tensor(a.positions, dtype=dtype, requires_grad=True) for a in batch]
        systems = [
            system_from_atoms(a, dtype, p) for a, p in zip(batch, positions, strict=True)
        ]
        attach_neighbors(model, systems)
        energies = model(systems, requested, None)["energy"].block().values.reshape(-1)
        gradients = torch.autograd.grad(energies.sum(), positions, create_graph=True)
        n_atoms = torch.tensor([len(a) for a in batch], dtype=dtype)
        reference_e = torch.tensor([a.get_potential_energy() for a in batch], dtype=dtype)
        reference_f = torch.tensor(np.concatenate([a.get_forces() for a in batch]), dtype=dtype)
        loss = 0.5 * (((energies - reference_e) / n_atoms) ** 2).mean()
        loss = loss + 0.5 * ((torch.cat(gradients) + reference_f) ** 2).mean()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def time_ours(structures: list, variant: dict, steps: int) -> dict:
    torch.manual_seed(0)
    types = sorted({int(z) for a in structures for z in a.numbers})
    model = LoremModel(LoremBackbone(**variant), types).to(torch.float32)
    model.train()
    step = make_step(model, torch.float32)
    batches = [structures[k : k + BATCH] for k in range(0, len(structures), BATCH)]
    step(batches[0])  # warm-up
    times = []
    for k in range(steps):
        start = time.perf_counter()
        step(batches[k % len(batches)])
        times.append(time.perf_counter() - start)
    return {"median_s": float(np.median(times)), "times_s": times}


def time_jax(structures: list, steps: int) -> dict:
    if not JAX_PYTHON.exists():
        return {"error": f"{JAX_PYTHON} not found (run benchmarks/setup-jax-venv.sh)"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frames.xyz"
        ase.io.write(path, structures, format="extxyz")
        threads = os.environ.get("OMP_NUM_THREADS", "2")
        flags = "--xla_cpu_multi_thread_eigen=true"
        if threads == "1":
            flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        command = [JAX_PYTHON, HERE / "jax_training.py", path, "--steps", str(steps)]
        command += ["--batch-size", str(BATCH)]
        process = subprocess.run(
            [str(c) for c in command],
            capture_output=True,
            text=True,
            env={**os.environ, "XLA_FLAGS": flags},
        )
    for line in process.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    return {"error": process.stderr.strip().splitlines()[-1][:200] if process.stderr else "?"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--cases", default="biodimers,biodimers-vacuum,nacl64")
    parser.add_argument("--no-jax", action="store_true")
    args = parser.parse_args()
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    torch.set_num_threads(int(threads) if threads.isdigit() else 2)
    print(f"# OMP_NUM_THREADS={threads}, torch threads={torch.get_num_threads()}, float32")
    print(f"# paper hyperparameters, batches of {BATCH} structures, medians of {args.steps}")

    all_cases = cases(n_batches=2)
    header = ["case", "atoms/batch"] + [f"{v} (s/step)" for v in VARIANTS]
    header += ["jax (s/step)"] + [f"{v} (struct/s)" for v in VARIANTS]
    header += ["jax (struct/s)", "jax / ours (ref)", "jax / ours (fast)"]
    print(" | ".join(header), flush=True)
    for name in args.cases.split(","):
        structures = all_cases[name]
        ours = {v: time_ours(structures, kw, args.steps) for v, kw in VARIANTS.items()}
        jax = {"median_s": float("nan")} if args.no_jax else time_jax(structures, args.steps)
        if "error" in jax:
            print(f"# lorem-jax failed on {name}: {jax['error']}")
            jax["median_s"] = float("nan")
        times = [ours[v]["median_s"] for v in VARIANTS]
        row = [name, str(sum(len(a) for a in structures[:BATCH]))]
        row += [f"{t:.3f}" for t in times] + [f"{jax['median_s']:.3f}"]
        row += [f"{BATCH / t:.1f}" for t in times] + [f"{BATCH / jax['median_s']:.1f}"]
        row += [f"{jax['median_s'] / t:.1f}" for t in times]
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
