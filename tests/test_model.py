"""Behaviour of ``LoremModel``: edge cases, cutoff, input validation, outputs, dtypes."""

import copy
import math

import ase
import ase.build
import numpy as np
import pytest
import torch
from _helpers import (
    CUTOFF,
    VARIANTS,
    make_model,
    molecule,
    nacl_cell,
    nacl_cluster,
    predict_per_atom,
    record,
    relative_error,
    total_energy,
    variant_model,
)
from metatensor.torch import Labels
from metatomic.torch import (
    ModelEvaluationOptions,
    ModelOutput,
    System,
    load_atomistic_model,
)

from lorem_mta.model import export
from lorem_mta.utils import attach_neighbors, predict, system_from_atoms

TOLERANCE = 1e-10


def _energy(model, atoms) -> float:
    return total_energy(model, atoms)


# ---------------------------------------------------------------------------------------
# isolated atoms and empty neighbour lists
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("periodic", [False, True])
def test_isolated_atom(variant, periodic):
    model = variant_model(variant)
    if periodic:
        # larger than the cutoff: the neighbour list is empty
        atoms = ase.Atoms("O", positions=[[1.0, 2.0, 3.0]], cell=np.eye(3) * 11, pbc=True)
    else:
        atoms = ase.Atoms("O", positions=[[1.0, 2.0, 3.0]])
    prediction = predict(model, [atoms], extra_outputs=["feature"])
    energy = float(prediction.energies.detach()[0])
    assert math.isfinite(energy)
    assert torch.isfinite(prediction.outputs["feature"].block().values).all()
    forces = prediction.forces[0]
    assert torch.isfinite(forces).all()
    assert torch.isfinite(prediction.virials).all()
    # one atom per (cubic) cell: the force vanishes by symmetry
    assert record(float(forces.abs().max())) < TOLERANCE
    if not periodic:
        assert float(prediction.virials.abs().max()) < TOLERANCE
        # and the energy does not depend on where the atom is
        moved = atoms.copy()
        moved.positions += 3.3
        assert relative_error(_energy(model, moved), energy) < TOLERANCE


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_atom_beyond_cutoff(variant):
    model = variant_model(variant)
    lr = VARIANTS[variant].get("lr", True)
    fragment = molecule()
    lone = ase.Atoms("H", positions=[[20.0, 1.0, -2.0]])
    combined = fragment + lone
    distances = combined.get_distances(len(fragment), list(range(len(fragment))))
    # farther than the interaction range of the short-range model
    n_steps = VARIANTS[variant].get("num_message_passing", 0)
    assert distances.min() > (n_steps + 1) * CUTOFF

    prediction = predict(model, [combined])
    energy = float(prediction.energies.detach()[0])
    forces = prediction.forces[0]
    assert math.isfinite(energy)
    assert torch.isfinite(forces).all()

    fragment_prediction = predict(model, [fragment])
    separate = float(fragment_prediction.energies.detach()[0]) + _energy(model, lone)
    if lr:
        # the long-range part couples the atom to the molecule
        assert abs(energy - separate) > 1e-8
        assert float(forces[-1].abs().max()) > 1e-10
    else:
        assert relative_error(energy, separate) < TOLERANCE
        assert float(forces[-1].abs().max()) == 0.0
        assert relative_error(forces[:-1], fragment_prediction.forces[0]) < TOLERANCE


# ---------------------------------------------------------------------------------------
# cutoff
# ---------------------------------------------------------------------------------------


