"""Compiled force training (``compile: true``, :py:mod:`lorem_mta.architecture.compiled`).

* the batch topology computed outside the backbone changes nothing;
* the energies-and-forces function equals metatrain's ``evaluate_model`` of the model
  (values, metadata and parameter gradients of a force loss), eagerly and traced by
  ``torch.compile`` as one graph (``fullgraph=True``: a graph break fails the test);
* batches it does not support are named and run in eager mode;
* (slow) training with ``compile: true`` and inductor gives the losses of eager training.
"""

import logging
from pathlib import Path

import ase.io
import pytest
import torch
from _helpers import energy_target, make_model, molecule, nacl_cell
from metatrain.utils.architectures import get_default_hypers
from metatrain.utils.data import DatasetInfo, get_atomic_types, get_dataset
from metatrain.utils.evaluate_model import evaluate_model
from metatrain.utils.neighbor_lists import get_system_with_neighbor_lists

from lorem_mta.architecture import LoremMta, Trainer
from lorem_mta.architecture.compiled import CompiledEnergyForces
from lorem_mta.utils import attach_neighbors, system_from_atoms

CUMULENES = Path(__file__).resolve().parents[1] / "examples" / "train" / "cumulene.xyz"
SMALL = {
    "cutoff": 5.0,
    "max_degree": 2,
    "max_degree_lr": 2,
    "num_features": 8,
    "num_spherical_features": 2,
    "num_radial": 4,
    "num_species": 2,
}


def cumulene_data(path: Path = CUMULENES):
    dataset, targets, _ = get_dataset(
        {
            "systems": {"read_from": str(path), "reader": "ase"},
            "targets": {"energy": energy_target(str(path))},
        }
    )
    info = DatasetInfo(
        length_unit="angstrom", atomic_types=get_atomic_types(dataset), targets=targets
    )
    return dataset, info


def metatrain_model(info: DatasetInfo, seed: int = 0, **hypers) -> LoremMta:
    torch.manual_seed(seed)
    defaults = get_default_hypers("experimental.lorem_mta")["model"]
    model = LoremMta({**defaults, **SMALL, **hypers}, info).to(torch.float64)
    with torch.no_grad():  # non-trivial weights everywhere (fresh biases are zero)
        for parameter in model.lorem.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.train()


def batch(model: LoremMta, frames: list) -> list:
    systems = [system_from_atoms(atoms, torch.float64) for atoms in frames]
    options = model.requested_neighbor_lists()
    return [get_system_with_neighbor_lists(system, options) for system in systems]


def loss_of(predictions: dict, name: str) -> torch.Tensor:
    block = predictions[name].block()
    return (block.values**2).sum() + (block.gradient("positions").values ** 2).sum()


def compare(
    model: LoremMta, systems: list, compiled: CompiledEnergyForces, kept: bool = False
) -> None:
    """Same energies, gradients, metadata and parameter gradients as evaluate_model."""
    name = model.target_name
    targets = {name: model.dataset_info.targets[name]}
    parameters = list(model.lorem.backbone.parameters())

    expected = evaluate_model(model, systems, targets, is_training=True)
    expected_grads = torch.autograd.grad(loss_of(expected, name), parameters, allow_unused=True)
    found = compiled(systems, targets, kept)
    found_grads = torch.autograd.grad(loss_of(found, name), parameters, allow_unused=True)

    block, reference = found[name].block(), expected[name].block()
    assert block.samples == reference.samples
    assert block.properties == reference.properties
    torch.testing.assert_close(block.values, reference.values, rtol=1e-12, atol=1e-12)
    gradient, reference_gradient = block.gradient("positions"), reference.gradient("positions")
    assert gradient.samples == reference_gradient.samples
    assert gradient.components == reference_gradient.components
    torch.testing.assert_close(
        gradient.values, reference_gradient.values, rtol=1e-10, atol=1e-12
    )
    checked = 0
    for a, b in zip(found_grads, expected_grads, strict=True):
        if b is None:
            continue
        scale = float(b.abs().max()) + 1e-300
        assert float((a - b).abs().max()) <= 1e-9 * max(scale, 1.0)
        checked += 1
    assert checked > 20


