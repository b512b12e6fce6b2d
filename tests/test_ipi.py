"""i-PI: MD driven by i-PI's metatomic driver matches direct evaluation of the model.

Runs the example of ``examples/engines/ipi`` (a few NVE steps instead of 100) with an
exported small LOREM model: the i-PI server and ``i-pi-py_driver -m metatomic`` are
started as subprocesses that talk through a UNIX socket in a temporary folder. i-PI
writes positions and forces in binary (full precision) and the potential energy in
atomic units (Hartree, Bohr); they are converted with i-PI's own unit factors (the
ones its driver uses) and compared with the eager, non-exported model.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from _helpers import relative_error, variant_model

from lorem_mta.model import export
from lorem_mta.utils import predict

pytest.importorskip("ipi", reason="i-PI (the `ipi` package) is not installed")
from ipi.utils.units import unit_to_user  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "engines" / "ipi"
VARIANT = "lr2"
N_STEPS = 4
#: i-PI and the driver both run in float64; only the summation order differs
TOLERANCE = 1e-10
#: seconds allowed for the whole i-PI run (start-up of both processes included)
TIMEOUT = 180


def _script(name: str) -> str:
    """Path of an i-PI command installed next to the running interpreter."""
    path = Path(sys.executable).parent / name
    if path.is_file():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"the `{name}` command of i-PI is not installed")
    return found


def _write_input(directory: Path, socket_prefix: str) -> None:
    """The example input, shortened, with full-precision binary trajectories."""
    tree = ET.parse(EXAMPLE / "input.xml")
    root = tree.getroot()
    root.set("sockets_prefix", socket_prefix)
    root.set("floatformat", "%.17e")
    root.find("total_steps").text = str(N_STEPS)
    output = root.find("output")
    for trajectory in output.findall("trajectory"):
        output.remove(trajectory)
    for name, quantity in [("pos", "positions"), ("frc", "forces")]:
        element = ET.SubElement(output, "trajectory", filename=name, stride="1", format="bin")
        element.text = quantity
    tree.write(directory / "input.xml")
    shutil.copy(EXAMPLE / "nacl.xyz", directory / "nacl.xyz")


def _read_binary_trajectory(path: Path, n_frames: int, n_atoms: int):
    """Cells (rows are lattice vectors) and arrays of i-PI's ``format="bin"`` output.

    Each frame is the cell matrix ``h`` (9 doubles, lattice vectors in columns), the
    number of atoms (int64), ``3 n_atoms`` doubles, then names and title as text.
    """
    data = path.read_bytes()
    assert len(data) % n_frames == 0, (len(data), n_frames)
    frame_size = len(data) // n_frames
    cells, arrays = [], []
    for k in range(n_frames):
        frame = data[k * frame_size : (k + 1) * frame_size]
        h = np.frombuffer(frame, dtype=np.float64, count=9).reshape(3, 3)
        assert int(np.frombuffer(frame, dtype=np.int64, count=1, offset=72)[0]) == n_atoms
        values = np.frombuffer(frame, dtype=np.float64, count=3 * n_atoms, offset=80)
        cells.append(h.T.copy())
        arrays.append(values.reshape(n_atoms, 3).copy())
    return cells, arrays


def _wait_for_socket(path: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if server.poll() is not None:
            pytest.fail("i-PI stopped before opening its socket:\n" + log.read_text()[-3000:])
        if time.monotonic() > deadline:
            pytest.fail("i-PI did not open its socket within 60 s")
        time.sleep(0.1)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


def _run_ipi(directory: Path) -> None:
    """Run the i-PI server and the metatomic driver in ``directory`` until i-PI ends."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    # UNIX socket paths are limited to ~100 characters: keep this one short
    with tempfile.TemporaryDirectory(prefix="lorem-ipi-") as sockets:
        prefix = sockets + "/"
        _write_input(directory, prefix)
        server_log = directory / "i-pi.log"
        driver_log = directory / "driver.log"
        with open(server_log, "w") as server_out, open(driver_log, "w") as driver_out:
            server = subprocess.Popen(
                [sys.executable, _script("i-pi"), "input.xml"],
                cwd=directory,
                stdout=server_out,
                stderr=subprocess.STDOUT,
                env=environment,
            )
            driver = None
            try:
                _wait_for_socket(prefix + "lorem", server, server_log)
                driver = subprocess.Popen(
                    [
                        sys.executable,
                        _script("i-pi-py_driver"),
                        *("-u", "-a", "lorem", "-S", prefix, "-m", "metatomic"),
                        "-o",
                        "template=nacl.xyz,model=model.pt,check_consistency=true",
                    ],
                    cwd=directory,
                    stdout=driver_out,
                    stderr=subprocess.STDOUT,
                    env=environment,
                )
                server.wait(timeout=TIMEOUT)
                # the driver leaves once i-PI sends EXIT; after a crash of i-PI it
                # would spin on the closed socket: it is killed below
                if server.returncode == 0:
                    driver.wait(timeout=60)
            finally:
                _stop(server)
                if driver is not None:
                    _stop(driver)
    logs = "\n".join(log.read_text()[-3000:] for log in [server_log, driver_log])
    assert server.returncode == 0, logs
    assert driver.returncode == 0, logs


