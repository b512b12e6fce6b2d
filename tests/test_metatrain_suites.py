"""metatrain's shared architecture test suites, run on ``experimental.lorem_mta``.

The suites come from ``metatrain.utils.testing`` (metatrain 2026.4.1). Every test runs in
its own temporary directory holding a copy of ``tests/checkpoints/`` (the checkpoint
tests glob ``checkpoints/*.ckpt.gz`` relative to the working directory and write
``model_0.ckpt`` there), so pytest can run from any directory.
"""

import copy
import shutil
from pathlib import Path

import pytest
import torch
from _helpers import energy_target
from metatomic.torch import ModelOutput
from metatrain.utils.architectures import get_default_hypers
from metatrain.utils.data.readers import read_systems
from metatrain.utils.hypers import init_with_defaults
from metatrain.utils.io import model_from_checkpoint
from metatrain.utils.loss import LossSpecification
from metatrain.utils.neighbor_lists import get_system_with_neighbor_lists
from metatrain.utils.testing import (
    ArchitectureTests,
    AutogradTests,
    CheckpointTests,
    ExportedTests,
    InputTests,
    OutputTests,
    TorchscriptTests,
    TrainingTests,
)
from omegaconf import OmegaConf

TESTS = Path(__file__).resolve().parent
DATASET = TESTS / "resources" / "metatrain" / "hcno_lj.xyz"


class LoremMtaTests(ArchitectureTests):
    architecture = "experimental.lorem_mta"

    @pytest.fixture(autouse=True)
    def _run_in_tmp_path(self, tmp_path, monkeypatch):
        if (TESTS / "checkpoints").is_dir():
            shutil.copytree(TESTS / "checkpoints", tmp_path / "checkpoints")
        monkeypatch.chdir(tmp_path)

    @pytest.fixture
    def dataset_path(self):
        return str(DATASET)

    @pytest.fixture
    def dataset_targets(self, dataset_path):
        return {"energy": energy_target(dataset_path)}

    @pytest.fixture
    def minimal_model_hypers(self):
        hypers = copy.deepcopy(get_default_hypers(self.architecture)["model"])
        # small enough for a reference checkpoint below 50 kB
        hypers["max_degree"] = 1
        hypers["max_degree_lr"] = 1
        hypers["num_features"] = 4
        hypers["num_spherical_features"] = 1
        hypers["num_radial"] = 4
        hypers["num_species"] = 2
        return hypers

    @pytest.fixture
    def model_hypers(self, minimal_model_hypers):
        # the paper-size defaults (L = 6, 128 features) are too slow for 2 CPU cores
        return minimal_model_hypers


class TestInput(InputTests, LoremMtaTests): ...


class TestOutput(OutputTests, LoremMtaTests):
    # one energy-like target only
    supports_scalar_outputs = False
    supports_multiscalar_outputs = False
    supports_vector_outputs = False
    supports_spherical_outputs = False
    supports_spherical_rank2_outputs = False
    supports_spherical_atomic_basis_outputs = False
    supports_last_layer_features = True
    supports_selected_atoms = True
    supports_features = True
    is_equivariant_rotations = True
    is_equivariant_reflections = True
    monomer_equal_dimer = False

    @pytest.fixture
    def n_features(self, model_hypers):
        return model_hypers["num_features"]

    @pytest.fixture
    def n_last_layer_features(self, model_hypers):
        # one block per energy readout: the initial step, the message-passing steps and
        # the long-range block
        n_readouts = 1 + model_hypers["num_message_passing"] + int(model_hypers["lr"])
        return model_hypers["num_features"] * n_readouts

    def test_prediction_energy_subset_atoms(self, model_hypers, dataset_info):
        # metatrain's check assumes a local model: a selected monomer must not feel an
        # unselected one 50 A away. LOREM's long-range sum keeps unselected atoms that
        # are not periodic images (ghosts) of selected ones, so the check runs on the
        # short-range model; `test_selected_atoms_long_range` covers the full model.
        super().test_prediction_energy_subset_atoms(dict(model_hypers, lr=False), dataset_info)

    def test_selected_atoms_long_range(self, model_hypers, dataset_info):
        """With long range, a selection returns the per-atom energies of the full system."""
        import metatensor.torch as mts
        from metatomic.torch import System

        model = self.model_cls(model_hypers, dataset_info).to(torch.float64).eval()
        system = System(
            types=torch.tensor([7, 7, 8, 8, 8, 8]),
            positions=torch.tensor(
                [[0, 0, 0], [0, 50, 0], [0, 0, 1], [0, 0, 2], [0, 51, 0], [0, 42, 0]],
                dtype=torch.float64,
            ),
            cell=torch.zeros(3, 3, dtype=torch.float64),
            pbc=torch.tensor([False, False, False]),
        )
        system = get_system_with_neighbor_lists(system, model.requested_neighbor_lists())
        selection = mts.Labels(["system", "atom"], torch.tensor([[0, 0], [0, 2], [0, 3]]))
        per_atom = model([system], {"energy": ModelOutput(sample_kind="atom")})
        selected = model([system], {"energy": ModelOutput(sample_kind="atom")}, selection)
        total = model([system], {"energy": ModelOutput(sample_kind="system")}, selection)
        expected = per_atom["energy"].block().values[[0, 2, 3]]
        torch.testing.assert_close(selected["energy"].block().values, expected)
        torch.testing.assert_close(total["energy"].block().values, expected.sum(0, True))


