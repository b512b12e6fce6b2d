"""LOREM in a real LAMMPS (``pair_style metatomic``) against metatomic-ase.

Runs ``examples/lammps/in.lorem`` with the ``lmp`` executable of
``scripts/build-lammps.sh`` on data files from ``examples/lammps/write_data.py`` and
compares with metatomic-ase's ``MetatomicCalculator`` on the same structure and the same
exported float64 model:

* energy, forces and virial of a cubic and a triclinic NaCl supercell (long-range model,
  one rank);
* a 200-step NVE run: the LAMMPS trajectory equals an ASE velocity-Verlet trajectory from
  the same velocities, and its energy drift is bounded;
* a model without the long-range block on 1 and 2 MPI ranks; the long-range model is
  refused on 2 ranks;
* ``pair_style lorem`` (``lammps/LOREM``, the stages of :py:mod:`lorem_mta.stages`) on 1, 2
  and 4 ranks: the exact long-range energy, forces and virial, and the same NVE
  trajectory on every rank count.

The executable is ``$LOREM_LMP``, else ``${LOREM_LAMMPS_DIR:-~/.cache/lorem_mta/lammps}/lmp``.
Without it the tests are skipped, unless ``LOREM_REQUIRE_LAMMPS=1`` (set by ``.ci/run``),
where they fail: CI must run them.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ase
import ase.build
import ase.io
import ase.units
import numpy as np
import pytest
from _helpers import MEASURED, relative_error

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lammps"
INPUT = EXAMPLE / "in.lorem"
TOLERANCE = 1e-10
TYPES = [11, 17]
#: LAMMPS' metal-unit conversion from eV/Å^3 to bar (update.cpp, force->nktv2p)
EV_A3_TO_BAR = 1.6021765e6
N_STEPS = 200
#: NVE steps of pair_style lorem compared across 1, 2 and 4 ranks
N_STEPS_RANKS = 50
TIMESTEP_PS = 0.0005
#: bound on max |E_tot(t) - E_tot(0)| / N_atoms over the NVE run (eV/atom)
DRIFT_BOUND = 1e-4

#: input line that writes unwrapped positions and forces at the end of the run
FINAL_DUMP = "write_dump all custom {} id xu yu zu fx fy fz modify sort id format float %.17g\n"

#: run times of LAMMPS and of the references, for the report at the end of the module
TIMINGS = {}


def _load_write_data():
    spec = importlib.util.spec_from_file_location("write_data", EXAMPLE / "write_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_data = _load_write_data()


def _missing(reason: str):
    if os.environ.get("LOREM_REQUIRE_LAMMPS") == "1":
        pytest.fail(reason + " (LOREM_REQUIRE_LAMMPS=1: run scripts/build-lammps.sh)")
    pytest.skip(reason + ": build it with `bash scripts/build-lammps.sh`")


@pytest.fixture(scope="module")
def lmp():
    """Path of the LAMMPS executable (skips, or fails in CI, when there is none)."""
    if "LOREM_LMP" in os.environ:
        path = Path(os.environ["LOREM_LMP"])
    else:
        default = Path.home() / ".cache" / "lorem_mta" / "lammps"
        path = Path(os.environ.get("LOREM_LAMMPS_DIR", default)) / "lmp"
    if not (path.is_file() and os.access(path, os.X_OK)):
        _missing(f"no LAMMPS executable at {path}")
    completed = subprocess.run([str(path), "-h"], capture_output=True, text=True, check=False)
    if "metatomic" not in completed.stdout:
        _missing(f"{path} has no pair_style metatomic")
    return path


@pytest.fixture(scope="module")
def mpirun(lmp):
    """``mpirun`` command prefix for a LAMMPS built with MPI (skips otherwise)."""
    completed = subprocess.run([str(lmp), "-h"], capture_output=True, text=True, check=False)
    if "MPI STUBS" in completed.stdout:
        _missing(f"{lmp} was built without MPI")
    executable = shutil.which("mpirun")
    if executable is None:
        _missing("mpirun not found (apt-get install openmpi-bin)")
    return [executable, "--oversubscribe"]


EXPORT = textwrap.dedent(
    """
    import sys

    import torch

    sys.path.insert(0, sys.argv[1])  # the tests folder, for _helpers
    from _helpers import make_model

    from lorem_mta.model import export
    from lorem_mta.stages import export_stages

    # long range (Ewald; PME), and short range only with one message-passing step;
    # metatomic models for pair_style metatomic and ASE, stages for pair_style lorem; a
    # model with raw (non-neutral) latent charges, which slabs refuse
    long_range = make_model(max_degree_lr=2)
    short_range = make_model(lr=False, num_message_passing=1)
    pme = make_model(max_degree_lr=1, long_range_method="pme", seed=7)
    raw = make_model(max_degree_lr=1, neutral_charges=False, seed=8)
    direct = make_model(max_degree_lr=1, long_range_method="direct", seed=10)
    export(long_range, sys.argv[2], torch.float64)
    export(short_range, sys.argv[3], torch.float64)
    export_stages(long_range, sys.argv[4], torch.float64)
    export_stages(short_range, sys.argv[5], torch.float64)
    export(pme, sys.argv[6], torch.float64)
    export_stages(pme, sys.argv[7], torch.float64)
    export(raw, sys.argv[8], torch.float64)
    export_stages(raw, sys.argv[9], torch.float64)
    export(direct, sys.argv[10], torch.float64)
    export_stages(direct, sys.argv[11], torch.float64)
    assert "sphericart.torch" not in sys.modules  # the files list no extension
    """
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Long-range and short-range float64 models, exported in a fresh process.

    A fresh process never loads sphericart, so the files list no compiled extension and
    LAMMPS loads them without ``extensions``.
    """
    directory = tmp_path_factory.mktemp("lammps-models")
    paths = {
        "lr": directory / "lr.pt",
        "sr": directory / "sr.pt",
        "lr-stages": directory / "lr-stages.pt",
        "sr-stages": directory / "sr-stages.pt",
        "pme": directory / "pme.pt",
        "pme-stages": directory / "pme-stages.pt",
        "raw": directory / "raw.pt",
        "raw-stages": directory / "raw-stages.pt",
        "direct": directory / "direct.pt",
        "direct-stages": directory / "direct-stages.pt",
    }
    completed = subprocess.run(
        [sys.executable, "-c", EXPORT, str(Path(__file__).parent), *map(str, paths.values())],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return paths


def _cubic() -> ase.Atoms:
    """Rattled 64-atom NaCl supercell (2x2x2 cubic cells, 11.28 Å)."""
    return write_data.nacl_supercell(2, rattle=0.1, seed=3)


def _triclinic() -> ase.Atoms:
    """Sheared, rattled 64-atom NaCl cell, rotated so that LAMMPS must rotate it back."""
    atoms = write_data.nacl_supercell(2, rattle=0.1, seed=4)
    shear = np.array([[1.0, 0.12, -0.07], [0.0, 1.0, 0.09], [0.0, 0.0, 1.0]])
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    angle = 0.4
    rotation = np.array(
        [
            [np.cos(angle), -np.sin(angle), 0.0],
            [np.sin(angle), np.cos(angle), 0.0],
            [0.0, 0.0, 1.0],
        ]
    )
    atoms.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    atoms.positions = atoms.positions @ rotation.T
    return atoms


def _slab() -> ase.Atoms:
    """Rattled NaCl bilayer (2x2 cubic cells in-plane, 32 atoms) with 15 Å of vacuum."""
    atoms = write_data.nacl_supercell(2, rattle=0.0)
    atoms = atoms[atoms.positions[:, 2] < 3.0]
    atoms.positions[:, 2] += 7.5
    atoms.cell[2, 2] = 2.82 + 15.0
    atoms.rattle(0.1, seed=9)
    atoms.pbc = [True, True, False]
    return atoms


STRUCTURES = {"cubic": _cubic, "triclinic": _triclinic}


def _parse_thermo(log: str) -> list:
    """Thermo tables of every ``run`` in a LAMMPS log: a list of ``{column: array}``."""
    tables = []
    lines = log.splitlines()
    k = 0
    while k < len(lines):
        words = lines[k].split()
        if words[:1] == ["Step"]:
            rows = []
            k += 1
            while k < len(lines) and not lines[k].startswith("Loop time"):
                rows.append([float(x) for x in lines[k].split()])
                k += 1
            tables.append(dict(zip(words, np.array(rows).T, strict=True)))
        k += 1
    return tables


def _parse_dump(path: Path) -> dict:
    """The last frame of a ``dump custom`` file: ``{column: array}`` sorted by id."""
    lines = path.read_text().splitlines()
    start = max(k for k, line in enumerate(lines) if line.startswith("ITEM: ATOMS"))
    columns = lines[start].split()[2:]
    values = np.array([[float(x) for x in line.split()] for line in lines[start + 1 :]])
    return dict(zip(columns, values.T, strict=True))


def _run_lammps(lmp, directory, model, atoms, *, ranks=None, extra="", variables=None):
    """Run in.lorem on ``atoms``; return (thermo tables, step-0 forces, process, log).

    ``ranks`` runs through ``mpirun -np ranks`` (a list: the mpirun prefix and count);
    ``extra`` holds input lines appended after in.lorem.
    """
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "system.data"
    write_data.write_data(
        atoms, str(data), TYPES, velocities=atoms.get_velocities() is not None
    )
    script = directory / "in.test"
    script.write_text(f"include {INPUT}\n{textwrap.dedent(extra)}")
    dump = directory / "forces.dump"
    command = [
        str(lmp),
        "-in",
        str(script),
        "-log",
        str(directory / "log.lammps"),
        "-var",
        "MODEL",
        str(model),
        "-var",
        "DATA",
        str(data),
        "-var",
        "DUMP",
        str(dump),
        "-var",
        "TYPES",
        " ".join(str(t) for t in TYPES),
    ]
    for name, value in (variables or {}).items():
        command += ["-var", name, str(value)]
    # LOREM_LAMMPS_TIMING: pair_style lorem reports its method and timings on stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOREM_LAMMPS_TIMING": "1"}
    if ranks is not None:
        prefix, n_ranks = ranks
        command = [*prefix, "-np", str(n_ranks), *command]
        # containers often run as root; Open MPI refuses that unless told otherwise
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    start = time.perf_counter()
    completed = subprocess.run(
        command, cwd=directory, capture_output=True, text=True, check=False, env=env
    )
    TIMINGS[directory.name] = round(time.perf_counter() - start, 2)
    log_path = directory / "log.lammps"
    log = log_path.read_text() if log_path.exists() else ""
    if completed.returncode != 0:
        return None, None, completed, log
    return _parse_thermo(log), _parse_dump(dump), completed, log


def _n_ranks(log: str) -> int:
    """Number of MPI ranks of LAMMPS' processor grid (``a by b by c MPI processor grid``)."""
    grid = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", log)
    return int(grid.group(1)) * int(grid.group(2)) * int(grid.group(3))


def _reference(model, atoms):
    """Energy, forces and LAMMPS-style virial pressure (bar) from metatomic-ase.

    For a slab, the pressure is the virial over the volume of the cell with its vacuum
    (metatomic-ase warns that the stress of a non-periodic system is "likely wrong").
    """
    import warnings

    from metatomic_ase import MetatomicCalculator

    atoms = atoms.copy()
    atoms.calc = MetatomicCalculator(str(model))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="stress requested")
        stress = atoms.get_stress(voigt=False)
    # LAMMPS' virial pressure is minus the stress; order xx yy zz xy xz yz
    pressure = -EV_A3_TO_BAR * stress[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]
    return atoms.get_potential_energy(), atoms.get_forces(), pressure


