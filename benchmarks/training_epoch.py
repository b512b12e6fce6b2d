"""CPU-seconds per training epoch of ``mtt train``'s trainer, and where they go.

Runs :py:class:`lorem_mta.architecture.Trainer` (the code behind ``mtt train``) on

* ``cumulene``: the C9H4 rotor scan (13 atoms, non-periodic), 700 training / 100
  validation frames split with ``np.random.default_rng(0).permutation(800)``;
* ``nacl64``: rattled 64-atom rock-salt NaCl cells (periodic), 64 training / 16
  validation cells with random energies and forces;
* ``biodimers``: charge-charge biodimers of the shared data in their periodic 30 A
  box, 80 training / 8 validation frames split with
  ``np.random.default_rng(0).permutation``;

with batches of 8, float32 and one thread, for the ``small`` model (cutoff 5,
``max_degree`` 2, ``max_degree_lr`` 2, 32 features, 4 spherical features, 8 radial
functions, no message passing) or the ``paper`` model (the defaults). The CPU time of
an epoch (``time.process_time`` of this process, training and validation) is taken
between the ends of consecutive epochs of a run of ``1 + epochs`` epochs (the first one
warms up); with ``--baseline-src`` the runs of the two versions are interleaved.

``--profile`` writes a cProfile of two epochs (after one warm-up epoch) and a summary
of where the time goes by category; ``--phases`` the CPU time of the phases of a step
(model, backward, data loader, loss, metrics, Adam, ...) measured without a profiler.

Usage::

    OMP_NUM_THREADS=1 nice python benchmarks/training_epoch.py --case cumulene \\
        --model small --epochs 3 --repeats 3
    OMP_NUM_THREADS=1 nice python benchmarks/training_epoch.py --case cumulene \\
        --model small --profile benchmarks/results/profile.txt
    OMP_NUM_THREADS=1 nice python benchmarks/training_epoch.py --case cumulene \\
        --model small --with-compiled --jax --repeats 2   # eager, compile: true, lorem-jax
"""

import argparse
import contextlib
import cProfile
import io
import json
import logging
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.build
import ase.io
import numpy as np
import torch
from ase.calculators.singlepoint import SinglePointCalculator

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
JAX_PYTHON = HERE.parent / ".venv-jax" / "bin" / "python"
BATCH = 8

SMALL = {
    "cutoff": 5.0,
    "max_degree": 2,
    "max_degree_lr": 2,
    "num_features": 32,
    "num_spherical_features": 4,
    "num_radial": 8,
    "num_message_passing": 0,
}
MODELS = {"small": SMALL, "paper": {}}
#: per-atom energy and force MSE with weights 0.5 / 0.5, as lorem-jax's default loss
LOSS = {"type": "mse", "weight": 0.5, "reduction": "mean"}


def labelled(atoms: ase.Atoms, energy: float, forces: np.ndarray) -> ase.Atoms:
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def frames(case: str, n_train: int = 0) -> dict:
    """Training and validation frames of ``case``."""
    if case == "cumulene":
        scan = ase.io.read(DATA / "cumulene" / "cumulene_profile_train800.extxyz", ":")
        order = np.random.default_rng(0).permutation(len(scan))
        train = [scan[i] for i in order[:700]]
        val = [scan[i] for i in order[700:800]]
    elif case == "nacl64":
        rng = np.random.default_rng(0)
        cells = []
        for k in range(80):
            atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
            atoms.rattle(0.1, seed=k)
            forces = rng.normal(scale=0.5, size=(len(atoms), 3))
            cells.append(labelled(atoms, -3.0 * len(atoms) + rng.normal(), forces))
        train, val = cells[:64], cells[64:]
    elif case == "biodimers":
        dimers = ase.io.read(DATA / "biodimers_cc_cookbook" / "charge-charge.xyz", ":")
        order = np.random.default_rng(0).permutation(len(dimers))
        train = [dimers[i] for i in order[:80]]
        val = [dimers[i] for i in order[80:88]]
    else:
        raise ValueError(f"unknown case {case}")
    if n_train > 0:
        train = train[:n_train]
    return {"train": train, "validation": val}


