"""The long-range method chooser, the memory guard, and changing the settings of a model.

* the chooser (``lr_cost.LongRangePlanner``) picks the expected method per structure
  family from the estimates alone (nothing is computed);
* the ``direct`` sum reproduces the reference Ewald sum (potentials, forces, stress);
* the guard refuses, before allocating, with an error that names what to do;
* ``lorem-mta export`` / ``info`` / ``convert-jax`` change and describe model files;
  fine-tuning takes changed long-range settings.
"""

import copy
import gzip
import subprocess
import sys
from pathlib import Path

import ase
import ase.build
import numpy as np
import pytest
import torch
from _helpers import make_model, nacl_cell
from metatomic_ase import MetatomicCalculator
from vesin import NeighborList

from lorem_mta.cli import main
from lorem_mta.model import export
from lorem_mta.model_files import describe, export_model, long_range_settings
from lorem_mta.modules.long_range import CoulombPotentials
from lorem_mta.modules.lr_cost import LongRangePlanner
from lorem_mta.utils import predict

CUTOFF = 5.0
CHANNELS = 10
PARITY = Path(__file__).parent / "resources" / "parity" / "paper_default.npz"


def nacl(repeat):
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=0)
    return atoms


def in_box(atoms, length):
    atoms = atoms.copy()
    atoms.set_cell([length] * 3)
    atoms.center()
    atoms.pbc = True
    return atoms


def slab(vacuum=20.0):
    atoms = nacl((3, 3, 2))
    atoms.cell[2, 2] += vacuum
    atoms.center(axis=2)
    return atoms


def biodimer():
    """Two small molecules 5 A apart in a 30 A box (like the shared biodimers)."""
    first = ase.build.molecule("CH3COOH")
    second = ase.build.molecule("CH3CH2OH")
    second.translate([5.0, 0.0, 0.0])
    return in_box(first + second, 30.0)


def choice(atoms, method="auto", accuracy=None):
    planner = LongRangePlanner(CUTOFF, method, accuracy)
    cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
    return planner.plan(cell, len(atoms), CHANNELS, [True] * 3, 8)[0]


# -- the chooser -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "atoms", "expected"),
    [
        ("nacl-512", nacl(4), "pme"),
        ("nacl-4096", nacl(8), "pme"),
        ("nacl-32768", nacl(16), "pme"),
        ("biodimer-30A", biodimer(), "direct"),
        ("cluster-198-80A", in_box(nacl(3)[:198], 80.0), "direct"),
        ("nacl-slab", slab(), "pme"),
    ],
)
def test_auto_picks_the_expected_method(name, atoms, expected):
    assert choice(atoms) == expected, name


def test_fixed_methods_and_accuracy():
    atoms = nacl(2)
    for method in ("ewald", "pme", "direct"):
        assert choice(atoms, method) == method
    # PME (relative error ~1e-5) is not a candidate for tighter accuracies
    assert choice(nacl(4), "auto", 1e-8) in ("ewald", "direct")
    planner = LongRangePlanner(CUTOFF, "ewald")
    assert planner.ewald_wavelength() == CUTOFF / 8  # the lorem-jax reference
    assert LongRangePlanner(CUTOFF, "ewald", 1e-5).ewald_wavelength() > CUTOFF / 8
    with pytest.raises(ValueError, match="unknown long-range method 'fast'"):
        LongRangePlanner(CUTOFF, "fast")
    with pytest.raises(ValueError, match="accuracy must be in"):
        LongRangePlanner(CUTOFF, "auto", 2.0)


def test_estimates_grow_with_the_right_sizes():
    planner = LongRangePlanner(CUTOFF, "auto")
    small = {(m, lv): (s, b) for m, lv, s, b in _estimates(planner, nacl(2))}
    large = {(m, lv): (s, b) for m, lv, s, b in _estimates(planner, nacl(4))}
    # Ewald: k-vectors (x8) times atoms (x8); PME: about linear
    assert large["ewald", 0][1] / small["ewald", 0][1] > 40
    assert large["pme", 0][1] / small["pme", 0][1] < 12


def _estimates(planner, atoms):
    cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
    return planner.estimates(cell, len(atoms), CHANNELS, [True] * 3, 8)


# -- the direct sum against the reference ------------------------------------------------


