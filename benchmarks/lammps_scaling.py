"""LAMMPS benchmark: ``pair_style lorem`` (exact long range) on 1 and 2 MPI ranks.

Writes rattled NaCl supercells (``--sizes 8,16``: 8^3 and 16^3 cubic cells, 4 096 and
32 768 atoms), exports the stages of a LOREM model with PME (``--model paper``: paper
hyperparameters, ``small``: the test-sized network), runs
``examples/lammps/in.lorem`` with ``-var PAIR lorem`` for a few NVE steps on each rank
count and reports the median time per step (from the ``cpu`` column of the thermo output,
one row per step), the share of the pair style's MPI reductions and charge communication
and of LAMMPS' own communication, the strong-scaling efficiency ``t_1 / (n t_n)`` of the
medians, the peak memory per rank (``/usr/bin/time``) and the load average of the machine.
Not a test: it needs the ``lmp`` of ``scripts/build-lammps.sh`` built with MPI.

Usage::

    python benchmarks/lammps_scaling.py --sizes 8,16 --ranks 1,2 --steps 5,3 --model small
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "lammps"))

from write_data import nacl_supercell, write_data  # noqa: E402

from lorem_mta.model import LoremModel  # noqa: E402
from lorem_mta.modules import LoremBackbone  # noqa: E402
from lorem_mta.stages import export_stages  # noqa: E402

MODELS = {
    "paper": {},
    "small": {
        "max_degree": 3,
        "num_features": 16,
        "num_spherical_features": 4,
        "num_radial": 8,
    },
}


def _lmp() -> str:
    if "LOREM_LMP" in os.environ:
        return os.environ["LOREM_LMP"]
    default = Path.home() / ".cache" / "lorem_mta" / "lammps"
    return str(Path(os.environ.get("LOREM_LAMMPS_DIR", default)) / "lmp")


def _run(directory: Path, stages: Path, data: Path, n_ranks: int, steps: int) -> dict:
    time_command = shutil.which("time") or "/usr/bin/time"
    command = [
        "mpirun",
        "--oversubscribe",
        "-np",
        str(n_ranks),
        time_command,
        "-f",
        "maxrss_kb %M cpu_s %U %S",
        _lmp(),
        "-in",
        str(ROOT / "examples" / "lammps" / "in.lorem"),
        "-log",
        str(directory / "log.lammps"),
        "-screen",
        "none",
        "-var",
        "PAIR",
        "lorem",
        "-var",
        "MODEL",
        str(stages),
        "-var",
        "DATA",
        str(data),
        "-var",
        "DUMP",
        str(directory / "forces.dump"),
        "-var",
        "TYPES",
        "11 17",
        "-var",
        "STEPS",
        str(steps),
        "-var",
        "TEMP",
        "300",
        "-var",
        "THERMO",
        "1",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "LOREM_LAMMPS_TIMING": "1",
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    log = (directory / "log.lammps").read_text()
    if completed.returncode != 0:
        raise RuntimeError(log[-2000:] + completed.stderr[-2000:])
    # the last "Loop time" is the NVE run (the first one is step 0)
    loop = re.findall(r"Loop time of ([\d.eE+-]+) on \d+ procs for (\d+) steps", log)[-1]
    breakdown = log.split("MPI task timing breakdown")[-1]
    shares = {
        name: float(re.search(rf"^{name}\s*\|.*\|\s*([\d.]+)\s*$", breakdown, re.M).group(1))
        for name in ("Pair", "Comm", "Neigh")
    }
    # wall time of every step: differences of the thermo "CPU" column of the NVE run
    table = log.split("Step")[-1].split("Loop time")[0].splitlines()
    header = ["Step", *table[0].split()]
    cpu = [float(row.split()[header.index("CPU")]) for row in table[1:] if row.strip()]
    per_step = [b - a for a, b in zip(cpu, cpu[1:], strict=False)]
    timings = re.findall(
        r"rank (\d+), (\d+) evaluations, method (\w+)\): short-range forward ([\d.]+) s, "
        r"long range and backward ([\d.]+) s, of which MPI reductions ([\d.]+) s and charge "
        r"communication ([\d.]+) s; peak memory ([\d.]+) MiB",
        completed.stderr,
    )
    ranks = []
    for rank, evaluations, method, short, long, mpi, charge_comm, memory in timings:
        pair_total = float(short) + float(long)
        ranks.append(
            {
                "rank": int(rank),
                "evaluations": int(evaluations),
                "method": method,
                "pair_mpi_percent_of_pair": 100.0 * float(mpi) / pair_total,
                "pair_charge_comm_percent_of_pair": 100.0 * float(charge_comm) / pair_total,
                "short_range_forward_percent_of_pair": 100.0 * float(short) / pair_total,
                "peak_memory_mib": float(memory),
            }
        )
    ranks.sort(key=lambda r: r["rank"])
    return {
        "ranks": n_ranks,
        "seconds_per_step": statistics.median(per_step),
        "seconds_per_step_all": per_step,
        "seconds_per_step_mean_of_loop": float(loop[0]) / int(loop[1]),
        "pair_percent": shares["Pair"],
        "lammps_comm_percent": shares["Comm"],
        "pair_mpi_percent_of_pair": max(r["pair_mpi_percent_of_pair"] for r in ranks),
        "pair_charge_comm_percent_of_pair": max(
            r["pair_charge_comm_percent_of_pair"] for r in ranks
        ),
        "per_rank": ranks,
        "max_rss_mb_per_rank": [
            int(kb) / 1024 for kb in re.findall(r"maxrss_kb (\d+)", completed.stderr)
        ],
        # CPU seconds (user + system) of every rank's whole run: start-up, step 0 and the
        # NVE steps; less sensitive to the load of a shared machine than wall times
        "cpu_seconds_per_rank": [
            float(user) + float(system)
            for user, system in re.findall(r"cpu_s ([\d.]+) ([\d.]+)", completed.stderr)
        ],
        "load_average_after": os.getloadavg(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="8,16", help="NaCl supercell repeats (8 = 4096 atoms)"
    )
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument(
        "--steps", default="5", help="NVE steps per size (one value, or one per size)"
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="paper")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--output", help="JSON file for the results")
    args = parser.parse_args()

    torch.manual_seed(0)
    backbone = LoremBackbone(cutoff=5.0, long_range_method="pme", **MODELS[args.model])
    model = LoremModel(backbone, atomic_types=[11, 17])
    results = []
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stages = tmp / "stages.pt"
        export_stages(model, str(stages), getattr(torch, args.dtype))
        sizes = [int(s) for s in args.sizes.split(",")]
        steps = [int(s) for s in args.steps.split(",")]
        steps = steps * len(sizes) if len(steps) == 1 else steps
        for size, n_steps in zip(sizes, steps, strict=True):
            data = tmp / f"nacl-{size}.data"
            atoms = nacl_supercell(size, rattle=0.05, seed=size)
            write_data(atoms, str(data), [11, 17])
            for n_ranks in [int(r) for r in args.ranks.split(",")]:
                directory = tmp / f"{size}-{n_ranks}"
                directory.mkdir()
                result = {"atoms": len(atoms), "load_average_before": os.getloadavg()}
                try:
                    result.update(_run(directory, stages, data, n_ranks, n_steps))
                except (RuntimeError, IndexError, ValueError) as error:
                    # e.g. out of memory: record it and go on with the other runs
                    result.update({"ranks": n_ranks, "error": str(error)[-1500:]})
                    print(json.dumps(result), flush=True)
                    failed.append(result)
                    continue
                results.append(result)
                print(json.dumps(result), flush=True)
    for result in results:
        one_rank = [r for r in results if r["atoms"] == result["atoms"] and r["ranks"] == 1]
        if one_rank:
            t1 = one_rank[0]["seconds_per_step"]
            result["strong_scaling_efficiency"] = t1 / (
                result["ranks"] * result["seconds_per_step"]
            )
    print(f"{'atoms':>7} {'ranks':>5} {'s/step':>9} {'eff.':>5} {'MPI %':>6} {'MB/rank':>8}")
    for r in results:
        print(
            f"{r['atoms']:>7} {r['ranks']:>5} {r['seconds_per_step']:>9.3f} "
            f"{r.get('strong_scaling_efficiency', float('nan')):>5.2f} "
            f"{r['pair_mpi_percent_of_pair']:>6.1f} {max(r['max_rss_mb_per_rank']):>8.0f}"
        )
    if args.output:
        record = {
            "command": "python " + " ".join(sys.argv),
            "model": args.model,
            "machine": f"{os.cpu_count()} CPU cores, shared with other jobs (see the load "
            "averages of every run); medians of the per-step times",
            "torch": torch.__version__,
            "dtype": args.dtype,
            "results": results,
            "failed": failed,
        }
        Path(args.output).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
