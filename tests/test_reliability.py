"""Reliability: bad inputs, numerical edge cases, long runs and safe file handling.

Every bad input is tried through :py:class:`~lorem_mta.model.LoremModel` and through the
exported ``AtomisticModel``; the table of ``docs/reliability.rst`` lists what each gives.
"""

import copy
import errno
import gzip
import io
import os
import stat
from pathlib import Path

import ase
import ase.build
import ase.io
import numpy as np
import pytest
import torch
from _helpers import (
    CUTOFF,
    VARIANTS,
    make_model,
    molecule,
    nacl_cell,
    predict_per_atom,
    record,
    relative_error,
    total_energy,
    variant_model,
)
from metatomic.torch import (
    ModelEvaluationOptions,
    ModelOutput,
    System,
    load_atomistic_model,
)

from lorem_mta.model import export
from lorem_mta.utils import attach_neighbors, predict, system_from_atoms

TESTS = Path(__file__).resolve().parent
TOLERANCE = 1e-10


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same small long-range model, plain and exported (float64)."""
    model = make_model(seed=7, atomic_types=[1, 6, 8, 11, 17], max_degree_lr=1)
    path = str(tmp_path_factory.mktemp("export") / "model.pt")
    export(model, path, torch.float64)
    return {"direct": model, "exported": load_atomistic_model(path)}


def _evaluate(model, systems, kind="system", check=False):
    """Energies of ``systems`` through a plain or an exported model."""
    if isinstance(model, torch.jit.ScriptModule) or hasattr(model, "capabilities"):
        options = ModelEvaluationOptions(
            length_unit="angstrom",
            outputs={"energy": ModelOutput(unit="eV", sample_kind=kind)},
        )
        return model(systems, options, check_consistency=check)["energy"]
    return model(systems, {"energy": ModelOutput(sample_kind=kind)})["energy"]


def _rebuild(system: System, positions=None, cell=None, types=None) -> System:
    """Copy of ``system`` with some tensors replaced (same neighbour lists)."""
    new = System(
        types=system.types if types is None else types,
        positions=system.positions if positions is None else positions,
        cell=system.cell if cell is None else cell,
        pbc=system.pbc,
    )
    for options in system.known_neighbor_lists():
        new.add_neighbor_list(options, system.get_neighbor_list(options))
    return new


# ---------------------------------------------------------------------------------------
# bad inputs: clear errors through both entry points
# ---------------------------------------------------------------------------------------


def _molecule_system(model):
    system = system_from_atoms(ase.Atoms("COH", positions=[[0, 0, 0], [1.2, 0, 0], [0, 1, 0]]))
    attach_neighbors(model, [system])
    return system


def _periodic_system(model):
    system = system_from_atoms(nacl_cell())
    attach_neighbors(model, [system])
    return system


def _with_value(system, name, value):
    tensor = getattr(system, name).clone()
    tensor.view(-1)[0] = value
    return _rebuild(system, **{name: tensor})


def _singular_cell(model):
    # vesin refuses to build a neighbour list for this cell; engines with their own
    # neighbour list (or none needed, as here: no pair within the cutoff) reach the model
    atoms = ase.Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]])
    system = system_from_atoms(atoms)
    attach_neighbors(model, [system])
    cell = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 0]], dtype=torch.float64)
    periodic = System(system.types, system.positions, cell, torch.ones(3, dtype=torch.bool))
    for options in system.known_neighbor_lists():
        periodic.add_neighbor_list(options, system.get_neighbor_list(options))
    return periodic


def _flat_cell(model):
    atoms = ase.Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]], pbc=True)
    atoms.cell = [[5.0, 0, 0], [0, 5.0, 0], [0, 0, 0.05]]
    system = system_from_atoms(atoms)
    attach_neighbors(model, [system])
    return system


def _atoms_system(atoms):
    def build(model):
        system = system_from_atoms(atoms)
        attach_neighbors(model, [system])
        return system

    return build


BAD_INPUTS = {
    "unknown type": (
        _atoms_system(ase.Atoms("CAu", positions=[[0, 0, 0], [1.5, 0, 0]])),
        # the exported model: metatomic checks the types first
        r"this model only knows atomic types \[1, 6, 8, 11, 17\], got \[6, 79\]"
        r"|does not support the atomic type '79'",
    ),
    "type 0": (
        _atoms_system(ase.Atoms("CX", positions=[[0, 0, 0], [1.5, 0, 0]])),
        r"only knows atomic types .*got \[0, 6\]|does not support the atomic type '0'",
    ),
    "negative type": (
        lambda m: _with_value(_molecule_system(m), "types", -1),
        r"only knows atomic types .*got \[-1, 1, 8\]|does not support the atomic type '-1'",
    ),
    "coincident atoms": (
        _atoms_system(ase.Atoms("COH", positions=[[0, 0, 0], [0, 0, 0], [1, 0, 0]])),
        r"two atoms are 0\.0* A apart \(the minimum is 0\.1",
    ),
    "nearly coincident atoms (0.0999 A)": (
        _atoms_system(ase.Atoms("CO", positions=[[0, 0, 0], [0.0999, 0, 0]])),
        r"two atoms are 0\.0999 A apart",
    ),
    "NaN position": (
        lambda m: _with_value(_molecule_system(m), "positions", float("nan")),
        r"positions contain NaN or infinite values",
    ),
    "infinite position": (
        lambda m: _with_value(_periodic_system(m), "positions", float("inf")),
        r"positions contain NaN or infinite values",
    ),
    "NaN cell": (
        lambda m: _with_value(_periodic_system(m), "cell", float("nan")),
        r"the cell contains NaN or infinite values",
    ),
    "infinite cell": (
        lambda m: _with_value(_periodic_system(m), "cell", float("inf")),
        r"the cell contains NaN or infinite values",
    ),
    "singular cell": (_singular_cell, r"periodic system with a singular \(zero-volume\) cell"),
    "flat cell (images 0.05 A apart)": (
        _flat_cell,
        r"two atoms are 0\.05 A apart .*periodic images .*too small or too flat",
    ),
    "1D periodic": (
        _atoms_system(
            ase.Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]], cell=[8] * 3, pbc=[0, 0, 1])
        ),
        r"pbc=\[False, False, True\]: 1D periodicity \(wires, polymers\) is not supported",
    ),
    # the reference Ewald sum of 16 atoms in a 200 A box needs ~34 GB: refused before
    # allocating, with the advice ("auto" takes a direct image sum for it)
    "huge periodic box": (
        _atoms_system(
            ase.Atoms(
                "Na8Cl8",
                positions=ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True)
                .repeat((2, 1, 1))
                .positions,
                cell=[200] * 3,
                pbc=True,
            )
        ),
        r"would need about .* long_range_method='auto'.*pbc=False",
    ),
}


@pytest.mark.parametrize("how", ["direct", "exported", "exported-checked"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_clear_error(models, case, how):
    build, message = BAD_INPUTS[case]
    model = models[how.split("-")[0]]
    system = build(model)
    # TorchScript re-raises the model's ValueError as torch.jit.Error
    with pytest.raises((ValueError, RuntimeError, torch.jit.Error), match=message) as error:
        _evaluate(model, [system], check=how.endswith("checked"))
    if how == "direct":
        assert error.type is ValueError
    # no torch-internal traceback text in what the user sees
    assert "Traceback" not in str(error.value).split("\n")[0]


def test_bad_input_in_a_batch_names_the_problem(models):
    """One bad system in a batch of good ones still gives the clear error."""
    model = models["direct"]
    good = _periodic_system(model)
    bad = BAD_INPUTS["coincident atoms"][0](model)
    with pytest.raises(ValueError, match="overlapping or duplicated atoms"):
        _evaluate(model, [good, _molecule_system(model), bad])


def test_rejection_threshold_is_sharp(models):
    """0.0999 A is refused, 0.1001 A gives finite energies, forces and virials."""
    model = models["direct"]
    atoms = ase.Atoms("CO", positions=[[0, 0, 0], [0.1001, 0, 0]])
    prediction = predict(model, [atoms])
    assert torch.isfinite(prediction.energies).all()
    assert torch.isfinite(prediction.forces[0]).all()
    assert torch.isfinite(prediction.virials).all()


def test_metatrain_model_rejects_bad_inputs():
    """metatrain's ``LoremMta`` (training and evaluation) validates through LoremModel."""
    from metatrain.utils.data import DatasetInfo
    from metatrain.utils.data.target_info import get_energy_target_info

    from lorem_mta.architecture import LoremMta

    info = DatasetInfo(
        length_unit="angstrom",
        atomic_types=[1, 6, 8],
        targets={
            "energy": get_energy_target_info("energy", {"quantity": "energy", "unit": "eV"})
        },
    )
    hypers = {"max_degree": 1, "num_features": 4, "num_spherical_features": 1}
    model = LoremMta({**hypers, "num_radial": 4}, info).to(torch.float64)
    request = {"energy": ModelOutput(sample_kind="system")}
    cases = {
        "unknown type": r"only knows atomic types \[1, 6, 8\], got \[6, 79\]",
        "coincident atoms": BAD_INPUTS["coincident atoms"][1],
        "NaN position": BAD_INPUTS["NaN position"][1],
        "1D periodic": BAD_INPUTS["1D periodic"][1],
    }
    for case, message in cases.items():
        build = BAD_INPUTS[case][0]
        system = build(model)
        for training in [True, False]:
            model.train(training)
            with pytest.raises(ValueError, match=message):
                model([system], request)


