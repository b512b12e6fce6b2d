"""Time lorem-jax 0.2.0 energy + forces on rattled rock-salt NaCl (run inside .venv-jax).

Prints one JSON line per size: {"n_atoms", "lr", "median_s", "times_s", "energy"}.
Usage: python benchmarks/jax_inference.py --sizes 2,3,4 --repeats 3 [--no-lr] [--x64]
"""

import argparse
import json
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="2,3")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-lr", action="store_true")
    parser.add_argument("--x64", action="store_true")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    args = parser.parse_args()

    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import ase.build
    from lorem.models.mlip import Lorem

    model = Lorem(lr=not args.no_lr)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    params = model.init(jax.random.key(0), *model.dummy_inputs())
    predict = jax.jit(lambda p, b: model.predict(p, b))
    for size in [int(s) for s in args.sizes.split(",")]:
        atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(size)
        atoms.rattle(0.05, seed=0)
        try:
            batch = model.atoms_to_batch(atoms)
            result = predict(params, batch)
            jax.block_until_ready(result)  # compile
            times = []
            for _ in range(args.repeats):
                start = clock()
                result = predict(params, batch)
                jax.block_until_ready(result)
                times.append(clock() - start)
            energy = float(np.asarray(result["energy"])[0])
            record = {
                "n_atoms": len(atoms),
                "lr": not args.no_lr,
                "median_s": float(np.median(times)),
                "times_s": times,
                "energy": energy,
            }
        except Exception as error:  # out of memory and friends
            record = {"n_atoms": len(atoms), "lr": not args.no_lr, "error": repr(error)[:200]}
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