def _check_step0(thermo, forces, model, frame):
    """LAMMPS' step 0 against metatomic-ase on the structure in LAMMPS' frame.

    Compares the virials (pressure times volume): a shrink-wrapped box (``p p m``)
    has another volume than the cell of the reference.
    """
    energy, reference_forces, pressure = _reference(model, frame)
    first = thermo[0]
    assert relative_error(first["PotEng"][0], energy) < TOLERANCE
    assert np.array_equal(forces["id"], np.arange(1, len(frame) + 1))
    lammps_forces = np.stack([forces["fx"], forces["fy"], forces["fz"]], axis=1)
    assert relative_error(lammps_forces, reference_forces) < TOLERANCE
    lammps_pressure = np.array([first[f"c_pvir[{k}]"][0] for k in range(1, 7)])
    lammps_virial = lammps_pressure * first["Volume"][0]
    assert relative_error(lammps_virial, pressure * frame.get_volume()) < TOLERANCE
    return energy


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_lammps_matches_ase(lmp, models, tmp_path, name):
    """Long-range model, one rank: energy, forces and virial equal metatomic-ase's."""
    atoms = STRUCTURES[name]()
    frame = write_data.lammps_frame(atoms)
    if name == "triclinic":
        # the writer rotated the structure into LAMMPS' lower-triangular frame
        assert abs(frame.cell.array[0, 1]) + abs(frame.cell.array[0, 2]) == 0.0
        assert not np.allclose(frame.cell.array, atoms.cell.array)
        np.testing.assert_allclose(
            frame.get_all_distances(mic=True), atoms.get_all_distances(mic=True), atol=1e-12
        )
    thermo, forces, completed, log = _run_lammps(
        lmp, tmp_path / f"lr-{name}", models["lr"], atoms
    )
    assert completed.returncode == 0, log[-3000:] + completed.stderr[-3000:]
    _check_step0(thermo, forces, models["lr"], frame)


