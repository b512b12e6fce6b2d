"""Operators and CPU time per phase of one force-training step of a LOREM model.

A training step with forces is a forward pass, a first backward (the forces, with
``create_graph=True``) and a second backward through both (the parameter gradients of
the energy + force loss). On small structures and small models every torch operator
costs a few microseconds of dispatch whatever its size, so the number of operators,
not the arithmetic, sets the time of a step. This script counts the ATen operators of
every phase (with a ``TorchDispatchMode``) and times the phases (CPU time, medians).

Batches of 8 structures of the cumulene scan (13 atoms, non-periodic) or of rattled
64-atom NaCl cells; the small model of ``training_epoch.py`` by default.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/training_step_ops.py --case cumulene
    PYTHONPATH=/tmp/base/src OMP_NUM_THREADS=1 python benchmarks/training_step_ops.py
"""

import argparse
import collections
import json
import time
from pathlib import Path

import ase.build
import ase.io
import numpy as np
import torch
from metatomic.torch import ModelOutput
from torch.utils._python_dispatch import TorchDispatchMode
from training_epoch import SMALL  # the small model of the epoch benchmark

import lorem_mta
from lorem_mta.model import LoremModel
from lorem_mta.modules import LoremBackbone
from lorem_mta.utils import attach_neighbors, system_from_atoms

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
PHASES = ("forward", "forces", "backward", "optimizer")


def structures(case: str, n: int) -> list:
    """``n`` labelled structures of ``case``."""
    if case == "cumulene":
        return ase.io.read(DATA / "cumulene" / "cumulene_profile_train800.extxyz", f":{n}")
    rng = np.random.default_rng(0)
    result = []
    for k in range(n):
        atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
        atoms.rattle(0.1, seed=k)
        atoms.info["energy"] = -3.0 * len(atoms) + rng.normal()
        atoms.arrays["forces"] = rng.normal(scale=0.5, size=(len(atoms), 3))
        result.append(atoms)
    return result


def labels(atoms: ase.Atoms) -> tuple:
    if atoms.calc is not None:
        return atoms.get_potential_energy(), atoms.get_forces()
    return atoms.info["energy"], atoms.arrays["forces"]


class Counter(TorchDispatchMode):
    """Counts ATen operators, by phase."""

    def __init__(self):
        super().__init__()
        self.phase = "setup"
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[self.phase] += 1
        return func(*args, **(kwargs or {}))


def make_step(model: LoremModel, optimizer: torch.optim.Optimizer):
    requested = {"energy": ModelOutput(unit="eV", sample_kind="system")}

    def step(batch: list, mark) -> None:
        positions = [
            torch.tensor(a.positions, dtype=torch.float32, requires_grad=True) for a in batch
        ]
        systems = [
            system_from_atoms(a, torch.float32, p)
            for a, p in zip(batch, positions, strict=True)
        ]
        attach_neighbors(model, systems)
        energy_ref = torch.tensor([labels(a)[0] for a in batch], dtype=torch.float32)
        forces_ref = torch.tensor(
            np.concatenate([labels(a)[1] for a in batch]), dtype=torch.float32
        )
        n_atoms = torch.tensor([len(a) for a in batch], dtype=torch.float32)
        optimizer.zero_grad()
        mark("forward")
        energies = model(systems, requested, None)["energy"].block().values.reshape(-1)
        mark("forces")
        gradients = torch.autograd.grad(energies.sum(), positions, create_graph=True)
        mark("backward")
        loss = 0.5 * (((energies - energy_ref) / n_atoms) ** 2).mean()
        loss = loss + 0.5 * ((torch.cat(gradients) + forces_ref) ** 2).mean()
        loss.backward()
        mark("optimizer")
        optimizer.step()
        mark("end")

    return step


def stamper(stamps: dict):
    """A ``mark`` function for :py:func:`make_step` that records CPU times."""

    def mark(phase: str) -> None:
        stamps[phase] = time.process_time()

    return mark


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default="cumulene", choices=["cumulene", "nacl64"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, help="append the result to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    frames = structures(args.case, 48)
    batches = [frames[k : k + 8] for k in range(0, len(frames), 8)]
    torch.manual_seed(0)
    types = sorted({int(z) for a in frames for z in a.numbers})
    model = LoremModel(LoremBackbone(**SMALL), types).to(torch.float32)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, foreach=True)
    step = make_step(model, optimizer)

    times = collections.defaultdict(list)
    for repeat in range(args.repeats + 1):
        stamps: dict = {}
        step(batches[repeat % len(batches)], stamper(stamps))
        if repeat == 0:
            continue  # warm-up
        order = [*PHASES, "end"]
        for phase, following in zip(order[:-1], order[1:], strict=True):
            times[phase].append(stamps[following] - stamps[phase])

    counter = Counter()
    with counter:
        step(batches[1], lambda phase: setattr(counter, "phase", phase))

    result = {
        "case": args.case,
        "lorem_mta": str(Path(lorem_mta.__file__).parent),
        "operators": {phase: counter.counts[phase] for phase in PHASES},
        "cpu_ms": {phase: 1e3 * float(np.median(times[phase])) for phase in PHASES},
    }
    print(f"lorem_mta from {result['lorem_mta']}, {args.case}, batches of 8, small model")
    print(f"{'phase':10s} {'operators':>10s} {'CPU ms':>8s}")
    for phase in PHASES:
        print(f"{phase:10s} {result['operators'][phase]:10d} {result['cpu_ms'][phase]:8.2f}")
    total_ops = sum(result["operators"].values())
    total_ms = sum(result["cpu_ms"].values())
    print(f"{'total':10s} {total_ops:10d} {total_ms:8.2f}")
    if args.json is not None:
        with open(args.json, "a") as file:
            file.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