class TestAutograd(AutogradTests, LoremMtaTests): ...


class TestTorchscript(TorchscriptTests, LoremMtaTests):
    float_hypers = ["cutoff"]
    supports_spherical_outputs = False

    def test_torchscript_default_hypers(self, default_hypers, dataset_info):
        """The paper-size model scripts too."""
        self.test_torchscript(
            model_hypers=default_hypers["model"],
            dataset_info=dataset_info,
            dtype=torch.float32,
        )


class TestExported(ExportedTests, LoremMtaTests): ...


class TestTraining(TrainingTests, LoremMtaTests):
    supports_atomic_basis = False
    # `test_continue` backpropagates twice through one set of systems whose neighbour
    # lists carry a single autograd graph to the positions; LOREM takes its pair vectors
    # from the neighbour list (for exact stresses), so the second backward pass fails.
    # `test_continue_forces` below checks the forces with separate systems instead.
    check_gradients = False

    def test_continue_forces(self, dataset_path, dataset_targets, default_hypers, model_hypers):
        """Energies and forces are the same after a checkpoint round trip."""
        dataset, _, dataset_info = self.get_dataset(dataset_targets, dataset_path)
        model = self.model_cls(model_hypers, dataset_info)
        hypers = copy.deepcopy(default_hypers)
        hypers["training"]["num_epochs"] = 1
        hypers["training"]["loss"] = OmegaConf.to_container(
            OmegaConf.create({"energy": init_with_defaults(LossSpecification)}),
            resolve=True,
        )
        trainer = self.trainer_cls(hypers["training"])
        trainer.train(model, torch.float32, [torch.device("cpu")], [dataset], [dataset], ".")
        trainer.save_checkpoint(model, "model.ckpt")
        checkpoint = torch.load("model.ckpt", weights_only=False)
        reloaded = model_from_checkpoint(checkpoint, context="restart")

        results = []
        for candidate in (model, reloaded):
            candidate.eval()
            systems = [s.to(torch.float32) for s in read_systems(dataset_path)[:5]]
            for system in systems:
                system.positions.requires_grad_(True)
            systems = [
                get_system_with_neighbor_lists(s, candidate.requested_neighbor_lists())
                for s in systems
            ]
            energy = candidate(systems, {"energy": ModelOutput(sample_kind="system")})
            energy = energy["energy"].block().values
            forces = torch.autograd.grad(energy.sum(), [s.positions for s in systems])
            results.append((energy.detach(), torch.cat(forces)))
        torch.testing.assert_close(results[0][0], results[1][0])
        torch.testing.assert_close(results[0][1], results[1][1])


class TestCheckpoints(CheckpointTests, LoremMtaTests):
    incompatible_trainer_checkpoints = []


# -- LOREM-specific checks of the architecture -----------------------------------------


def _energy_info(name="energy", unit="eV"):
    from metatrain.utils.data.target_info import get_energy_target_info

    return get_energy_target_info(name, {"quantity": "energy", "unit": unit})