def _dimer(distance: float, periodic: bool = False) -> ase.Atoms:
    atoms = ase.Atoms("CO", positions=[[0.0, 0.0, 0.0], [distance, 0.0, 0.0]])
    if periodic:
        atoms.cell = np.diag([10.3, 9.0, 9.5])
        atoms.pbc = True
    return atoms


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("variant", ["sr", "sr-mp1-eq-noinit"])
def test_short_range_continuous_at_cutoff(variant, periodic):
    model = variant_model(variant)
    inside = predict(model, [_dimer(CUTOFF - 1e-6, periodic)])
    outside = predict(model, [_dimer(CUTOFF + 1e-6, periodic)])
    energy_inside = float(inside.energies.detach()[0])
    energy_outside = float(outside.energies.detach()[0])
    assert record(abs(energy_inside - energy_outside)) < 1e-8
    # the force vanishes linearly at the cutoff
    assert float(inside.forces[0].abs().max()) < 1e-5
    assert float(outside.forces[0].abs().max()) == 0.0
    # beyond the cutoff, the dimer is two isolated atoms
    isolated = _energy(model, ase.Atoms("C")) + _energy(model, ase.Atoms("O"))
    assert relative_error(energy_outside, isolated) < TOLERANCE
    # the energy is not trivially constant
    assert abs(_energy(model, _dimer(3.0, periodic)) - energy_outside) > 1e-4


@pytest.mark.parametrize("variant", ["lr2", "lr1-mp1-eq"])
def test_molecule_long_range_continuous_at_cutoff(variant):
    model = variant_model(variant)
    inside = predict(model, [_dimer(CUTOFF - 1e-6)])
    outside = predict(model, [_dimer(CUTOFF + 1e-6)])
    difference = float(outside.energies.detach()[0] - inside.energies.detach()[0])
    force = float(inside.forces[0][1, 0] + outside.forces[0][1, 0]) / 2
    # the direct Coulomb sum is smooth: dE = -F dr
    assert record(abs(difference + force * 2e-6)) < 1e-11


@pytest.mark.parametrize("variant", ["lr2", "lr1-mp1-eq"])
def test_periodic_long_range_jump_at_cutoff_is_small(variant):
    """The periodic Ewald real-space sum is truncated at the cutoff (design choice).

    The jump is erfc(r_c / (sqrt(2) sigma)) / r_c ~ 1e-5 per unit charge product.
    """
    model = variant_model(variant)
    inside = _energy(model, _dimer(CUTOFF - 1e-6, periodic=True))
    outside = _energy(model, _dimer(CUTOFF + 1e-6, periodic=True))
    assert record(abs(outside - inside)) < 1e-5


@pytest.mark.parametrize("variant", ["lr2", "lr0-mp1-scalar", "sr"])
def test_fragments_beyond_cutoff(variant):
    model = variant_model(variant)
    lr = VARIANTS[variant].get("lr", True)
    first = molecule(name="H2O", seed=4)
    second = molecule(name="CH3OH", seed=5)
    isolated = _energy(model, first) + _energy(model, second)

    energies = []
    for separation in [10.0, 12.0]:
        shifted = second.copy()
        shifted.positions += np.array([separation, 0.3, -0.2])
        combined = first + shifted
        gap = combined.get_all_distances()[: len(first), len(first) :].min()
        assert gap > CUTOFF
        energies.append(_energy(model, combined))

    if lr:
        assert abs(energies[0] - energies[1]) > 1e-6
        assert abs(energies[1] - isolated) > 1e-6
    else:
        assert relative_error(energies[0], isolated) < TOLERANCE
        assert relative_error(energies[1], isolated) < TOLERANCE


# ---------------------------------------------------------------------------------------
# clear errors, through LoremModel and through the exported AtomisticModel
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def error_models(tmp_path_factory):
    model = make_model(seed=3, atomic_types=[1, 6, 8], max_degree_lr=1)
    path = str(tmp_path_factory.mktemp("export") / "model.pt")
    export(model, path, torch.float64)
    return {"direct": model, "exported": load_atomistic_model(path)}


def _system(atoms: ase.Atoms, model, nan: bool = False) -> System:
    system = system_from_atoms(atoms)
    attach_neighbors(model, [system])
    if not nan:
        return system
    positions = system.positions.clone()
    positions[1, 0] = float("nan")
    broken = System(types=system.types, positions=positions, cell=system.cell, pbc=system.pbc)
    for options in model.requested_neighbor_lists():
        broken.add_neighbor_list(options, system.get_neighbor_list(options))
    return broken


