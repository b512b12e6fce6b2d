"""Long-range methods per structure family: time, peak memory and accuracy of each.

For every structure, the Coulomb potentials of 10 random charge channels (LOREM's
``max_degree_lr = 2``) and their forces (backward pass) are computed with every method of
:py:class:`lorem_mta.modules.long_range.CoulombPotentials` (``ewald`` = the exact
lorem-jax reference, ``pme``, ``direct``) and with ``auto``, each in its own process so
that the peak memory (``ru_maxrss`` above the memory held before the sum) belongs to that
method alone. Errors are the relative energy error ``|E - E_ref| / |E_ref|`` with
``E = sum_ic q_ic V_ic`` and the largest force error over the largest reference force,
against the reference Ewald sum (where it fits the memory limit). A method the memory
guard refuses is reported with the memory it would need.

Families: dense rock-salt NaCl (64 to 32 768 atoms), molecules in 30 A boxes (the
charge-charge biodimers of the shared data), a 198-atom cluster in an 80 A box, slabs
(AuMgO, 9 x 9 x 26 A cell; a NaCl slab with 20 A of vacuum).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/long_range_methods.py --max-atoms 4096
    OMP_NUM_THREADS=1 python benchmarks/long_range_methods.py --calibrate

``--calibrate`` prints the ratio of measured to estimated time per method (the factors
to apply to the constants in ``lorem_mta.modules.lr_cost.COSTS``).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.build
import ase.io
import numpy as np
import torch
from vesin import NeighborList

from lorem_mta.modules.long_range import CoulombPotentials

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
METHODS = ["ewald", "pme", "direct", "auto"]
CUTOFF = 5.0
CHANNELS = 10


def nacl(repeat):
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=0)
    return atoms


def structures() -> dict:
    """The benchmark structures by name."""
    result = {f"nacl-{8 * r**3}": nacl(r) for r in (2, 4, 5, 8, 16)}
    dimers = DATA / "biodimers_cc_cookbook" / "charge-charge.xyz"
    if dimers.exists():
        molecule = ase.io.read(dimers, "0")
        result[f"biodimer-{len(molecule)}-30A"] = molecule
    cluster = nacl(3)
    cluster = cluster[:198]
    cluster.set_cell([80.0] * 3)
    cluster.center()
    cluster.pbc = True
    result["cluster-198-80A"] = cluster
    slab = nacl((3, 3, 2))
    slab.cell[2, 2] += 20.0
    slab.center(axis=2)
    result["nacl-slab-144-20A"] = slab
    aumgo = DATA / "au2_mgo_optimized" / "1-doped.xyz"
    if aumgo.exists():
        result["aumgo-slab-110"] = ase.io.read(aumgo, "0")
    return result


def inputs(atoms):
    positions = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
    cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
    i, j, shifts = NeighborList(cutoff=CUTOFF, full_list=True).compute(
        atoms.positions, atoms.cell.array, True, quantities="ijS"
    )
    pairs = torch.tensor(np.stack([i, j], axis=1).astype(np.int64))
    shifts = torch.tensor(shifts.astype(np.float64))
    charges = torch.randn(len(atoms), CHANNELS, generator=torch.Generator().manual_seed(0))
    return charges.double(), positions, cell, pairs, shifts


def _rss() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(name: str, method: str, repeats: int, output: str) -> dict:
    """One method on one structure, in this process: time, peak memory, results."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    atoms = structures()[name]
    charges, positions, cell, pairs, shifts = inputs(atoms)
    coulomb = torch.jit.script(CoulombPotentials(CUTOFF, method))
    choice = None
    try:
        choice = coulomb.planner.plan(cell, len(atoms), CHANNELS, [True] * 3, 8)
    except (ValueError, RuntimeError) as e:  # TorchScript raises ValueErrors as RuntimeError
        estimates = coulomb.planner.estimates(cell, len(atoms), CHANNELS, [True] * 3, 8)
        needed = min(m for n, _, _, m in estimates if method in (n, "auto"))
        return {"refused": str(e), "estimated_gb": needed / 1024**3}
    estimates = coulomb.planner.estimates(cell, len(atoms), CHANNELS, [True] * 3, 8)
    estimate = [e for e in estimates if (e[0], e[1]) == tuple(choice)][0]
    before = _rss()
    times = []
    # TorchScript's profiling executor optimises the graph during the first two calls
    for _ in range(repeats + (2 if len(atoms) < 1000 else 1)):
        start = time.perf_counter()
        vectors = positions[pairs[:, 1]] - positions[pairs[:, 0]] + shifts @ cell
        potentials = coulomb(
            charges, positions, cell, True, pairs, torch.linalg.norm(vectors, dim=1)
        )
        energy = (charges * potentials).sum()
        (forces,) = torch.autograd.grad(-energy, positions)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    np.savez(output, energy=energy.item(), forces=forces.numpy())
    return {
        "choice": f"{choice[0]}" + (f"-{choice[1]}" if choice[0] == "direct" else ""),
        "time_s": float(np.median(times[-repeats:])),
        "peak_gb": max(peak, 0) / 1024**3,
        "estimated_s": estimate[2],
        "estimated_gb": estimate[3] / 1024**3,
    }