@pytest.mark.parametrize("variant", [{}, {"num_message_passing": 1}, {"lr": False}])
def test_backbone_with_given_topology_is_unchanged(variant):
    model = (
        make_model(max_degree_lr=2, **variant)
        if variant.get("lr", True)
        else make_model(**variant)
    )
    frames = [molecule(seed=k) for k in range(3)]
    if not variant.get("lr", True):
        frames.append(nacl_cell())
    systems = [system_from_atoms(atoms, torch.float64) for atoms in frames]
    attach_neighbors(model, systems)
    flat = model._flatten(systems)
    backbone = model.backbone
    args = (flat.types, flat.positions, flat.centers, flat.neighbors, flat.vectors)
    rest = (flat.cells, flat.atom_ptr, flat.pair_ptr, flat.periodic)
    plain = backbone(*args, *rest)
    topology = backbone.topology(
        flat.types, flat.centers, flat.neighbors, flat.atom_ptr, flat.periodic
    )
    if backbone.long_range is not None:
        n_pairs = sum(n * (n - 1) // 2 for n in [len(a) for a in frames])
        assert topology.molecule_pairs.shape == (2, n_pairs)
    given = backbone(*args, *rest, topology=topology)
    assert torch.equal(plain.energies, given.energies)
    assert torch.equal(plain.charges, given.charges)


def test_function_equals_evaluate_model():
    dataset, info = cumulene_data()
    model = metatrain_model(info)
    frames = ase.io.read(CUMULENES, ":5")
    compare(model, batch(model, frames), CompiledEnergyForces(model, backend=None))


@pytest.mark.parametrize("periodic", [False, True])
def test_kept_systems_give_the_same_batches(periodic):
    """Structures kept for the whole run: their flat tensors are read once, and batches
    mixing structures seen before and new ones (in another order) still equal
    evaluate_model, periodic images included."""
    dataset, info = cumulene_data()
    model = metatrain_model(info, lr=not periodic)
    frames = ase.io.read(CUMULENES, ":6")
    if periodic:
        for k, atoms in enumerate(frames):  # small cells: pairs across the boundary
            atoms.cell = [7.0 + k, 8.0, 9.0 - 0.3 * k]
            atoms.pbc = True
    systems = batch(model, frames)
    compiled = CompiledEnergyForces(model, backend=None)
    compare(model, systems[:3], compiled, kept=True)
    assert len(compiled._kept) == 3
    compare(model, [systems[4], systems[1], systems[5], systems[0]], compiled, kept=True)
    assert len(compiled._kept) == 5
    # batches that are not kept are read again and not remembered
    compare(model, systems[2:4], compiled, kept=False)
    assert len(compiled._kept) == 5


def test_function_traces_as_one_graph():
    """``fullgraph=True``: any graph break (data-dependent shape, Python branch on a
    tensor value) raises instead of silently running eagerly."""
    dataset, info = cumulene_data()
    model = metatrain_model(info, seed=1, num_features=4, num_radial=2)
    frames = ase.io.read(CUMULENES, ":6")
    compiled = CompiledEnergyForces(model, backend="aot_eager")
    compare(model, batch(model, frames[:4]), compiled)
    compare(model, batch(model, frames[4:]), compiled)  # another batch size


def test_too_many_compiled_variants_fall_back_to_eager(caplog):
    """Past torch's recompile limit (here 1: a batch with another number of structures
    needs a second graph) the batch is left to eager mode, logged once, instead of
    stopping the training with dynamo's error."""
    _, info = cumulene_data()
    model = metatrain_model(info, seed=1, num_features=4, num_radial=2)
    frames = ase.io.read(CUMULENES, ":5")
    compiled = CompiledEnergyForces(model, backend="aot_eager")
    targets = {model.target_name: info.targets[model.target_name]}
    torch._dynamo.reset()
    limit = torch._dynamo.config.recompile_limit
    # torch's own patch: monkeypatch's undo deletes the option from dynamo's config
    with torch._dynamo.config.patch(recompile_limit=1):
        assert compiled(batch(model, frames[:2]), targets) is not None
        with caplog.at_level(logging.INFO):
            assert compiled(batch(model, frames[2:5]), targets) is None
            assert compiled(batch(model, frames[2:5]), targets) is None
    assert caplog.text.count("more compiled variants than torch allows") == 1
    assert torch._dynamo.config.recompile_limit == limit
    torch._dynamo.reset()


def test_unsupported_batches_are_named(caplog):
    dataset, info = cumulene_data()
    model = metatrain_model(info)
    compiled = CompiledEnergyForces(model, backend=None)
    name = model.target_name
    targets = {name: info.targets[name]}
    molecules = batch(model, ase.io.read(CUMULENES, ":2"))
    assert compiled.unsupported(molecules, targets) is None
    periodic = ase.io.read(CUMULENES, "0")
    periodic.cell = [20.0, 20.0, 20.0]
    periodic.pbc = True
    reason = compiled.unsupported(batch(model, [periodic]), targets)
    assert reason == "periodic structures with the long-range block"
    assert "dipole" in compiled.unsupported(molecules, {**targets, "dipole": None})
    with caplog.at_level(logging.INFO):
        compiled.tell_once(reason)
        compiled.tell_once(reason)
    assert caplog.text.count("run in eager mode") == 1

    short_range = metatrain_model(info, lr=False)
    compiled = CompiledEnergyForces(short_range, backend=None)
    assert compiled.unsupported(batch(short_range, [periodic]), targets) is None


def test_periodic_short_range_model_equals_evaluate_model():
    dataset, info = cumulene_data()
    model = metatrain_model(info, lr=False)
    frames = ase.io.read(CUMULENES, ":3")
    for k, atoms in enumerate(frames):  # small cells: pairs across the boundary
        atoms.cell = [7.0 + k, 8.0, 9.0]
        atoms.pbc = True
    compare(model, batch(model, frames), CompiledEnergyForces(model, backend=None))


def train_and_log(
    info, train_set, val_set, compile, tmp_path, monkeypatch, epochs=2, batch_size=4, **options
):
    """Train a fresh small model in float64; the logged training and validation
    losses and RMSEs, one set per epoch and one for the best epoch at the end."""
    torch.manual_seed(0)
    defaults = get_default_hypers("experimental.lorem_mta")
    model = LoremMta({**defaults["model"], **SMALL}, info)
    hypers = defaults["training"]
    hypers.update(
        batch_size=batch_size, num_workers=0, log_interval=1, num_epochs=epochs, compile=compile
    )
    hypers.update(options)
    logged = []
    tmp_path.mkdir(exist_ok=True)

    def log(self, metrics, *args, **kwargs):
        logged.append(
            tuple(
                metrics[k][name]
                for k in range(2)
                for name in [
                    "loss",
                    "energy RMSE (per atom)",
                    "energy_positions_gradients RMSE",
                ]
            )
        )

    monkeypatch.setattr("metatrain.utils.logging.MetricLogger.log", log)
    Trainer(hypers).train(
        model, torch.float64, [torch.device("cpu")], [train_set], [val_set], str(tmp_path)
    )
    return logged


def counting_calls(monkeypatch, backend):
    """Count the batches (their sizes) that go through the compiled function, built
    with ``backend``."""
    calls = []
    original = CompiledEnergyForces.evaluate

    def counting(self, systems, kept=False):
        calls.append((len(systems), torch.is_grad_enabled(), kept))
        return original(self, systems, kept)

    monkeypatch.setattr(CompiledEnergyForces, "evaluate", counting)
    monkeypatch.setattr(
        "lorem_mta.architecture.epoch.CompiledEnergyForces",
        lambda model: CompiledEnergyForces(model, backend=backend),
    )
    return calls


@pytest.mark.parametrize("scale_targets", [False, True])
def test_training_and_validation_batches_go_through_the_function(
    tmp_path, monkeypatch, scale_targets
):
    """The trainer sends training AND validation batches through the function (the
    latter with gradients on, the same graph, and detached predictions) and logs the
    losses and errors of eager training; a validation batch with a number of structures
    that no training batch had (which would need another compilation) runs in eager
    mode. The loss and the errors are computed on plain tensors (:py:mod:`.flat_loss`)
    unless the targets are scaled, then on metatrain's tensor maps."""
    dataset, info = cumulene_data()
    train_set = torch.utils.data.Subset(dataset, list(range(8)))
    val_set = torch.utils.data.Subset(dataset, list(range(8, 13)))
    options = {"scale_targets": scale_targets}
    eager = train_and_log(
        info, train_set, val_set, False, tmp_path / "a", monkeypatch, **options
    )
    calls = counting_calls(monkeypatch, backend=None)
    from lorem_mta.architecture import epoch

    predict, evaluate_flat = epoch.EpochRunner.predict, epoch.EpochRunner.evaluate_flat
    batches = []

    def checking(self, systems, targets, is_training, kept=False):
        predictions = predict(self, systems, targets, is_training, kept)
        block = predictions[self.compiled.model.target_name].block()
        batches.append(("maps", is_training, len(systems), block.values.requires_grad))
        return predictions

    def checking_flat(self, batch, is_training):
        evaluated = evaluate_flat(self, batch, is_training)
        if evaluated is not None:
            size = evaluated.energies.shape[0]
            batches.append(("flat", is_training, size, evaluated.loss.requires_grad))
        return evaluated

    monkeypatch.setattr(epoch.EpochRunner, "predict", checking)
    monkeypatch.setattr(epoch.EpochRunner, "evaluate_flat", checking_flat)
    compiled = train_and_log(
        info, train_set, val_set, True, tmp_path / "b", monkeypatch, **options
    )
    # per epoch: two training batches and the first validation batch (4 structures
    # each) through the function, with gradients on and the prepared structures kept;
    # the last validation batch (1 structure) in eager mode
    assert calls == [(4, True, True), (4, True, True), (4, True, True)] * 2
    path = "maps" if scale_targets else "flat"
    expected = [(path, True, 4, True), (path, True, 4, True), (path, False, 4, False)]
    # (eager validation keeps the graph of its forces: not checked)
    assert [b if b[2] == 4 else b[:3] for b in batches] == (expected + [("maps", False, 1)]) * 2
    assert len(compiled) == len(eager) == 3
    torch.testing.assert_close(compiled, eager, rtol=1e-10, atol=0.0)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a cold compilation takes minutes, more on a loaded machine
def test_compiled_training_gives_the_losses_of_eager_training(tmp_path, monkeypatch):
    """Two epochs with inductor: every logged training and validation loss as in eager
    mode (float64)."""
    dataset, info = cumulene_data()
    train_set = torch.utils.data.Subset(dataset, list(range(16)))
    val_set = torch.utils.data.Subset(dataset, list(range(16, 21)))
    eager = train_and_log(info, train_set, val_set, False, tmp_path / "a", monkeypatch)
    calls = counting_calls(monkeypatch, backend="inductor")
    compiled = train_and_log(info, train_set, val_set, True, tmp_path / "b", monkeypatch)
    # every training batch and the validation batch of 4 went through it (the
    # validation batch of 1 structure runs in eager mode: no second compilation)
    assert [size for size, _, _ in calls] == [4, 4, 4, 4, 4] * 2
    # one logger call per epoch, and one more at the end (the best epoch's errors)
    assert len(compiled) == len(eager) == 3
    torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=0.0)