# ---------------------------------------------------------------------------------------
# unusual but valid inputs: correct results
# ---------------------------------------------------------------------------------------


def _empty(pbc: bool) -> ase.Atoms:
    return ase.Atoms(cell=np.eye(3) * 8 if pbc else None, pbc=pbc)


@pytest.mark.parametrize("pbc", [False, True])
def test_empty_system(models, pbc):
    """A system without atoms has zero energy, also inside a batch."""
    for how, model in models.items():
        system = system_from_atoms(_empty(pbc))
        attach_neighbors(model, [system])
        per_system = _evaluate(model, [system]).block().values
        assert per_system.tolist() == [[0.0]], how
        assert _evaluate(model, [system], kind="atom").block().values.shape == (0, 1)
        others = [_molecule_system(model), _periodic_system(model)]
        batch = _evaluate(model, [others[0], system, others[1]]).block().values
        single = torch.cat([_evaluate(model, [s]).block().values for s in others])
        assert batch[1, 0] == 0.0
        assert relative_error(batch[[0, 2]], single) < TOLERANCE

    # per-atom outputs are empty, forces are an empty array
    names = ["energy", "feature", "lorem::charges", "lorem::potentials"]
    outputs = predict_per_atom(models["direct"], _empty(pbc), outputs=names)
    for name in names:
        assert all(block.values.shape[0] == 0 for block in outputs[name].blocks())
    prediction = predict(models["direct"], [_empty(pbc)])
    assert prediction.forces[0].shape == (0, 3)
    assert float(prediction.energies.detach()[0]) == 0.0


@pytest.mark.parametrize("variant", ["lr2", "sr"])
@pytest.mark.parametrize("flip", ["negate", "swap", "mirror-one"])
def test_left_handed_cell(variant, flip):
    """A left-handed cell is the same crystal: same energy, forces and virial."""
    model = variant_model(variant)
    atoms = nacl_cell(seed=11)
    cell = atoms.cell.array.copy()
    if flip == "negate":
        cell = -cell
    elif flip == "swap":
        cell = cell[[1, 0, 2]]
    else:
        cell[2] = -cell[2]
    flipped = atoms.copy()
    flipped.set_cell(cell, scale_atoms=False)
    assert np.linalg.det(cell) < 0
    reference = predict(model, [atoms])
    result = predict(model, [flipped])
    assert relative_error(result.energies, reference.energies) < TOLERANCE
    assert relative_error(result.forces[0], reference.forces[0]) < 1e-9
    assert relative_error(result.virials, reference.virials) < 1e-9


