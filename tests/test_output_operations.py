"""The per-atom outputs of an exported model are TensorMaps metatensor-operations accepts.

``feature``, ``lorem::charges`` and ``lorem::potentials`` go through metatomic's
consistency checks, then through ``sum_over_samples``, ``mean_over_samples``, ``slice``
and a save/load round trip, with the reductions compared to plain tensor sums.
"""

import pytest
import torch
from _helpers import make_model, molecule, nacl_cell, relative_error
from metatomic.torch import ModelEvaluationOptions, ModelOutput, load_atomistic_model

from lorem_mta.model import export
from lorem_mta.utils import attach_neighbors, system_from_atoms

mts = pytest.importorskip("metatensor.torch")
if not hasattr(mts, "sum_over_samples"):
    pytest.skip("metatensor-operations is not installed", allow_module_level=True)

NAMES = ["feature", "lorem::charges", "lorem::potentials"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    model = make_model(seed=5)
    path = str(tmp_path_factory.mktemp("export") / "model.pt")
    export(model, path, torch.float64)
    exported = load_atomistic_model(path)
    structures = [nacl_cell(), molecule()]
    systems = [system_from_atoms(atoms) for atoms in structures]
    attach_neighbors(exported, systems)
    options = ModelEvaluationOptions(
        length_unit="angstrom",
        outputs={name: ModelOutput(sample_kind="atom") for name in NAMES},
    )
    results = exported(systems, options, check_consistency=True)
    return results, [len(atoms) for atoms in structures]


@pytest.mark.parametrize("name", NAMES)
def test_sum_and_mean_over_atoms(outputs, name):
    results, sizes = outputs
    tensor = results[name]
    summed = mts.sum_over_samples(tensor, "atom")
    averaged = mts.mean_over_samples(tensor, "atom")
    assert summed.keys == tensor.keys
    for key, block in tensor.items():
        assert block.samples.names == ["system", "atom"]
        per_system = summed.block(key)
        assert per_system.samples.names == ["system"]
        assert per_system.components == block.components
        assert per_system.properties == block.properties
        start = 0
        for k, size in enumerate(sizes):
            rows = block.values[start : start + size]
            # absolute, on the scale of the rows: the charge channels add up to ~0
            scale = max(float(rows.abs().max()), 1e-300)
            sum_error = (per_system.values[k] - rows.sum(dim=0)).abs().max()
            mean_error = (averaged.block(key).values[k] - rows.mean(dim=0)).abs().max()
            assert float(sum_error) < 1e-12 * scale
            assert float(mean_error) < 1e-12 * scale
            start += size
        assert float(block.values.abs().max()) > 0
        if name == "lorem::charges":
            # every charge channel of a neutral system adds up to zero (neutral_charges)
            assert float(per_system.values.abs().max()) < 1e-12
        else:
            assert float(per_system.values.abs().max()) > 0


def test_charges_layout_and_total_scalar_charge(outputs):
    results, sizes = outputs
    charges = results["lorem::charges"]
    assert charges.keys.names == ["o3_lambda", "o3_sigma"]
    assert charges.keys.values.tolist() == [[0, 1], [1, 1], [2, 1]]
    for key, block in charges.items():
        l = int(key["o3_lambda"])
        assert block.components[0].names == ["o3_mu"]
        assert block.components[0].values.reshape(-1).tolist() == list(range(-l, l + 1))
    # total scalar MLP charge of every system (channel 0 of the l = 0 block)
    scalar = mts.slice(
        charges,
        "properties",
        mts.Labels(["channel"], torch.tensor([[0]], dtype=torch.int32)),
    )
    totals = mts.sum_over_samples(scalar, "atom").block({"o3_lambda": 0}).values
    assert totals.shape == (len(sizes), 1, 1)
    values = charges.block({"o3_lambda": 0}).values[:, 0, 0]
    assert (
        relative_error(totals[:, 0, 0], torch.stack([values[:8].sum(), values[8:].sum()]))
        < 1e-12
    )


def test_save_load_round_trip(outputs, tmp_path):
    results, _ = outputs
    for name in NAMES:
        path = str(tmp_path / (name.replace(":", "_") + ".mts"))
        mts.save(path, results[name])
        loaded = mts.load(path)
        assert mts.equal(loaded, results[name])
