"""Whole models with the default long-range settings: large cells, big boxes, training.

Cases (each in its own process, peak memory = ``ru_maxrss`` of that process above the
memory held before the evaluation, plus the total ``ru_maxrss``):

* ``converted``: the paper-size lorem-jax parity model (``tests/resources/parity/
  paper_default.npz``) converted as ``lorem-mta convert-jax`` does by default (float32,
  ``long_range_method: auto``), energy and forces of rattled rock-salt NaCl;
* ``fresh``: a model with the default ``mtt train`` hyperparameters (paper size, auto,
  float32, untrained weights: the cost does not depend on them), same structures;
* ``cluster-80A``: the converted model on 198 atoms in an 80 A periodic box;
* ``epoch``: training steps (energy + force loss, double backward, Adam) over batches of
  8 charge-charge biodimers (periodic 30 A box) with the default settings, with the
  reference Ewald sum, and with the cell stripped (``pbc=False``).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/long_range_defaults.py --nacl 4096,32768
    OMP_NUM_THREADS=1 python benchmarks/long_range_defaults.py --epoch
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import ase.build
import ase.io
import torch

HERE = Path(__file__).resolve().parent
PARITY = HERE.parent / "tests" / "resources" / "parity" / "paper_default.npz"
DATA = HERE.parent.parent / "shared" / "data"
sys.path.insert(0, str(HERE))


def _rss() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def nacl(n_atoms: int) -> ase.Atoms:
    repeat = round((n_atoms / 8) ** (1 / 3))
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=0)
    return atoms


def cluster() -> ase.Atoms:
    atoms = nacl(216)[:198]
    atoms.set_cell([80.0] * 3)
    atoms.center()
    atoms.pbc = True
    return atoms


def model(kind: str, method: str = "auto"):
    from lorem_mta.model_files import set_long_range

    if kind == "converted":
        from lorem_mta.convert import model_from_jax

        result = model_from_jax(str(PARITY), [11, 17], torch.float64)
    else:
        from lorem_mta.model import LoremModel
        from lorem_mta.modules import LoremBackbone

        torch.manual_seed(0)
        result = LoremModel(LoremBackbone(), [1, 6, 7, 8, 11, 17])
    set_long_range(result, method, None)
    return result.to(torch.float32).eval()


def evaluate(kind: str, structure: str) -> dict:
    """Energy and forces of one structure, in this process."""
    from lorem_mta.utils import predict

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    atoms = cluster() if structure == "cluster-80A" else nacl(int(structure))
    network = model(kind)
    before = _rss()
    start = time.perf_counter()
    try:
        prediction = predict(network, [atoms], dtype=torch.float32)
    except (ValueError, RuntimeError) as e:
        return {"refused": str(e)[:300]}
    seconds = time.perf_counter() - start
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "atoms": len(atoms),
        "time_s": seconds,
        "peak_gb": (maxrss - before) / 1024**3,
        "process_gb": maxrss / 1024**3,
        "energy": prediction.energies[0].item(),
    }


def epoch(variant: str, n_batches: int) -> dict:
    """Training steps over ``n_batches`` batches of 8 biodimers."""
    from training import BATCH, cases, make_step

    from lorem_mta.model import LoremModel
    from lorem_mta.modules import LoremBackbone

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    all_cases = cases(n_batches)
    structures = all_cases["biodimers-vacuum" if variant == "stripped" else "biodimers"]
    method = "ewald" if variant == "ewald" else "auto"
    torch.manual_seed(0)
    types = sorted({int(z) for a in structures for z in a.numbers})
    network = LoremModel(LoremBackbone(long_range_method=method), types).to(torch.float32)
    network.train()
    step = make_step(network, torch.float32)
    batches = [structures[k : k + BATCH] for k in range(0, len(structures), BATCH)]
    step(batches[0])  # warm-up
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return {"structures": len(structures), "epoch_s": time.perf_counter() - start}


def _child(arguments: list) -> dict:
    process = subprocess.run(
        [sys.executable, __file__, *arguments], capture_output=True, text=True
    )
    for line in process.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (process.stderr.strip().splitlines() or ["?"])[-1][:300]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nacl", default="4096", help="comma-separated atom counts")
    parser.add_argument("--models", default="converted,fresh")
    parser.add_argument("--cluster", action="store_true", help="198 atoms in 80 A")
    parser.add_argument("--epoch", action="store_true")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--one-epoch", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(evaluate(*args.one)))
        return
    if args.one_epoch is not None:
        print(json.dumps(epoch(args.one_epoch, args.batches)))
        return

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"# OMP_NUM_THREADS={threads}, float32, default long-range settings (auto)")
    cases = [(m, n) for n in args.nacl.split(",") if n for m in args.models.split(",")]
    if args.cluster:
        cases.append(("converted", "cluster-80A"))
    if cases:
        print("model | structure | atoms | time (s) | peak (GB) | process (GB) | KB/atom")
    for kind, structure in cases:
        result = _child(["--one", kind, structure])
        if "time_s" in result:
            per_atom = result["peak_gb"] * 1024**2 / result["atoms"]
            print(
                f"{kind} | {structure} | {result['atoms']} | {result['time_s']:.2f} | "
                f"{result['peak_gb']:.2f} | {result['process_gb']:.2f} | {per_atom:.0f}",
                flush=True,
            )
        else:
            print(f"{kind} | {structure} | {result}", flush=True)
    if args.epoch:
        print(f"variant | structures | epoch (s)  [{args.batches} batches of 8 biodimers]")
        times = {}
        for variant in ("auto", "stripped", "ewald"):
            result = _child(["--one-epoch", variant, "--batches", str(args.batches)])
            if "epoch_s" in result:
                times[variant] = result["epoch_s"]
                print(
                    f"{variant} | {result['structures']} | {result['epoch_s']:.2f}", flush=True
                )
            else:
                print(f"{variant} | {result}", flush=True)
        if "auto" in times and "stripped" in times:
            print(f"# auto / stripped = {times['auto'] / times['stripped']:.2f}")


if __name__ == "__main__":
    main()
