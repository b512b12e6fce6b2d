"""Energy under smooth cell scaling: jumps where the long-range settings change.

In a variable-cell run (NPT, cell relaxation) the cell changes at every step, and with it
the discrete settings of the long-range sum: the number of Ewald k-vectors
(``ceil(|h_a| / lambda)`` along every lattice vector), the PME mesh
(``2 |h_a| / spacing + 1`` points, rounded up to a fast FFT length) and, with
``long_range_method: auto``, the method itself. It also measures the jumps where a pair
of atoms crosses the cutoff (the real-space part of the Coulomb sums is cut there). This
script scales a periodic cell
isotropically (fractional coordinates fixed, as a barostat does), finds every scale
factor ``s*`` in ``[--low, --high]`` where a setting changes (bisection to 1e-13), and
measures the jump ``|E(s* + eps) - E(s* - eps) - 2 eps dE/ds|`` with ``eps = 1e-10``
(``dE/ds`` from central differences at ``+-1e-4``: the smooth change over ``2 eps`` is
removed, and is printed next to it).

Model: a small LOREM (``max_degree`` 2, 16 features, ``max_degree_lr`` 2) with seeded
random weights plus noise, float64, on a rattled 64-atom rock-salt NaCl cell.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/cell_scaling.py --low 0.8 --high 1.2 --grid 2001

Results go to ``benchmarks/results/cell_scaling.json``.
"""

import argparse
import json
import platform
import sys
from pathlib import Path

import ase.build
import numpy as np
import torch

from lorem_mta.model import LoremModel
from lorem_mta.modules import LoremBackbone
from lorem_mta.modules.long_range import ewald_kvectors
from lorem_mta.modules.lr_cost import mesh_shape
from lorem_mta.utils import predict

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
#: (label, long_range_method, long_range_accuracy)
METHODS = [
    ("ewald, reference settings", "ewald", None),
    ("ewald, accuracy 1e-5", "ewald", 1e-5),
    ("pme, accuracy 1e-5", "pme", 1e-5),
    ("auto, accuracy 1e-5", "auto", 1e-5),
]
EPS = 1e-10


def make_model(method: str, accuracy, lr: bool = True) -> LoremModel:
    """Small float64 LOREM with every parameter perturbed (non-trivial charges)."""
    torch.manual_seed(0)
    backbone = LoremBackbone(
        cutoff=5.0,
        max_degree=2,
        num_features=16,
        num_spherical_features=4,
        num_radial=8,
        max_degree_lr=2,
        lr=lr,
        long_range_method=method,
        long_range_accuracy=accuracy,
    )
    model = LoremModel(backbone, [11, 17]).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def coulomb(model: LoremModel):
    """The Coulomb-sum module of the model."""
    for module in model.modules():
        if type(module).__name__ == "CoulombPotentials":
            return module
    raise RuntimeError("no CoulombPotentials in the model")


def settings(model: LoremModel, atoms: ase.Atoms, scale: float) -> tuple:
    """The discrete long-range settings of the scaled cell: method, k-vectors, mesh."""
    sums = coulomb(model)
    cell = torch.tensor(atoms.cell.array * scale, dtype=torch.float64)
    method, level = sums.planner.plan(cell, len(atoms), 10, [True, True, True], 8)
    n_k = int(ewald_kvectors(cell, sums.planner.ewald_wavelength()).shape[0])
    mesh = tuple(mesh_shape(cell, sums.mesh_spacing).tolist())
    if method == "ewald":
        return (method, n_k)
    if method == "pme":
        return (method, mesh)
    return (method, level)


def energy(model: LoremModel, atoms: ase.Atoms, scale: float) -> float:
    scaled = atoms.copy()
    scaled.set_cell(atoms.cell.array * scale, scale_atoms=True)
    return float(predict(model, [scaled]).energies[0].detach())


def change_points(model, atoms, low: float, high: float, n_grid: int) -> list:
    """Scale factors where :py:func:`settings` changes, to 1e-13."""
    grid = np.linspace(low, high, n_grid)
    values = [settings(model, atoms, s) for s in grid]
    points = []
    for i in range(n_grid - 1):
        if values[i] == values[i + 1]:
            continue
        a, b = grid[i], grid[i + 1]
        while b - a > 1e-13:
            middle = 0.5 * (a + b)
            if settings(model, atoms, middle) == values[i]:
                a = middle
            else:
                b = middle
        points.append((0.5 * (a + b), values[i], settings(model, atoms, b)))
    return points


