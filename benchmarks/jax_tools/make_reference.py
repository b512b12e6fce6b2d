"""Reference energies/forces of a lorem-jax checkpoint (run INSIDE the lorem-jax venv).

Builds the fixture ``tests/resources/jax_run/`` from a run made by ``make_run.py``:

* copies the experiment's ``model.yaml``/``settings.yaml`` and its ``run/`` folder
  (checkpoints and logs, without the ``plot/`` folders of PNGs), in lorem-jax's own
  on-disk format;
* evaluates a few structures with lorem-jax's own ASE calculator,
  ``lorem.calculator.Calculator.from_checkpoint(checkpoint)`` and writes
  ``reference.npz``.

The calculator casts positions, cell and parameters to float32 (``jax_enable_x64`` off,
``double_precision`` is not used in lorem-jax 0.2.0) and returns float32 forces. The
structures' positions are therefore stored rounded to float32, so that this cast loses
nothing and every column below sees the same geometry:

* ``energy``, ``forces``, ``stress``: ``Calculator.from_checkpoint(..., skin=0)``, float32,
  as a user gets them;
* ``energy_skin025``: the calculator's default ``skin=0.25`` (real-space Ewald sum also over
  pairs between 5.00 and 5.25 A);
* ``energy_f64``, ``forces_f64``, ``stress_f64``: the same calculator and neighbour list in
  a process with ``jax_enable_x64``, parameters and the calculator's batch cast to float64,
  calling its jitted ``predict_fn`` directly (``calculate`` would cast forces to float32);
* ``energy_f64_exactbinom``, ...: as ``*_f64`` with e3x's Bernstein basis evaluated with
  exact binomial coefficients and plain autodiff (e3x uses ``betaln``-based log-binomials,
  ~1e-6 relative off, and a custom JVP); this is what lorem_mta implements.

Usage (from the repository root)::

    OMP_NUM_THREADS=2 .venv-jax/bin/python benchmarks/jax_tools/make_reference.py \
        WORKDIR/experiment tests/resources/jax_run
"""

import argparse
import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "cumulene" / "lorem_jax_example_cumulene_21.xyz"
CHECKPOINT = "R2_E+F"
#: periodic test cell (triclinic, float32-exact numbers)
PERIODIC_CELL = [[14.0, 0.0, 0.0], [1.5, 13.0, 0.0], [-0.75, 0.5, 12.5]]
PACKAGES = ["lorem-jax", "jax", "jaxlib", "flax", "e3x", "jax-pme", "marathon-train"]
PACKAGES += ["optax", "grain", "ase", "vesin", "numpy"]


def structures(split_file: Path):
    """The fixture structures: (name, ase.Atoms), positions rounded to float32."""
    from ase.io import read

    frames = read(DATA, index=":")
    split = {}
    for line in split_file.read_text().splitlines():
        if not line.startswith("#"):
            name, *idx = line.split()
            split[name] = [int(i) for i in idx]
    picks = [
        (f"train_{split['train'][0]}", frames[split["train"][0]].copy()),
        (f"train_{split['train'][1]}", frames[split["train"][1]].copy()),
        (f"valid_{split['valid'][0]}", frames[split["valid"][0]].copy()),
    ]
    periodic = frames[split["train"][2]].copy()
    periodic.set_cell(PERIODIC_CELL)
    periodic.set_pbc(True)
    periodic.positions += np.array([2.0, 3.0, 1.0])  # away from the origin, not wrapped
    picks.append((f"periodic_{split['train'][2]}", periodic))
    out = []
    for name, atoms in picks:
        atoms.calc = None
        atoms.positions = atoms.positions.astype(np.float32).astype(np.float64)
        atoms.cell = atoms.cell.array.astype(np.float32).astype(np.float64)
        out.append((name, atoms))
    return out


def evaluate_f32(checkpoint: Path, atoms_list):
    from lorem.calculator import Calculator

    out = {"energy": [], "forces": [], "energy_skin025": [], "stress": []}
    for atoms in atoms_list:
        periodic = bool(atoms.pbc.all())
        calc = Calculator.from_checkpoint(checkpoint, skin=0.0, stress=periodic)
        calc.calculate(atoms)
        out["energy"].append(calc.results["energy"])
        out["forces"].append(np.asarray(calc.results["forces"], dtype=np.float64))
        stress = calc.results.get("stress", np.full(6, np.nan))
        out["stress"].append(np.asarray(stress, dtype=np.float64))
        skin = Calculator.from_checkpoint(checkpoint)  # default skin 0.25
        skin.calculate(atoms)
        out["energy_skin025"].append(skin.results["energy"])
    return out