def _dataset_info(targets):
    from metatrain.utils.data import DatasetInfo

    return DatasetInfo(length_unit="angstrom", atomic_types=[1, 6, 7, 8], targets=targets)


def _small_model(targets=None):
    from lorem_mta.architecture import LoremMta

    hypers = {
        "max_degree": 1,
        "max_degree_lr": 1,
        "num_features": 4,
        "num_spherical_features": 1,
        "num_radial": 4,
        "num_species": 2,
    }
    if targets is None:
        targets = {"energy": _energy_info()}
    return LoremMta(hypers, _dataset_info(targets)).to(torch.float64)


def _systems(model, dtype=torch.float64):
    systems = [s.to(dtype) for s in read_systems(str(DATASET))]
    return [
        get_system_with_neighbor_lists(s, model.requested_neighbor_lists()) for s in systems
    ]


class TestLoremMtaArchitecture:
    def test_registered_architecture(self):
        import metatrain.utils.architectures as architectures
        import metatrain.utils.io as io

        import _lorem_mta_mtt

        _lorem_mta_mtt.register()
        _lorem_mta_mtt.register()
        hooks = [f for f in sys_meta_path() if type(f).__name__ == "_Finder"]
        assert len(hooks) == 1
        assert architectures.find_all_architectures().count("experimental.lorem_mta") == 1
        assert io.find_all_architectures is architectures.find_all_architectures
        # the JSON schema of `mtt train` options includes the architecture
        from metatrain.utils.pydantic import get_train_json_schema

        assert "experimental.lorem_mta" in json_dumps(get_train_json_schema(True))

    def test_any_energy_target_name(self):
        model = _small_model({"mtt::U0": _energy_info("mtt::U0")}).eval()
        assert "mtt::U0" in model.supported_outputs()
        assert "energy" not in model.supported_outputs()
        outputs = model(_systems(model)[:3], {"mtt::U0": ModelOutput(sample_kind="system")})
        assert outputs["mtt::U0"].block().values.shape == (3, 1)
        exported = model.export()
        assert "mtt::U0" in exported.capabilities().outputs
        assert exported.capabilities().interaction_range == float("inf")

    @pytest.mark.parametrize("kind", ["two", "not_energy", "none"])
    def test_rejects_other_targets(self, kind):
        from metatrain.utils.data.target_info import get_generic_target_info

        dipole = get_generic_target_info(
            "mtt::dipole",
            {
                "quantity": "dipole",
                "unit": "",
                "type": {"cartesian": {"rank": 1}},
                "num_subtargets": 1,
                "sample_kind": "system",
            },
        )
        targets = {
            "two": {"energy": _energy_info(), "mtt::e2": _energy_info("mtt::e2")},
            "not_energy": {"mtt::dipole": dipole},
            "none": {},
        }[kind]
        with pytest.raises(ValueError, match="exactly one energy-like target"):
            _small_model(targets)

    def test_mixed_periodic_batch(self):
        """Periodic and non-periodic structures in one batch give the single results."""
        model = _small_model().eval()
        systems = _systems(model)
        assert bool(systems[0].pbc.all()) and not bool(systems[-1].pbc.any())
        request = {"energy": ModelOutput(sample_kind="system")}
        batch = model(systems, request)["energy"].block().values
        single = torch.cat([model([s], request)["energy"].block().values for s in systems])
        torch.testing.assert_close(batch, single)

    def test_rejects_bad_hypers(self):
        from lorem_mta.architecture import LoremMta

        with pytest.raises(ValueError, match="num_features must be at least 1, got 0"):
            LoremMta({"num_features": 0}, _dataset_info({"energy": _energy_info()}))

    def test_linear_decay_schedule(self):
        from lorem_mta.architecture.trainer import get_scheduler

        hypers = get_default_hypers("experimental.lorem_mta")["training"]
        hypers.update(num_epochs=20, decay_start_epoch=5, learning_rate=1e-3)
        parameter = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.Adam([parameter], lr=1e-3)
        scheduler = get_scheduler(optimizer, hypers, steps_per_epoch=3)
        rates = []
        for _ in range(20 * 3):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
        assert rates[: 5 * 3 + 1] == [1e-3] * (5 * 3 + 1)
        assert all(a > b for a, b in zip(rates[15:], rates[16:], strict=False))
        assert rates[-1] == pytest.approx(1e-6)

    def test_checkpoint_write_is_atomic(self, tmp_path, monkeypatch):
        from lorem_mta.architecture import Trainer
        from lorem_mta.architecture import trainer as trainer_module

        trainer = Trainer(get_default_hypers("experimental.lorem_mta")["training"])
        model = _small_model()
        path = tmp_path / "model.ckpt"
        trainer.save_checkpoint(model, path)
        good = path.read_bytes()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]

        def broken_save(obj, file):
            file.write(b"partial")
            raise OSError("disk full")

        monkeypatch.setattr(trainer_module.torch, "save", broken_save)
        with pytest.raises(OSError, match="disk full"):
            trainer.save_checkpoint(model, path)
        assert path.read_bytes() == good
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]


