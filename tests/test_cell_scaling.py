"""Variable-cell runs: the energy is continuous where the long-range settings change.

When a barostat scales the cell, the number of Ewald k-vectors and the PME mesh change
in steps. Across such a step (found by bisection) the energy must not jump:
``E(s* + eps) - E(s* - eps)`` equals the smooth change ``2 eps dE/ds`` up to round-off
(``benchmarks/cell_scaling.py`` measures the same on a 64-atom cell; see
``docs/engines.rst``, "Variable-cell runs").
"""

import numpy as np
import pytest
import torch
from _helpers import CUTOFF, make_model, nacl_cell, pair_distances, total_energy

from lorem_mta.modules.long_range import CoulombPotentials, ewald_kvectors
from lorem_mta.modules.lr_cost import mesh_shape

EPS = 1e-10


def _coulomb(model) -> CoulombPotentials:
    return next(m for m in model.modules() if isinstance(m, CoulombPotentials))


def _setting(model, cell: np.ndarray, method: str):
    """The discrete setting of the scaled cell: k-vector count or PME mesh."""
    sums = _coulomb(model)
    cell = torch.tensor(cell, dtype=torch.float64)
    if method == "ewald":
        return int(ewald_kvectors(cell, sums.planner.ewald_wavelength()).shape[0])
    return tuple(mesh_shape(cell, sums.mesh_spacing).tolist())


def _scaled(atoms, scale: float):
    scaled = atoms.copy()
    scaled.set_cell(atoms.cell.array * scale, scale_atoms=True)
    return scaled


def _change_point(model, atoms, method: str, low: float, high: float) -> float:
    """The first scale factor in ``[low, high]`` where the setting changes."""
    grid = np.linspace(low, high, 401)
    values = [_setting(model, atoms.cell.array * s, method) for s in grid]
    index = next((i for i in range(len(grid) - 1) if values[i] != values[i + 1]), None)
    assert index is not None, f"no {method} setting change between {low} and {high}"
    a, b = grid[index], grid[index + 1]
    while b - a > 1e-13:
        middle = 0.5 * (a + b)
        if _setting(model, atoms.cell.array * middle, method) == values[index]:
            a = middle
        else:
            b = middle
    return 0.5 * (a + b)


@pytest.mark.parametrize(
    "method, accuracy, low, high, tolerance",
    # the reference Ewald sum adds k-vectors where its terms are ~1e-9 of the largest:
    # round-off only (8e-15 eV measured); the approximate sums (accuracy 1e-5) change by
    # up to ~1e-6 eV on a 64-atom cell (here 1e-12 and 1e-7 eV). The PME mesh of this
    # cell also changes where |h_1| = cutoff (s = 0.886), where every atom's periodic
    # image crosses the cutoff; the range below avoids that point (see docs/engines.rst)
    [
        ("ewald", None, 0.9, 1.1, 1e-10),
        ("ewald", 1e-5, 0.9, 1.1, 1e-6),
        ("pme", 1e-5, 0.95, 1.2, 1e-6),
    ],
    ids=["ewald-reference", "ewald-1e-5", "pme-1e-5"],
)
def test_energy_continuous_under_cell_scaling(method, accuracy, low, high, tolerance):
    model = make_model(max_degree=2, long_range_method=method, long_range_accuracy=accuracy)
    atoms = nacl_cell()
    point = _change_point(model, atoms, method, low, high)
    below = _setting(model, atoms.cell.array * (point - EPS), method)
    above = _setting(model, atoms.cell.array * (point + EPS), method)
    assert below != above  # the two energies really use different settings
    distances = pair_distances(_scaled(atoms, point), 2 * CUTOFF)
    assert np.abs(distances - CUTOFF).min() > 1e-6  # no pair crosses the cutoff here
    change = total_energy(model, _scaled(atoms, point + EPS)) - total_energy(
        model, _scaled(atoms, point - EPS)
    )
    slope = (
        total_energy(model, _scaled(atoms, point + 1e-4))
        - total_energy(model, _scaled(atoms, point - 1e-4))
    ) / 2e-4
    assert abs(slope) > 1e-3  # a non-trivial energy surface
    assert abs(change - 2 * EPS * slope) < tolerance, (change, 2 * EPS * slope)
