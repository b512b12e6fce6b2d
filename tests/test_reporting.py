"""What a user reads during and after ``mtt train`` (``lorem_mta.architecture.reporting``).

Unit tests of the schedule description, the restart schedule, the best-epoch summary,
the warning filters and the float32 export precision; ``test_mtt_train_log`` runs a tiny
``mtt train`` / restart / ``mtt eval`` in subprocesses and checks their logs.
"""

import copy
import logging
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from metatrain.utils.architectures import get_default_hypers

from lorem_mta.architecture import reporting
from lorem_mta.architecture.trainer import get_scheduler

DATASET = Path(__file__).resolve().parent / "resources" / "metatrain" / "hcno_lj.xyz"


def _hypers(**changes):
    hypers = get_default_hypers("experimental.lorem_mta")["training"]
    hypers.update(changes)
    return hypers


def _rates(hypers, steps_per_epoch, epochs, span=None, state=None):
    """Learning rates of ``epochs`` epochs (one per step), optionally from a state."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=hypers["learning_rate"])
    scheduler = get_scheduler(optimizer, hypers, steps_per_epoch, span=span)
    if state is not None:
        scheduler.load_state_dict(state)
    rates = []
    for _ in range(epochs * steps_per_epoch):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    return rates, scheduler.state_dict()


# -- schedule description --------------------------------------------------------------


def test_schedule_line_and_warning_when_decay_never_starts():
    lines = reporting.describe_schedule(
        _hypers(num_epochs=30, decay_start_epoch=10, learning_rate=5e-3), 30
    )
    assert lines == [
        "Learning-rate schedule (linear_decay): constant at 0.005 for epochs 1-10, then "
        "linear decay to 1e-06 at the end of epoch 30"
    ]
    # num_epochs <= decay_start_epoch: the rate never decays
    for num_epochs in [5, 10]:
        lines = reporting.describe_schedule(
            _hypers(num_epochs=num_epochs, decay_start_epoch=10), num_epochs
        )
        assert len(lines) == 2
        assert "no decay" in lines[0]
        assert "decay_start_epoch (10) is not smaller than num_epochs" in lines[1]
        assert "never reaches final_learning_rate" in lines[1]
        # and the schedule really is constant
        rates, _ = _rates(_hypers(num_epochs=num_epochs, decay_start_epoch=10), 2, num_epochs)
        assert set(rates) == {1e-3}


def test_schedule_line_other_schedules():
    cosine = reporting.describe_schedule(
        _hypers(scheduler="cosine", num_epochs=50, warmup_fraction=0.1), 50
    )
    assert cosine == [
        "Learning-rate schedule (cosine): linear warm-up over 10 % of the steps to 0.001, "
        "then cosine decay to 1e-06 at the end of epoch 50"
    ]
    constant = reporting.describe_schedule(_hypers(scheduler="constant", num_epochs=3), 3)
    assert constant == ["Learning-rate schedule (constant): constant at 0.001 for all 3 epochs"]
    at_once = reporting.describe_schedule(_hypers(num_epochs=8, decay_start_epoch=0), 8)
    assert at_once == [
        "Learning-rate schedule (linear_decay): linear decay from 0.001 to 1e-06 at the end "
        "of epoch 8"
    ]
    one = reporting.describe_schedule(_hypers(num_epochs=4, decay_start_epoch=1), 2)
    assert one[0].endswith(
        "constant at 0.001 for epoch 1, then linear decay to 1e-06 at the end of epoch 2, "
        "then 1e-06 for epochs 3-4"
    )
    budget = reporting.describe_schedule(_hypers(num_epochs=30, time_budget=60.0), 30)
    assert budget[0].endswith("(or at the last epoch that fits in the time budget)")


# -- restart with more epochs ----------------------------------------------------------


def test_restart_with_more_epochs_keeps_the_final_rate(caplog):
    """A finished 20-epoch run restarted with 30 epochs: epochs 21-30 at the final rate."""
    first = _hypers(num_epochs=20, decay_start_epoch=5, learning_rate=1e-3)
    rates, state = _rates(first, 3, 20)
    assert rates[-1] == pytest.approx(1e-6)

    more = _hypers(num_epochs=30, decay_start_epoch=5, learning_rate=1e-3)
    span = reporting.schedule_horizon(more, stored=20, start_epoch=20)
    assert span == 20
    restarted, _ = _rates(more, 3, 10, span=span, state=state)
    assert restarted == pytest.approx([1e-6] * 30)

    # what the schedule did before: stretched to 30 epochs, the rate went back up
    stretched, _ = _rates(more, 3, 10, state=state)
    assert max(stretched) > 300e-6

    with caplog.at_level(logging.INFO):
        reporting.log_restart_schedule(more, 20, span)
        lines = reporting.describe_schedule(more, span)
    assert "epochs 21-30 run at final_learning_rate (1e-06)" in caplog.text
    assert lines[0].endswith("at the end of epoch 20, then 1e-06 for epochs 21-30")


def test_restart_before_the_decay_takes_the_new_length():
    hypers = _hypers(num_epochs=30, decay_start_epoch=10)
    assert reporting.schedule_horizon(hypers, stored=20, start_epoch=5) == 30
    assert reporting.schedule_horizon(hypers, stored=20, start_epoch=15) == 20
    assert reporting.schedule_horizon(hypers, stored=None, start_epoch=0) == 30


def test_checkpoint_upgrade_v2_v3():
    from lorem_mta.architecture import checkpoints

    checkpoint = {"trainer_ckpt_version": 2, "train_hypers": {"num_epochs": 123}}
    checkpoints.upgrade(checkpoint, "trainer", 3)
    assert checkpoint["schedule_epochs"] == 123 and checkpoint["best_errors"] is None


def test_checkpoint_upgrade_v3_v4_trains_eagerly():
    from lorem_mta.architecture import checkpoints

    checkpoint = {"trainer_ckpt_version": 3, "train_hypers": {"num_epochs": 123}}
    checkpoints.upgrade(checkpoint, "trainer", 4)
    assert checkpoint["train_hypers"]["compile"] is False
    assert checkpoint["trainer_ckpt_version"] == 4


# -- best epoch --------------------------------------------------------------------------


def test_best_epoch_summary_in_dataset_units(caplog):
    from metatrain.utils.data import DatasetInfo
    from metatrain.utils.data.target_info import get_energy_target_info

    info = DatasetInfo(
        length_unit="angstrom",
        atomic_types=[1],
        targets={
            "energy": get_energy_target_info("energy", {"quantity": "energy", "unit": "eV"})
        },
    )
    best = reporting.BestEpoch(info)
    best.log(10)  # nothing before the first epoch
    best.update(
        6,
        {"loss": 1.0, "energy RMSE (per atom)": 0.012},
        {"loss": 2.0, "energy RMSE (per atom)": 0.0345},
    )
    restored = reporting.BestEpoch(info)
    restored.load(copy.deepcopy(best.state()))
    with caplog.at_level(logging.INFO):
        restored.log(10)
    assert "Best model: epoch 7 of 10" in caplog.text
    assert re.search(r"Epoch:\s+7 \|", caplog.text)
    assert re.search(r"training energy RMSE \(per atom\): +12\.0+ meV", caplog.text)
    assert re.search(r"validation energy RMSE \(per atom\): +34\.50* meV", caplog.text)


# -- filters ---------------------------------------------------------------------------


def test_filters_are_targeted(caplog):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reporting.quiet_third_party()
        for module, message in [
            ("torch.jit._script", "`torch.jit.script` is deprecated. Please switch"),
            ("torch.jit._serialization", "`torch.jit.save` is deprecated. Please switch"),
            ("lorem_mta.model", "`torch.jit.script` is deprecated. Please switch"),
            ("torch.nn.modules", "something else is deprecated"),
        ]:
            warnings.warn_explicit(message, DeprecationWarning, "file.py", 1, module=module)
        warnings.warn_explicit(
            "Requested dataset of zero length.", UserWarning, "f.py", 1, module="metatrain.cli"
        )
    shown = [(str(w.message), w.filename) for w in caught]
    # only the torch.jit deprecations of torch itself and metatrain's empty split
    assert [message for message, _ in shown] == [
        "`torch.jit.script` is deprecated. Please switch",
        "something else is deprecated",
    ]

    with caplog.at_level(logging.INFO):
        logging.info("Datasets are too large (>1M total structures) to calculate statistics")
        logging.info("Skipping dataset statistics.")
    assert "too large" not in caplog.text and "Skipping dataset statistics." in caplog.text


# -- float32 precision ----------------------------------------------------------------


def _energies(atomistic, systems):
    from metatomic.torch import ModelEvaluationOptions, ModelOutput
    from metatrain.utils.neighbor_lists import get_system_with_neighbor_lists

    dtype = getattr(torch, atomistic.capabilities().dtype)
    systems = [
        get_system_with_neighbor_lists(s.to(dtype), atomistic.requested_neighbor_lists())
        for s in systems
    ]
    options = ModelEvaluationOptions(
        length_unit="angstrom", outputs={"energy": ModelOutput(sample_kind="system")}
    )
    outputs = atomistic(systems, options, check_consistency=False)
    return outputs["energy"].block().values.detach().reshape(-1).to(torch.float64)


def test_float32_export_adds_the_baseline_in_float64(tmp_path, monkeypatch, caplog):
    """With a baseline of ~1000 eV per atom, the float32 model's total energies are the
    float64 model's rounded once to float32 (within half a float32 step), and the export
    log says how large the steps are and how to export in float64."""
    from metatrain.utils.data import read_systems
    from test_metatrain_suites import _train_one_epoch

    monkeypatch.chdir(tmp_path)
    baseline = {"energy": {1: -13.6, 6: -1030.5, 7: -1485.3, 8: -2041.7}}
    model, _ = _train_one_epoch(str(DATASET), {"atomic_baseline": baseline})
    systems = read_systems(str(DATASET))

    reference = _energies(copy.deepcopy(model).to(torch.float64).export(), systems)
    with caplog.at_level(logging.INFO):
        single = _energies(copy.deepcopy(model).to(torch.float32).export(), systems)
    steps = torch.tensor([reporting.float32_steps(e) for e in reference.tolist()])
    assert steps.max() >= 2.0**-12  # large energies: steps of 0.24 meV or more
    # half a step from rounding the float64 sum once, plus the (small) float32 arithmetic
    # of the network part
    assert ((single - reference).abs() <= 0.5 * steps + 1e-5).all(), (
        (single - reference).abs() / steps
    ).max()
    assert "float32 model: total energies are rounded" in caplog.text
    assert "lorem-mta export MODEL -o NEW.pt --dtype float64" in caplog.text
    assert "up to 2042 eV per atom" in caplog.text


def test_float32_note():
    assert reporting.float32_export_note(0.5) is None
    note = reporting.float32_export_note(1000.0)
    # 10 000 eV for 10 atoms: steps of 2^-10 eV
    assert f"10 atoms: {1000 * 2.0**-10:.2g} meV" in note
    assert reporting.float32_steps(10000.0) == 2.0**-10
    assert reporting.float32_steps(-8192.0) == 2.0**-10
    assert reporting.float32_steps(8191.0) == 2.0**-11


# -- end to end ------------------------------------------------------------------------


def test_mtt_train_log(tmp_path):
    """A tiny ``mtt train`` (3 epochs, decay never starts), a restart to 5 epochs after a
    decay, and ``mtt eval``: the log lines users read."""
    import metatomic.torch  # noqa: F401 (checkpoints hold metatomic objects)
    from test_mtt_cli import options, run

    shutil.copy(DATASET, tmp_path / "train.xyz")
    (tmp_path / "options.yaml").write_text(
        options(training="num_epochs: 3\nlog_interval: 2\n")
        .replace("    num_epochs: 1\n", "")
        .replace("    log_interval: 1\n", "", 1)
    )
    log = _run_log(run(["mtt", "train", "options.yaml"], tmp_path))
    assert "Datasets are too large" not in log
    assert "Training dataset:" in log  # the statistics are still printed
    assert "Learning-rate schedule (linear_decay): constant at 0.001 for all 3 epochs" in log
    assert "[WARNING] - decay_start_epoch (10) is not smaller than num_epochs (3)" in log
    # epochs counted from 1: the first, every `log_interval`-th and the last
    assert re.findall(r"Epoch:\s+(\d+) \| learning rate", log) == ["1", "2", "3"]
    assert "Epoch:    0" not in log
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=False)
    best = checkpoint["best_epoch"] + 1
    assert f"Best model: epoch {best} of 3 (the exported model)" in log
    summary = re.search(rf"Epoch:\s+{best} \| training loss.*", log).group(0)
    assert "validation energy RMSE (per atom)" in summary and "meV" in summary
    assert f"Using best model from epoch {best}" in log
    _assert_no_clutter(log)

    # a restart of a decayed run with more epochs stays at the final rate
    (tmp_path / "decay.yaml").write_text(
        options(training="num_epochs: 2\ndecay_start_epoch: 1\n").replace(
            "    num_epochs: 1\n", ""
        )
    )
    run(["mtt", "train", "decay.yaml", "-o", "decayed.pt"], tmp_path)
    log = _run_log(
        run(
            ["mtt", "train", "decay.yaml", "--restart", "decayed.ckpt", "-o", "more.pt"]
            + ["-r", "architecture.training.num_epochs=4"],
            tmp_path,
        )
    )
    assert "Using latest model from epoch 2" in log
    assert "epochs 3-4 run at final_learning_rate (1e-06)" in log
    assert re.findall(r"Epoch:\s+(\d+) \| learning rate: (\S+)", log) == [
        ("3", "1.000e-06"),
        ("4", "1.000e-06"),
    ]
    assert torch.load(tmp_path / "more.ckpt", weights_only=False)["schedule_epochs"] == 2
    _assert_no_clutter(log)

    (tmp_path / "eval.yaml").write_text(
        "systems:\n  read_from: train.xyz\n  length_unit: angstrom\n"
        "targets:\n  energy:\n    key: energy\n    unit: eV\n"
    )
    log = _run_log(run(["mtt", "eval", "model.pt", "eval.yaml"], tmp_path))
    assert "energy RMSE" in log
    _assert_no_clutter(log)


def _run_log(result):
    return result.stdout + result.stderr


def _assert_no_clutter(log):
    for text in [
        "DeprecationWarning",
        "register_new_resolver",
        "Requested dataset of zero length",
        "UserWarning",
    ]:
        assert text not in log, (text, log[-3000:])
