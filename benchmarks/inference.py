"""Inference benchmark: energy + forces of LOREM (paper hyperparameters) on periodic NaCl.

Compares, in the same run and on the same structures,

* lorem_mta with the reference Ewald settings (exact lorem-jax parity),
* lorem_mta with an accuracy-driven Ewald resolution (``long_range_accuracy``),
* lorem_mta with PME,
* lorem_mta without the long-range block,
* lorem-jax 0.2.0 (jitted, run from ``.venv-jax`` if present; see setup-jax-venv.sh),
* with ``--pet``: metatrain's PET (default hyperparameters, ~3 M parameters) with and
  without its long-range option (P3M), what a user might pick instead,

and prints medians, ratios, the short-/long-range split and peak memory. Also reports the
energy/force error of the fast settings against the reference mode.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/inference.py --sizes 2,3,4,5 --dtype float32
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import ase.build
import numpy as np
import torch

from lorem_mta.model import LoremModel
from lorem_mta.modules import LoremBackbone
from lorem_mta.utils import predict

HERE = os.path.dirname(os.path.abspath(__file__))
JAX_PYTHON = os.path.join(HERE, "..", ".venv-jax", "bin", "python")

VARIANTS = {
    "ewald-ref": {"long_range_method": "ewald"},
    "ewald-1e-5": {"long_range_method": "ewald", "long_range_accuracy": 1e-5},
    "pme": {"long_range_method": "pme"},
    "no-lr": {"lr": False},
}


def nacl(size):
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(size)
    atoms.rattle(0.05, seed=0)
    return atoms


def pet_model(long_range):
    """metatrain's PET with its default hyperparameters (untrained), in eval mode."""
    from metatrain.utils.architectures import get_default_hypers, import_architecture
    from metatrain.utils.data import DatasetInfo
    from metatrain.utils.data.target_info import get_energy_target_info

    hypers = get_default_hypers("pet")["model"]
    hypers["long_range"]["enable"] = long_range
    target = get_energy_target_info("energy", {"quantity": "energy", "unit": "eV"})
    info = DatasetInfo(
        length_unit="angstrom", atomic_types=[11, 17], targets={"energy": target}
    )
    return import_architecture("pet").__model__(hypers, info).eval()


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_models(models, atoms, dtype, repeats, clock="wall"):
    """Median time of every model, the models interleaved within every repeat.

    Interleaving makes the ratios between models (e.g. with and without long range)
    robust against slow drifts in the speed of a shared machine.
    """
    results, times, failed = {}, {name: [] for name in models}, set()
    for name, model in models.items():
        try:
            results[name] = predict(model, [atoms], dtype)  # warm-up
        except RuntimeError as error:  # out of memory
            failed.add(name)
            print(f"# {name} failed at {len(atoms)} atoms: {str(error)[:100]}")
    for _ in range(repeats):
        for name, model in models.items():
            if name in failed:
                continue
            start = CLOCKS[clock]()
            results[name] = predict(model, [atoms], dtype)
            times[name].append(CLOCKS[clock]() - start)
    timings = {
        name: float(np.median(t)) if name not in failed else float("nan")
        for name, t in times.items()
    }
    return timings, results