def _small_cells():
    """Periodic cells with lattice vectors shorter than the cutoff (5 A)."""
    # triclinic: in a cubic one-atom cell the l = 2 features vanish too, and the
    # virial sits on the cusp of test_energy_cusp_at_symmetric_lattice
    na = ase.Atoms(
        "Na",
        positions=[[0.3, 0.2, 0.1]],
        cell=[[3.1, 0.0, 0.0], [0.4, 3.3, 0.0], [0.3, 0.5, 3.6]],
        pbc=True,
    )
    nacl = ase.build.bulk("NaCl", "rocksalt", a=5.64)  # fcc primitive cell, |a| = 3.99 A
    nacl.rattle(0.05, seed=3)
    sheared = ase.Atoms(
        "CO",
        positions=[[0.1, 0.2, 0.0], [1.3, 0.4, 0.9]],
        cell=[[3.4, 0.0, 0.0], [1.1, 3.2, 0.0], [0.4, 0.7, 3.6]],
        pbc=True,
    )
    return {"Na-1-atom": na, "NaCl-primitive": nacl, "CO-triclinic": sheared}


@pytest.mark.parametrize("variant", ["lr2", "lr1-mp1-eq", "sr"])
@pytest.mark.parametrize("name", list(_small_cells()))
def test_cell_smaller_than_cutoff(variant, name):
    """Periodic images inside the cutoff are included: E(supercell) = n E(cell)."""
    model = variant_model(variant)
    atoms = _small_cells()[name]
    assert np.linalg.norm(atoms.cell.array, axis=1).min() < CUTOFF
    repeats = (2, 2, 3)
    supercell = atoms.repeat(repeats)
    n = int(np.prod(repeats))
    cell = predict(model, [atoms])
    large = predict(model, [supercell])
    assert relative_error(large.energies[0], n * cell.energies[0]) < 1e-9
    assert relative_error(large.virials[0], n * cell.virials[0]) < 1e-8
    if len(atoms) > 1:
        # (a one-atom lattice sits on the cusp of test_energy_cusp_at_symmetric_lattice)
        assert relative_error(large.forces[0], cell.forces[0].repeat(n, 1)) < 1e-8


def test_energy_cusp_at_symmetric_lattice():
    """lorem-jax's exact norm: E is not differentiable where features vanish.

    In a perfect one-atom lattice every odd-l spherical feature vanishes by inversion
    symmetry, and the exact norm is a cone there: moving one atom of a supercell by ``h``
    changes the energy by ``c |h|``. Autograd then returns one subgradient, picked by
    round-off: finite, and no larger than the slope of the cone. The smooth norm of new
    models (``norm_smoothing``) makes the same change quadratic (``tests/test_pes.py``).
    """
    model = make_model(lr=False, norm_smoothing=0.0)
    smooth = make_model(lr=False)
    atoms = _small_cells()["Na-1-atom"].repeat((2, 1, 1))
    energy = total_energy(model, atoms)
    smooth_energy = total_energy(smooth, atoms)
    changes, smooth_changes = [], []
    for h in [1e-5, -1e-5, 2e-5]:
        moved = atoms.copy()
        moved.positions[0, 0] += h
        changes.append(total_energy(model, moved) - energy)
        smooth_changes.append(total_energy(smooth, moved) - smooth_energy)
    slope = changes[0] / 1e-5
    assert slope > 1e-3  # a cone, not a minimum: E(h) = E(-h) = c |h|
    assert abs(changes[1] - changes[0]) < 1e-12 * max(abs(energy), 1.0) + 1e-13
    assert abs(changes[2] - 2 * changes[0]) < 1e-3 * abs(changes[0])
    forces = predict(model, [atoms]).forces[0]
    assert torch.isfinite(forces).all()
    assert float(torch.linalg.norm(forces, dim=1).max()) <= 1.01 * record(slope)
    # the smooth norm: E(2h) - E(0) = 4 [E(h) - E(0)], far below the cone
    assert abs(smooth_changes[2] - 4 * smooth_changes[0]) < 1e-2 * abs(smooth_changes[2])
    assert abs(smooth_changes[0]) < 1e-3 * abs(changes[0])


def _net_charge(model, atoms) -> float:
    outputs = predict_per_atom(model, atoms, outputs=["lorem::charges"])
    return float(outputs["lorem::charges"].block(0).values[:, 0, 0].sum())


@pytest.mark.parametrize("variant", ["lr2", "lr0-mp1-scalar"])
def test_charged_cell_energy_independent_of_cell_choice(variant):
    """Learned charges are not neutral; the background keeps the energy well defined.

    The same crystal described by another (sheared) unit cell, and by a supercell,
    gives the same energy per cell.
    """
    # lorem-jax's raw charges (new models make every channel neutral)
    model = make_model(**VARIANTS[variant], neutral_charges=False)
    atoms = nacl_cell(seed=12)
    net = _net_charge(model, atoms)
    assert abs(net) > 1e-2, net  # the test is about non-neutral cells
    energy = total_energy(model, atoms)

    unimodular = np.array([[1, 1, 0], [0, 1, 0], [0, -1, 1]])
    other = atoms.copy()
    other.set_cell(unimodular @ atoms.cell.array, scale_atoms=False)
    other.wrap()
    assert relative_error(total_energy(model, other), energy) < 1e-9

    supercell = atoms.repeat((2, 1, 1))
    assert abs(_net_charge(model, supercell) - 2 * net) < 1e-8
    assert relative_error(total_energy(model, supercell), 2 * energy) < 1e-9


def test_molecule_in_large_vacuum():
    """A molecule in a large periodic box: finite, and close to the isolated molecule.

    Every charge channel is neutral, so the periodic energy approaches the non-periodic
    one like a dipole, 1/L^3 (``tests/test_pes.py`` checks the rate); a box too large for
    the reciprocal sum is refused (see ``test_bad_input_clear_error``).
    """
    model = variant_model("lr2")
    isolated = molecule(name="H2O")
    reference = total_energy(model, isolated)
    deviations = []
    for length in [20.0, 40.0]:
        boxed = isolated.copy()
        boxed.cell = np.eye(3) * length
        boxed.pbc = True
        boxed.center()
        prediction = predict(model, [boxed])
        assert torch.isfinite(prediction.forces[0]).all()
        deviations.append(abs(float(prediction.energies.detach()[0]) - reference))
    record(deviations[-1])
    assert deviations[1] < deviations[0]
    assert deviations[1] < 0.02 * max(abs(reference), 1.0)


# ---------------------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------------------


def _rocksalt(repeat: int, seed: int = 0) -> ase.Atoms:
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(repeat)
    atoms.rattle(0.1, seed=seed)
    return atoms


