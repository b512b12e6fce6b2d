"""CPU-seconds per training epoch of lorem-jax 0.2.0 (run inside .venv-jax).

The counterpart of ``training_epoch.py``: the same training and validation structures,
batches of ``--batch-size`` structures (plus the one padding structure lorem-jax's
batcher needs), the same model hyperparameters. An epoch is what ``lorem-train`` does:
one jitted step (``jax.value_and_grad`` of marathon's energy + force MSE loss with
weights 0.5 / 0.5 and an optax Adam update) per training batch, and the jitted loss
(energies and forces) of every validation batch. Batches are built beforehand with
lorem-jax's own batcher, and every batch shape is compiled before timing. The CPU time
of every epoch is ``time.process_time`` of this process.

Prints one JSON line: {"cpu_s_per_epoch", "median", "num_parameters", ...}.
Usage: python benchmarks/jax_training_epoch.py train.xyz val.xyz --hypers '{...}'
"""

import argparse
import json
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("train")
    parser.add_argument("validation")
    parser.add_argument("--hypers", default="{}", help="JSON of Lorem(...) arguments")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import ase.io
    import jax
    import optax
    from lorem.batching import to_batch, to_sample
    from lorem.models.mlip import Lorem
    from marathon.evaluate import get_loss_fn

    model = Lorem(**json.loads(args.hypers))
    keys = ("energy", "forces")

    def batches(path):
        frames = ase.io.read(path, ":")
        result = []
        for k in range(0, len(frames), args.batch_size):
            chunk = frames[k : k + args.batch_size]
            samples = [to_sample(a, model.cutoff, keys=keys) for a in chunk]
            batch = to_batch(samples, keys, batch_size=args.batch_size + 1)
            result.append(jax.tree.map(jax.numpy.array, batch))
        return result

    train_batches, val_batches = batches(args.train), batches(args.validation)
    params = model.init(jax.random.key(0), *model.dummy_inputs())
    n_parameters = sum(x.size for x in jax.tree.leaves(params))
    loss_fn = get_loss_fn(
        lambda p, b: model.predict(p, b), weights={"energy": 0.5, "forces": 0.5}
    )
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(carry, batch):
        params, opt_state = carry
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def validate(params, batch):
        return loss_fn(params, batch)[0]

    carry = (params, opt_state)

    def epoch(carry):
        for batch in train_batches:
            carry, loss = step(carry, batch)
        jax.block_until_ready(loss)
        for batch in val_batches:
            jax.block_until_ready(validate(carry[0], batch))
        return carry

    start = time.process_time()
    carry = epoch(carry)  # compiles every batch shape
    compile_cpu = time.process_time() - start
    times = []
    for _ in range(args.epochs):
        start = time.process_time()
        carry = epoch(carry)
        times.append(time.process_time() - start)
    record = {
        "cpu_s_per_epoch": times,
        "median": float(np.median(times)),
        "first_epoch_with_compilation_cpu_s": compile_cpu,
        "num_parameters": int(n_parameters),
        "train_batches": len(train_batches),
        "validation_batches": len(val_batches),
    }
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