def write(frames_: list, path: Path) -> None:
    clean = []
    for atoms in frames_:
        copy = atoms.copy()
        copy.info = {"energy": float(atoms.get_potential_energy())}
        copy.arrays = {k: v for k, v in copy.arrays.items() if k in ("numbers", "positions")}
        copy.new_array("forces", np.asarray(atoms.get_forces(), dtype=np.float64))
        clean.append(copy)
    ase.io.write(path, clean, format="extxyz")


def datasets(case: str, folder: Path, n_train: int = 0) -> tuple:
    """metatrain datasets and dataset info, read as ``mtt train`` reads them."""
    from metatrain.utils.data import DatasetInfo, get_atomic_types, get_dataset

    split = frames(case, n_train)
    result = {}
    for name, selected in split.items():
        path = folder / f"{name}.xyz"
        write(selected, path)
        target = {
            "quantity": "energy",
            "read_from": str(path),
            "reader": "ase",
            "key": "energy",
            "unit": "eV",
            "type": "scalar",
            "sample_kind": "system",
            "num_subtargets": 1,
            "forces": {"read_from": str(path), "reader": "ase", "key": "forces"},
            "stress": False,
            "virial": False,
        }
        result[name] = get_dataset(
            {
                "systems": {"read_from": str(path), "reader": "ase"},
                "targets": {"energy": target},
            }
        )
    train, targets, _ = result["train"]
    val = result["validation"][0]
    info = DatasetInfo(
        length_unit="angstrom", atomic_types=get_atomic_types(train), targets=targets
    )
    return train, val, info


def train(
    case_data: tuple, model_hypers: dict, epochs: int, training: dict, seed: int = 0
) -> tuple:
    """Train a fresh model for ``epochs`` epochs; return (CPU s, model, trainer)."""
    from metatrain.utils.architectures import get_default_hypers

    from lorem_mta.architecture import LoremMta, Trainer

    train_set, val_set, info = case_data
    torch.manual_seed(seed)
    hypers = get_default_hypers("experimental.lorem_mta")
    model = LoremMta({**hypers["model"], **model_hypers}, info)
    trainer_hypers = hypers["training"]
    trainer_hypers.update(
        num_epochs=epochs,
        batch_size=BATCH,
        num_workers=0,
        log_interval=1,
        checkpoint_interval=100000,
        loss={"energy": {**LOSS, "gradients": {"positions": LOSS}}},
        **training,
    )
    # CPU time at the end of every epoch: the metric logger is called once per epoch
    from metatrain.utils import logging as mtt_logging

    log = mtt_logging.MetricLogger.log
    stamps = []

    def log_and_stamp(self, *args, **kwargs):
        stamps.append(time.process_time())
        return log(self, *args, **kwargs)

    mtt_logging.MetricLogger.log = log_and_stamp
    try:
        with tempfile.TemporaryDirectory() as checkpoints:
            trainer = Trainer(trainer_hypers)
            start = time.process_time()
            trainer.train(
                model, torch.float32, [torch.device("cpu")], [train_set], [val_set], checkpoints
            )
            cpu = time.process_time() - start
    finally:
        mtt_logging.MetricLogger.log = log
    # the metric logger is also called once after the last epoch (the best epoch's
    # errors): only the intervals between the ends of consecutive epochs count
    epochs_cpu = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][: epochs - 1]
    return cpu, epochs_cpu, model, trainer


