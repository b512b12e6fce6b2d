"""Weight-level parity with lorem-jax 0.2.0 (fixtures in tests/resources/parity)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ase
import numpy as np
import pytest
import torch

from lorem_mta.convert import backbone_from_jax, model_from_jax, read_jax_npz
from lorem_mta.modules.spherical import (
    SphericalHarmonics,
    e3x_to_sphericart_permutation,
)
from lorem_mta.modules.tensor_product import clebsch_gordan
from lorem_mta.utils import predict

RESOURCES = Path(__file__).parent / "resources" / "parity"
SHARED = Path(__file__).parents[1].parent / "shared" / "parity"


def _fixture(name):
    for folder in (RESOURCES, SHARED):
        if (folder / f"{name}.npz").exists():
            return folder / f"{name}.npz"
    pytest.skip(f"{name}.npz is neither in tests/resources nor in ../shared/parity")


FIXTURES = ["no_lr", "paper_default", "mp1_equivariant"]
_CACHE = {}


def _load(name):
    if name not in _CACHE:
        path = _fixture(name)
        params, hypers = read_jax_npz(str(path))
        data = dict(np.load(path))
        _CACHE[name] = (path, backbone_from_jax(params, hypers), data)
    return _CACHE[name]


def _evaluate_backbone(model, data, k):
    """Energy, atomic energies, forces and virial on the fixture's own neighbour list."""
    get = lambda key: torch.tensor(data[f"s{k}/{key}"])  # noqa: E731
    positions = get("positions").requires_grad_(True)
    strain = torch.eye(3, dtype=torch.float64).requires_grad_(True)
    strained, cell = positions @ strain, get("cell") @ strain
    centers, others = get("nl_centers").long(), get("nl_others").long()
    vectors = strained[others] - strained[centers] + get("nl_cell_shifts").double() @ cell
    n_atoms, n_pairs = positions.shape[0], centers.shape[0]
    periodic = bool(data[f"s{k}/pbc"].all())
    output = model(
        get("numbers").long(),
        strained,
        centers,
        others,
        vectors,
        cell.unsqueeze(0),
        [0, n_atoms],
        [0, n_pairs],
        [periodic],
    )
    energy = output.energies.sum()
    grad_positions, grad_strain = torch.autograd.grad(energy, [positions, strain])
    return (
        energy.item(),
        output.energies.detach(),
        -grad_positions,
        grad_strain,
        periodic,
    )


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("k", range(6))
def test_backbone_matches_lorem_jax(name, k):
    _, model, data = _load(name)
    energy, energies, forces, virial, periodic = _evaluate_backbone(model, data, k)

    # same weights, exact Bernstein binomials: round-off agreement
    ref = lambda key: data[f"s{k}/{key}_exactbinom"]  # noqa: E731
    assert abs(energy - ref("energy")) <= 1e-10 * max(1.0, abs(ref("energy")))
    np.testing.assert_allclose(energies.numpy(), ref("energies"), rtol=0, atol=1e-10)
    np.testing.assert_allclose(forces.numpy(), ref("forces"), rtol=0, atol=1e-9)
    if periodic:
        scale = max(1.0, np.abs(ref("stress_virial")).max())
        np.testing.assert_allclose(
            virial.numpy(), ref("stress_virial"), rtol=0, atol=1e-8 * scale
        )

    # official columns: e3x's approximate log-binomials differ by ~1e-6 relative
    official = data[f"s{k}/energy"]
    assert abs(energy - official) <= 1e-5 * max(1.0, abs(official))
    np.testing.assert_allclose(forces.numpy(), data[f"s{k}/forces"], rtol=0, atol=1e-5)


def test_supercell_fixture_is_twice_the_cell():
    _, model, data = _load("paper_default")
    e1 = _evaluate_backbone(model, data, 1)[0]
    e4 = _evaluate_backbone(model, data, 4)[0]
    assert abs(e4 - 2 * e1) <= 1e-12 * abs(e4)


def _atoms(data, k):
    return ase.Atoms(
        numbers=data[f"s{k}/numbers"],
        positions=data[f"s{k}/positions"],
        cell=data[f"s{k}/cell"],
        pbc=data[f"s{k}/pbc"],
    )


@pytest.mark.parametrize("name", ["no_lr", "paper_default"])
def test_metatomic_model_matches_lorem_jax(name):
    """Through the metatomic adapter with vesin's neighbour list."""
    path, _, data = _load(name)
    model = model_from_jax(str(path), [1, 6, 7, 8, 11, 17])
    structures = [_atoms(data, k) for k in range(6)]
    prediction = predict(model, structures)
    for k in range(6):
        ref = data[f"s{k}/energy_exactbinom"]
        assert abs(prediction.energies[k].item() - ref) <= 1e-10 * max(1, abs(ref))
        np.testing.assert_allclose(
            prediction.forces[k].detach().numpy(),
            data[f"s{k}/forces_exactbinom"],
            atol=1e-9,
        )
        if data[f"s{k}/pbc"].all():
            w = data[f"s{k}/stress_virial_exactbinom"]
            np.testing.assert_allclose(
                prediction.virials[k].numpy(), w, atol=1e-8 * max(1, np.abs(w).max())
            )