def _float32_errors(n_repeat: int, shifts=(0.0,)):
    """Relative errors of float32 against float64 (energy, forces, virial), PME.

    With ``shifts``, the float32 model also sees the positions translated by each shift
    (in A, not wrapped); the float64 reference is computed once, at the original
    positions (in float64 a translation by 1e4 A changes the energy by 2e-14, see
    ``test_large_coordinates``). Returns the number of atoms and one tuple per shift.
    """
    model = make_model(seed=5, long_range_method="pme")
    model_32 = copy.deepcopy(model).float()
    atoms = _rocksalt(n_repeat)
    reference = predict(model, [atoms])
    errors = []
    for shift in shifts:
        shifted = atoms.copy()
        shifted.positions += shift
        single = predict(model_32, [shifted], dtype=torch.float32)
        errors.append(
            (
                relative_error(single.energies, reference.energies),
                relative_error(single.forces[0], reference.forces[0]),
                relative_error(single.virials, reference.virials),
            )
        )
    return len(atoms), errors


def test_float32_large_system_pme():
    """1728 atoms with PME: float32 agrees with float64 (measured 8e-7, 6e-6, 1e-5)."""
    n_atoms, [(energy, forces, virial)] = _float32_errors(6)
    assert n_atoms == 1728
    assert energy < 1e-5
    assert forces < 1e-4
    assert virial < 1e-4


@pytest.mark.slow
def test_float32_larger_system_pme():
    """4096 atoms (about 30 s): measured 9e-7, 7e-6, 3e-5."""
    n_atoms, [(energy, forces, virial)] = _float32_errors(8)
    assert n_atoms == 4096
    assert energy < 1e-5
    assert forces < 1e-4
    assert virial < 1e-4


@pytest.mark.slow
def test_float32_ten_thousand_atoms_pme():
    """10 648 atoms (NaCl repeat(11); about 100 s on one loaded core), also far from 0.

    Measured at the original positions: 7e-7 (energy), 2e-5 (forces), 1e-5 (virial),
    so the bounds of the smaller systems hold with a margin of 5 or more. With the
    positions translated by 1e3 A (float32 knows them to ~6e-5 A): 1e-6, 3e-4, 2e-4;
    bounds 1e-5 and 2e-3.
    """
    n_atoms, [at_origin, far] = _float32_errors(11, shifts=(0.0, 1e3))
    assert n_atoms == 10648
    energy, forces, virial = at_origin
    print(f"float32, {n_atoms} atoms: {energy:.1e} {forces:.1e} {virial:.1e}")
    assert record(energy) < 1e-5
    assert forces < 1e-4
    assert virial < 1e-4
    energy, forces, virial = far
    print(
        f"float32, {n_atoms} atoms translated by 1e3 A: {energy:.1e} {forces:.1e} {virial:.1e}"
    )
    assert energy < 1e-5
    assert forces < 2e-3
    assert virial < 2e-3


def test_large_coordinates():
    """Positions translated by 1e4 A: exact in float64; float32 needs wrapped positions.

    The model does not wrap positions: in float32 a coordinate of 1e4 A is only known to
    ~1e-3 A before the model sees it. Wrapping into the cell (in float64, as engines
    do before converting) restores float32 accuracy.
    """
    model = variant_model("lr2")
    atoms = nacl_cell(seed=13)
    reference = predict(model, [atoms])
    shifted = atoms.copy()
    shifted.positions += 1e4
    far = predict(model, [shifted])
    assert relative_error(far.energies, reference.energies) < 1e-11
    assert relative_error(far.forces[0], reference.forces[0]) < 1e-8

    model_32 = copy.deepcopy(model).float()
    far_32 = predict(model_32, [shifted], dtype=torch.float32)
    assert torch.isfinite(far_32.forces[0]).all()
    assert relative_error(far_32.energies, reference.energies) < 1e-2
    shifted.wrap()
    wrapped_32 = predict(model_32, [shifted], dtype=torch.float32)
    assert relative_error(wrapped_32.energies, reference.energies) < 1e-5
    assert relative_error(wrapped_32.forces[0], reference.forces[0]) < 1e-3


@pytest.mark.parametrize("structure", ["nacl-periodic", "ch3oh"])
def test_forces_smooth_under_small_displacements(structure):
    """Energy changes by -F.dx and forces change by O(dx) along a path of 1e-4 A steps."""
    model = variant_model("lr1-mp1-eq")
    atoms = nacl_cell(seed=14) if structure == "nacl-periodic" else molecule(seed=6)
    direction = np.random.default_rng(0).normal(size=atoms.positions.shape)
    direction /= np.linalg.norm(direction)
    step = 1e-4
    energies, forces = [], []
    for k in range(6):
        moved = atoms.copy()
        moved.positions += k * step * direction
        prediction = predict(model, [moved])
        energies.append(float(prediction.energies.detach()[0]))
        forces.append(prediction.forces[0].detach().numpy())
    for k in range(5):
        work = -0.5 * np.sum((forces[k] + forces[k + 1]) * direction) * step
        assert abs(energies[k + 1] - energies[k] - work) < 1e-9
        change = np.abs(forces[k + 1] - forces[k]).max()
        assert change < 1e-2 * step / 1e-4
    # the second differences of the forces are tiny: no kinks along the path
    second = np.abs(np.diff(np.array(forces), n=2, axis=0)).max()
    assert record(second) < 1e-5


def _edge_geometries():
    at_cutoff = ase.Atoms("CO", positions=[[0, 0, 0], [CUTOFF, 0, 0]])
    close = ase.Atoms("COH", positions=[[0, 0, 0], [0.1 + 1e-6, 0, 0], [0, 1.0, 0]])
    isolated = ase.Atoms("NaCl", positions=[[0, 0, 0], [12.0, 0, 0]])
    periodic_cutoff = ase.Atoms(
        "CO", positions=[[0, 0, 0], [CUTOFF, 0, 0]], cell=[11.0, 9.0, 9.5], pbc=True
    )
    lonely = ase.Atoms("O", positions=[[1.0, 1.0, 1.0]], cell=[11.0] * 3, pbc=True)
    return {
        "pair-at-cutoff": at_cutoff,
        "pair-just-above-threshold": close,
        "isolated-atoms": isolated,
        "periodic-pair-at-cutoff": periodic_cutoff,
        "periodic-single-atom": lonely,
    }


