"""Train lorem-jax with its own ``lorem-train`` (run INSIDE the lorem-jax venv).

Helper of ``benchmarks/accuracy.py``; it does what a lorem-jax user does
(lorem-jax README, ``examples/train-mlp``):

1. write marathon data sets (``DATASETS/<name>/{train,valid}``) from the training and
   validation extended-XYZ files with ``marathon.grain.prepare``;
2. write ``model.yaml`` and ``settings.yaml`` into ``WORKDIR/experiment``;
3. run ``lorem-train`` there, which writes ``run/`` (checkpoints, logs);
4. write ``WORKDIR/timing.json`` with the wall time of ``lorem-train``.

With ``--cpu-budget S``, ``lorem-train`` (which has no such option) is stopped with
SIGTERM once its process has used ``S`` CPU seconds (compilation included); the
checkpoints it wrote at its last validation are what gets converted. Its learning-rate
schedule is the one of ``max_epochs`` in ``config.json``: choose it so that the run ends
near the budget (``timing.json`` records the CPU time used and whether it was stopped).

Usage::

    OMP_NUM_THREADS=2 .venv-jax/bin/python benchmarks/accuracy/jax_train.py \\
        --train train.xyz --valid validation.xyz --workdir DIR --config config.json

``config.json`` holds ``{"model": {...lorem.Lorem hypers...}, "settings": {...}}``;
``settings`` is written to ``settings.yaml`` as is, with ``train``/``valid`` added.
"""

import argparse
import json
import os
import signal
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
    parser.add_argument("--cpu-budget", type=float, default=None, help="CPU seconds")
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
        process = subprocess.Popen(
            [str(train)], cwd=experiment, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        stopped, cpu = False, 0.0
        while process.poll() is None:
            time.sleep(1.0)
            cpu = process_cpu(process.pid, cpu)
            if args.cpu_budget is not None and cpu >= args.cpu_budget and not stopped:
                process.send_signal(signal.SIGTERM)
                stopped = True
        returncode = process.wait()
    elapsed = time.monotonic() - start
    if returncode != 0 and not stopped:
        sys.exit(f"lorem-train failed (exit {returncode}), see {workdir}/train.log")
    timing = {"train_wall_s": elapsed, "train_cpu_s": cpu, "stopped_at_cpu_budget": stopped}
    (workdir / "timing.json").write_text(json.dumps(timing))
    print(f"lorem-train finished in {elapsed:.1f} s ({cpu:.1f} CPU s, stopped: {stopped})")


def process_cpu(pid: int, last: float) -> float:
    """CPU seconds (user + system, all threads) of a running process (``last`` if gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return last
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