@pytest.fixture(scope="module")
def ipi_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ipi")
    export(variant_model(VARIANT), str(directory / "model.pt"), torch.float64)
    _run_ipi(directory)
    template = ase.io.read(directory / "nacl.xyz")
    # step, time, conserved, temperature, kinetic (eV), potential (eV), potential (Ha)
    properties = np.atleast_2d(np.loadtxt(directory / "nacl.out"))
    n_frames = properties.shape[0]
    cells, positions = _read_binary_trajectory(directory / "nacl.pos_0.bin", n_frames, 8)
    _, forces = _read_binary_trajectory(directory / "nacl.frc_0.bin", n_frames, 8)
    frames = [
        ase.Atoms(
            template.numbers,
            positions=unit_to_user("length", "angstrom", q),
            cell=unit_to_user("length", "angstrom", h),
            pbc=True,
        )
        for h, q in zip(cells, positions, strict=True)
    ]
    return {
        "template": template,
        "properties": properties,
        "frames": frames,
        "forces": [unit_to_user("force", "ev/ang", f) for f in forces],
    }


def test_ipi_runs_md(ipi_run):
    properties = ipi_run["properties"]
    assert properties[:, 0].tolist() == list(range(N_STEPS + 1))
    frames = ipi_run["frames"]
    template = ipi_run["template"]
    np.testing.assert_allclose(frames[0].positions, template.positions, atol=1e-12)
    np.testing.assert_allclose(frames[0].cell.array, template.cell.array, atol=1e-12)
    moved = np.abs(frames[-1].positions - frames[0].positions).max()
    assert moved > 1e-4
    # the potential column in eV is i-PI's conversion of the atomic-unit one
    potential_ev = unit_to_user("energy", "electronvolt", properties[:, 6])
    np.testing.assert_allclose(properties[:, 5], potential_ev, rtol=1e-14)
    # NVE: the conserved quantity barely moves over a few 0.5 fs steps
    drift = np.abs(properties[:, 2] - properties[0, 2]).max() / len(template)
    assert drift < 1e-4


def test_ipi_matches_direct_evaluation(ipi_run):
    """i-PI's energies (Hartree) and forces (Hartree/Bohr) equal the eager model's."""
    prediction = predict(variant_model(VARIANT), ipi_run["frames"])
    expected_energies = prediction.energies.detach().numpy()
    energies = unit_to_user("energy", "electronvolt", ipi_run["properties"][:, 6])
    assert relative_error(energies, expected_energies) < TOLERANCE
    for forces, expected in zip(ipi_run["forces"], prediction.forces, strict=True):
        assert relative_error(forces, expected.detach().numpy()) < TOLERANCE


@pytest.mark.slow
def test_example_runs_on_unique_sockets(tmp_path):
    """Two runs of ``examples/engines/ipi/run.py`` at once: own sockets, both complete."""
    model = tmp_path / "model.pt"
    export(variant_model(VARIANT), str(model), torch.float64)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(
            [sys.executable, str(EXAMPLE / "run.py"), "--model", str(model), "--steps", "2"]
            + ["--output", str(tmp_path / f"run{k}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
        )
        for k in range(2)
    ]
    outputs = []
    for process in runs:
        try:
            outputs.append(process.communicate(timeout=TIMEOUT)[0])
        finally:
            _stop(process)
        assert process.returncode == 0, outputs[-1][-3000:]
    sockets = [output.split("i-PI socket ")[1].split(";")[0] for output in outputs]
    assert sockets[0] != sockets[1]
    for k, socket in enumerate(sockets):
        written = ET.parse(tmp_path / f"run{k}" / "input.xml").getroot()
        assert "/tmp/ipi_" + written.find("ffsocket").find("address").text == socket
        steps = np.atleast_2d(np.loadtxt(tmp_path / f"run{k}" / "nacl.out"))[:, 0]
        assert steps.tolist() == [0, 1, 2]
