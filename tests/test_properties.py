"""Property-based tests (hypothesis): invariances and finiteness on random structures.

Random small structures: species drawn from the model's types, positions with a minimum
distance, with or without a (random, possibly left-handed) periodic cell. Few examples,
derandomized, so that CI runs the same structures every time.
"""

import ase
import numpy as np
import pytest
import torch
from _helpers import ATOMIC_TYPES, random_rotation, total_energy, transform, variant_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorem_mta.utils import predict

SETTINGS = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
#: smallest distance between two generated atoms (A); the model refuses below 0.1
MIN_DISTANCE = 0.8
TOLERANCE = 1e-9


def _place(rng: np.random.Generator, n_atoms: int, box: np.ndarray, periodic: bool):
    """Random positions in ``box`` keeping every pair (and image) ``MIN_DISTANCE`` apart."""
    inverse = np.linalg.inv(box)
    positions = []
    for _ in range(200 * n_atoms):
        if len(positions) == n_atoms:
            break
        candidate = rng.random(3) @ box
        if positions:
            delta = np.array(positions) - candidate
            if periodic:
                fractional = delta @ inverse
                delta = (fractional - np.round(fractional)) @ box
            if np.linalg.norm(delta, axis=1).min() < MIN_DISTANCE:
                continue
        positions.append(candidate)
    return np.array(positions)


@st.composite
def structures(draw, periodic=None):
    """A random structure of 1-6 atoms, periodic or not."""
    if periodic is None:
        periodic = draw(st.booleans())
    n_atoms = draw(st.integers(min_value=1, max_value=6))
    numbers = draw(st.lists(st.sampled_from(ATOMIC_TYPES), min_size=n_atoms, max_size=n_atoms))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = np.random.default_rng(seed)
    if periodic:
        lengths = draw(st.lists(st.floats(3.5, 7.0), min_size=3, max_size=3))
        box = np.diag(lengths) + rng.uniform(-0.8, 0.8, size=(3, 3)) * (1 - np.eye(3))
        if draw(st.booleans()):
            box = box[[1, 0, 2]]  # left-handed
    else:
        box = np.eye(3) * draw(st.floats(2.0, 6.0))
    positions = _place(rng, n_atoms, box, periodic)
    atoms = ase.Atoms(numbers=numbers[: len(positions)], positions=positions)
    if periodic:
        atoms.cell = box
        atoms.pbc = True
    return atoms


def _energy(atoms) -> float:
    return total_energy(variant_model("lr2"), atoms)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(abs(a), abs(b), 1.0)


@SETTINGS
@given(atoms=structures(), seed=st.integers(0, 2**32 - 1))
def test_rotation_translation_invariance(atoms, seed):
    rng = np.random.default_rng(seed)
    rotation = random_rotation(rng, improper=bool(rng.integers(2)))
    moved = transform(atoms, rotation, rng.normal(scale=5.0, size=3))
    assert _close(_energy(moved), _energy(atoms))


@SETTINGS
@given(atoms=structures(), seed=st.integers(0, 2**32 - 1))
def test_permutation_invariance(atoms, seed):
    order = np.random.default_rng(seed).permutation(len(atoms))
    assert _close(_energy(atoms[order]), _energy(atoms))


@SETTINGS
@given(
    atoms=structures(periodic=True),
    repeats=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2)),
)
def test_supercell_extensivity(atoms, repeats):
    n = int(np.prod(repeats))
    assert _close(_energy(atoms.repeat(repeats)), n * _energy(atoms))


@pytest.mark.parametrize("variant", ["lr2", "sr"])
@SETTINGS
@given(atoms=structures())
def test_outputs_finite(variant, atoms):
    model = variant_model(variant)
    names = ["feature"] + (["lorem::charges", "lorem::potentials"] if variant == "lr2" else [])
    prediction = predict(model, [atoms], extra_outputs=names)
    assert torch.isfinite(prediction.energies).all()
    assert torch.isfinite(prediction.forces[0]).all()
    assert torch.isfinite(prediction.virials).all()
    for name in names:
        for block in prediction.outputs[name].blocks():
            assert torch.isfinite(block.values).all()
