"""Make a small, real lorem-jax training run (run INSIDE the lorem-jax venv).

It does what a lorem-jax user does (lorem-jax README, ``examples/train-mlp``):

1. ``prepare.py`` step: split an extended-XYZ data set and write marathon data sets
   (``$DATASETS/<name>/{train,valid}``) with ``marathon.grain.prepare``;
2. write ``model.yaml`` and ``settings.yaml`` into an experiment folder;
3. run ``lorem-train`` in that folder, which writes ``run/`` (checkpoints, logs, plots).

Usage (from the repository root)::

    OMP_NUM_THREADS=2 .venv-jax/bin/python benchmarks/jax_tools/make_run.py WORKDIR

Data: ``shared/data/cumulene/lorem_jax_example_cumulene_21.xyz``, lorem-jax's own
``examples/train-mlp/data.xyz`` (BSD-3-Clause): 21 distorted C9H4 cumulenes, non-periodic,
split 16/5 as in ``examples/train-mlp/prepare.py``.

(Periodic training on the 30 A biodimer boxes was tried first and abandoned: its padded
Ewald batches took 9 GB and ~18 s per structure on 2 cores.)
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "cumulene" / "lorem_jax_example_cumulene_21.xyz"
N_TRAIN = 16
SPLIT_SEED = 0

MODEL_YAML = """\
model:
  lorem.Lorem:
    cutoff: 5.0
    max_degree: 2
    max_degree_lr: 2
    num_features: 16
    num_radial: 8
    num_species: 4
    num_spherical_features: 2
    num_message_passing: 0
    lr: true
"""

SETTINGS_YAML = """\
train: "cumulene/train"
valid: "cumulene/valid"
seed: 23
batcher:
  batch_size: 4
loss_weights: {"energy": 0.5, "forces": 0.5}
optimizer: adam
start_learning_rate: 5e-3
min_learning_rate: 1e-6
max_epochs: 10
valid_every_epoch: 2
start_decay_after: 2
decay_style: linear
benchmark_pipeline: False
use_wandb: False
default_matmul_precision: "float32"
worker_count: 0
"""

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


def prepare(datasets: Path) -> None:
    """Split the frames and write the marathon data sets (as examples/train-mlp)."""
    os.environ["DATASETS"] = str(datasets)
    import jax
    from ase.io import read
    from marathon.data import get_splits
    from marathon.grain import prepare as marathon_prepare

    frames = read(DATA, index=":")
    idx_train, idx_valid, _ = get_splits(
        len(frames), N_TRAIN, len(frames) - N_TRAIN, 0, jax.random.key(SPLIT_SEED)
    )
    (datasets / "cumulene").mkdir(parents=True, exist_ok=True)
    with open(datasets / "cumulene" / "split.txt", "w") as f:
        f.write(f"# frame indices into {DATA.name}\n")
        f.write("train " + " ".join(str(int(i)) for i in idx_train) + "\n")
        f.write("valid " + " ".join(str(int(i)) for i in idx_valid) + "\n")
    for name, idx in (("train", idx_train), ("valid", idx_valid)):
        marathon_prepare(
            [frames[int(i)] for i in idx],
            folder=datasets / "cumulene" / name,
            batch_size=500,
            samples_per_composition=100,
            properties=PROPERTIES,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    if (workdir / "experiment" / "run").exists():
        sys.exit(f"{workdir}/experiment/run exists; use a fresh WORKDIR")
    datasets = workdir / "datasets"
    prepare(datasets)

    experiment = workdir / "experiment"
    experiment.mkdir(parents=True, exist_ok=True)
    (experiment / "model.yaml").write_text(MODEL_YAML)
    (experiment / "settings.yaml").write_text(SETTINGS_YAML)

    start = time.monotonic()
    env = {**os.environ, "DATASETS": str(datasets)}
    train = Path(sys.executable).with_name("lorem-train")
    with open(workdir / "train.log", "w") as log:
        subprocess.run(
            [str(train)], cwd=experiment, env=env, check=True, stdout=log, stderr=log
        )
    print(f"lorem-train finished in {time.monotonic() - start:.1f} s; run in {experiment}/run")


if __name__ == "__main__":
    main()