@pytest.mark.parametrize("variant", ["lr2", "lr1-mp1-eq", "sr-mp1-eq-noinit"])
@pytest.mark.parametrize("name", list(_edge_geometries()))
def test_double_backward_finite_at_edge_geometries(variant, name):
    """Force training (gradient of a force loss) has no NaN at edge geometries."""
    model = copy.deepcopy(variant_model(variant)).train()
    atoms = _edge_geometries()[name]
    prediction = predict(model, [atoms], create_graph=True)
    assert torch.isfinite(prediction.energies).all()
    assert torch.isfinite(prediction.forces[0]).all()
    assert torch.isfinite(prediction.virials).all()
    loss = prediction.energies.sum() + (prediction.forces[0] ** 2).sum()
    loss = loss + (prediction.virials**2).sum()
    loss.backward()
    for name_, parameter in model.named_parameters():
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), name_


def test_deterministic(models):
    """The same input twice gives bitwise identical energies, forces and outputs."""
    for model in [models["direct"], variant_model("lr1-mp1-eq")]:
        structures = [nacl_cell(seed=15), molecule(seed=8)]
        first = predict(model, structures, extra_outputs=["feature"])
        second = predict(model, structures, extra_outputs=["feature"])
        assert torch.equal(first.energies, second.energies)
        assert all(torch.equal(a, b) for a, b in zip(first.forces, second.forces, strict=True))
        assert torch.equal(first.virials, second.virials)
        assert torch.equal(
            first.outputs["feature"].block().values, second.outputs["feature"].block().values
        )
    exported = models["exported"]
    systems = [_periodic_system(exported), _molecule_system(exported)]
    assert torch.equal(
        _evaluate(exported, systems).block().values, _evaluate(exported, systems).block().values
    )


# ---------------------------------------------------------------------------------------
# long runs
# ---------------------------------------------------------------------------------------


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
@pytest.mark.parametrize("how", ["direct", "exported"])
def test_memory_stable_over_repeated_evaluations(models, how):
    """200 energy + force evaluations: the resident memory does not keep growing."""
    model = models[how]
    atoms = nacl_cell(seed=16).repeat((2, 1, 1))

    def step():
        positions = torch.tensor(atoms.positions, requires_grad=True)
        system = system_from_atoms(atoms, positions=positions)
        attach_neighbors(model, [system])
        energy = _evaluate(model, [system]).block().values.sum()
        (forces,) = torch.autograd.grad(-energy, positions)
        assert torch.isfinite(forces).all()

    for _ in range(30):  # warm-up: allocator pools, TorchScript profiling
        step()
    start = _rss_mib()
    for _ in range(200):
        step()
    growth = _rss_mib() - start
    record(growth)
    print(f"RSS {start:.1f} MiB, growth over 200 evaluations ({how}): {growth:.2f} MiB")
    assert growth < 20.0


# ---------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------


def test_export_does_not_replace_a_file_on_failure(models, tmp_path, monkeypatch):
    """``export`` (and so ``convert-jax``) writes a complete file or leaves the old one."""
    from metatomic.torch import AtomisticModel

    path = tmp_path / "model.pt"
    path.write_bytes(b"previous model")

    def broken_save(self, file, collect_extensions=None):
        Path(file).write_bytes(b"half a model")
        raise RuntimeError("disk full")

    monkeypatch.setattr(AtomisticModel, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        export(models["direct"], str(path), torch.float64)
    assert path.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]

    monkeypatch.undo()
    export(models["direct"], str(path), torch.float64)
    assert load_atomistic_model(str(path)) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


NPZ = TESTS / "resources" / "parity"