def test_lammps_nve_matches_ase(lmp, models, tmp_path):
    """200 NVE steps in LAMMPS follow ASE's velocity Verlet from the same velocities.

    Both start from the velocities written to the data file; LAMMPS' metal-unit
    constants differ from ASE's (CODATA) at ~1e-8 relative, so trajectories agree to
    ~1e-9 Å, not to round-off. The total energy of the LAMMPS run drifts by less than
    ``DRIFT_BOUND`` per atom.
    """
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from ase.md.verlet import VelocityVerlet
    from metatomic_ase import MetatomicCalculator

    atoms = write_data.lammps_frame(_cubic())
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(5))
    Stationary(atoms)
    directory = tmp_path / "lr-nve"
    final = directory / "final.dump"
    extra = FINAL_DUMP.format(final)
    thermo, _, completed, log = _run_lammps(
        lmp,
        directory,
        models["lr"],
        atoms,
        extra=extra,
        variables={"STEPS": N_STEPS, "TIMESTEP": TIMESTEP_PS, "THERMO": 10},
    )
    assert completed.returncode == 0, log[-3000:] + completed.stderr[-3000:]
    run = thermo[-1]
    assert run["Step"][-1] == N_STEPS

    start = time.perf_counter()
    atoms.calc = MetatomicCalculator(str(models["lr"]))
    dynamics = VelocityVerlet(atoms, timestep=1000 * TIMESTEP_PS * ase.units.fs)
    energies = [atoms.get_potential_energy()]
    for _ in range(N_STEPS // 10):
        dynamics.run(10)
        energies.append(atoms.get_potential_energy())
    TIMINGS["ase-nve"] = round(time.perf_counter() - start, 2)

    # the same trajectory: potential energies every 10 steps, final positions and forces
    assert relative_error(run["PotEng"], np.array(energies)) < 1e-7
    dump = _parse_dump(final)
    positions = np.stack([dump["xu"], dump["yu"], dump["zu"]], axis=1)
    assert np.abs(positions - atoms.positions).max() < 1e-6
    # and LAMMPS' final forces are the model's at LAMMPS' final positions
    moved = atoms.copy()
    moved.positions = positions
    _, forces, _ = _reference(models["lr"], moved)
    lammps_forces = np.stack([dump["fx"], dump["fy"], dump["fz"]], axis=1)
    assert relative_error(lammps_forces, forces) < TOLERANCE

    total = run["TotEng"]
    drift = np.abs(total - total[0]).max() / len(atoms)
    MEASURED["lammps NVE drift (eV/atom)"] = float(drift)
    assert drift < DRIFT_BOUND
    assert np.ptp(run["KinEng"]) > 1e-3  # the atoms move


@pytest.mark.parametrize("n_ranks", [1, 2])
def test_lammps_short_range_ranks(lmp, mpirun, models, tmp_path, n_ranks):
    """A model without long range runs on 1 and 2 MPI ranks, equal to metatomic-ase."""
    atoms = _cubic()
    directory = tmp_path / f"sr-{n_ranks}-ranks"
    thermo, forces, completed, log = _run_lammps(
        lmp, directory, models["sr"], atoms, ranks=(mpirun, n_ranks)
    )
    assert completed.returncode == 0, log[-3000:] + completed.stderr[-3000:]
    assert _n_ranks(log) == n_ranks
    _check_step0(thermo, forces, models["sr"], write_data.lammps_frame(atoms))


def test_lammps_refuses_long_range_on_two_ranks(lmp, mpirun, models, tmp_path):
    """pair_style metatomic runs a model with an infinite range on one rank only."""
    _, _, completed, log = _run_lammps(
        lmp, tmp_path / "lr-2-ranks", models["lr"], _cubic(), ranks=(mpirun, 2)
    )
    assert completed.returncode != 0
    assert "interaction_range is infinite" in log + completed.stdout + completed.stderr


def _check_pair_lorem(lmp, mpirun, models, tmp_path, model, name, n_ranks):
    """Run ``pair_style lorem`` on ``n_ranks`` and compare step 0 with metatomic-ase (the
    metatomic model of the same network); return the completed process."""
    atoms = STRUCTURES[name]()
    thermo, forces, completed, log = _run_lammps(
        lmp,
        tmp_path / f"lorem-{model}-{name}-{n_ranks}",
        models[f"{model}-stages"],
        atoms,
        ranks=(mpirun, n_ranks),
        variables={"PAIR": "lorem"},
    )
    assert completed.returncode == 0, log[-3000:] + completed.stderr[-3000:]
    assert _n_ranks(log) == n_ranks
    _check_step0(thermo, forces, models[model], write_data.lammps_frame(atoms))
    return completed


@pytest.mark.parametrize(
    ("model", "name", "n_ranks"),
    [
        ("lr", "cubic", 1),
        ("lr", "cubic", 2),
        ("lr", "cubic", 4),
        ("lr", "triclinic", 1),
        ("lr", "triclinic", 4),
        ("sr", "triclinic", 2),
    ],
)
def test_pair_lorem_ranks(lmp, mpirun, models, tmp_path, model, name, n_ranks):
    """pair_style lorem on 1, 2 and 4 ranks: exact long range, as metatomic-ase."""
    _check_pair_lorem(lmp, mpirun, models, tmp_path, model, name, n_ranks)


@pytest.mark.parametrize(
    ("model", "name", "n_ranks"),
    [("pme", "cubic", 1), ("pme", "cubic", 2), ("pme", "triclinic", 4), ("direct", "cubic", 2)],
)
def test_pair_lorem_methods(lmp, mpirun, models, tmp_path, model, name, n_ranks):
    """PME (mesh spread and interpolated per rank, summed over the ranks) and the direct
    method (all atoms gathered on every rank) as metatomic-ase."""
    completed = _check_pair_lorem(lmp, mpirun, models, tmp_path, model, name, n_ranks)
    assert completed.stderr.count(f"method {model}") == n_ranks


@pytest.mark.parametrize(
    ("model", "boundary", "n_ranks"),
    [
        ("lr", "p p f", 1),
        ("lr", "p p f", 2),
        ("lr", "p p m", 4),
        ("pme", "p p f", 2),
        ("direct", "p p f", 2),
    ],
)
def test_pair_lorem_slab(lmp, mpirun, models, tmp_path, model, boundary, n_ranks):
    """A slab (boundary p p f / p p m) equals metatomic-ase with pbc = [T, T, F]."""
    atoms = _slab()
    directory = tmp_path / f"lorem-slab-{model}-{boundary[-1]}-{n_ranks}"
    thermo, forces, completed, log = _run_lammps(
        lmp,
        directory,
        models[f"{model}-stages"],
        atoms,
        ranks=(mpirun, n_ranks),
        variables={"PAIR": "lorem", "BOUNDARY": boundary},
    )
    assert completed.returncode == 0, log[-3000:] + completed.stderr[-3000:]
    assert _n_ranks(log) == n_ranks
    frame = write_data.lammps_frame(atoms)
    assert frame.pbc.tolist() == [True, True, False]
    _check_step0(thermo, forces, models[model], frame)


def test_pair_lorem_refusals(lmp, mpirun, models, tmp_path):
    """Raw-charge models in a slab, and boxes open along x, are refused with a clear error."""
    _, _, completed, log = _run_lammps(
        lmp,
        tmp_path / "raw-slab",
        models["raw-stages"],
        _slab(),
        ranks=(mpirun, 2),
        variables={"PAIR": "lorem", "BOUNDARY": "p p f"},
    )
    assert completed.returncode != 0
    assert "needs a model with neutral latent charges" in log + completed.stdout
    # the same model is accepted in a periodic box
    _, _, completed, log = _run_lammps(
        lmp,
        tmp_path / "raw-bulk",
        models["raw-stages"],
        _cubic(),
        ranks=(mpirun, 2),
        variables={"PAIR": "lorem"},
    )
    assert completed.returncode == 0, log[-3000:] + completed.stderr[-3000:]
    _, _, completed, log = _run_lammps(
        lmp,
        tmp_path / "open-x",
        models["lr-stages"],
        _slab(),
        variables={"PAIR": "lorem", "BOUNDARY": "f p p"},
    )
    assert completed.returncode != 0
    assert "needs a 3D box periodic in x and y" in log + completed.stdout


@pytest.mark.parametrize(
    ("model", "structure"),
    [("lr", "cubic"), pytest.param("pme", "slab", marks=pytest.mark.slow)],
)
def test_pair_lorem_nve_across_ranks(lmp, mpirun, models, tmp_path, model, structure):
    """NVE with pair_style lorem: the same trajectory on 1, 2 and 4 ranks.

    The neighbour lists are rebuilt every step (``CHECK no``), so atoms that cross a
    domain boundary change rank and periodic images change cell shifts during the run;
    for the cubic cell (Ewald) the test checks that some atoms crossed the periodic
    boundary along the axis split between the ranks. The slab runs PME with
    ``boundary p p f``.
    """
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    slab = structure == "slab"
    atoms = write_data.lammps_frame(_slab() if slab else _cubic())
    thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(6))
    Stationary(atoms)
    variables = {"PAIR": "lorem", "STEPS": N_STEPS_RANKS, "THERMO": 10, "CHECK": "no"}
    if slab:
        variables["BOUNDARY"] = "p p f"
    results = {}
    for n_ranks in (1, 2, 4):
        directory = tmp_path / f"lorem-nve-{structure}-{n_ranks}"
        final = directory / "final.dump"
        thermo, _, completed, log = _run_lammps(
            lmp,
            directory,
            models[f"{model}-stages"],
            atoms,
            ranks=(mpirun, n_ranks),
            extra=FINAL_DUMP.format(final),
            variables=variables,
        )
        assert completed.returncode == 0, log[-3000:] + completed.stderr[-3000:]
        assert re.search(rf"Neighbor list builds = {N_STEPS_RANKS}\b", log)
        dump = _parse_dump(final)
        results[n_ranks] = (thermo[-1], np.stack([dump["xu"], dump["yu"], dump["zu"]], axis=1))
    reference, positions = results[1]
    assert reference["Step"][-1] == N_STEPS_RANKS
    if not slab:
        # atoms crossed the periodic boundary along z, which the 2 ranks split (1 by 1 by 2)
        height = atoms.cell.array[2, 2]
        assert ((positions[:, 2] < 0) | (positions[:, 2] >= height)).sum() > 0
    for n_ranks in (2, 4):
        thermo, other = results[n_ranks]
        assert relative_error(thermo["TotEng"], reference["TotEng"]) < 1e-10
        assert relative_error(thermo["c_pvir[1]"], reference["c_pvir[1]"]) < 1e-10
        assert np.abs(other - positions).max() < 1e-10
    drift = np.abs(reference["TotEng"] - reference["TotEng"][0]).max() / len(atoms)
    MEASURED[f"lammps pair_style lorem NVE drift {structure} (eV/atom)"] = float(drift)
    assert drift < DRIFT_BOUND