def _potentials(atoms, method, cell_gradient=False, accuracy=None):
    positions = torch.tensor(atoms.positions, requires_grad=True)
    cell = torch.tensor(atoms.cell.array, requires_grad=cell_gradient)
    i, j, shifts = NeighborList(cutoff=CUTOFF, full_list=True).compute(
        atoms.positions, atoms.cell.array, True, quantities="ijS"
    )
    pairs = torch.tensor(np.stack([i, j], axis=1).astype(np.int64))
    shifts = torch.tensor(shifts.astype(np.float64))
    distances = torch.linalg.norm(
        positions[pairs[:, 1]] - positions[pairs[:, 0]] + shifts @ cell, dim=1
    )
    charges = torch.randn(len(atoms), 3, generator=torch.Generator().manual_seed(3)).double()
    coulomb = CoulombPotentials(CUTOFF, method, accuracy)
    potentials = coulomb(charges, positions, cell, True, pairs, distances)
    energy = (charges * potentials).sum()
    leaves = [positions, cell] if cell_gradient else [positions]
    return potentials.detach(), torch.autograd.grad(energy, leaves)


@pytest.mark.parametrize("structure", ["nacl-64", "molecule-in-box"])
def test_direct_sum_matches_the_reference(structure):
    atoms = nacl(2) if structure == "nacl-64" else in_box(ase.build.molecule("CH3OH"), 15.0)
    reference, (forces, virial) = _potentials(atoms, "ewald", cell_gradient=True)
    direct, (forces_d, virial_d) = _potentials(atoms, "direct", True, accuracy=1e-8)
    scale = reference.abs().max()
    torch.testing.assert_close(direct, reference, rtol=0, atol=1e-7 * scale)
    torch.testing.assert_close(forces_d, forces, rtol=0, atol=1e-7 * forces.abs().max())
    torch.testing.assert_close(virial_d, virial, rtol=0, atol=1e-7 * virial.abs().max())
    # the default accuracy (1e-5)
    default, _ = _potentials(atoms, "direct")
    torch.testing.assert_close(default, reference, rtol=0, atol=3e-5 * scale)


@pytest.mark.parametrize(("method", "rtol"), [("pme", 3e-5), ("direct", 1e-6), ("auto", 3e-5)])
def test_native_slab_with_every_method(method, rtol):
    """A 2D slab (pbc = [T, T, F], zero third cell vector) goes through the same chooser
    in its internal 3D cell."""
    atoms = nacl((2, 2, 1))
    cell = atoms.cell.array.copy()
    cell[2] = 0.0
    positions = torch.tensor(atoms.positions)
    i, j, shifts = NeighborList(cutoff=CUTOFF, full_list=True).compute(
        atoms.positions, np.diag([11.28, 11.28, 0.0]), [True, True, False], quantities="ijS"
    )
    pairs = torch.tensor(np.stack([i, j], axis=1).astype(np.int64))
    vectors = positions[pairs[:, 1]] - positions[pairs[:, 0]]
    vectors = vectors + torch.tensor(shifts.astype(np.float64)) @ torch.tensor(cell)
    distances = torch.linalg.norm(vectors, dim=1)
    charges = torch.randn(len(atoms), 3, generator=torch.Generator().manual_seed(0)).double()
    energies = {}
    for name in ("ewald", method):
        coulomb = CoulombPotentials(CUTOFF, name)
        potentials = coulomb(charges, positions, torch.tensor(cell), True, pairs, distances)
        energies[name] = (charges * potentials).sum().item()
    assert energies[method] == pytest.approx(energies["ewald"], rel=rtol)


# -- the memory guard ------------------------------------------------------------------


def test_guard_names_what_to_do_for_a_fixed_method():
    # the reference Ewald sum needs ~1.5 GB here, PME ~0.1 GB
    planner = LongRangePlanner(CUTOFF, "ewald", memory_limit_gb=0.5)
    cell = torch.tensor(nacl(4).cell.array)
    with pytest.raises(ValueError) as error:
        planner.plan(cell, 512, CHANNELS, [True] * 3, 8)
    message = str(error.value)
    assert "512 atoms" in message and "long_range_method='ewald'" in message
    assert "would need about" in message and "limit of 0.50 GB" in message
    assert "long_range_method: auto" in message
    assert "lorem-mta export MODEL -o NEW.pt --long-range-method auto" in message