def _parity_npz() -> Path:
    files = sorted(NPZ.glob("*.npz"))
    assert files, "no parity fixture"
    return files[0]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "could not read .* as a .npz parameter file"),
        (b"\x00\x01 not a zip file", "could not read .* as a .npz parameter file"),
        ("truncated", "could not read .* as a .npz parameter file"),
        # a torch file is a zip archive too: numpy opens it and finds no lorem-jax entries
        ("torch", "no 'hypers_json' entry: not a lorem-jax export"),
        ("foreign-npz", "no 'hypers_json' entry: not a lorem-jax export"),
    ],
    ids=["empty", "garbage", "truncated", "torch-file", "foreign-npz"],
)
def test_convert_jax_bad_files_keep_existing_output(tmp_path, capsys, content, message):
    from lorem_mta.cli import main
    from lorem_mta.convert import read_jax_npz

    source = tmp_path / "params.npz"
    if content == "truncated":
        data = _parity_npz().read_bytes()
        source.write_bytes(data[: len(data) // 2])
    elif content == "torch":
        torch.save({"weights": torch.zeros(3)}, source)
    elif content == "foreign-npz":
        np.savez(source, weights=np.zeros(3))
    else:
        source.write_bytes(content)
    output = tmp_path / "model.pt"
    output.write_bytes(b"previous model")

    with pytest.raises(ValueError, match=message):
        read_jax_npz(str(source))
    assert main(["convert-jax", str(source), "-o", str(output)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert output.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "params.npz"]


def test_convert_jax_output_is_a_folder(tmp_path, capsys):
    """A folder as ``-o``: a one-line error, the folder untouched."""
    from lorem_mta.cli import main

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    assert main(["convert-jax", str(_parity_npz()), "-o", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_convert_jax_output_folder_missing(tmp_path, capsys):
    from lorem_mta.cli import main

    output = tmp_path / "missing" / "model.pt"
    assert main(["convert-jax", str(_parity_npz()), "-o", str(output)]) == 1
    assert "No such file or directory" in capsys.readouterr().err


# -- full disks, special files and symbolic links -------------------------------------


class _FullDisk:
    """A file whose writes fail after a few bytes, as on a full disk."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.file.close()

    def write(self, data):
        self.file.write(data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fill_disk(monkeypatch):
    """Python writes of ``lorem_mta.files`` hit a full disk."""
    import builtins

    import lorem_mta.files
    import lorem_mta.model_files

    real_open = builtins.open

    def full_open(file, mode="r", *args, **kwargs):
        opened = real_open(file, mode, *args, **kwargs)
        return _FullDisk(opened) if "w" in mode else opened

    monkeypatch.setattr(lorem_mta.files, "open", full_open, raising=False)
    monkeypatch.setattr(lorem_mta.model_files, "open", full_open, raising=False)


def test_export_disk_full_raises_and_keeps_previous_file(models, tmp_path, monkeypatch):
    """A full disk: an ``OSError`` naming the file, the old model intact, no ``.tmp``."""
    path = tmp_path / "model.pt"
    path.write_bytes(b"previous model")
    _fill_disk(monkeypatch)
    with pytest.raises(OSError, match=r"could not write '.*model\.pt': No space left") as e:
        export(models["direct"], str(path), torch.float64)
    assert e.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_torchscript_write_error_is_a_python_exception(tmp_path):
    """TorchScript aborts the process on a write error (here ``/dev/full``); the
    in-memory save of ``write_saved_atomically`` turns it into an ``OSError``."""
    import subprocess
    import sys

    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    script = (
        "import torch\n"
        "m = torch.jit.script(torch.nn.Linear(2, 2))\n"
        "torch.jit.save(m, '/dev/full')\n"
    )
    aborted = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert aborted.returncode != 0 and b"Traceback" not in aborted.stderr

    # the same save through lorem_mta.files: /dev/full is refused, a symbolic link to it
    # too, and a write error raises
    from lorem_mta.files import write_saved_atomically

    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    link = tmp_path / "model.pt"
    link.symlink_to("/dev/full")
    for target in ["/dev/full", str(link)]:
        with pytest.raises(OSError, match="'/dev/full'.* a character device, not a regular"):
            write_saved_atomically(target, lambda file: scripted.save(file))
    assert link.is_symlink() and os.readlink(link) == "/dev/full"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def _special_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "model.pt"
    if kind == "folder":
        path.mkdir()
        (path / "keep.txt").write_text("keep")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("creating a device node needs root")
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    return path


@pytest.mark.parametrize("kind", ["folder", "fifo", "device"])
def test_output_onto_special_file_is_refused(tmp_path, kind):
    """A folder, FIFO or device node as output: refused before writing, left as it was."""
    from lorem_mta.files import write_bytes_atomically

    path = _special_file(tmp_path, kind)
    before = path.lstat()
    name = {"folder": "a folder", "fifo": "a FIFO", "device": "a character device"}[kind]
    with pytest.raises(OSError, match=f"refusing to write to '.*model.pt': it is {name}"):
        write_bytes_atomically(str(path), b"model")
    after = path.lstat()
    assert (after.st_mode, after.st_ino, after.st_rdev) == (
        before.st_mode,
        before.st_ino,
        before.st_rdev,
    )
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


@pytest.mark.parametrize("kind", ["fifo", "disk full"])
def test_convert_jax_special_output_and_full_disk(tmp_path, capsys, monkeypatch, kind):
    """``convert-jax -o``: one-line errors naming the file; nothing replaced or left."""
    from lorem_mta.cli import main

    if kind == "fifo":
        output = _special_file(tmp_path, "fifo")
        message = "it is a FIFO (named pipe), not a regular file"
    else:
        output = tmp_path / "model.pt"
        output.write_bytes(b"previous model")
        _fill_disk(monkeypatch)
        message = "No space left on device (an existing file there is left unchanged)"
    assert main(["convert-jax", str(_parity_npz()), "-o", str(output)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert str(output) in err and message in err
    if kind == "fifo":
        assert stat.S_ISFIFO(output.lstat().st_mode)
    else:
        assert output.read_bytes() == b"previous model"
    # the extensions folder next to the model is collected before the model is written
    assert sorted(p.name for p in tmp_path.iterdir()) in (
        ["model.pt"],
        ["extensions", "model.pt"],
    )


def test_export_through_symbolic_link(models, tmp_path):
    """A symlinked ``model.pt`` stays a link; its target is replaced by the new model."""
    versions = tmp_path / "versions"
    versions.mkdir()
    target = versions / "model-v1.pt"
    target.write_bytes(b"previous model")
    link = tmp_path / "model.pt"
    link.symlink_to(Path("versions") / "model-v1.pt")
    export(models["direct"], str(link), torch.float64)
    assert link.is_symlink() and os.readlink(link) == os.path.join("versions", "model-v1.pt")
    assert load_atomistic_model(str(target)) is not None
    assert [p.name for p in versions.iterdir()] == ["model-v1.pt"]

    # a dangling link is written through too: the target is created
    dangling = tmp_path / "new.pt"
    dangling.symlink_to(versions / "model-v2.pt")
    from lorem_mta.files import write_bytes_atomically

    write_bytes_atomically(str(dangling), b"model")
    assert dangling.is_symlink() and (versions / "model-v2.pt").read_bytes() == b"model"


# -- metatrain checkpoints -------------------------------------------------------------


def _reference_checkpoint(name: str = "model-v1_trainer-v1") -> dict:
    import metatomic.torch  # noqa: F401 (checkpoints hold metatomic objects)

    path = TESTS / "checkpoints" / f"{name}.ckpt.gz"
    with gzip.open(path) as file:
        data = file.read()
    # metatrain checkpoints hold TorchScript objects (model metadata) and metatrain
    # classes (dataset info): only the full unpickler reads them, see docs/reliability
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(io.BytesIO(data), weights_only=True)
    return torch.load(io.BytesIO(data), weights_only=False)


def test_reference_checkpoint_upgrade_is_identity():
    from lorem_mta.architecture import LoremMta, Trainer

    # the newest committed reference checkpoint is at the current versions
    name = f"model-v{LoremMta.__checkpoint_version__}_trainer-v{Trainer.__checkpoint_version__}"
    checkpoint = _reference_checkpoint(name)
    assert checkpoint["model_ckpt_version"] == LoremMta.__checkpoint_version__
    assert checkpoint["trainer_ckpt_version"] == Trainer.__checkpoint_version__
    keys = sorted(checkpoint)
    state = {k: v.clone() for k, v in checkpoint["model_state_dict"].items()}
    upgraded = Trainer.upgrade_checkpoint(LoremMta.upgrade_checkpoint(checkpoint))
    assert sorted(upgraded) == keys
    assert all(torch.equal(upgraded["model_state_dict"][k], v) for k, v in state.items())

    model = LoremMta.load_checkpoint(upgraded, context="export").eval()
    dtype = next(model.lorem.parameters()).dtype
    system = system_from_atoms(molecule(name="H2O"), dtype)
    attach_neighbors(model, [system])
    target = model.target_name
    energy = model([system], {target: ModelOutput(sample_kind="system")})[target]
    assert torch.isfinite(energy.block().values).all()


def test_reference_checkpoint_v1_upgrades_and_loads():
    """Model version 1 (with the ``column_path`` / ``column_out`` buffers) still loads.

    The upgrade drops exactly those buffers and keeps every other tensor; the result
    loads strictly into the current model and gives finite energies.
    """
    from lorem_mta.architecture import LoremMta, Trainer

    checkpoint = _reference_checkpoint("model-v1_trainer-v1")
    assert checkpoint["model_ckpt_version"] == 1
    before = {k: v.clone() for k, v in checkpoint["model_state_dict"].items()}
    upgraded = Trainer.upgrade_checkpoint(LoremMta.upgrade_checkpoint(checkpoint))
    assert upgraded["model_ckpt_version"] == LoremMta.__checkpoint_version__
    state = upgraded["model_state_dict"]
    dropped = sorted(set(before) - set(state))
    assert dropped and all(k.endswith((".column_path", ".column_out")) for k in dropped)
    assert all(torch.equal(before[k], v) for k, v in state.items())
    assert set(upgraded["best_model_state_dict"]) == set(state)

    model = LoremMta.load_checkpoint(upgraded, context="export").eval()
    assert sorted(model.state_dict()) == sorted(state)
    dtype = next(model.lorem.parameters()).dtype
    system = system_from_atoms(molecule(name="H2O"), dtype)
    attach_neighbors(model, [system])
    target = model.target_name
    energy = model([system], {target: ModelOutput(sample_kind="system")})[target]
    assert torch.isfinite(energy.block().values).all()


@pytest.mark.parametrize("kind", ["model", "trainer"])
def test_checkpoint_upgrade_chain(kind, monkeypatch):
    """The upgrade loop applies v1 -> v2 -> v3 functions in order and sets the version."""
    from lorem_mta.architecture import checkpoints

    calls = []

    def update(version):
        def apply(checkpoint):
            calls.append(version)
            checkpoint.setdefault("history", []).append(version)

        return apply

    monkeypatch.setattr(checkpoints, f"{kind}_update_v1_v2", update(1), raising=False)
    monkeypatch.setattr(checkpoints, f"{kind}_update_v2_v3", update(2), raising=False)
    checkpoint = _reference_checkpoint()
    upgraded = checkpoints.upgrade(checkpoint, kind, 3)
    assert calls == [1, 2]
    assert upgraded["history"] == [1, 2]
    assert upgraded[f"{kind}_ckpt_version"] == 3
    # a checkpoint already at the current version is not touched again
    checkpoints.upgrade(upgraded, kind, 3)
    assert calls == [1, 2]


@pytest.mark.parametrize("age", ["older than v1", "newer than the code"])
def test_checkpoint_from_unknown_version(age):
    """Checkpoints older than v1 or newer than the code are refused with a clear error."""
    from lorem_mta.architecture import LoremMta, Trainer

    for cls, kind in [(LoremMta, "model"), (Trainer, "trainer")]:
        checkpoint = _reference_checkpoint()
        version = 0 if age == "older than v1" else cls.__checkpoint_version__ + 1
        checkpoint[f"{kind}_ckpt_version"] = version
        with pytest.raises(RuntimeError, match=f"using {kind} version {version}, while"):
            cls.upgrade_checkpoint(checkpoint)


# -- metatrain data loading --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["overlapping atoms", "1D periodic"])
def test_mtt_train_rejects_bad_structures(tmp_path, problem):
    """``mtt train`` on a dataset with one bad structure: the model's clear error, no files."""
    from test_mtt_cli import DATASET, options, run

    frames = ase.io.read(DATASET, ":")
    if problem == "overlapping atoms":
        frames[1].positions[1] = frames[1].positions[0] + 0.01
        message = "overlapping or duplicated atoms"
    else:
        frames[1].pbc = [True, False, False]
        frames[1].cell = np.eye(3) * 10.0
        message = "1D periodicity (wires, polymers) is not supported"
    ase.io.write(tmp_path / "train.xyz", frames)
    (tmp_path / "options.yaml").write_text(options())
    result = run(["mtt", "train", "options.yaml"], tmp_path, check=False)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (tmp_path / "model.pt").exists()
    assert not (tmp_path / "model.ckpt").exists()


# -- non-finite parameters: refused at conversion, at load and at evaluation -----------


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_convert_jax_refuses_non_finite_parameters(tmp_path, capsys, value):
    from lorem_mta.cli import main
    from lorem_mta.convert import model_from_jax

    with np.load(_parity_npz()) as data:
        arrays = {key: data[key] for key in data.files}
    name = "MLP_0/Dense_0/bias"
    arrays["param/" + name] = arrays["param/" + name].copy()
    arrays["param/" + name].reshape(-1)[1] = value
    source = tmp_path / "params.npz"
    np.savez(source, **arrays)
    with pytest.raises(ValueError, match=f"NaN or infinite: '{name}' \\(1 of "):
        model_from_jax(str(source))

    output = tmp_path / "model.pt"
    output.write_bytes(b"previous model")
    assert main(["convert-jax", str(source), "-o", str(output)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: lorem-jax parameters are NaN or infinite: ")
    assert name in err and "Traceback" not in err
    assert output.read_bytes() == b"previous model"


def test_checkpoint_with_non_finite_parameters_is_refused():
    from lorem_mta.architecture import LoremMta, Trainer

    name = f"model-v{LoremMta.__checkpoint_version__}_trainer-v{Trainer.__checkpoint_version__}"
    for context, state in [
        ("export", "best_model_state_dict"),
        ("restart", "model_state_dict"),
    ]:
        checkpoint = _reference_checkpoint(name)
        key = next(k for k in checkpoint[state] if k.startswith("lorem.") and "weight" in k)
        checkpoint[state][key] = checkpoint[state][key].clone()
        checkpoint[state][key].view(-1)[0] = float("nan")
        which = "best" if context == "export" else "latest"
        with pytest.raises(
            ValueError,
            match=f"the {which} model of this checkpoint .* NaN or infinite: '{key}'",
        ):
            LoremMta.load_checkpoint(checkpoint, context=context)


def test_model_with_non_finite_parameters(models, tmp_path):
    """Export refuses it; an exported file with a NaN parameter (a flipped bit) raises
    at evaluation instead of returning NaN energies."""
    model = copy.deepcopy(models["direct"])
    parameter = next(p for n, p in model.named_parameters() if n.endswith("weight"))
    with torch.no_grad():
        parameter.view(-1)[0] = float("inf")
    with pytest.raises(ValueError, match=r"this model has parameters that are NaN or infinite"):
        export(model, str(tmp_path / "model.pt"), torch.float64)
    assert not list(tmp_path.iterdir())

    # a float64 value beyond the float32 range would become infinite in float32
    model = copy.deepcopy(models["direct"])
    parameter = next(p for n, p in model.named_parameters() if n.endswith("weight"))
    with torch.no_grad():
        parameter.view(-1)[0] = 1e300
    with pytest.raises(ValueError, match=r"NaN or infinite: '.*weight' \(1 of"):
        export(model, str(tmp_path / "model.pt"), torch.float32)

    exported = load_atomistic_model(_exported_copy(models, tmp_path))
    system = _molecule_system(models["direct"])
    assert torch.isfinite(_evaluate(exported, [system]).block().values).all()
    name, parameter = next(
        (n, p) for n, p in exported.named_parameters() if "radial_coefficients.mlp" in n
    )
    with torch.no_grad():
        parameter.view(-1)[0] = float("nan")
    for check in [False, True]:
        with pytest.raises(Exception, match="computed NaN or infinite energies for finite"):
            _evaluate(exported, [system], check=check)
    from lorem_mta.model import check_finite_parameters

    with pytest.raises(ValueError, match=f"'{name}' \\(1 of"):
        check_finite_parameters(exported.named_parameters(), "model.pt")


def _exported_copy(models, tmp_path) -> str:
    path = str(tmp_path / "exported.pt")
    export(models["direct"], path, torch.float64)
    return path


# -- clear errors ----------------------------------------------------------------------


def test_dtype_mismatch_names_both_dtypes(models, tmp_path):
    """A float32 model fed float64 systems (consistency checks off): both dtypes named,
    instead of ``double != float`` deep in the network."""
    model = copy.deepcopy(models["direct"]).to(torch.float32)
    path = str(tmp_path / "model32.pt")
    export(model, path, torch.float32)
    exported = load_atomistic_model(path)
    system = _molecule_system(models["direct"])  # float64
    assert system.positions.dtype == torch.float64
    message = (
        r"system 0 is in float64 but this model runs in float32: convert the systems "
        r"\(system.to\(dtype=...\)\) or export the model in float64"
    )
    with pytest.raises(ValueError, match=message):
        _evaluate(model, [system])
    with pytest.raises(torch.jit.Error, match=message):
        _evaluate(exported, [system], check=False)
    # in float32 it runs
    energy = _evaluate(exported, [system.to(dtype=torch.float32)], check=True)
    assert torch.isfinite(energy.block().values).all()


# the reference checkpoint was written from a dataset without a length unit
@pytest.mark.filterwarnings("ignore:No length unit")
def test_mtt_export_save_is_atomic(tmp_path, monkeypatch):
    """``mtt export`` saves the model that ``LoremMta.export`` returns: a full disk raises
    and keeps the previous file (metatomic's own save truncated it)."""
    from metatomic.torch import is_atomistic_model

    from lorem_mta.architecture import LoremMta, Trainer

    name = f"model-v{LoremMta.__checkpoint_version__}_trainer-v{Trainer.__checkpoint_version__}"
    model = LoremMta.load_checkpoint(_reference_checkpoint(name), context="export").export()
    path = tmp_path / "model.pt"
    path.write_bytes(b"previous model")
    with monkeypatch.context() as patch:
        _fill_disk(patch)
        with pytest.raises(OSError, match=r"could not write '.*model\.pt': No space left"):
            model.save(str(path))
    assert path.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]

    model.save(path)
    assert is_atomistic_model(load_atomistic_model(str(path)))
    # a copy saves itself, not the original
    copied = copy.deepcopy(model)
    assert copied.save.__self__ is copied
    copied.save(str(tmp_path / "copy.pt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.pt", "model.pt"]
    # the saved class is metatomic's (engines and is_atomistic_model check the name)
    assert torch.jit.load(str(path)).original_name == "AtomisticModel"


# the reference checkpoint was written from a dataset without a length unit
@pytest.mark.filterwarnings("ignore:No length unit")
def test_lorem_mta_export_disk_full_and_fifo(models, tmp_path, monkeypatch, capsys):
    """``lorem-mta export`` of a model (.pt) or a checkpoint (.pt, .ckpt): a full disk
    or a FIFO as output gives a one-line error naming the file, nothing is replaced."""
    from lorem_mta.architecture import LoremMta, Trainer
    from lorem_mta.cli import main

    model = str(tmp_path / "model.pt")
    export(models["direct"], model, torch.float64)
    name = f"model-v{LoremMta.__checkpoint_version__}_trainer-v{Trainer.__checkpoint_version__}"
    checkpoint = tmp_path / "model.ckpt"
    torch.save(_reference_checkpoint(name), checkpoint)
    out = tmp_path / "out"
    out.mkdir()
    for source, output in [
        (model, "new.pt"),
        (str(checkpoint), "new.pt"),
        (checkpoint, "new.ckpt"),
    ]:
        path = out / output
        path.write_bytes(b"previous model")
        with monkeypatch.context() as patch:
            _fill_disk(patch)
            assert main(["export", str(source), "-o", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        assert f"could not write '{path}': No space left on device" in err
        assert path.read_bytes() == b"previous model"
        path.unlink()
        os.mkfifo(path)
        assert main(["export", str(source), "-o", str(path)]) == 1
        assert "it is a FIFO (named pipe), not a regular file" in capsys.readouterr().err
        assert stat.S_ISFIFO(path.lstat().st_mode)
        path.unlink()
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