def evaluate_f64(checkpoint: Path, atoms_list, exact_binomials: bool):
    import jax
    import jax.numpy as jnp
    from ase.stress import full_3x3_to_voigt_6_stress

    assert jax.config.jax_enable_x64
    if exact_binomials:
        _use_exact_binomials()
    from lorem.calculator import Calculator

    def to64(x):
        x = jnp.asarray(x)
        return x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x

    energies, forces, stresses = [], [], []
    for atoms in atoms_list:
        periodic = bool(atoms.pbc.all())
        calc = Calculator.from_checkpoint(checkpoint, skin=0.0, stress=periodic)
        calc.params = jax.tree.map(to64, calc.params)
        calc.setup(atoms)
        batch = jax.tree.map(to64, calc.batch)
        # the float32 batch lost nothing: positions and cell are float32-exact
        sr = batch.sr
        n = len(atoms)
        assert np.array_equal(np.asarray(sr.positions)[:n], atoms.positions)
        results = calc.predict_fn(calc.params, batch)
        energy = float(results["energy"][sr.structure_mask].squeeze())
        energy += sum(calc.species_weights[int(z)] for z in atoms.numbers)
        energies.append(energy)
        forces.append(np.asarray(results["forces"][sr.atom_mask]).reshape(-1, 3))
        if periodic:
            virial = np.asarray(results["stress"][sr.structure_mask]).reshape(3, 3)
            stresses.append(full_3x3_to_voigt_6_stress(virial / atoms.get_volume()))
        else:
            stresses.append(np.full(6, np.nan))
    return {"energy": energies, "forces": forces, "stress": stresses}


def _use_exact_binomials():
    """Replace e3x's Bernstein helper by exact binomials with plain autodiff."""
    from math import comb

    import e3x.nn.functions.bernstein as bernstein
    import jax.numpy as jnp

    def exact(x, num):
        x = jnp.expand_dims(x, axis=-1)
        n = num - 1
        v = jnp.arange(n + 1)
        binomln = jnp.asarray(np.log([float(comb(n, k)) for k in range(n + 1)]))
        eps = jnp.finfo(x.dtype).epsneg
        mask0, mask1 = x < eps, x > 1 - eps
        mask = jnp.logical_or(mask0, mask1)
        safe_x = jnp.where(mask, 0.5, x)
        y = jnp.where(
            mask, 0, jnp.exp(binomln + v * jnp.log(safe_x) + (n - v) * jnp.log1p(-safe_x))
        )
        y = jnp.where(jnp.logical_and(mask0, v == 0), 1, y)
        return jnp.where(jnp.logical_and(mask1, v == n), 1, y)

    bernstein._bernstein = exact


def x64_main(checkpoint: Path, split: Path, output: Path) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    atoms_list = [a for _, a in structures(split)]
    result = {}
    for suffix, exact in (("f64", False), ("f64_exactbinom", True)):
        for key, values in evaluate_f64(checkpoint, atoms_list, exact).items():
            result[f"{key}_{suffix}"] = values
    np.savez(output, **{k: np.array(v, dtype=object) for k, v in result.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, help="experiment folder of make_run.py")
    parser.add_argument("fixture", type=Path, help="output folder")
    parser.add_argument("--x64-to", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    experiment = args.experiment.resolve()
    split = experiment.parent / "datasets" / "cumulene" / "split.txt"
    checkpoint = experiment / "run" / "checkpoints" / CHECKPOINT
    if args.x64_to is not None:
        x64_main(checkpoint, split, args.x64_to)
        return

    fixture = args.fixture.resolve()
    if fixture.exists():
        shutil.rmtree(fixture)
    fixture.mkdir(parents=True)
    for name in ("model.yaml", "settings.yaml"):
        shutil.copy(experiment / name, fixture / name)
    shutil.copytree(
        experiment / "run",
        fixture / "run",
        ignore=shutil.ignore_patterns("plot", "*.backup", "__pycache__"),
    )
    shutil.copy(split, fixture / "split.txt")

    named = structures(split)
    atoms_list = [a for _, a in named]
    reference = {k: v for k, v in evaluate_f32(checkpoint, atoms_list).items()}

    tmp = fixture / "_x64.npz"
    subprocess.run(
        [sys.executable, __file__, str(experiment), str(fixture), "--x64-to", str(tmp)],
        check=True,
    )
    with np.load(tmp, allow_pickle=True) as data:
        for key in data.files:
            reference[key] = list(data[key])
    tmp.unlink()

    arrays = {
        "names": np.array([n for n, _ in named]),
        "numbers": np.concatenate([a.numbers for a in atoms_list]).astype(np.int32),
        "n_atoms": np.array([len(a) for a in atoms_list], dtype=np.int32),
        "positions": np.concatenate([a.positions for a in atoms_list]),
        "cells": np.stack([a.cell.array for a in atoms_list]),
        "pbc": np.stack([a.pbc for a in atoms_list]),
        "versions_json": np.array(json.dumps({p: version(p) for p in PACKAGES})),
    }
    for key, values in reference.items():
        if key.startswith("forces"):
            arrays[key] = np.concatenate([np.asarray(f, dtype=np.float64) for f in values])
        else:
            arrays[key] = np.array([np.asarray(v, dtype=np.float64) for v in values])
    np.savez_compressed(fixture / "reference.npz", **arrays)

    summary = {k: v.tolist() for k, v in arrays.items() if k.startswith("energy")}
    summary["names"] = arrays["names"].tolist()
    for key in ("energy", "energy_skin025", "energy_f64"):
        diff = np.abs(arrays[key] - arrays["energy_f64_exactbinom"])
        summary[f"max |{key} - energy_f64_exactbinom|"] = float(diff.max())
    for key in ("forces", "forces_f64"):
        diff = np.abs(arrays[key] - arrays["forces_f64_exactbinom"])
        summary[f"max |{key} - forces_f64_exactbinom|"] = float(diff.max())
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