CATEGORIES = [
    # (label, "path/suffix.py:function" of profile entries, whose cumulative times add up);
    # the categories overlap (e.g. the model's forward is part of evaluate_model)
    (
        "training step (evaluate, loss, backward, optimizer; training batches)",
        ["architecture/epoch.py:step"],
    ),
    ("validation (evaluate, loss; validation batches)", ["architecture/epoch.py:validate"]),
    (
        "evaluate a batch (unpack, predict, per-atom averages)",
        ["architecture/epoch.py:evaluate"],
    ),
    (
        "  compile: true, the compiled function (with the batch preparation)",
        ["architecture/compiled.py:__call__"],
    ),
    (
        "  evaluate_model (prepare systems, forward, forces)",
        ["utils/evaluate_model.py:evaluate_model"],
    ),
    ("    model forward (LoremMta.forward)", ["architecture/model.py:forward"]),
    ("      backbone forward (the maths)", ["modules/backbone.py:forward"]),
    ("    forces (autograd.grad)", ["utils/output_gradient.py:compute_gradient"]),
    ("  unpack batch (deserialise systems and targets)", ["data/dataset.py:unpack_batch"]),
    ("  average_by_num_atoms", ["utils/per_atom.py:average_by_num_atoms"]),
    (
        "data loading (collate: join, neighbour lists, baseline/scale, buffers)",
        ["dataloader.py:__next__"],
    ),
    ("  neighbour lists", ["utils/neighbor_lists.py:transform"]),
    ("  composition baseline removal", ["additive/remove.py:transform"]),
    ("  scale removal", ["scaler/remove.py:transform"]),
    ("loss", ["utils/loss.py:__call__"]),
    ("loss.backward (double backward)", ["torch/_tensor.py:backward"]),
    ("optimizer step", ["torch/optim/optimizer.py:wrapper"]),
    ("scaler.apply_scales (loss and metrics)", ["scaler/model.py:apply_scales"]),
    ("metric accumulators", ["utils/metrics.py:update", "utils/metrics.py:finalize"]),
    ("best-model copy (deepcopy of the state)", ["copy.py:deepcopy"]),
]


def summarise(profile: cProfile.Profile, epochs: int) -> str:
    stats = pstats.Stats(profile)
    total = sum(v[2] for v in stats.stats.values())  # own time over all functions
    lines = [f"total profiled CPU time: {total:.2f} s over {epochs} epochs (cProfile adds"]
    lines.append("overhead to every Python call: the shares matter, not the seconds)")
    lines.append(
        f"{'category (cumulative times, nested ones indented)':<74} {'s/epoch':>8} {'share':>6}"
    )
    for label, keys in CATEGORIES:
        cumulative = 0.0
        for (filename, _, function), value in stats.stats.items():
            for key in keys:
                path, name = key.split(":")
                if function == name and filename.endswith(path):
                    cumulative += value[3]
        lines.append(f"{label:<74} {cumulative / epochs:8.3f} {cumulative / total:6.1%}")
    stream = io.StringIO()
    pstats.Stats(profile, stream=stream).sort_stats("cumulative").print_stats(60)
    lines += ["", "top 60 by cumulative time:", stream.getvalue()]
    stream = io.StringIO()
    pstats.Stats(profile, stream=stream).sort_stats("tottime").print_stats(40)
    lines += ["top 40 by own time:", stream.getvalue()]
    text = "\n".join(lines)
    return text.replace(str(Path(torch.__file__).parents[1]) + "/", "")


def profile_run(case_data: tuple, model_hypers: dict, training: dict, output: Path) -> None:
    """cProfile of epochs 2 and 3 of a 3-epoch run (the first epoch warms up)."""
    profiler = cProfile.Profile()
    epochs = 3
    counter = {"epoch": 0}

    # profile from the end of the first epoch: switch on in the metric logger call
    from metatrain.utils import logging as mtt_logging

    log = mtt_logging.MetricLogger.log

    def log_and_switch(self, *args, **kwargs):
        result = log(self, *args, **kwargs)
        counter["epoch"] += 1
        if counter["epoch"] == 1:
            profiler.enable()
        return result

    mtt_logging.MetricLogger.log = log_and_switch
    try:
        train(case_data, model_hypers, epochs, training)
    finally:
        profiler.disable()
        mtt_logging.MetricLogger.log = log
    output.write_text(summarise(profiler, epochs - 1))
    print(output.read_text()[:3000])


