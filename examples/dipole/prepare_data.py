"""Write the SPICE dipeptide set with the dipole where metatrain can read it.

ASE parses the ``dipole`` entry of extended XYZ files into the calculator results, where
metatrain's reader does not look (it copies only energies, forces and stresses from
there). This script writes ``train.xyz`` and ``val.xyz`` next to itself with the dipole
(e*Angstrom) stored as ``atoms.info["dipole_moment"]`` and the energy (eV) as
``atoms.info["energy"]``, adds the total charge (0: the molecules are neutral) as
``atoms.info["total_charge"]``, and keeps the per-atom ``force`` (eV/Angstrom).

The data (CC BY-NC 4.0, see ``../shared/data/spice_dipeptides_dipolar/README.md``) is not
part of this repository: run this script to make the local copies the options file reads::

    python prepare_data.py [path/to/spice_dipeptides_dipolar] [--max-frames N]
"""

import argparse
from pathlib import Path

import ase.io

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data" / "spice_dipeptides_dipolar"


def convert(source: Path, destination: Path, max_frames: int = -1) -> int:
    """Copy ``source`` to ``destination`` with energy and dipole in ``atoms.info``.

    :param source: extended XYZ file of the dataset
    :param destination: file to write
    :param max_frames: keep only the first frames (all with a negative value)
    :return: number of frames written
    """
    frames = ase.io.read(source, ":")
    if max_frames >= 0:
        frames = frames[:max_frames]
    for atoms in frames:
        results = atoms.calc.results
        atoms.calc = None
        atoms.info["energy"] = float(results["energy"])
        atoms.info["dipole_moment"] = [float(x) for x in results["dipole"].reshape(3)]
        atoms.info["total_charge"] = 0.0
        atoms.info.pop("quadrupole", None)
    ase.io.write(destination, frames, format="extxyz")
    return len(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--max-frames", type=int, default=-1)
    parser.add_argument("--output", type=Path, default=HERE)
    args = parser.parse_args()
    for split in ["train", "val"]:
        n = convert(
            args.source / f"spice-dipep-dipolar_{split}.xyz",
            args.output / f"{split}.xyz",
            args.max_frames,
        )
        print(f"wrote {n} frames to {args.output / f'{split}.xyz'}")


if __name__ == "__main__":
    main()
