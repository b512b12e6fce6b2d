"""The exported model runs without Python, from C++, the way LAMMPS runs it.

Builds ``examples/cpp/run_model`` against the libtorch, metatensor and metatomic-torch
libraries of the installed wheels, exports a small float64 LOREM model with the
long-range block in a fresh Python process that never loads sphericart (so the file
lists no compiled extension), and checks the energy, forces and virial printed by the
C++ program against the Python evaluation: once for the plain periodic system and once
for local + ghost atoms with ``selected_atoms``, as LAMMPS' ``pair_style metatomic``
builds it on one MPI rank.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ase.build
import numpy as np
import pytest
from _helpers import MEASURED, molecule, nacl_cell, relative_error

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "examples" / "cpp"
TOLERANCE = 1e-10

#: build and run times, for the report at the end of the module
TIMINGS = {}


def _prefix_path():
    """CMake configuration folders of the wheels, or ``None`` if one is missing."""
    import metatensor
    import metatensor.torch
    import metatomic.torch
    import torch

    folders = []
    for module in (
        torch.utils,
        metatensor.utils,
        metatensor.torch.utils,
        metatomic.torch.utils,
    ):
        folder = getattr(module, "cmake_prefix_path", None)
        if folder is None or not os.path.isdir(folder):
            return None
        folders.append(folder)
    return ";".join(folders)


@pytest.fixture(scope="module")
def executable(tmp_path_factory):
    """The compiled ``run_model`` program (skips without a compiler or CMake)."""
    cmake = shutil.which("cmake")
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cmake is None or compiler is None:
        pytest.skip("the C++ test needs cmake and a C++ compiler")
    prefix = _prefix_path()
    if prefix is None:
        pytest.skip("no CMake config found in the torch, metatensor or metatomic-torch wheels")

    build = tmp_path_factory.mktemp("cpp-build")
    start = time.perf_counter()
    configure = subprocess.run(
        [cmake, "-S", str(SOURCE), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    compile_ = subprocess.run(
        [cmake, "--build", str(build), "--parallel", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compile_.returncode == 0, compile_.stdout[-3000:] + compile_.stderr[-3000:]
    TIMINGS["build"] = time.perf_counter() - start
    path = build / "run_model"
    assert path.is_file()
    return path


EXPORT = textwrap.dedent(
    """
    import json, sys

    import ase
    import torch

    sys.path.insert(0, sys.argv[1])  # the tests folder, for _helpers
    from _helpers import make_model

    from lorem_mta.model import export
    from lorem_mta.utils import predict

    model = make_model(max_degree_lr=2)
    results = {}
    for name, data in json.loads(sys.argv[3]).items():
        prediction = predict(model, [ase.Atoms(**data)])
        results[name] = {
            "energy": float(prediction.energies.detach()[0]),
            "forces": prediction.forces[0].detach().numpy().tolist(),
            "virial": prediction.virials[0].detach().numpy().tolist(),
        }
    export(model, sys.argv[2], torch.float64)
    results["sphericart"] = "sphericart.torch" in sys.modules
    print("RESULTS:" + json.dumps(results))
    """
)


def _structures():
    """Sheared 8-atom NaCl cell (atoms moved out of the box), a small cell, a molecule."""
    crystal = nacl_cell(seed=7)
    crystal.positions[0] -= 0.3 * crystal.cell.array[0]  # LAMMPS would wrap it: so do we
    crystal.positions[3] += crystal.cell.array[2]
    # 2-atom cell with ~4 A cell vectors, below the 5 A cutoff: several images of each atom
    small = ase.build.bulk("NaCl", "rocksalt", a=5.64)
    small.rattle(0.05, seed=8)
    return {"periodic": crystal, "small-cell": small, "molecule": molecule()}


def _write_structure(atoms, path):
    with open(path, "w") as file:
        file.write("cell\n")
        for row in atoms.cell.array:
            file.write(" ".join(f"{x:.17g}" for x in row) + "\n")
        file.write("pbc " + " ".join(str(int(p)) for p in atoms.pbc) + "\n")
        file.write(f"atoms {len(atoms)}\n")
        for number, position in zip(atoms.numbers, atoms.positions, strict=True):
            file.write(f"{number} " + " ".join(f"{x:.17g}" for x in position) + "\n")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """model.pt exported in a fresh process, structure files and the Python reference."""
    directory = tmp_path_factory.mktemp("cpp-model")
    path = directory / "model.pt"
    structures = _structures()
    data = {
        name: {
            "numbers": atoms.numbers.tolist(),
            "positions": atoms.positions.tolist(),
            "cell": atoms.cell.array.tolist(),
            "pbc": atoms.pbc.tolist(),
        }
        for name, atoms in structures.items()
    }
    completed = subprocess.run(
        [sys.executable, "-c", EXPORT, str(Path(__file__).parent), str(path), json.dumps(data)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULTS:")]
    reference = json.loads(lines[-1][len("RESULTS:") :])
    # the model file must list no compiled extension: no sphericart at export
    assert reference.pop("sphericart") is False

    files = {}
    for name, atoms in structures.items():
        files[name] = directory / f"{name}.txt"
        _write_structure(atoms, files[name])
    return path, files, reference, structures


def _parse(output: str) -> dict:
    lines = output.splitlines()
    result = {}
    k = 0
    while k < len(lines):
        words = lines[k].split()
        k += 1
        if len(words) == 2:
            result[words[0]] = float(words[1])
        elif words and words[0] in ("forces", "virial", "stress"):
            n_rows = int(result["atoms"]) if words[0] == "forces" else 3
            rows = [[float(x) for x in line.split()] for line in lines[k : k + n_rows]]
            result[words[0]] = np.array(rows)
            k += n_rows
    return result


def _run(executable, exported, name, *flags) -> dict:
    path, files, _, _ = exported
    # a clean environment: no Python path, the libraries come from the RPATH
    env = {"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    completed = subprocess.run(
        [str(executable), str(path), str(files[name]), *flags],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    TIMINGS[" ".join(["run", name, *flags])] = time.perf_counter() - start
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return _parse(completed.stdout)


def _check(result, exported, name):
    reference, atoms = exported[2][name], exported[3][name]
    assert result["atoms"] == len(atoms)
    assert math.isinf(result["interaction_range"])  # LAMMPS: one MPI rank only
    assert relative_error(result["energy"], reference["energy"]) < TOLERANCE
    assert relative_error(result["forces"], np.array(reference["forces"])) < TOLERANCE
    if atoms.pbc.all():
        assert relative_error(result["virial"], np.array(reference["virial"])) < TOLERANCE
        virial = result["virial"]
        np.testing.assert_allclose(result["stress"], virial / atoms.get_volume(), rtol=1e-14)


@pytest.mark.parametrize("name", ["periodic", "small-cell", "molecule"])
def test_cpp_matches_python(executable, exported, name):
    result = _run(executable, exported, name, "--check-consistency")
    _check(result, exported, name)
    assert result["ghosts"] == 0


@pytest.mark.parametrize("name", ["periodic", "small-cell"])
def test_cpp_lammps_like_ghosts(executable, exported, name):
    """Local + ghost atoms, ``selected_atoms`` = local atoms, pairs remapped."""
    result = _run(executable, exported, name, "--ghosts", "--check-consistency")
    _check(result, exported, name)
    # a 5 A ghost shell around a 4-6 A cell holds many images of every atom
    assert result["ghosts"] > 10 * result["atoms"]
    periodic = _run(executable, exported, name)
    assert result["pairs"] == periodic["pairs"]


@pytest.fixture(scope="module", autouse=True)
def _report():
    """Print build and run times and the deviations at the end (``pytest -s``)."""
    yield
    worst = {key.split("::")[-1]: value for key, value in MEASURED.items() if "test_cpp" in key}
    print(f"\nC++ build and run times (s): {json.dumps(TIMINGS)}")
    print(f"largest relative deviations C++ vs Python: {json.dumps(worst)}")
