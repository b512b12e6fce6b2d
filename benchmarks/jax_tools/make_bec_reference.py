"""Parity fixture for the Born-effective-charge model (run INSIDE the lorem-jax venv).

Writes ``tests/resources/parity/bec.npz``: the parameters of a small lorem-jax
``LoremBEC`` with random weights and its outputs on three structures, in float64, in the
layout of the energy-model fixtures (``param/<flax path>``, ``hypers_json``,
``s{k}/...``; see ``tests/resources/parity/README.md``).

Weights: ``model.init`` with a fixed seed, every leaf cast to float64, then independent
Gaussian noise on every leaf (std ``0.1 * (1 + std of the leaf)``, leaves in sorted path
order, ``numpy.random.default_rng([seed, 1])``), so that zero biases and unit LayerNorm
scales do not hide mapping errors.

Structures (positions used as given, not wrapped):

* ``s0``: frame 0 of ``../shared/data/water_bec_lorem_example/bec_example.xyz`` (192
  atoms, periodic cubic 12.417 A);
* ``s1``: its first 24 atoms as a molecule (no cell);
* ``s2``: its first 30 atoms in a triclinic periodic cell.

Every structure is its own batch (``to_batch([sample], [])``); structures are prepared
with jax-pme's ``prepare`` in float64 (lorem-jax's ``to_structure`` hard-codes float32).
Outputs per structure: ``energy``/``energies`` (``LoremBEC.energy``), ``apt_raw`` (the
summed per-stage tensors, before the acoustic sum rule), ``apt`` and ``forces``
(``LoremBEC.predict``), and ``forces_field``/``apt_field``
(``predict(..., electric_field=FIELD)``). Every output is stored twice: as lorem-jax
computes it, and with the suffix ``_exactbinom`` where e3x's Bernstein basis uses exact
binomial coefficients and plain autodiff (``make_reference._use_exact_binomials``; e3x's
``betaln``-based log-binomials are ~1e-6 relative off), which is what lorem_mta computes.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv-jax/bin/python benchmarks/jax_tools/make_bec_reference.py \
        tests/resources/parity/bec.npz
"""

import argparse
import json
import platform
from functools import partial
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "water_bec_lorem_example" / "bec_example.xyz"
SEED = 20261201
HYPERS = {
    "cutoff": 5.0,
    "max_degree": 3,
    "max_degree_lr": 2,
    "num_features": 16,
    "num_radial": 8,
    "num_species": 8,
    "num_spherical_features": 4,
    "cutoff_fn": "cosine_cutoff",
    "radial_basis": "basic_bernstein",
    "lr": True,
    "num_message_passing": 1,
    "equivariant_message_passing": False,
    "initialize_node_features": False,
}
#: uniform electric field of the ``forces_field`` column
FIELD = [0.3, -0.2, 0.5]
TRICLINIC = [[9.0, 0.0, 0.0], [1.0, 8.5, 0.0], [-0.5, 0.75, 9.5]]
PACKAGES = ["lorem-jax", "jax", "jaxlib", "flax", "e3x", "jax-pme", "marathon-train"]
PACKAGES += ["ase", "vesin", "numpy"]