ERROR_CASES = {
    "unknown-type": (ase.Atoms("CAu", positions=[[0, 0, 0], [1.5, 0, 0]]), r"atomic type"),
    "pbc-1d": (
        ase.Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]], cell=np.eye(3) * 8, pbc=[1, 0, 0]),
        r"1D periodicity \(wires, polymers\) is not supported",
    ),
    "coincident": (
        ase.Atoms("COH", positions=[[0, 0, 0], [0, 0, 0], [1, 0, 0]]),
        # TorchScript prints 0.0 as "0."
        r"two atoms are 0\.0* A apart .*overlapping or duplicated atoms",
    ),
    "coincident-periodic": (
        ase.Atoms(
            "COH", positions=[[1, 1, 1], [1, 1, 1], [2, 1, 1]], cell=np.eye(3) * 7, pbc=True
        ),
        r"overlapping or duplicated atoms",
    ),
    "too-close": (
        ase.Atoms("CO", positions=[[0, 0, 0], [0.01, 0, 0]]),
        r"two atoms are 0\.01 A apart .*overlapping or duplicated atoms",
    ),
    "nan": (ase.Atoms("COH", positions=[[0, 0, 0], [1.2, 0, 0], [0, 1, 0]]), r"NaN"),
}


@pytest.mark.parametrize("how", ["direct", "exported", "exported-checked"])
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_clear_errors(error_models, case, how):
    atoms, message = ERROR_CASES[case]
    model = error_models[how.split("-")[0]]
    system = _system(atoms, model, nan=case == "nan")
    if how == "direct":

        def run():
            return model([system], {"energy": ModelOutput(sample_kind="system")})

    else:
        options = ModelEvaluationOptions(
            length_unit="angstrom",
            outputs={"energy": ModelOutput(unit="eV", sample_kind="system")},
        )

        def run():
            return model([system], options, check_consistency=how.endswith("checked"))

    with pytest.raises((ValueError, RuntimeError, torch.jit.Error), match=message):
        run()


def test_valid_inputs_do_not_raise(error_models):
    """The error cases above are errors because of what is tested, not the set-up."""
    atoms = ase.Atoms("COH", positions=[[0, 0, 0], [1.2, 0, 0], [0, 1, 0]])
    for how, model in error_models.items():
        system = _system(atoms, model)
        if how == "direct":
            model([system], {"energy": ModelOutput(sample_kind="system")})
        else:
            options = ModelEvaluationOptions(
                length_unit="angstrom", outputs={"energy": ModelOutput(unit="eV")}
            )
            model([system], options, check_consistency=True)


# ---------------------------------------------------------------------------------------
# outputs: per-atom energies, selected atoms, features, batches
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["lr2", "lr1-mp1-eq", "sr"])
@pytest.mark.parametrize("structure", ["nacl-periodic", "ch3oh"])
def test_per_atom_outputs_and_selected_atoms(variant, structure):
    model = variant_model(variant)
    atoms = nacl_cell() if structure == "nacl-periodic" else molecule()
    n_atoms = len(atoms)
    lr = VARIANTS[variant].get("lr", True)
    names = ["energy", "feature"]
    if lr:
        names += ["lorem::charges", "lorem::potentials"]

    full = predict_per_atom(model, atoms, outputs=names)
    energies = full["energy"].block().values
    assert energies.shape == (n_atoms, 1)
    assert full["energy"].block().samples.names == ["system", "atom"]
    assert full["feature"].block().values.shape == (n_atoms, 16)
    assert full["feature"].block().properties.names == ["feature"]

    total = predict(model, [atoms]).energies.detach()[0]
    assert relative_error(energies.sum(), total) < TOLERANCE

    chosen = [0, 3, n_atoms - 1]
    selected = Labels(["system", "atom"], torch.tensor([[0, i] for i in chosen]))
    subset = predict_per_atom(model, atoms, outputs=names, selected_atoms=selected)
    for name in names:
        for key, block in full[name].items():
            sub_block = subset[name].block(key)
            assert sub_block.samples.values.tolist() == [[0, i] for i in chosen]
            assert relative_error(sub_block.values, block.values[chosen]) < TOLERANCE

    # per-system energy restricted to the selection is the sum of the selected atoms
    system = system_from_atoms(atoms)
    attach_neighbors(model, [system])
    with torch.no_grad():
        selected_total = model(
            [system], {"energy": ModelOutput(sample_kind="system")}, selected
        )["energy"]
    selected_energy = selected_total.block().values[0, 0]
    assert relative_error(selected_energy, energies[chosen].sum()) < TOLERANCE