#: (owner, attribute, label) of the functions that ``--phases`` times
PHASES = [
    ("lorem_mta.architecture.epoch:EpochRunner", "predict", "predict (model or compiled call)"),
    (
        "lorem_mta.architecture.compiled:CompiledEnergyForces",
        "evaluate",
        "compiled call + batch preparation",
    ),
    ("lorem_mta.architecture.flat_loss:FlatLoss", "evaluate", "loss (plain tensors)"),
    ("lorem_mta.architecture.flat_loss:FlatLoss", "accumulate", "metric sums (plain tensors)"),
    ("torch:Tensor", "backward", "backward (parameter gradients)"),
    ("torch.utils.data.dataloader:_BaseDataLoaderIter", "__next__", "data loader"),
    ("metatrain.utils.loss:LossAggregator", "__call__", "loss"),
    ("lorem_mta.architecture.epoch:EpochRunner", "accumulate", "metric accumulators"),
    ("lorem_mta.architecture.epoch", "average_by_num_atoms", "per-atom averages"),
    ("lorem_mta.architecture.epoch", "batch_to", "batch_to (dtype, device)"),
    ("torch.optim:Adam", "step", "Adam step"),
    ("torch.optim.lr_scheduler:LambdaLR", "step", "schedule step"),
]


def phase_times(
    case_data: tuple, model_hypers: dict, training: dict, output: Path, epochs: int = 3
) -> None:
    """CPU time of the phases of training and validation steps, without a profiler:
    the functions of :data:`PHASES` are wrapped by timers during epochs 2 to
    ``1 + epochs`` (the first one warms up and compiles)."""
    import importlib

    from metatrain.utils import logging as mtt_logging

    from lorem_mta.architecture import epoch as epoch_module

    times: dict = {}
    state = {"on": False, "stage": "training"}
    originals = []

    def timed(function, label):
        def wrapper(*args, **kwargs):
            if not state["on"]:
                return function(*args, **kwargs)
            start = time.process_time()
            result = function(*args, **kwargs)
            key = (state["stage"], label)
            times[key] = times.get(key, 0.0) + time.process_time() - start
            return result

        return wrapper

    def patch(owner, name, replacement):
        originals.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    for path, name, label in PHASES:
        module_name, _, class_name = path.partition(":")
        owner = importlib.import_module(module_name)
        if class_name:
            owner = getattr(owner, class_name)
        patch(owner, name, timed(getattr(owner, name), label))
    for stage in ("train", "validate"):
        function = getattr(epoch_module.EpochRunner, stage)

        def staged(*args, function=function, stage=stage, **kwargs):
            state["stage"] = "training" if stage == "train" else "validation"
            return timed(function, "whole epoch part")(*args, **kwargs)

        patch(epoch_module.EpochRunner, stage, staged)
    calls = {"log": 0}
    log = mtt_logging.MetricLogger.log

    def log_and_switch(self, *args, **kwargs):
        calls["log"] += 1
        state["on"] = calls["log"] <= epochs  # off after the last epoch
        return log(self, *args, **kwargs)

    patch(mtt_logging.MetricLogger, "log", log_and_switch)
    try:
        train(case_data, model_hypers, 1 + epochs, training)
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)
    steps = len(case_data[0]) // BATCH
    lines = [
        f"CPU time by phase, epochs 2-{1 + epochs} (no profiler; phases nest inside "
        "'whole epoch part')",
        f"{'stage':<11} {'phase':<34} {'s/epoch':>8} {'ms per training step':>21}",
    ]
    for (stage, label), value in sorted(times.items(), key=lambda item: -item[1]):
        per_epoch = value / epochs
        lines.append(
            f"{stage:<11} {label:<34} {per_epoch:8.3f} {1e3 * per_epoch / steps:21.2f}"
        )
    output.write_text("\n".join(lines) + "\n")
    print(output.read_text())