def test_guard_for_auto_when_nothing_fits():
    planner = LongRangePlanner(CUTOFF, "auto", memory_limit_gb=1e-6)
    cell = torch.tensor(nacl(2).cell.array)
    with pytest.raises(ValueError, match="--memory-limit GB") as error:
        planner.plan(cell, 64, CHANNELS, [True] * 3, 8)
    assert "The cheapest method" in str(error.value)
    with pytest.raises(ValueError, match="pbc=True"):
        planner.check_molecule(20000, CHANNELS)


def test_guard_refuses_before_allocating(monkeypatch):
    """The reference Ewald sum of 4096-atom NaCl would need ~100 GB: refused at once."""
    atoms = nacl(8)

    def no_kvectors(*args):
        raise AssertionError("k-vectors were built")

    monkeypatch.setattr("lorem_mta.modules.long_range.ewald_kvectors", no_kvectors)
    coulomb = CoulombPotentials(CUTOFF, "ewald")
    positions = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array)
    charges = torch.zeros(len(atoms), CHANNELS, dtype=torch.float64)
    empty = torch.zeros((0, 2), dtype=torch.long)
    with pytest.raises(ValueError, match="4096 atoms.*would need about"):
        coulomb(charges, positions, cell, True, empty, torch.zeros(0, dtype=torch.float64))


# -- changing and describing model files -----------------------------------------------


@pytest.fixture(scope="module")
def model_32(tmp_path_factory):
    directory = tmp_path_factory.mktemp("settings")
    model = make_model(max_degree_lr=1, long_range_method="ewald")
    path = str(directory / "model-32.pt")
    export(model, path, torch.float32)
    return model, path, directory


def _energy(path, atoms):
    atoms = atoms.copy()
    atoms.calc = MetatomicCalculator(path, check_consistency=False)
    return atoms.get_potential_energy(), atoms.get_forces()


def test_export_changes_the_method_within_the_accuracy(model_32):
    model, path, directory = model_32
    atoms = nacl(2)
    reference = predict(model, [atoms]).energies[0].item()
    new = str(directory / "model-pme-64.pt")
    assert (
        main(["export", path, "-o", new, "--dtype", "float64", "--long-range-method", "pme"])
        == 0
    )
    settings = long_range_settings(torch.jit.load(new))
    assert settings["method"] == "pme"
    energy, _ = _energy(new, atoms)
    assert energy == pytest.approx(reference, rel=1e-5)
    direct = str(directory / "model-direct.pt")
    export_model(new, direct, method="direct", accuracy=1e-7)
    assert _energy(direct, atoms)[0] == pytest.approx(reference, rel=1e-7)


