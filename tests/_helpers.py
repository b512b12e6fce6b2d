"""Shared helpers for test_symmetries.py, test_model.py and test_export.py.

Small LOREM models with perturbed (non-trivial) weights, small structures, random
(improper) rotations, real Wigner D matrices in sphericart's basis, and thin wrappers
around :py:func:`lorem_mta.utils.predict` returning per-atom quantities.
"""

import functools
import os
from typing import Dict, List, Optional

import ase
import ase.build
import numpy as np
import torch
from metatensor.torch import Labels, TensorMap
from metatomic.torch import ModelOutput

from lorem_mta.model import LoremModel
from lorem_mta.modules import LoremBackbone
from lorem_mta.modules.tensor_product import EquivariantLinear, TensorProduct
from lorem_mta.utils import attach_neighbors, system_from_atoms

ATOMIC_TYPES = [1, 6, 8, 11, 17]
CUTOFF = 5.0
#: reciprocal resolution of the reference Ewald sum, cutoff / 8
LR_WAVELENGTH = CUTOFF / 8.0

#: small model variants, name -> LoremBackbone keyword arguments
VARIANTS: Dict[str, dict] = {
    "lr2": {"max_degree_lr": 2},
    "lr1-mp1-eq": {"max_degree_lr": 1, "num_message_passing": 1},
    "lr0-mp1-scalar": {
        "max_degree_lr": 0,
        "num_message_passing": 1,
        "equivariant_message_passing": False,
    },
    "sr": {"lr": False},
    "sr-mp1-eq-noinit": {
        "lr": False,
        "num_message_passing": 1,
        "initialize_node_features": False,
    },
}


def make_model(
    seed: int = 0,
    noise: float = 0.1,
    spherical_gain: float = 2.0,
    atomic_types: Optional[List[int]] = None,
    **kwargs,
) -> LoremModel:
    """Small float64 ``LoremModel`` with every parameter perturbed by noise.

    Freshly initialised biases are zero and LayerNorm scales one; the noise makes every
    parameter non-trivial so that symmetry tests are able to fail. The weights of the
    equivariant layers are also multiplied by ``spherical_gain``: with the default
    initialisation the spherical features shrink at every tensor product (l = 1 charges
    of a model with one equivariant message-passing step are ~1e-12), which would make
    the equivariance checks of the charges vacuous.
    """
    torch.manual_seed(seed)
    options = {
        "cutoff": CUTOFF,
        "max_degree": 3,
        "num_features": 16,
        "num_spherical_features": 4,
        "num_radial": 8,
    }
    options.update(kwargs)
    backbone = LoremBackbone(**options)
    model = LoremModel(backbone, atomic_types or ATOMIC_TYPES).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(noise * torch.randn_like(parameter))
        for module in model.modules():
            if isinstance(module, (EquivariantLinear, TensorProduct)):
                module.weight.mul_(spherical_gain)
    return model.eval()


@functools.cache
def _cached_model(name: str) -> LoremModel:
    return make_model(seed=sum(map(ord, name)), **VARIANTS[name])


def variant_model(name: str) -> LoremModel:
    """Cached model of :py:data:`VARIANTS` (never modify it in place; copy first)."""
    return _cached_model(name)


def nacl_cell(seed: int = 1, rattle: float = 0.1) -> ase.Atoms:
    """Sheared (triclinic) and rattled 8-atom rocksalt NaCl cell."""
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    shear = np.array([[1.0, 0.1, 0.05], [0.0, 1.0, 0.08], [0.0, 0.0, 1.0]])
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def molecule(seed: int = 2, name: str = "CH3OH", rattle: float = 0.05) -> ase.Atoms:
    """Rattled non-periodic molecule (no inversion centre)."""
    atoms = ase.build.molecule(name)
    atoms.rattle(rattle, seed=seed)
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    return atoms


def nacl_cluster(seed: int = 3) -> ase.Atoms:
    """Rattled non-periodic Na4Cl4 cluster (a charged-ion-like molecule)."""
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    atoms.positions = atoms.positions * 0.9
    atoms.rattle(0.15, seed=seed)
    return atoms


