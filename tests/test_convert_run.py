"""Converting a real lorem-jax training run (fixture: tests/resources/jax_run).

The fixture is a small ``lorem-train`` run on lorem-jax's own cumulene example data, in
lorem-jax's on-disk format, with reference energies/forces/stress from lorem-jax's ASE
calculator (see tests/resources/jax_run/README.md). Tolerances:

* ``*_f64_exactbinom`` (the calculator's pipeline in float64 with exact Bernstein
  binomials, which is what lorem_mta implements): round-off, 1e-10 relative in energy,
  1e-9 in forces and stress;
* the calculator as a user runs it (``energy``, ``forces``, ``stress``): it runs in
  float32 and e3x's log-binomials are off by ~1e-6 relative (num_radial = 8), measured
  |dE| <= 1.9e-5 eV (3.0e-7 relative) and |dF| <= 1.6e-5 eV/A (4e-6 of max |F|):
  asserted at 1e-6 relative in E and 1e-5 * max |F| in forces and stress.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ase
import numpy as np
import pytest
import torch
from metatomic_ase import MetatomicCalculator

from lorem_mta.cli import main
from lorem_mta.convert import ParameterMismatchError, convert_jax, model_from_jax
from lorem_mta.jax_run import find_jax_checkpoint, read_jax_run, read_msgpack

RUN = Path(__file__).parent / "resources" / "jax_run"
CHECKPOINT = RUN / "run" / "checkpoints" / "R2_E+F"
REFERENCE = dict(np.load(RUN / "reference.npz"))
PTR = np.concatenate([[0], np.cumsum(REFERENCE["n_atoms"])])
N_STRUCTURES = len(REFERENCE["names"])


def _structure(k):
    a, b = PTR[k], PTR[k + 1]
    return ase.Atoms(
        numbers=REFERENCE["numbers"][a:b],
        positions=REFERENCE["positions"][a:b],
        cell=REFERENCE["cells"][k],
        pbc=REFERENCE["pbc"][k],
    )


def _evaluate(model, extensions, indices):
    calc = MetatomicCalculator(str(model), extensions_directory=str(extensions))
    results = []
    for k in indices:
        atoms = _structure(k)
        atoms.calc = calc
        stress = atoms.get_stress() if atoms.pbc.all() else None
        results.append((atoms.get_potential_energy(), atoms.get_forces(), stress))
    return results


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """The run converted by ``lorem-mta convert-jax`` (float64) in a subprocess."""
    tmp = tmp_path_factory.mktemp("cli")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lorem_mta.cli",
            "convert-jax",
            str(RUN),
            "-o",
            str(tmp / "model.pt"),
            "--dtype",
            "float64",
            "--long-range-method",
            "ewald",  # lorem-jax's exact reference sum
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr
    return _evaluate(tmp / "model.pt", tmp / "extensions", range(N_STRUCTURES))


def _assert_matches(results, indices, suffix, e_rtol, f_rtol):
    for (energy, forces, stress), k in zip(results, indices, strict=True):
        a, b = PTR[k], PTR[k + 1]
        ref_energy = REFERENCE[f"energy{suffix}"][k]
        assert abs(energy - ref_energy) <= e_rtol * max(1.0, abs(ref_energy)), k
        ref_forces = REFERENCE[f"forces{suffix}"][a:b]
        scale = max(1.0, np.abs(ref_forces).max())
        np.testing.assert_allclose(forces, ref_forces, rtol=0, atol=f_rtol * scale)
        if stress is not None:
            ref_stress = REFERENCE[f"stress{suffix}"][k]
            scale = np.abs(ref_stress).max()
            np.testing.assert_allclose(stress, ref_stress, rtol=0, atol=f_rtol * scale)


def test_fixture_covers_both_periodicities():
    assert REFERENCE["pbc"].all(axis=1).any()
    assert not REFERENCE["pbc"].any(axis=1).all()


def test_cli_matches_float64_exact_binomials(cli_results):
    _assert_matches(cli_results, range(N_STRUCTURES), "_f64_exactbinom", 1e-10, 1e-9)


def test_cli_matches_lorem_jax_calculator(cli_results):
    """lorem-jax's calculator as a user runs it: float32, e3x log-binomials."""
    _assert_matches(cli_results, range(N_STRUCTURES), "", 1e-6, 1e-5)
    # the same calculator in float64: only the log-binomials differ (~1e-6 relative)
    _assert_matches(cli_results, range(N_STRUCTURES), "_f64", 1e-6, 1e-5)


