"""Export, loading without ``lorem_mta``, ASE calculator, capabilities, TorchScript."""

import copy
import json
import math
import os
import subprocess
import sys
import textwrap

import ase
import numpy as np
import pytest
import sphericart.torch  # noqa: F401  (loaded, so that export collects its extension)
import torch
from _helpers import (
    CUTOFF,
    VARIANTS,
    molecule,
    nacl_cell,
    relative_error,
    variant_model,
)
from metatensor.torch import Labels
from metatomic.torch import ModelOutput, check_atomistic_model
from metatomic_ase import MetatomicCalculator

from lorem_mta.model import atomistic_model, capabilities, export
from lorem_mta.utils import attach_neighbors, predict, system_from_atoms

TOLERANCE = 1e-10
VARIANT = "lr2"


def _structures():
    return {"periodic": nacl_cell(), "molecule": molecule()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = tmp_path_factory.mktemp("exported")
    path = str(directory / "lorem.pt")
    extensions = str(directory / "extensions")
    export(variant_model(VARIANT), path, torch.float64, extensions)
    return path, extensions


@pytest.fixture(scope="module")
def reference():
    model = variant_model(VARIANT)
    results = {}
    for name, atoms in _structures().items():
        prediction = predict(model, [atoms])
        results[name] = {
            "energy": float(prediction.energies.detach()[0]),
            "forces": prediction.forces[0].numpy(),
            "virial": prediction.virials[0].numpy(),
        }
    return results


def test_export_files(exported):
    path, extensions = exported
    assert os.path.isfile(path)
    assert os.path.isdir(extensions)
    assert any("sphericart" in name for name in os.listdir(extensions))
    check_atomistic_model(path)


SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    if sys.argv[4] == "import-sphericart":
        import sphericart.torch  # noqa: F401

    import ase
    import numpy as np
    import torch
    from metatomic.torch import (
        ModelEvaluationOptions,
        ModelOutput,
        System,
        load_atomistic_model,
    )
    from metatomic_ase import MetatomicCalculator
    from vesin.metatomic import compute_requested_neighbors

    path, extensions, structures = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    model = load_atomistic_model(path, extensions_directory=extensions)
    calculator = MetatomicCalculator(path, extensions_directory=extensions)
    capabilities = model.capabilities()
    results = {
        "dtype": capabilities.dtype,
        "interaction_range": capabilities.interaction_range,
        "outputs": sorted(capabilities.outputs.keys()),
    }
    for name, data in structures.items():
        atoms = ase.Atoms(
            numbers=data["numbers"],
            positions=data["positions"],
            cell=data["cell"],
            pbc=data["pbc"],
        )
        atoms.calc = calculator
        result = {
            "energy": atoms.get_potential_energy(),
            "forces": atoms.get_forces().tolist(),
        }
        if atoms.pbc.all():
            result["stress"] = atoms.get_stress(voigt=False).tolist()
            result["volume"] = atoms.get_volume()

        # and directly with the AtomisticModel
        system = System(
            types=torch.tensor(atoms.numbers, dtype=torch.int32),
            positions=torch.tensor(atoms.positions, dtype=torch.float64),
            cell=torch.tensor(atoms.cell.array * atoms.pbc[:, None], dtype=torch.float64),
            pbc=torch.tensor(atoms.pbc),
        )
        compute_requested_neighbors(system, "angstrom", model)
        options = ModelEvaluationOptions(
            length_unit="angstrom",
            outputs={"energy": ModelOutput(unit="eV", sample_kind="system")},
        )
        outputs = model([system], options, check_consistency=True)
        result["direct_energy"] = float(outputs["energy"].block().values[0, 0])
        results[name] = result

    results["imported_lorem_mta"] = "lorem_mta" in sys.modules
    results["imported_sphericart"] = "sphericart.torch" in sys.modules
    print("RESULTS:" + json.dumps(results))
    """
)


def _run_fresh_process(path: str, extensions: str, mode: str) -> dict:
    structures = {
        name: {
            "numbers": atoms.numbers.tolist(),
            "positions": atoms.positions.tolist(),
            "cell": atoms.cell.array.tolist(),
            "pbc": atoms.pbc.tolist(),
        }
        for name, atoms in _structures().items()
    }
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, path, extensions, json.dumps(structures), mode],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULTS:")]
    assert len(lines) == 1, completed.stdout[-3000:]
    return json.loads(lines[0][len("RESULTS:") :])


@pytest.fixture(scope="module")
def fresh_process(exported):
    """Results of the exported model in a python process that never imports lorem_mta."""
    return _run_fresh_process(*exported, mode="plain")


def _compare_forces_and_stress(results, reference):
    for name, expected in reference.items():
        got = results[name]
        assert relative_error(np.array(got["forces"]), expected["forces"]) < TOLERANCE
        if "stress" in got:
            virial = np.array(got["stress"]) * got["volume"]
            assert relative_error(virial, expected["virial"]) < TOLERANCE


def test_fresh_process_energy(fresh_process, reference):
    results = fresh_process
    assert results["imported_lorem_mta"] is False
    assert results["imported_sphericart"] is False
    assert results["dtype"] == "float64"
    assert math.isinf(results["interaction_range"])
    assert {"energy", "feature", "lorem::charges", "lorem::potentials"} <= set(
        results["outputs"]
    )
    for name, expected in reference.items():
        got = results[name]
        assert relative_error(got["energy"], expected["energy"]) < TOLERANCE
        assert relative_error(got["direct_energy"], expected["energy"]) < TOLERANCE


def test_fresh_process_forces_and_stress(fresh_process, reference):
    # regression test: with sphericart-torch's harmonics inside the model, a process that
    # never imported sphericart in Python had no backward for them (sphericart-torch
    # 2.0.x registers its autograd formulas from Python) and lost the angular part of
    # forces and stress; the harmonics are now plain torch operations
    assert fresh_process["imported_sphericart"] is False
    _compare_forces_and_stress(fresh_process, reference)


@pytest.mark.slow
def test_fresh_process_forces_with_sphericart_imported(exported, reference):
    """Importing sphericart.torch registers the missing autograd: forces are right."""
    results = _run_fresh_process(*exported, mode="import-sphericart")
    assert results["imported_lorem_mta"] is False
    assert results["imported_sphericart"] is True
    for name, expected in reference.items():
        assert relative_error(results[name]["energy"], expected["energy"]) < TOLERANCE
    _compare_forces_and_stress(results, reference)


def test_ase_calculator_in_process(exported, reference):
    path, extensions = exported
    calculator = MetatomicCalculator(path, extensions_directory=extensions)
    for name, atoms in _structures().items():
        atoms.calc = calculator
        expected = reference[name]
        assert relative_error(atoms.get_potential_energy(), expected["energy"]) < TOLERANCE
        assert relative_error(atoms.get_forces(), expected["forces"]) < TOLERANCE
        if name == "periodic":
            stress = atoms.get_stress(voigt=False)
            assert relative_error(stress * atoms.get_volume(), expected["virial"]) < TOLERANCE
            # Voigt order of ASE
            voigt = atoms.get_stress()
            np.testing.assert_allclose(
                voigt, stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]], rtol=1e-12
            )

    atoms = _structures()["periodic"]
    outputs = calculator.run_model(
        atoms,
        {
            "lorem::charges": ModelOutput(sample_kind="atom"),
            "lorem::potentials": ModelOutput(sample_kind="atom"),
        },
    )
    direct = variant_model(VARIANT)
    system = system_from_atoms(atoms)
    attach_neighbors(direct, [system])
    with torch.no_grad():
        expected = direct(
            [system],
            {
                "lorem::charges": ModelOutput(sample_kind="atom"),
                "lorem::potentials": ModelOutput(sample_kind="atom"),
            },
        )
    for name in ["lorem::charges", "lorem::potentials"]:
        tensor = outputs[name]
        assert tensor.keys.names == ["o3_lambda", "o3_sigma"]
        assert tensor.keys.values.tolist() == [[0, 1], [1, 1], [2, 1]]
        for key, block in tensor.items():
            degree = int(key["o3_lambda"])
            assert block.components[0].names == ["o3_mu"]
            assert block.samples.names == ["system", "atom"]
            assert block.properties.names == ["channel"]
            assert block.values.shape[:2] == (len(atoms), 2 * degree + 1)
            assert relative_error(block.values, expected[name].block(key).values) < TOLERANCE
        assert tensor.block({"o3_lambda": 0}).properties.values.reshape(-1).tolist() == [
            0,
            1,
        ]


def test_ase_calculator_selected_atoms(exported):
    path, extensions = exported
    calculator = MetatomicCalculator(path, extensions_directory=extensions)
    atoms = _structures()["molecule"]
    selected = Labels(["system", "atom"], torch.tensor([[0, 1], [0, 4]]))
    outputs = calculator.run_model(
        atoms, {"energy": ModelOutput(unit="eV", sample_kind="atom")}, selected
    )
    full = calculator.run_model(atoms, {"energy": ModelOutput(unit="eV", sample_kind="atom")})
    values = full["energy"].block().values
    assert outputs["energy"].block().samples.values.tolist() == [[0, 1], [0, 4]]
    assert relative_error(outputs["energy"].block().values, values[[1, 4]]) < TOLERANCE
    energy = float(calculator.get_potential_energy(atoms))
    assert relative_error(values.sum(), energy) < TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_capabilities(variant, dtype):
    model = variant_model(variant)
    options = VARIANTS[variant]
    wrapped = atomistic_model(model, dtype)
    caps = wrapped.capabilities()
    assert caps.dtype == ("float64" if dtype == torch.float64 else "float32")
    assert caps.length_unit == "angstrom"
    assert caps.atomic_types == [1, 6, 8, 11, 17]
    assert caps.outputs["energy"].unit == "eV"
    if options.get("lr", True):
        assert math.isinf(caps.interaction_range)
        assert "lorem::charges" in caps.outputs
        assert "lorem::potentials" in caps.outputs
    else:
        n_steps = options.get("num_message_passing", 0)
        assert caps.interaction_range == pytest.approx((n_steps + 1) * CUTOFF)
        assert "lorem::charges" not in caps.outputs
    assert capabilities(model, dtype).interaction_range == caps.interaction_range
    neighbors = wrapped.requested_neighbor_lists()
    assert len(neighbors) == 1
    assert neighbors[0].cutoff == CUTOFF
    assert neighbors[0].full_list
    assert neighbors[0].strict


def test_float32_export_runs(tmp_path):
    path = str(tmp_path / "model32.pt")
    model = variant_model(VARIANT)
    export(model, path, torch.float32, collect_extensions=str(tmp_path / "ext"))
    calculator = MetatomicCalculator(path, extensions_directory=str(tmp_path / "ext"))
    atoms = _structures()["periodic"]
    atoms.calc = calculator
    expected = float(predict(variant_model(VARIANT), [atoms]).energies.detach()[0])
    assert relative_error(atoms.get_potential_energy(), expected) < 1e-5


@pytest.mark.parametrize(
    "variant",
    [
        "lr1-mp1-eq",
        "sr",
        pytest.param("lr2", marks=pytest.mark.slow),
        pytest.param("lr0-mp1-scalar", marks=pytest.mark.slow),
    ],
)
def test_torchscript_matches_eager(variant):
    eager = variant_model(variant)
    scripted = torch.jit.script(copy.deepcopy(eager))
    names = ["energy", "feature"]
    if VARIANTS[variant].get("lr", True):
        names += ["lorem::charges", "lorem::potentials"]

    for atoms in [*_structures().values(), ase.Atoms("O")]:
        results = []
        for model in [eager, scripted]:
            positions = torch.tensor(atoms.positions, dtype=torch.float64)
            positions.requires_grad_(True)
            system = system_from_atoms(atoms, torch.float64, positions)
            # a scripted module only keeps the methods forward uses
            attach_neighbors(eager, [system])
            outputs = model([system], {name: ModelOutput(sample_kind="atom") for name in names})
            energy = outputs["energy"].block().values.sum()
            (gradient,) = torch.autograd.grad(energy, positions)
            results.append((outputs, gradient))

        (eager_outputs, eager_gradient), (script_outputs, script_gradient) = results
        assert relative_error(script_gradient, eager_gradient) < 1e-13
        for name in names:
            assert script_outputs[name].keys == eager_outputs[name].keys
            for key, block in eager_outputs[name].items():
                script_block = script_outputs[name].block(key)
                assert script_block.samples == block.samples
                assert relative_error(script_block.values, block.values) < 1e-13