def test_export_float32_to_float64(model_32):
    model, path, directory = model_32
    atoms = nacl_cell()
    new = str(directory / "model-64.pt")
    assert main(["export", path, "-o", new, "--dtype", "float64"]) == 0
    loaded = torch.jit.load(new)
    assert loaded.capabilities().dtype == "float64"
    assert next(loaded.parameters()).dtype == torch.float64
    energy_64, forces_64 = _energy(new, atoms)
    # the weights are the float32 ones: the float64 model equals the eager model cast
    # to float32 and back, evaluated in float64
    reference = predict(copy.deepcopy(model).float().double(), [atoms])
    assert energy_64 == pytest.approx(reference.energies[0].item(), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(forces_64, reference.forces[0].numpy(), atol=1e-10)
    energy_32, _ = _energy(path, atoms)
    assert energy_32 == pytest.approx(energy_64, rel=1e-5)


def test_info_and_errors(model_32, capsys):
    _, path, directory = model_32
    assert main(["info", path]) == 0
    text = capsys.readouterr().out
    for line in ["dtype: float32", "atomic types:", "method: ewald", "lorem::charges"]:
        assert line in text
    assert main(["export", path, "-o", str(directory / "x.ckpt")]) == 1
    assert "only a checkpoint" in capsys.readouterr().err
    assert main(["export", str(directory / "missing.pt"), "-o", "x.pt"]) == 2


@pytest.mark.filterwarnings("ignore:No length unit")
def test_checkpoint_export_and_finetuning_with_another_method(tmp_path):
    from lorem_mta.architecture.model import LoremMta

    source = Path(__file__).parent / "checkpoints" / "model-v2_trainer-v1.ckpt.gz"
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(gzip.decompress(source.read_bytes()))
    text = describe(str(checkpoint))
    assert "long_range_method: ewald" in text and "checkpoint version" in text

    output = tmp_path / "model-pme.ckpt"
    assert (
        main(["export", str(checkpoint), "-o", str(output), "--long-range-method", "pme"]) == 0
    )
    changed = torch.load(output, weights_only=False)
    assert changed["model_data"]["model_hypers"]["long_range_method"] == "pme"

    exported = tmp_path / "model.pt"
    arguments = ["export", str(checkpoint), "-o", str(exported), "--dtype", "float64"]
    assert main(arguments + ["--long-range-method", "direct"]) == 0
    loaded = torch.jit.load(exported)
    assert loaded.capabilities().dtype == "float64"
    assert long_range_settings(loaded)["method"] == "direct"
    assert "long_range_method: direct" in describe(str(exported))

    # fine-tuning: new long-range settings are taken, other changes still refused
    model = LoremMta.load_checkpoint(
        LoremMta.upgrade_checkpoint(torch.load(checkpoint, weights_only=False)), "finetune"
    )
    hypers = {**model.hypers, "long_range_method": "pme", "long_range_accuracy": 1e-4}
    model.restart(model.dataset_info, model_hypers=hypers)
    assert long_range_settings(model)["method"] == "pme"
    assert model.hypers["long_range_accuracy"] == 1e-4
    with pytest.raises(ValueError):
        model.restart(model.dataset_info, model_hypers={**hypers, "num_features": 7})


@pytest.mark.skipif(not PARITY.exists(), reason="parity fixture missing")
def test_convert_jax_long_range_options(tmp_path):
    """A converted paper-size model: auto by default, the reference or PME by name."""
    from lorem_mta.convert import convert_jax

    data = np.load(PARITY)
    atoms = ase.Atoms(
        numbers=data["s1/numbers"],
        positions=data["s1/positions"],
        cell=data["s1/cell"],
        pbc=True,
    )
    reference = float(data["s1/energy_exactbinom"])
    output = str(tmp_path / "auto.pt")
    convert_jax(str(PARITY), output, torch.float64, [1, 6, 8, 11, 17], str(tmp_path / "ext"))
    text = describe(output)
    assert "method: auto" in text and "converted_from: lorem-jax" in text
    assert _energy(output, atoms)[0] == pytest.approx(reference, rel=1e-5)
    for method, tolerance in (("pme", 1e-5), ("ewald", 1e-12)):
        new = str(tmp_path / f"{method}.pt")
        accuracy = None if method == "ewald" else 1e-5
        export_model(output, new, method=method, accuracy=accuracy)
        assert f"long_range_method: {method}" in describe(new)
        assert _energy(new, atoms)[0] == pytest.approx(reference, rel=tolerance), method


def test_cli_version(capsys):
    from lorem_mta import __version__
    from lorem_mta.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert (
        capsys.readouterr().out.strip()
        == f"lorem-mta {__version__} (torch {torch.__version__})"
    )


def test_convert_jax_leaves_no_empty_extensions_folder(tmp_path):
    """The model is pure torch: no compiled extension to collect, no empty folder."""
    fixture = Path(__file__).parent / "resources" / "parity" / "no_lr.npz"
    script = Path(sys.executable).parent / "lorem-mta"
    result = subprocess.run(
        [str(script), "convert-jax", str(fixture), "-o", str(tmp_path / "m.pt")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "no compiled extensions needed" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_accuracy_changed_after_construction():
    """Ewald k-vectors follow the planner's accuracy when it is changed after training."""
    atoms = nacl((2, 2, 2))
    model = make_model(max_degree_lr=1, long_range_method="ewald", seed=4)
    coarse = copy.deepcopy(model)
    coarse.backbone.long_range.coulomb.planner.accuracy = 1e-3
    rebuilt = make_model(
        max_degree_lr=1, long_range_method="ewald", long_range_accuracy=1e-3, seed=4
    )
    energy = predict(model, [atoms]).energies.detach()
    changed = predict(coarse, [atoms]).energies.detach()
    assert torch.allclose(changed, predict(rebuilt, [atoms]).energies.detach(), rtol=1e-12)
    assert not torch.allclose(changed, energy, rtol=1e-9)