def structures():
    from ase.io import read

    frame = read(DATA, index=0)
    frame.calc = None
    molecule = frame[:24].copy()
    molecule.set_pbc(False)
    molecule.set_cell(np.zeros((3, 3)))
    small = frame[:30].copy()
    small.set_cell(TRICLINIC)
    small.set_pbc(True)
    return [("water_periodic", frame), ("water_molecule", molecule), ("water_triclinic", small)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from flax import traverse_util
    from jaxpme.batched_mixed.batching import prepare
    from lorem.batching import to_batch
    from lorem.models.bec import LoremBEC
    from marathon.data.sample import to_sample

    jax.config.update("jax_default_matmul_precision", "highest")
    model = LoremBEC(**HYPERS)

    def batch_of(atoms):
        structure_fn = partial(_prepare64, prepare=prepare)
        sample = to_sample(atoms, HYPERS["cutoff"], keys=(), structure_fn=structure_fn)
        batch = to_batch([sample], [])
        return jax.tree.map(jnp.asarray, batch)

    named = structures()
    params = model.init(jax.random.key(SEED), *batch_of(named[0][1])[:4])
    flat = traverse_util.flatten_dict(params["params"], sep="/")
    rng = np.random.default_rng([SEED, 1])
    noisy = {}
    for key in sorted(flat):
        value = np.asarray(flat[key], dtype=np.float64)
        noisy[key] = value + rng.normal(size=value.shape) * 0.1 * (1 + value.std())
    params = {
        "params": traverse_util.unflatten_dict(
            {tuple(k.split("/")): v for k, v in noisy.items()}
        )
    }
    params = jax.tree.map(jnp.asarray, params)

    arrays = {f"param/{k}": v for k, v in noisy.items()}
    arrays["hypers_json"] = np.array(json.dumps(HYPERS))
    versions = {p: version(p) for p in PACKAGES}
    versions["x64"] = True
    versions["platform"] = platform.platform()
    arrays["versions_json"] = np.array(json.dumps(versions))
    arrays["param_seed"] = np.array(SEED)
    arrays["num_structures"] = np.array(len(named))
    arrays["electric_field"] = np.array(FIELD, dtype=np.float64)

    for suffix in ("", "_exactbinom"):
        if suffix:
            _use_exact_binomials()
        _evaluate(model, params, named, batch_of, arrays, suffix)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, **arrays)
    print("wrote", args.output, sum(v.size for k, v in noisy.items()), "parameters")


def _evaluate(model, params, named, batch_of, arrays, suffix):
    import jax
    import jax.numpy as jnp

    predict = jax.jit(model.predict)
    predict_field = jax.jit(partial(model.predict, electric_field=jnp.asarray(FIELD)))
    energy_fn = jax.jit(model.energy)
    for k, (name, atoms) in enumerate(named):
        batch = batch_of(atoms)
        sr = batch.sr
        n, atom_mask, pair_mask = len(atoms), np.asarray(sr.atom_mask), np.asarray(sr.pair_mask)
        assert atom_mask[:n].all() and not atom_mask[n:].any()
        assert sr.positions.dtype == jnp.float64
        results = predict(params, batch)
        field = predict_field(params, batch)
        _, (energies, apt_raw) = energy_fn(params, batch)
        prefix = f"s{k}/"
        arrays[prefix + "name"] = np.array(name)
        arrays[prefix + "numbers"] = atoms.numbers.astype(np.int64)
        arrays[prefix + "positions"] = atoms.positions.astype(np.float64)
        arrays[prefix + "cell"] = atoms.cell.array.astype(np.float64)
        arrays[prefix + "pbc"] = atoms.pbc.copy()
        arrays[prefix + "energy" + suffix] = np.asarray(results["energy"])[0]
        arrays[prefix + "energies" + suffix] = np.asarray(energies)[:n]
        arrays[prefix + "forces" + suffix] = np.asarray(results["forces"])[:n]
        arrays[prefix + "forces_field" + suffix] = np.asarray(field["forces"])[:n]
        arrays[prefix + "apt" + suffix] = np.asarray(results["apt"])[:n]
        arrays[prefix + "apt_field" + suffix] = np.asarray(field["apt"])[:n]
        arrays[prefix + "apt_raw" + suffix] = np.asarray(apt_raw)[:n]
        arrays[prefix + "nl_centers"] = np.asarray(sr.centers)[pair_mask].astype(np.int32)
        arrays[prefix + "nl_others"] = np.asarray(sr.others)[pair_mask].astype(np.int32)
        arrays[prefix + "nl_cell_shifts"] = np.asarray(sr.cell_shifts)[pair_mask].astype(
            np.int32
        )
        energy = float(arrays[prefix + "energy" + suffix])
        print(name + suffix, n, "atoms", int(pair_mask.sum()), "pairs, energy", energy)


def _prepare64(atoms, cutoff, prepare, **kwargs):
    """jax-pme's structure preparation in float64 (marathon passes dtype arguments)."""
    return prepare(atoms, cutoff, dtype=np.float64)


def _use_exact_binomials():
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from make_reference import _use_exact_binomials as use_exact

    use_exact()


if __name__ == "__main__":
    main()