def operator_profile(
    case_data: tuple, model_hypers: dict, training: dict, output: Path
) -> None:
    """torch.profiler table of the first 20 batches (training steps) of the second epoch
    of a 2-epoch run: the time of the torch operators themselves (forward and backward),
    by self CPU time (more batches take too much memory)."""
    from metatrain.utils import logging as mtt_logging
    from metatrain.utils.loss import LossAggregator

    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    log = mtt_logging.MetricLogger.log
    counter = {"epoch": 0}

    def log_and_switch(self, *args, **kwargs):
        result = log(self, *args, **kwargs)
        counter["epoch"] += 1
        if counter["epoch"] == 1:
            profiler.start()
        return result

    loss = LossAggregator.__call__
    counter["steps"] = 0

    def loss_and_count(self, *args, **kwargs):
        if counter["epoch"] == 1:
            counter["steps"] += 1
            if counter["steps"] == 21:
                profiler.stop()
        return loss(self, *args, **kwargs)

    mtt_logging.MetricLogger.log = log_and_switch
    LossAggregator.__call__ = loss_and_count
    try:
        train(case_data, model_hypers, 2, training)
    finally:
        if counter["steps"] < 21:
            profiler.stop()
        mtt_logging.MetricLogger.log = log
        LossAggregator.__call__ = loss
    averages = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in averages) / 1e6
    lines = [f"torch operators, 20 training steps: {total:.2f} s of self CPU time (profiled)"]
    lines.append(averages.table(sort_by="self_cpu_time_total", row_limit=30))
    output.write_text("\n".join(lines))
    print(output.read_text()[:4000])


def run_json(command: list, env: dict) -> dict:
    """Run ``command``; return the last JSON line it printed."""
    result = subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{command} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def jax_command(args: argparse.Namespace, folder: Path) -> list:
    """``jax_training_epoch.py`` on the structures of this case, in .venv-jax."""
    hypers = {k: v for k, v in MODELS[args.model].items()}
    command = [JAX_PYTHON, HERE / "jax_training_epoch.py", folder / "train.xyz"]
    command += [folder / "validation.xyz", "--hypers", json.dumps(hypers)]
    return command + ["--epochs", str(args.epochs), "--batch-size", str(BATCH)]


def jax_env() -> dict:
    """One XLA thread when ``OMP_NUM_THREADS=1``."""
    flags = "--xla_cpu_multi_thread_eigen=true"
    if os.environ.get("OMP_NUM_THREADS") == "1":
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return {**os.environ, "XLA_FLAGS": flags}