def test_python_api(tmp_path, cli_results):
    """``convert_jax`` on the checkpoint folder (what ``from_checkpoint`` takes)."""
    convert_jax(
        str(CHECKPOINT),
        str(tmp_path / "model.pt"),
        torch.float64,
        extensions=str(tmp_path),
        long_range_method="ewald",
    )
    indices = [0, N_STRUCTURES - 1]
    results = _evaluate(tmp_path / "model.pt", tmp_path, indices)
    for (energy, forces, _), k in zip(results, indices, strict=True):
        assert abs(energy - cli_results[k][0]) <= 1e-12 * abs(energy)
        np.testing.assert_allclose(forces, cli_results[k][1], rtol=0, atol=1e-12)


def test_input_forms_and_baseline():
    params, hypers, baseline = read_jax_run(str(CHECKPOINT))
    assert hypers["num_features"] == 16 and hypers["num_radial"] == 8
    assert sorted(baseline) == [1, 6]
    reference = model_from_jax(str(CHECKPOINT))
    assert reference.atomic_types == [1, 6]  # the species of the training set
    for z, energy in baseline.items():
        assert reference.atomic_baseline[z].item() == energy
    assert reference.atomic_baseline.abs().sum().item() == pytest.approx(
        sum(abs(e) for e in baseline.values())
    )
    state = reference.state_dict()
    for path in [
        RUN,  # experiment folder
        RUN / "run",
        CHECKPOINT / "model",
        CHECKPOINT / "model" / "model.msgpack",
    ]:
        other = model_from_jax(str(path)).state_dict()
        assert other.keys() == state.keys()
        assert all(torch.equal(other[k], state[k]) for k in state), path


def test_checkpoint_selection():
    best = find_jax_checkpoint(str(RUN))
    assert Path(best) == CHECKPOINT / "model"
    mae_f = find_jax_checkpoint(str(RUN), checkpoint="MAE_F")
    assert Path(mae_f) == RUN / "run" / "checkpoints" / "MAE_F" / "model"
    params_best = read_jax_run(str(RUN))[0]
    params_mae_f = read_jax_run(str(RUN / "run"), checkpoint="MAE_F")[0]
    assert any(not np.array_equal(params_best[k], params_mae_f[k]) for k in params_best)


def test_cli_checkpoint_option(tmp_path, capsys):
    output = tmp_path / "model.pt"
    args = ["convert-jax", str(RUN), "-o", str(output), "--checkpoint", "MAE_F"]
    assert main(args + ["--extensions", str(tmp_path / "ext")]) == 0
    assert output.exists()
    assert main(["convert-jax", str(RUN), "--checkpoint", "nope", "-o", str(output)]) == 1
    assert "no checkpoint 'nope'" in capsys.readouterr().err


def test_msgpack_reader():
    tree = read_msgpack(str(CHECKPOINT / "model" / "model.msgpack"))
    leaves = tree["params"]["Initial_0"]["ChemicalEmbedding_0"]["Embed_0"]
    assert leaves["embedding"].dtype == np.float32
    assert leaves["embedding"].shape == (100, 4)
    state = read_msgpack(str(CHECKPOINT / "state.msgpack"))
    assert state["step"] == 132  # info.txt: best R2 at step=132


# -- errors --------------------------------------------------------------------------


def _copy(tmp_path):
    target = tmp_path / "R2_E+F"
    shutil.copytree(CHECKPOINT, target)
    return target