def test_write_data_round_trip(tmp_path):
    """The data file holds the rotated cell, wrapped atoms, masses and velocities."""
    atoms = _triclinic()
    atoms.set_velocities(np.random.default_rng(0).normal(size=(len(atoms), 3)) * 0.01)
    frame = write_data.write_data(atoms, str(tmp_path / "data"), TYPES, velocities=True)
    read = ase.io.read(tmp_path / "data", format="lammps-data", atom_style="atomic")
    np.testing.assert_allclose(read.cell.array, frame.cell.array, atol=1e-12)
    np.testing.assert_allclose(read.positions, frame.positions, atol=1e-12)
    # kinetic energy and |v| are invariant under the rotation
    np.testing.assert_allclose(frame.get_kinetic_energy(), atoms.get_kinetic_energy())
    with pytest.raises(ValueError, match="not in --types"):
        write_data.write_data(atoms, str(tmp_path / "bad"), [11])


@pytest.fixture(scope="module", autouse=True)
def _report():
    """Print run times and deviations at the end (``pytest -s``)."""
    yield
    worst = {key.split("::")[-1]: value for key, value in MEASURED.items() if "lammps" in key}
    print(f"\nLAMMPS and reference run times (s): {json.dumps(TIMINGS)}")
    print(f"largest relative deviations LAMMPS vs metatomic-ase: {json.dumps(worst)}")