def random_rotation(rng: np.random.Generator, improper: bool = False) -> np.ndarray:
    """Uniform random proper rotation, times ``-1`` (inversion) when ``improper``."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return -q if improper else q


def transform(
    atoms: ase.Atoms, rotation: np.ndarray, translation: Optional[np.ndarray] = None
) -> ase.Atoms:
    """Apply ``r -> R r + t`` to positions and ``h -> R h`` to the lattice vectors."""
    new = atoms.copy()
    positions = atoms.positions @ rotation.T
    if translation is not None:
        positions = positions + translation
    new.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    new.positions = positions
    return new


def wigner_d(degree: int, rotation: np.ndarray, n_points: int = 200) -> np.ndarray:
    """Real Wigner D matrix of ``rotation`` in sphericart's basis (``m = -l..l``).

    Solves ``Y(R x) = D Y(x)`` by least squares on random unit vectors. For an improper
    ``rotation`` this includes the ``(-1)^l`` of a proper (``o3_sigma = 1``) tensor.
    """
    import sphericart.torch  # here: fresh processes build test models without loading it

    rng = np.random.default_rng(12345)
    x = rng.normal(size=(n_points, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    calculator = sphericart.torch.SphericalHarmonics(degree)
    start, stop = degree * degree, (degree + 1) ** 2
    y = calculator(torch.tensor(x))[:, start:stop].numpy()
    y_rotated = calculator(torch.tensor(x @ rotation.T))[:, start:stop].numpy()
    d_transposed, *_ = np.linalg.lstsq(y, y_rotated, rcond=None)
    return d_transposed.T


def predict_per_atom(
    model: torch.nn.Module,
    atoms: ase.Atoms,
    dtype: torch.dtype = torch.float64,
    outputs: Optional[List[str]] = None,
    selected_atoms: Optional[Labels] = None,
) -> Dict[str, TensorMap]:
    """Run ``model`` on one structure requesting per-atom ``outputs`` (no gradients)."""
    system = system_from_atoms(atoms, dtype)
    attach_neighbors(model, [system])
    requested = {name: ModelOutput(sample_kind="atom") for name in (outputs or ["energy"])}
    with torch.no_grad():
        return model([system], requested, selected_atoms)


def total_energy(model: torch.nn.Module, atoms: ase.Atoms) -> float:
    """Total energy of one structure, without building the autograd graph."""
    system = system_from_atoms(atoms, torch.float64)
    attach_neighbors(model, [system])
    with torch.no_grad():
        outputs = model([system], {"energy": ModelOutput(sample_kind="system")})
    return float(outputs["energy"].block().values[0, 0])


def _as_float64(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64)
    # not torch.as_tensor(x): python floats would become float32
    return torch.from_numpy(np.array(x, dtype=np.float64))


#: worst deviation seen by every test (filled by :py:func:`record`), for reporting
MEASURED: Dict[str, float] = {}


def record(value: float) -> float:
    """Remember the worst ``value`` of the running test in :py:data:`MEASURED`."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
    MEASURED[test] = max(MEASURED.get(test, 0.0), float(value))
    return value


def relative_error(a, b) -> float:
    """``max |a - b| / max |b|`` for tensors, arrays or numbers (recorded)."""
    a, b = _as_float64(a), _as_float64(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    if b.numel() == 0:
        return 0.0
    return record(float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300))


def pair_distances(atoms: ase.Atoms, cutoff: float) -> np.ndarray:
    """All pair distances below ``cutoff`` (periodic images included)."""
    from ase.neighborlist import neighbor_list

    if not atoms.pbc.any():
        d = atoms.get_all_distances()
        return d[np.triu_indices(len(atoms), 1)]
    return neighbor_list("d", atoms, cutoff)


def assert_safe_for_finite_differences(atoms: ase.Atoms, margin: float = 1e-3) -> None:
    """No pair near the cutoff, and no Ewald k-grid size change under small strains."""
    distances = pair_distances(atoms, CUTOFF + 1.0)
    assert np.abs(distances - CUTOFF).min() > margin
    if atoms.pbc.all():
        ratios = np.linalg.norm(atoms.cell.array, axis=1) / LR_WAVELENGTH
        assert np.abs(ratios - np.round(ratios)).min() > margin


def energy_target(path: str) -> dict:
    """metatrain target options: energies and forces of an ASE-readable file, in eV."""
    return {
        "quantity": "energy",
        "read_from": path,
        "reader": "ase",
        "key": "energy",
        "unit": "eV",
        "type": "scalar",
        "sample_kind": "system",
        "num_subtargets": 1,
        "forces": {"read_from": path, "reader": "ase", "key": "forces"},
        "stress": False,
        "virial": False,
    }
