"""Time lorem-jax 0.2.0 training steps (run inside .venv-jax; see training.py).

The step is the body of ``lorem-train``'s loop: ``jax.value_and_grad`` of marathon's
energy + force MSE loss (weights 0.5 / 0.5) and an optax Adam update, jitted. Batches are
built beforehand with lorem-jax's own batcher (one padding structure, as in training).

Prints one JSON line: {"median_s", "times_s", "num_parameters"}.
Usage: python benchmarks/jax_training.py frames.xyz --steps 5 --batch-size 8
"""

import argparse
import json
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("frames")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import ase.io
    import jax
    import optax
    from lorem.batching import to_batch, to_sample
    from lorem.models.mlip import Lorem
    from marathon.evaluate import get_loss_fn

    frames = ase.io.read(args.frames, ":")
    model = Lorem()
    keys = ("energy", "forces")
    batches = []
    for k in range(0, len(frames), args.batch_size):
        samples = [
            to_sample(a, model.cutoff, keys=keys) for a in frames[k : k + args.batch_size]
        ]
        batch = to_batch(samples, keys, batch_size=args.batch_size + 1)
        batches.append(jax.tree.map(lambda x: jax.numpy.array(x), batch))

    params = model.init(jax.random.key(0), *model.dummy_inputs())
    n_parameters = sum(x.size for x in jax.tree.leaves(params))
    loss_fn = get_loss_fn(
        lambda p, b: model.predict(p, b), weights={"energy": 0.5, "forces": 0.5}
    )
    optimizer = optax.adam(1e-5)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(carry, batch):
        params, opt_state = carry
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    carry = (params, opt_state)
    for batch in batches:  # compile for every batch shape
        carry, loss = step(carry, batch)
        jax.block_until_ready(loss)
    times = []
    for k in range(args.steps):
        start = time.perf_counter()
        carry, loss = step(carry, batches[k % len(batches)])
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    record = {
        "median_s": float(np.median(times)),
        "times_s": times,
        "num_parameters": int(n_parameters),
        "loss": float(loss),
    }
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