def compare(args: argparse.Namespace) -> None:
    """Interleaved subprocess runs of the baseline, the current code and lorem-jax."""
    command = [sys.executable, __file__, "--case", args.case, "--model", args.model]
    command += ["--model-hypers", args.model_hypers]
    command += ["--epochs", str(args.epochs), "--repeats", "1", "--n-train", str(args.n_train)]
    current = str(Path(__file__).resolve().parents[1] / "src")
    variants = []
    if args.baseline_src is not None:
        variants.append(
            ("baseline", command, {**os.environ, "PYTHONPATH": str(args.baseline_src)})
        )
    current_command = command + ["--training", args.training]
    variants.append(("current", current_command, {**os.environ, "PYTHONPATH": current}))
    if args.with_compiled:
        compiled = json.dumps({**json.loads(args.training), "compile": True})
        compiled_command = command + ["--training", compiled]
        variants.append(("compiled", compiled_command, {**os.environ, "PYTHONPATH": current}))
        if args.baseline_src is not None:
            environment = {**os.environ, "PYTHONPATH": str(args.baseline_src)}
            variants.append(("baseline compiled", compiled_command, environment))
    times: dict = {name: [] for name, _, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        if args.jax:
            for name, selected in frames(args.case, args.n_train).items():
                write(selected, Path(tmp) / f"{name}.xyz")
            variants.append(("lorem-jax", jax_command(args, Path(tmp)), jax_env()))
            times["lorem-jax"] = []
        first: dict = {name: [] for name in times}
        for _ in range(args.repeats):
            for name, variant_command, env in variants:
                result = run_json(variant_command, env)
                times[name] += result["cpu_s_per_epoch"]
                first[name] += result.get("first_epoch_cpu_s", [])
                print(f"{name}: {times[name]} CPU-s/epoch", flush=True)
    record = {
        "case": args.case,
        "model": args.model,
        "model_hypers": json.loads(args.model_hypers),
        "n_train": len(frames(args.case, args.n_train)["train"]),
        "epochs_per_run": args.epochs,
        "repeats": args.repeats,
        "training": json.loads(args.training),
        "cpu_s_per_epoch": times,
        "median": {name: float(np.median(values)) for name, values in times.items()},
        "first_epoch_cpu_s": first,
    }
    for name in times:
        if name != "current":
            ratio = record["median"][name] / record["median"]["current"]
            record[f"{name} / current"] = ratio
    print(json.dumps(record), flush=True)
    if args.json is not None:
        with open(args.json, "a") as file:
            file.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--case", default="cumulene", choices=["cumulene", "nacl64", "biodimers"]
    )
    parser.add_argument("--model", default="small", choices=list(MODELS))
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=0, help="fewer training frames")
    parser.add_argument(
        "--training", default="{}", help="JSON of trainer options of the timed runs"
    )
    parser.add_argument(
        "--model-hypers",
        default="{}",
        help="JSON of lorem_mta model hyperparameters added to --model's (not given to "
        'lorem-jax), e.g. \'{"long_range_method": "ewald"}\' for lorem-jax\'s Ewald sum',
    )
    parser.add_argument("--profile", type=Path, help="write a cProfile summary here")
    parser.add_argument(
        "--phases", type=Path, help="write the CPU time of every training phase here"
    )
    parser.add_argument("--ops", type=Path, help="write a torch.profiler operator table")
    parser.add_argument("--json", type=Path, help="append the timings to this file")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also time the lorem_mta package in this folder (e.g. the src/ of "
        "`git archive main src`), in subprocesses interleaved with the current one",
    )
    parser.add_argument("--jax", action="store_true", help="also time lorem-jax")
    parser.add_argument(
        "--with-compiled",
        action="store_true",
        help="also time the current code (and the baseline, with --baseline-src) with "
        "`compile: true` (its first epoch, which compiles, is not timed; see "
        "first_epoch_cpu_s)",
    )
    args = parser.parse_args()
    if args.baseline_src is not None or args.jax or args.with_compiled:
        compare(args)
        return
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    training = json.loads(args.training)

    with tempfile.TemporaryDirectory() as tmp:
        case_data = datasets(args.case, Path(tmp), args.n_train)
        model_hypers = {**MODELS[args.model], **json.loads(args.model_hypers)}
        if args.profile is not None:
            profile_run(case_data, model_hypers, training, args.profile)
            return
        if args.phases is not None:
            phase_times(case_data, model_hypers, training, args.phases)
            return
        if args.ops is not None:
            operator_profile(case_data, model_hypers, training, args.ops)
            return
        per_epoch, first_epoch = [], []
        for _ in range(args.repeats):
            # epochs 2, 3, ... (the first one warms up)
            total, epochs_cpu, _, _ = train(case_data, model_hypers, 1 + args.epochs, training)
            per_epoch += epochs_cpu
            first_epoch.append(total - sum(epochs_cpu))
            print(f"{args.case} {args.model}: {epochs_cpu} CPU-s/epoch", flush=True)
    record = {
        "case": args.case,
        "model": args.model,
        "model_hypers": json.loads(args.model_hypers),
        "training": training,
        "n_train": len(case_data[0]),
        "n_val": len(case_data[1]),
        "cpu_s_per_epoch": per_epoch,
        "median": float(np.median(per_epoch)),
        # set-up and first epoch (with compile: true, the compilation in this process)
        "first_epoch_cpu_s": first_epoch,
        "threads": torch.get_num_threads(),
        "omp": os.environ.get("OMP_NUM_THREADS"),
    }
    print(json.dumps(record), flush=True)
    if args.json is not None:
        with open(args.json, "a") as file:
            file.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