def run_jax(sizes, repeats, no_lr, clock="wall"):
    if not os.path.exists(JAX_PYTHON):
        return {}
    command = [
        JAX_PYTHON,
        os.path.join(HERE, "jax_inference.py"),
        "--sizes",
        ",".join(str(s) for s in sizes),
        "--repeats",
        str(repeats),
        "--clock",
        clock,
    ]
    if no_lr:
        command.append("--no-lr")
    threads = os.environ.get("OMP_NUM_THREADS", "2")
    flags = "--xla_cpu_multi_thread_eigen=true"
    if threads == "1":
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env = {**os.environ, "XLA_FLAGS": flags}
    process = subprocess.run(command, capture_output=True, text=True, env=env)
    records = {}
    for line in process.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            records[record["n_atoms"]] = record
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2,3,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-jax", action="store_true")
    parser.add_argument("--pet", action="store_true", help="also time metatrain's PET")
    parser.add_argument(
        "--jax-sizes",
        default="2,3,4",
        help="sizes run with lorem-jax (it needs ~23 GB at 1000 atoms)",
    )
    parser.add_argument(
        "--clock",
        default="wall",
        choices=sorted(CLOCKS),
        help="wall time, or the CPU time of the process (with one thread, close to the "
        "wall time of a quiet machine; less sensitive to other processes on a shared one)",
    )
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    sizes = [int(s) for s in args.sizes.split(",")]
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    torch.set_num_threads(int(threads) if threads.isdigit() else 2)
    print(
        f"# OMP_NUM_THREADS={threads}, torch threads={torch.get_num_threads()}, "
        f"{args.dtype}, {args.clock} clock"
    )

    torch.manual_seed(0)
    reference = LoremBackbone()
    models = {}
    for name in args.variants.split(","):
        backbone = LoremBackbone(**VARIANTS[name])
        backbone.load_state_dict(reference.state_dict(), strict=False)
        models[name] = LoremModel(backbone, [11, 17]).to(dtype)
    if args.pet:
        models["pet"] = pet_model(long_range=False).to(dtype)
        models["pet-lr"] = pet_model(long_range=True).to(dtype)
    for name, model in models.items():
        n_parameters = sum(p.numel() for p in model.parameters())
        print(f"# {name}: {n_parameters} parameters")

    jax_lr, jax_sr = {}, {}
    if not args.no_jax:
        jax_sizes = [s for s in sizes if s in {int(v) for v in args.jax_sizes.split(",")}]
        jax_lr = run_jax(jax_sizes, args.repeats, no_lr=False, clock=args.clock)
        jax_sr = run_jax(sizes, args.repeats, no_lr=True, clock=args.clock)

    header = ["N"] + [f"{n} (s)" for n in models] + ["jax (s)", "jax no-lr (s)"]
    header += ["jax / ewald-ref", "jax / fastest", "LR / SR", "fast dE/atom", "fast max dF"]
    if args.pet:
        header += ["pet-lr / fastest", "pet / fastest"]
    print(" | ".join(header))
    for size in sizes:
        atoms = nacl(size)
        timings, results = time_models(models, atoms, dtype, args.repeats, args.clock)
        jax_time = jax_lr.get(len(atoms), {}).get("median_s", float("nan"))
        jax_sr_time = jax_sr.get(len(atoms), {}).get("median_s", float("nan"))
        with_lr = [
            n for n in timings if n in VARIANTS and n != "no-lr" and np.isfinite(timings[n])
        ]
        fastest = min(with_lr, key=lambda n: timings[n]) if with_lr else None
        share = float("nan")
        if "no-lr" in timings and fastest is not None:
            # cost of the long-range block relative to the short-range model
            share = timings[fastest] / timings["no-lr"] - 1
        error_e = error_f = float("nan")
        if fastest is not None and "ewald-ref" in results and fastest != "ewald-ref":
            ref, fast = results["ewald-ref"], results[fastest]
            error_e = abs(float(ref.energies[0].detach() - fast.energies[0].detach())) / len(
                atoms
            )
            error_f = float((ref.forces[0] - fast.forces[0]).abs().max())
        row = [str(len(atoms))] + [f"{timings[n]:.3f}" for n in models]
        row += [f"{jax_time:.3f}", f"{jax_sr_time:.3f}"]
        row += [
            f"{jax_time / timings.get('ewald-ref', float('nan')):.1f}",
            f"{jax_time / timings[fastest]:.1f} ({fastest})" if fastest else "nan",
            f"{share:.2f}",
            f"{error_e:.1e}",
            f"{error_f:.1e}",
        ]
        if args.pet and fastest is not None:
            row += [f"{timings[n] / timings[fastest]:.1f}" for n in ("pet-lr", "pet")]
        print(" | ".join(row), flush=True)
    print(f"# peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
