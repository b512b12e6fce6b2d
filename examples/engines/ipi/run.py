"""Run the i-PI example: the i-PI server and the metatomic driver, on a socket of its own.

i-PI and its driver talk through a UNIX socket, ``/tmp/ipi_<name>``; two runs with the
same name on one machine would connect to each other's server. This script gives every
run its own name (``--socket``, by default ``lorem-<process id>-<random>``), writes the
example's ``input.xml`` with that name (and ``--steps``) into ``--output``, starts
``i-pi`` there, waits for the socket, runs ``i-pi-py_driver -m metatomic`` against it
and waits for both.

Usage: ``python run.py --model model.pt [--socket NAME] [--steps N] [--output DIR]``
(``python ../export_model.py`` writes a ``model.pt``).
"""

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOCKETS_PREFIX = "/tmp/ipi_"  # i-PI's and the driver's default


def command(name: str) -> str:
    """An i-PI command installed next to this interpreter (or on ``PATH``)."""
    path = Path(sys.executable).parent / name
    if path.is_file():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"the `{name}` command of i-PI is not installed (pip install ipi)"
        )
    return found


def write_input(output: Path, socket: str, steps: int) -> None:
    """The example's input with this run's socket name and number of steps."""
    tree = ET.parse(HERE / "input.xml")
    root = tree.getroot()
    root.find("ffsocket").find("address").text = socket
    root.find("total_steps").text = str(steps)
    tree.write(output / "input.xml")
    shutil.copy(HERE / "nacl.xyz", output / "nacl.xyz")


def wait_for_socket(path: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if server.poll() is not None:
            raise RuntimeError("i-PI stopped before opening its socket, see i-pi.log")
        if time.monotonic() > deadline:
            raise RuntimeError(f"i-PI did not open {path} within {timeout:.0f} s")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="model.pt", help="exported LOREM model")
    parser.add_argument("--socket", default=None, help="socket name (unique by default)")
    parser.add_argument("--steps", type=int, default=100, help="number of MD steps")
    parser.add_argument("--output", default=".", help="folder for input and outputs")
    args = parser.parse_args()

    socket = args.socket or f"lorem-{os.getpid()}-{secrets.token_hex(3)}"
    path = SOCKETS_PREFIX + socket
    if os.path.exists(path):
        raise SystemExit(f"{path} exists: another i-PI run uses the name {socket!r}")
    model = Path(args.model).resolve()
    if not model.is_file():
        raise SystemExit(f"{model}: no such model file (python ../export_model.py writes one)")
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    write_input(output, socket, args.steps)
    print(f"i-PI socket {path}; outputs in {output}", flush=True)

    with open(output / "i-pi.log", "w") as server_log:
        server = subprocess.Popen(
            [command("i-pi"), "input.xml"],
            cwd=output,
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )
        driver = None
        try:
            wait_for_socket(path, server)
            driver = subprocess.Popen(
                [
                    command("i-pi-py_driver"),
                    *("-u", "-a", socket, "-m", "metatomic"),
                    *("-o", f"template=nacl.xyz,model={model}"),
                ],
                cwd=output,
            )
            server.wait()
            driver.wait(timeout=60)
        finally:
            for process in [server, driver]:
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
    if server.returncode != 0 or driver.returncode != 0:
        raise SystemExit(
            f"i-PI ({server.returncode}) or the driver ({driver.returncode}) failed"
        )
    print(f"done: {output / 'nacl.out'} (step, time, conserved energy, T, E_kin, E_pot)")


if __name__ == "__main__":
    main()