def _edit_yaml(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def _break_model_yaml(old, new):
    return lambda c: _edit_yaml(c / "model" / "model.yaml", old, new)


BROKEN = {
    "empty folder": (
        lambda c: shutil.rmtree(c / "model"),
        ValueError,
        "not a lorem-jax training run",
    ),
    "no baseline": (
        lambda c: (c / "model" / "baseline.yaml").unlink(),
        ValueError,
        r"missing \['baseline.yaml'\]",
    ),
    "no parameters": (
        lambda c: (c / "model" / "model.msgpack").unlink(),
        ValueError,
        r"missing \['model.msgpack'\]",
    ),
    "no model.yaml": (
        lambda c: (c / "model" / "model.yaml").unlink(),
        ValueError,
        r"missing \['model.yaml'\]",
    ),
    "truncated parameters": (
        lambda c: (c / "model" / "model.msgpack").write_bytes(
            (c / "model" / "model.msgpack").read_bytes()[:1000]
        ),
        ValueError,
        "could not read .* as a flax msgpack file",
    ),
    "empty baseline": (
        lambda c: (c / "model" / "baseline.yaml").write_text("elemental: {}\n"),
        ValueError,
        "baseline .* is empty",
    ),
    "BEC model without BEC heads": (
        _break_model_yaml("lorem.models.mlip.Lorem", "lorem.models.bec.LoremBEC"),
        KeyError,
        "PerParticleTensorPredictor_0",
    ),
    "other model class": (
        _break_model_yaml("lorem.models.mlip.Lorem", "lorem.models.mlip.LoremQ"),
        ValueError,
        "only lorem-jax's Lorem",
    ),
    "unknown hyperparameter": (
        _break_model_yaml("num_radial: 8", "num_radial: 8\n  num_heads: 2"),
        ValueError,
        r"unknown lorem-jax hyperparameters .*\['num_heads'\]",
    ),
    "extra inputs": (
        _break_model_yaml("inputs: []", "inputs: [charge]"),
        ValueError,
        "extra inputs",
    ),
    "wrong num_features": (
        _break_model_yaml("num_features: 16", "num_features: 32"),
        ParameterMismatchError,
        "hyperparameters do not match the parameters, wrong shapes",
    ),
    "wrong num_message_passing": (
        _break_model_yaml("num_message_passing: 0", "num_message_passing: 1"),
        KeyError,
        "no leaf 'Dense_3/kernel'",
    ),
    "wrong lr": (
        _break_model_yaml("lr: true", "lr: false"),
        KeyError,
        "hyperparameters do not match the parameters",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_checkpoints(tmp_path, capsys, case):
    modify, error, message = BROKEN[case]
    checkpoint = _copy(tmp_path)
    modify(checkpoint)
    with pytest.raises(error, match=message):
        model_from_jax(str(checkpoint))
    # the CLI reports the same as one line, without a traceback
    assert main(["convert-jax", str(checkpoint), "-o", str(tmp_path / "m.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "m.pt").exists()


def test_wrong_arguments(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"atomic types \[8\] have no energy baseline"):
        model_from_jax(str(RUN), atomic_types=[1, 6, 8])
    assert model_from_jax(str(RUN), atomic_types=[6]).atomic_types == [6]
    with pytest.raises(ValueError, match="only applies to a run/ or experiment folder"):
        find_jax_checkpoint(str(CHECKPOINT), checkpoint="MAE_F")
    with pytest.raises(ValueError, match="neither a .npz file nor a lorem-jax model.msgpack"):
        find_jax_checkpoint(str(CHECKPOINT / "model" / "model.yaml"))

    # a run without an R2_* checkpoint: the user has to choose
    run = tmp_path / "run"
    shutil.copytree(RUN / "run" / "checkpoints" / "MAE_E", run / "checkpoints" / "MAE_E")
    shutil.copytree(RUN / "run" / "checkpoints" / "MAE_F", run / "checkpoints" / "MAE_F")
    with pytest.raises(ValueError, match=r"checkpoints \['MAE_E', 'MAE_F'\]; choose one"):
        find_jax_checkpoint(str(tmp_path))
    assert main(["convert-jax", str(tmp_path), "-o", str(tmp_path / "m.pt")]) == 1
    assert "choose one" in capsys.readouterr().err
    assert main(["convert-jax", str(tmp_path / "missing"), "-o", "m.pt"]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_exported_model_forces_in_a_fresh_process(tmp_path):
    """Forces of the exported model in a process that never imports lorem_mta."""
    output = tmp_path / "model.pt"
    convert_jax(str(RUN), str(output), torch.float64, extensions=str(tmp_path / "ext"))
    script = f"""
import json, sys, ase, numpy as np
from metatomic_ase import MetatomicCalculator
d = np.load({str(RUN / "reference.npz")!r})
n = int(d["n_atoms"][0])
atoms = ase.Atoms(numbers=d["numbers"][:n], positions=d["positions"][:n])
atoms.calc = MetatomicCalculator({str(output)!r},
                                 extensions_directory={str(tmp_path / "ext")!r})
forces = atoms.get_forces()
error = float(np.abs(forces - d["forces_f64_exactbinom"][:n]).max())
print(json.dumps([error, "lorem_mta" in sys.modules]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    error, imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert not imported
    # with sphericart-torch's harmonics this was 1.9 eV/A: sphericart registers their
    # autograd in Python only (sphericart/torch/register.py), so an engine that just
    # loads the extension library silently dropped the angular part of the forces
    assert error <= 1e-9
