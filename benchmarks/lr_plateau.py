"""How much a freshly initialised model varies along the cumulene rotor scan.

The C9H4 scan twists one CH2 end against the other; the two ends are about 10 A apart,
so with ``cutoff = 5`` and no message passing no atom sees both and only the
long-range block can give the scan its energy profile. This script builds the small
model of ``benchmarks/accuracy.py`` (float64, three seeds) and prints, over 16 scan
frames, the standard deviation of the energy per atom (the part of the scan that
depends on the twist) without and with the long-range block, next to that of the
reference energies, and the size of the spherical node features and of the spherical
latent charges ``Q^lm`` of every degree that the long-range block computes from them (the
scalar charge ``q`` comes from the scalar features, with an RMS of about 0.3).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lr_plateau.py
"""

from pathlib import Path

import ase.io
import numpy as np
import torch
from accuracy import HYPERS  # the small model of the accuracy benchmark

from lorem_mta.model import LoremModel
from lorem_mta.modules import LoremBackbone
from lorem_mta.utils import predict

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cumulene"
#: components of degree 0, 1 and 2 in the ``(L + 1)^2`` axis
DEGREES = {0: slice(0, 1), 1: slice(1, 4), 2: slice(4, 9)}


def rms_by_degree(values: torch.Tensor) -> str:
    """RMS of every degree of ``values``, shape ``(n_atoms, (L + 1)^2, ...)``."""
    return " ".join(
        f"l{degree} {float(values[:, part].pow(2).mean().sqrt()):.1e}"
        for degree, part in DEGREES.items()
    )


def twist_std(model: LoremModel, frames: list) -> float:
    """Standard deviation over ``frames`` of the energy per atom, in meV."""
    energies = predict(model, frames, dtype=torch.float64).energies.detach().reshape(-1)
    return float(energies.std()) / len(frames[0]) * 1000


def main() -> None:
    torch.set_num_threads(1)
    frames = ase.io.read(DATA / "cumulene_profile_train800.extxyz", "0:800:50")
    reference = np.array([atoms.get_potential_energy() for atoms in frames])
    print(f"reference: energy per atom std {reference.std() / len(frames[0]) * 1000:.3g} meV")
    for seed in range(3):
        torch.manual_seed(seed)
        short = LoremModel(LoremBackbone(**HYPERS, lr=False), [1, 6]).double()
        torch.manual_seed(seed)
        model = LoremModel(LoremBackbone(**HYPERS, lr=True), [1, 6]).double()
        seen = {}
        hook = model.backbone.long_range.spherical_charges.register_forward_hook(
            lambda module, inputs, output, seen=seen: seen.update(
                nodes=inputs[0], charges=output
            )
        )
        with_lr = twist_std(model, frames)
        hook.remove()
        print(
            f"seed {seed}: energy per atom std {twist_std(short, frames):.2g} meV without "
            f"the long-range block, {with_lr:.2g} meV with it; spherical node features "
            f"{rms_by_degree(seen['nodes'].detach())}; spherical charges Q^lm "
            f"{rms_by_degree(seen['charges'].detach())}"
        )


if __name__ == "__main__":
    main()
