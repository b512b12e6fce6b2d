"""Export a LOREM model for the engine examples (``model.pt`` in the current folder).

The network has the paper's hyperparameters and seeded random weights; use
``lorem-mta convert-jax`` or a training run for a real model. float64, so that the
energy conservation of the MD examples reflects the integrators only.

Usage: ``python examples/engines/export_model.py [--output model.pt] [--types 11,17]``.
"""

import argparse

import torch

from lorem_mta.model import LoremModel, export
from lorem_mta.modules import LoremBackbone


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="model.pt")
    parser.add_argument("--types", default="11,17", help="atomic numbers, comma-separated")
    args = parser.parse_args()

    torch.manual_seed(0)
    backbone = LoremBackbone(cutoff=5.0, max_degree=6, max_degree_lr=2)
    types = [int(t) for t in args.types.split(",")]
    export(LoremModel(backbone, atomic_types=types), args.output, dtype=torch.float64)
    print(f"exported {args.output} (atomic types {types})")


if __name__ == "__main__":
    main()