def test_intermediates_charges_and_potentials():
    """Long-range charges, converted from e3x's Cartesian order.

    The intermediates come from the official (approximate-binomial) path, hence 1e-5;
    a wrong component order or sign gives O(1) errors.
    """
    path, _, data = _load("paper_default")
    model = model_from_jax(str(path), [1, 6, 7, 8, 11, 17])
    prediction = predict(
        model, [_atoms(data, 0), _atoms(data, 1)], extra_outputs=["lorem::charges"]
    )
    perm = e3x_to_sphericart_permutation(2)
    for k in (0, 1):
        ref = data[f"intermediates/s{k}/charges"]
        expected = np.concatenate([ref[:, :1], ref[:, 1:][:, perm]], axis=1)
        charges = prediction.outputs["lorem::charges"]
        blocks = [charges.block({"o3_lambda": l}).values.detach() for l in range(3)]
        mine = torch.cat(
            [blocks[0].reshape(-1, 2), blocks[1][..., 0], blocks[2][..., 0]], dim=1
        ).numpy()
        n0 = len(data["s0/numbers"])
        rows = slice(0, n0) if k == 0 else slice(n0, None)
        np.testing.assert_allclose(mine[rows], expected, atol=1e-5 * np.abs(ref).max())


def test_spherical_harmonics_match_e3x():
    _, _, data = _load("paper_default")
    i = data["intermediates/s0/pair_centers"]
    j = data["intermediates/s0/pair_others"]
    positions = data["s0/positions"]
    vectors = torch.tensor(positions[j] - positions[i])
    ours = SphericalHarmonics(6).double()(vectors).numpy()
    e3x = data["intermediates/s0/pair_spherical_harmonics"]
    np.testing.assert_allclose(ours, e3x[:, e3x_to_sphericart_permutation(6)], atol=1e-14)


def test_clebsch_gordan_match_e3x():
    _, _, data = _load("paper_default")
    index, value = data["const/e3x_cg_L6_index"], data["const/e3x_cg_L6_value"]
    table = np.zeros((49, 49, 49))
    table[index[:, 0], index[:, 1], index[:, 2]] = value
    perm = e3x_to_sphericart_permutation(6)
    table = table[np.ix_(perm, perm, perm)]
    for l1 in range(7):
        for l2 in range(7):
            for l3 in range(7):
                block = table[
                    l1**2 : (l1 + 1) ** 2, l2**2 : (l2 + 1) ** 2, l3**2 : (l3 + 1) ** 2
                ]
                if (l1 + l2 + l3) % 2 == 0:  # the only paths LOREM uses
                    np.testing.assert_allclose(clebsch_gordan(l1, l2, l3), block, atol=1e-13)


def test_parameter_counts():
    from lorem_mta.modules import LoremBackbone

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(LoremBackbone()) == 1_021_198  # the paper's model (App. D)
    assert count(LoremBackbone(lr=False)) == 839_129
    assert count(LoremBackbone(max_degree_lr=0)) == 1_020_300
    assert count(LoremBackbone(max_degree_lr=1)) == 1_020_749
    for name in FIXTURES:
        path = _fixture(name)
        params, _ = read_jax_npz(str(path))
        assert count(_load(name)[1]) == sum(v.size for v in params.values())


def test_convert_jax_cli(tmp_path):
    """`lorem-mta convert-jax` writes a model that runs without lorem_mta."""
    path, _, data = _load("paper_default")
    output = tmp_path / "model.pt"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lorem_mta.cli",
            "convert-jax",
            str(path),
            "-o",
            str(output),
            "--dtype",
            "float64",
            "--types",
            "1,6,8,11,17",
            "--long-range-method",
            "ewald",  # the exact reference
        ],
        check=True,
        capture_output=True,
    )
    script = f"""
import json, sys, ase, numpy as np
from metatomic_ase import MetatomicCalculator
d = np.load({str(path)!r})
atoms = ase.Atoms(numbers=d["s1/numbers"], positions=d["s1/positions"], cell=d["s1/cell"],
                  pbc=True)
atoms.calc = MetatomicCalculator({str(output)!r},
                                 extensions_directory={str(tmp_path / "extensions")!r})
print(json.dumps([atoms.get_potential_energy(), "lorem_mta" in sys.modules]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    energy, imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert not imported
    ref = data["s1/energy_exactbinom"]
    assert abs(energy - ref) <= 1e-10 * abs(ref)


def test_convert_rejects_wrong_files(tmp_path):
    from lorem_mta.cli import main

    bogus = tmp_path / "bogus.npz"
    np.savez(bogus, x=np.zeros(3))
    assert main(["convert-jax", str(bogus), "-o", str(tmp_path / "m.pt")]) == 1
    assert not (tmp_path / "m.pt").exists()
    text = tmp_path / "text.npz"
    text.write_text("not a zip file")
    assert main(["convert-jax", str(text), "-o", str(tmp_path / "m.pt")]) == 1
    assert main(["convert-jax", str(tmp_path / "missing.npz")]) == 2

    # hyperparameters that do not match the parameters
    path, _, _ = _load("no_lr")
    data = dict(np.load(path))
    data["hypers_json"] = np.array(
        json.dumps({**json.loads(str(data["hypers_json"])), "max_degree": 2})
    )
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **data)
    with pytest.raises((KeyError, RuntimeError)):
        model_from_jax(str(wrong))