def sys_meta_path():
    import sys

    return sys.meta_path


def json_dumps(value):
    import json

    return json.dumps(value)


def _train_one_epoch(dataset_path, training, stress=False):
    """Train the small model for one epoch with the given trainer options."""
    from metatrain.utils.data import DatasetInfo, get_atomic_types, get_dataset

    from lorem_mta.architecture import Trainer

    target = {
        "quantity": "energy",
        "read_from": dataset_path,
        "reader": "ase",
        "key": "energy",
        "unit": "eV",
        "type": "scalar",
        "sample_kind": "system",
        "num_subtargets": 1,
        "forces": {"read_from": dataset_path, "reader": "ase", "key": "forces"},
        "stress": (
            {"read_from": dataset_path, "reader": "ase", "key": "stress"} if stress else False
        ),
        "virial": False,
    }
    dataset, targets, _ = get_dataset(
        {"systems": {"read_from": dataset_path, "reader": "ase"}, "targets": {"energy": target}}
    )
    info = DatasetInfo(
        length_unit="angstrom", atomic_types=get_atomic_types(dataset), targets=targets
    )
    model = _small_model(info.targets)
    hypers = get_default_hypers("experimental.lorem_mta")["training"]
    hypers.update(num_epochs=1, batch_size=2, **training)
    trainer = Trainer(hypers)
    trainer.train(model, torch.float32, [torch.device("cpu")], [dataset], [dataset], ".")
    return model, trainer


@pytest.mark.parametrize(
    "training",
    [
        {"optimizer": "adamw", "weight_decay": 0.01, "scheduler": "cosine"},
        {"scheduler": "constant", "grad_clip_norm": 1.0, "scale_targets": True},
        {"atomic_baseline": {"energy": {1: -0.1, 6: -0.2, 7: -0.3, 8: -0.4}}},
        {"best_model_metric": "mae_prod", "log_separate_blocks": True},
    ],
)
def test_trainer_options(tmp_path, monkeypatch, training):
    monkeypatch.chdir(tmp_path)
    model, trainer = _train_one_epoch(str(DATASET), training)
    assert trainer.epoch == 0 and trainer.best_model_state_dict is not None
    if "atomic_baseline" in training:
        weights = model.additive_models[0].model.weights["energy"].block().values
        expected = torch.tensor([[-0.1], [-0.2], [-0.3], [-0.4]], dtype=weights.dtype)
        torch.testing.assert_close(weights, expected)


def test_train_with_stress(tmp_path, monkeypatch):
    """Periodic structures with stress labels train through the strain gradients."""
    import ase.io
    from ase.calculators.lj import LennardJones

    monkeypatch.chdir(tmp_path)
    frames = [atoms for atoms in ase.io.read(DATASET, ":") if atoms.pbc.all()]
    for atoms in frames:
        atoms.calc = LennardJones(sigma=1.0, epsilon=0.1, rc=4.0, smooth=True)
        atoms.info["energy"] = atoms.get_potential_energy()
        atoms.arrays["forces"] = atoms.get_forces()
        atoms.info["stress"] = atoms.get_stress(voigt=False)
        atoms.calc = None
    ase.io.write("periodic.xyz", frames)
    model, _ = _train_one_epoch("periodic.xyz", {}, stress=True)
    assert "strain" in model.dataset_info.targets["energy"].gradients
