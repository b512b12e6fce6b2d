"""The stages of ``pair_style lorem`` compose to the metatomic model.

:py:class:`lorem_mta.stages.LoremStages` runs the short-range stage, the potentials of
all atoms and the long-range mixing separately (as the LAMMPS pair style does across MPI
ranks); its ``forward`` chains them for one periodic structure. Energies, forces and
virials must equal those of :py:class:`~lorem_mta.model.LoremModel` on the same
structure, also after TorchScript export.
"""

import numpy as np
import pytest
import torch
from _helpers import make_model, nacl_cell, relative_error, variant_model
from ase.neighborlist import neighbor_list

from lorem_mta.stages import LoremStages, export_stages
from lorem_mta.utils import predict

TOLERANCE = 1e-12


def _stage_prediction(stages, atoms):
    """Energy, forces and virial dE/d(strain) from ``stages.forward``."""
    i, j, shifts = neighbor_list("ijS", atoms, stages.cutoff)
    strain = torch.eye(3, dtype=torch.float64, requires_grad=True)
    positions = torch.tensor(atoms.positions, requires_grad=True)
    cell = torch.tensor(atoms.cell.array)
    energies = stages(
        torch.tensor(atoms.numbers),
        positions @ strain,
        cell @ strain,
        torch.tensor(i),
        torch.tensor(j),
        torch.tensor(shifts),
    )
    energy = energies.sum()
    gradient, virial = torch.autograd.grad(energy, [positions, strain])
    return energy.detach(), -gradient, virial


@pytest.mark.parametrize("variant", ["lr2", "lr1-mp1-eq", "sr-mp1-eq-noinit"])
def test_stages_match_model(variant):
    model = variant_model(variant)
    atoms = nacl_cell(seed=11)
    reference = predict(model, [atoms])
    stages = LoremStages(model)
    energy, forces, virial = _stage_prediction(stages, atoms)
    assert relative_error(energy, reference.energies.detach()[0]) < TOLERANCE
    assert relative_error(forces, reference.forces[0].detach()) < TOLERANCE
    assert relative_error(virial, reference.virials[0].detach()) < TOLERANCE
    assert stages.interaction_range == (len(model.backbone.steps) + 1) * model.cutoff


def test_exported_stages(tmp_path):
    model = variant_model("lr2")
    path = str(tmp_path / "stages.pt")
    export_stages(model, path)
    loaded = torch.jit.load(path)
    assert loaded.dtype_name == "float64"
    assert loaded.has_long_range
    atoms = nacl_cell(seed=12)
    energy, forces, virial = _stage_prediction(loaded, atoms)
    reference = predict(model, [atoms])
    assert relative_error(energy, reference.energies.detach()[0]) < TOLERANCE
    assert relative_error(forces, reference.forces[0].detach()) < TOLERANCE
    assert relative_error(virial, reference.virials[0].detach()) < TOLERANCE
    with pytest.raises(Exception, match="only knows atomic types"):
        loaded.short_range(
            torch.tensor([3]),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            torch.zeros((0, 3), dtype=torch.float64),
        )


def test_stages_refuse_born_charges():
    with pytest.raises(ValueError, match="can not be split"):
        LoremStages(make_model(bec=True))
    assert np.isfinite(LoremStages(variant_model("sr")).interaction_range)
