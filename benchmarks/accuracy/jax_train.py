"""Train lorem-jax with its own ``lorem-train`` (run INSIDE the lorem-jax venv).

Helper of ``benchmarks/accuracy.py``; it does what a lorem-jax user does
(lorem-jax README, ``examples/train-mlp``):

1. write marathon data sets (``DATASETS/<name>/{train,valid}``) from the training and
   validation extended-XYZ files with ``marathon.grain.prepare``;
2. write ``model.yaml`` and ``settings.yaml`` into ``WORKDIR/experiment``;
3. run ``lorem-train`` there, which writes ``run/`` (checkpoints, logs);
4. write ``WORKDIR/timing.json`` with the wall time of ``lorem-train``.

Usage::

    OMP_NUM_THREADS=2 .venv-jax/bin/python benchmarks/accuracy/jax_train.py \\
        --train train.xyz --valid validation.xyz --workdir DIR --config config.json

``config.json`` holds ``{"model": {...lorem.Lorem hypers...}, "settings": {...}}``;
``settings`` is written to ``settings.yaml`` as is, with ``train``/``valid`` added.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROPERTIES = {
    "energy": {
        "shape": (1,),
        "storage": "atoms.calc",
        "report_unit": (1000, "meV"),
        "symbol": "E",
    },
    "forces": {
        "shape": ("atom", 3),
        "storage": "atoms.calc",
        "report_unit": (1000, "meV/Å"),
        "symbol": "F",
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--valid", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()

    workdir = args.workdir.resolve()
    experiment = workdir / "experiment"
    if (experiment / "run").exists():
        sys.exit(f"{experiment}/run exists; use a fresh WORKDIR")
    config = json.loads(args.config.read_text())

    datasets = workdir / "datasets"
    os.environ["DATASETS"] = str(datasets)
    import yaml
    from ase.io import read
    from marathon.grain import prepare

    for name, path in (("train", args.train), ("valid", args.valid)):
        prepare(
            read(path, index=":"),
            folder=datasets / "data" / name,
            batch_size=500,
            samples_per_composition=100,
            properties=PROPERTIES,
        )

    experiment.mkdir(parents=True, exist_ok=True)
    (experiment / "model.yaml").write_text(
        yaml.safe_dump({"model": {"lorem.Lorem": config["model"]}}, sort_keys=False)
    )
    settings = {"train": "data/train", "valid": "data/valid", **config["settings"]}
    (experiment / "settings.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))

    env = {**os.environ, "DATASETS": str(datasets)}
    train = Path(sys.executable).with_name("lorem-train")
    start = time.monotonic()
    with open(workdir / "train.log", "w") as log:
        result = subprocess.run(
            [str(train)], cwd=experiment, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"lorem-train failed (exit {result.returncode}), see {workdir}/train.log")
    (workdir / "timing.json").write_text(json.dumps({"train_wall_s": elapsed}))
    print(f"lorem-train finished in {elapsed:.1f} s; run in {experiment}/run")


if __name__ == "__main__":
    main()
