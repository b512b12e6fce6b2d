"""DFT-D3(BJ) on top of LOREM with metatomic's ``DFTD3.wrap``: the sum equals the parts.

The D3-only contribution is computed independently by wrapping a model whose energy
is zero everywhere with the same damping parameters; LOREM + D3 must then equal LOREM
plus that contribution for energies, forces and stresses, in ASE, for a periodic cell
and a molecule. The D3 reference tables ship with metatomic-torch (no download).
"""

from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
from _helpers import molecule, nacl_cell, relative_error, variant_model
from metatensor.torch import Labels, TensorBlock, TensorMap
from metatomic.torch import (
    AtomisticModel,
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
    System,
)
from metatomic_ase import MetatomicCalculator

from lorem_mta.model import atomistic_model

dftd3 = pytest.importorskip("metatomic.torch.dftd3", reason="metatomic-torch has no DFTD3")

#: PBE-D3(BJ) damping parameters (a2 in Bohr), Grimme et al. J. Comput. Chem. 32, 1456
PBE_D3BJ = {"a1": 0.4289, "s8": 0.7875, "a2": 4.4407, "s6": 1.0}
TOLERANCE = 1e-10


class ZeroEnergy(torch.nn.Module):
    """A model whose energy is zero: wrapped with D3 it gives the D3 part alone."""

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        """Zero energy per system or per atom (still a function of positions)."""
        if "energy" not in outputs:
            return {}
        values: List[torch.Tensor] = []
        samples: List[torch.Tensor] = []
        for k, system in enumerate(systems):
            zero = 0.0 * system.positions[:, :1]
            if outputs["energy"].sample_kind == "atom":
                atoms = torch.arange(len(system), device=zero.device)
                values.append(zero)
                samples.append(torch.stack([torch.full_like(atoms, k), atoms], dim=1))
            else:
                values.append(zero.sum(0, keepdim=True))
                samples.append(torch.tensor([[k]], device=zero.device))
        names = ["system", "atom"] if outputs["energy"].sample_kind == "atom" else ["system"]
        block = TensorBlock(
            values=torch.cat(values),
            samples=Labels(names, torch.cat(samples).to(torch.int32)),
            components=[],
            properties=Labels(["energy"], torch.tensor([[0]], device=values[0].device)),
        )
        return {"energy": TensorMap(Labels(["_"], torch.tensor([[0]])), [block])}


def _zero_model(reference: AtomisticModel) -> AtomisticModel:
    capabilities = reference.capabilities()
    return AtomisticModel(
        ZeroEnergy().eval(),
        ModelMetadata(name="zero energy"),
        ModelCapabilities(
            outputs={"energy": ModelOutput(unit="eV", sample_kind="atom")},
            atomic_types=capabilities.atomic_types,
            interaction_range=0.0,
            length_unit="angstrom",
            supported_devices=["cpu"],
            dtype="float64",
        ),
    )


@pytest.fixture(scope="module")
def models():
    lorem = atomistic_model(variant_model("lr2"), torch.float64)
    return {
        "lorem": lorem,
        "d3": dftd3.DFTD3.wrap(_zero_model(lorem), damping_params={"energy": PBE_D3BJ}),
        "lorem+d3": dftd3.DFTD3.wrap(lorem, damping_params={"energy": PBE_D3BJ}),
    }


def _results(model: AtomisticModel, atoms) -> dict:
    atoms = atoms.copy()
    atoms.calc = MetatomicCalculator(model)
    results = {
        "energy": atoms.get_potential_energy(),
        "energies": atoms.get_potential_energies(),
        "forces": atoms.get_forces(),
    }
    if atoms.pbc.all():
        results["stress"] = atoms.get_stress()
    return results


@pytest.mark.parametrize("structure", ["periodic", "molecule"])
def test_dftd3_sum_of_parts(models, structure):
    """E, per-atom E, forces (and stress) of LOREM + D3 are LOREM's plus D3's."""
    atoms = nacl_cell() if structure == "periodic" else molecule()
    parts = {name: _results(model, atoms) for name, model in models.items()}
    d3, lorem, total = parts["d3"], parts["lorem"], parts["lorem+d3"]
    # the dispersion part is attractive and not negligible
    assert d3["energy"] < -1e-3
    assert np.abs(d3["forces"]).max() > 1e-4
    for quantity in total:
        expected = lorem[quantity] + d3[quantity]
        assert relative_error(total[quantity], expected) < TOLERANCE, quantity
    assert relative_error(total["energies"].sum(), total["energy"]) < TOLERANCE


def test_dftd3_capabilities(models):
    capabilities = models["lorem+d3"].capabilities()
    assert capabilities.dtype == "float64"
    assert np.isinf(capabilities.interaction_range)
    assert {"energy", "lorem::charges"} <= set(capabilities.outputs)
    # the D3 neighbour list (50 Bohr) comes on top of LOREM's
    cutoffs = sorted(o.cutoff for o in models["lorem+d3"].requested_neighbor_lists())
    assert cutoffs[0] == pytest.approx(5.0)
    assert cutoffs[-1] == pytest.approx(50 * 0.529177, rel=1e-4)