@pytest.mark.parametrize("variant", ["lr2", "lr1-mp1-eq", "sr"])
def test_batch_equals_separate(variant):
    model = variant_model(variant)
    structures = [molecule(), nacl_cell(), nacl_cluster(), ase.Atoms("O")]
    batch = predict(model, structures, extra_outputs=["feature"])
    for k, atoms in enumerate(structures):
        single = predict(model, [atoms], extra_outputs=["feature"])
        assert relative_error(batch.energies[k], single.energies[0]) < TOLERANCE
        assert relative_error(batch.forces[k], single.forces[0]) < TOLERANCE
        assert relative_error(batch.virials[k], single.virials[0]) < TOLERANCE

    # selected atoms across two systems of a batch
    selected = Labels(["system", "atom"], torch.tensor([[0, 2], [1, 0], [1, 5], [3, 0]]))
    names = ["energy", "feature"]
    full = [predict_per_atom(model, atoms, outputs=names) for atoms in structures]
    systems = [system_from_atoms(atoms) for atoms in structures]
    attach_neighbors(model, systems)
    with torch.no_grad():
        outputs = model(
            systems, {name: ModelOutput(sample_kind="atom") for name in names}, selected
        )
    for name in names:
        block = outputs[name].block()
        assert block.samples.values.tolist() == selected.values.tolist()
        expected = torch.stack(
            [full[s][name].block().values[a] for s, a in selected.values.tolist()]
        )
        assert relative_error(block.values, expected) < TOLERANCE


# ---------------------------------------------------------------------------------------
# float32
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("structure", ["nacl-periodic", "ch3oh"])
def test_float32_agrees_with_float64(variant, structure):
    model = variant_model(variant)
    model_32 = copy.deepcopy(model).float()
    atoms = nacl_cell() if structure == "nacl-periodic" else molecule()
    reference = predict(model, [atoms])
    single = predict(model_32, [atoms], dtype=torch.float32)
    assert single.energies.dtype == torch.float32
    # relative to the energy scale (at least 1 eV: a total energy can be close to zero)
    energies = single.energies.detach().double(), reference.energies.detach()
    energy_error = float((energies[0] - energies[1]).abs().max())
    assert energy_error < 1e-5 * max(float(energies[1].abs().max()), 1.0)
    assert relative_error(single.forces[0], reference.forces[0]) < 1e-4
    assert relative_error(single.virials, reference.virials) < 1e-4


def test_huge_periodic_cell_gives_a_clear_error():
    """A cluster in a 200 A periodic box: the reference Ewald sum needs ~30 million
    k-vectors times 16 atoms (~34 GB) and is refused; ``auto`` takes the direct sum."""
    model = make_model(max_degree_lr=1, long_range_method="ewald")
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 1, 1))
    atoms.set_cell([200] * 3)
    atoms.pbc = True
    with pytest.raises(ValueError, match="would need about .* long_range_method='auto'"):
        predict(model, [atoms])
    pbc_false = atoms.copy()
    pbc_false.pbc = False  # the advice in the message works
    assert np.isfinite(predict(model, [pbc_false]).energies[0].item())
    auto = make_model(max_degree_lr=1, long_range_method="auto")
    assert np.isfinite(predict(auto, [atoms]).energies[0].item())