def pair_crossings(atoms: ase.Atoms, low: float, high: float, count: int = 3) -> dict:
    """Jumps where a pair of atoms crosses the cutoff, with and without long range.

    The short-range features vanish smoothly at the cutoff; the real-space part of the
    Coulomb sums (every method) is the plain ``erfc`` sum over the same neighbour list,
    cut at the cutoff, so a pair that enters it changes the energy by about
    ``q_i q_j erfc(r_c / (sqrt(2) sigma)) / r_c`` (``erfc(2 sqrt(2)) = 6.3e-5``).
    """
    distances = np.unique(np.round(pair_distances(atoms, 5.0 / low), 9))
    scales = sorted(5.0 / d for d in distances if low < 5.0 / d < high)
    scales = [scales[i] for i in np.linspace(0, len(scales) - 1, count).astype(int)]
    rows = {}
    for label, lr in [("ewald, reference settings", True), ("lr: false", False)]:
        model = make_model("ewald", None, lr=lr)
        jumps = []
        for point in scales:
            change = energy(model, atoms, point + EPS) - energy(model, atoms, point - EPS)
            slope = (
                energy(model, atoms, point + 1e-4) - energy(model, atoms, point - 1e-4)
            ) / 2e-4
            jumps.append(abs(change - 2 * EPS * slope))
            print(f"pair at the cutoff, {label:26s} s = {point:.10f}: jump {jumps[-1]:.1e} eV")
        rows[label] = {"scales": scales, "jumps_eV": jumps}
    return rows


def pair_distances(atoms: ase.Atoms, cutoff: float) -> np.ndarray:
    """All pair distances (periodic images included) below ``cutoff``."""
    from ase.neighborlist import neighbor_list

    return neighbor_list("d", atoms, cutoff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--low", type=float, default=0.97)
    parser.add_argument("--high", type=float, default=1.03)
    parser.add_argument("--grid", type=int, default=601)
    args = parser.parse_args()
    torch.set_num_threads(1)

    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.1, seed=1)
    results = {
        "structure": f"rattled rock-salt NaCl, {len(atoms)} atoms, a = 5.64 A",
        "command": " ".join(["benchmarks/cell_scaling.py", *sys.argv[1:]]),
        "scale_range": [args.low, args.high],
        "eps": EPS,
        "machine": platform.machine(),
        "methods": {},
    }
    for label, method, accuracy in METHODS:
        model = make_model(method, accuracy)
        rows = []
        for point, before, after in change_points(model, atoms, args.low, args.high, args.grid):
            lower = energy(model, atoms, point - EPS)
            upper = energy(model, atoms, point + EPS)
            slope = (
                energy(model, atoms, point + 1e-4) - energy(model, atoms, point - 1e-4)
            ) / 2e-4
            change, smooth = upper - lower, slope * 2 * EPS
            rows.append(
                {
                    "scale": point,
                    "before": str(before),
                    "after": str(after),
                    "energy_change_eV": change,
                    "smooth_change_eV": smooth,
                    "jump_eV": abs(change - smooth),
                    "dE_ds_eV": slope,
                }
            )
            print(
                f"{label:28s} s = {point:.10f}  {before} -> {after}: E(s+) - E(s-) = "
                f"{change:.2e} eV, smooth {smooth:.2e}, jump {abs(change - smooth):.1e} eV",
                flush=True,
            )
        jumps = [row["jump_eV"] for row in rows]
        results["methods"][label] = {
            "changes": rows,
            "max_jump_eV": max(jumps) if jumps else None,
            "max_jump_eV_per_atom": max(jumps) / len(atoms) if jumps else None,
        }
        print(f"{label}: {len(rows)} changes, largest jump {max(jumps, default=0):.2e} eV")
    results["pairs_crossing_the_cutoff"] = pair_crossings(atoms, args.low, args.high)
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "cell_scaling.json", "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
