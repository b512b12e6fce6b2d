"""Float32 rounding of the total energies of an exported model.

Exports one checkpoint twice, in float32 and in float64 (same weights), evaluates both on
the structures of the given files and prints how far the float32 total energies are from
the float64 ones, in meV and in float32 steps (the spacing of float32 numbers at that
energy: 2^-10 eV = 0.98 meV for |E| of 8192-16384 eV). Rounding the float64 result once
to float32 gives at most half a step.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/float32_energies.py model.ckpt \\
        ../shared/data/biodimers_cc_cookbook/charge-charge.xyz \\
        ../shared/data/biodimers_les_subset/train-id*.xyz
"""

import argparse
import copy
import json
import math
import sys

import torch
from metatomic.torch import ModelEvaluationOptions, ModelOutput
from metatrain.utils.data import read_systems
from metatrain.utils.neighbor_lists import get_system_with_neighbor_lists

from lorem_mta.architecture import LoremMta


def energies(atomistic, systems, batch_size=8):
    """Total energies (float64 tensor) of ``systems`` with an exported model."""
    dtype = getattr(torch, atomistic.capabilities().dtype)
    options = ModelEvaluationOptions(
        length_unit="angstrom", outputs={"energy": ModelOutput(sample_kind="system")}
    )
    values = []
    for start in range(0, len(systems), batch_size):
        batch = [
            get_system_with_neighbor_lists(s.to(dtype), atomistic.requested_neighbor_lists())
            for s in systems[start : start + batch_size]
        ]
        outputs = atomistic(batch, options, check_consistency=False)
        values.append(outputs["energy"].block().values.detach().reshape(-1))
    return torch.cat(values).to(torch.float64)


def step(energy: float) -> float:
    """Spacing of float32 numbers at ``energy``.

    (``lorem_mta.architecture.reporting.float32_steps``, repeated here so that the
    script also runs with older versions of the package, for before/after comparisons.)
    """
    return 2.0 ** (math.floor(math.log2(abs(energy))) - 23)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("files", nargs="+")
    arguments = parser.parse_args()

    checkpoint = torch.load(arguments.checkpoint, weights_only=False, map_location="cpu")
    model = LoremMta.load_checkpoint(checkpoint, "export")
    systems = [s for path in arguments.files for s in read_systems(path)]
    single = energies(copy.deepcopy(model).to(torch.float32).export(), systems)
    double = energies(copy.deepcopy(model).to(torch.float64).export(), systems)
    errors = (single - double).abs()
    steps = torch.tensor([step(e) for e in double.tolist()], dtype=torch.float64)
    print(
        json.dumps(
            {
                "code": sys.modules["lorem_mta"].__file__,
                "structures": len(systems),
                "energy_range_eV": [double.min().item(), double.max().item()],
                "float32_step_meV": sorted({1000 * s for s in steps.tolist()}),
                "max_error_meV": 1000 * errors.max().item(),
                "rms_error_meV": 1000 * errors.pow(2).mean().sqrt().item(),
                "max_error_steps": (errors / steps).max().item(),
                "rms_error_steps": (errors / steps).pow(2).mean().sqrt().item(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