def measure(name: str, method: str, repeats: int, tmp: str) -> dict:
    output = os.path.join(tmp, f"{name}-{method}.npz")
    command = [sys.executable, __file__, "--one", name, method, "--repeats", str(repeats)]
    process = subprocess.run(command + ["--output", output], capture_output=True, text=True)
    for line in process.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            if os.path.exists(output):
                with np.load(output) as data:
                    result["energy"] = float(data["energy"])
                    result["forces"] = data["forces"]
            return result
    return {"error": (process.stderr.strip().splitlines() or ["?"])[-1][:200]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-atoms", type=int, default=4096)
    parser.add_argument("--only", default=None, help="comma-separated structure names")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one[0], args.one[1], args.repeats, args.output)))
        return

    names = [n for n, a in structures().items() if len(a) <= args.max_atoms]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    rows = []
    ratios = {}
    header = f"{'structure':<20} {'method':<8} {'choice':<9} {'time s':>8} {'peak GB':>8}"
    header += f" {'est GB':>7} {'dE/E':>8} {'dF/F':>8}"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            n_atoms = len(structures()[name])
            repeats = args.repeats if n_atoms < 1000 else 1
            reference = None
            for method in args.methods.split(","):
                result = measure(name, method, repeats, tmp)
                if method == "ewald" and "energy" in result:
                    reference = result
                error_e = error_f = float("nan")
                if reference is not None and "energy" in result:
                    error_e = abs(result["energy"] - reference["energy"]) / abs(
                        reference["energy"]
                    )
                    scale = np.abs(reference["forces"]).max()
                    error_f = np.abs(result["forces"] - reference["forces"]).max() / scale
                if "time_s" in result:
                    line = f"{name:<20} {method:<8} {result['choice']:<9} "
                    line += f"{result['time_s']:>8.3f} {result['peak_gb']:>8.3f} "
                    line += f"{result['estimated_gb']:>7.2f} {error_e:>8.1e} {error_f:>8.1e}"
                    kind = result["choice"].split("-")[0]
                    ratios.setdefault(kind, []).append(result["time_s"] / result["estimated_s"])
                elif "refused" in result:
                    line = f"{name:<20} {method:<8} {'refused':<9} {'':>8} {'':>8} "
                    line += f"{result['estimated_gb']:>7.1f}"
                else:
                    line = f"{name:<20} {method:<8} error: {result['error']}"
                print(line, flush=True)
                row = {k: v for k, v in result.items() if k != "forces"}
                row.update(
                    structure=name,
                    n_atoms=n_atoms,
                    method=method,
                    energy_error=error_e,
                    force_error=error_f,
                )
                rows.append(row)
    if args.calibrate:
        for kind, values in ratios.items():
            print(f"{kind}: measured / estimated time, median {np.median(values):.2f}", values)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=1)


if __name__ == "__main__":
    main()
