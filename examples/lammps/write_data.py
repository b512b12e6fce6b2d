"""Write a LAMMPS ``read_data`` file (atom_style atomic, metal units) from an ASE structure.

LAMMPS boxes have their first cell vector along x and the second in the xy plane
(``a = (lx, 0, 0)``, ``b = (xy, ly, 0)``, ``c = (xz, yz, lz)``). The structure is rotated
into that frame (fractional coordinates are kept, atoms are wrapped into the box), so
forces and stresses from LAMMPS are those of the rotated structure; ``--output-xyz``
writes it for comparisons. Atom types follow ``--types`` (atomic numbers of LAMMPS types
1..n, the ``TYPES`` variable of ``in.lorem``); masses are ASE's. With ``--velocities``
the velocities of the structure (ASE units) are written in LAMMPS metal units (Å/ps).

Usage::

    python write_data.py structure.xyz nacl.data --types 11,17
    python write_data.py --nacl 2 --rattle 0.1 nacl.data --types 11,17   # NaCl supercell

The functions :py:func:`lammps_frame` and :py:func:`write_data` are importable.
"""

import argparse
from typing import List, Optional

import ase
import ase.build
import ase.data
import ase.io
import ase.units
import numpy as np


def lammps_frame(atoms: ase.Atoms) -> ase.Atoms:
    """``atoms`` rotated so that its cell is lower triangular, with atoms wrapped.

    Keeps the fractional coordinates; needs a right-handed cell, periodic in all
    directions or a slab (``pbc = [True, True, False]``, LAMMPS' ``boundary p p f``)
    whose third cell vector is perpendicular to the first two. A slab's atoms are
    wrapped along the periodic directions only and must lie inside the cell along the
    third (the box of ``boundary p p f``).
    """
    slab = is_slab(atoms)
    if not (atoms.pbc.all() or slab):
        raise ValueError(
            f"LAMMPS boxes of in.lorem are periodic in all directions or slabs with "
            f"pbc = [True, True, False], got pbc = {atoms.pbc.tolist()}"
        )
    cell = atoms.cell.array
    if np.linalg.det(cell) <= 0:
        raise ValueError("the cell must be right-handed (positive determinant)")
    a, b, c = cell
    lx = np.linalg.norm(a)
    xy = b @ a / lx
    ly = np.sqrt(b @ b - xy**2)
    xz = c @ a / lx
    yz = (b @ c - xy * xz) / ly
    lz = np.sqrt(c @ c - xz**2 - yz**2)
    new_cell = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
    if np.allclose(new_cell, cell, rtol=0.0, atol=1e-12 * lx):
        new_cell = np.tril(cell)  # already in LAMMPS' frame: keep the numbers exactly
    if slab and (abs(xz) + abs(yz) > 1e-12 * lx):
        raise ValueError("a slab's third cell vector must be perpendicular to the first two")
    fractional = atoms.cell.scaled_positions(atoms.positions)
    fractional[:, :2] %= 1.0
    if slab:
        new_cell[2, :2] = 0.0
        if fractional[:, 2].min() < 0.0 or fractional[:, 2].max() >= 1.0:
            raise ValueError("a slab's atoms must lie inside the cell along its third vector")
    else:
        fractional[:, 2] %= 1.0
    rotated = atoms.copy()
    rotated.set_cell(new_cell, scale_atoms=False)
    rotated.positions = fractional @ new_cell
    if atoms.get_velocities() is not None:
        # rotation = inv(cell) @ new_cell maps row vectors to the new frame
        rotation = np.linalg.solve(cell, new_cell)
        rotated.set_velocities(atoms.get_velocities() @ rotation)
    return rotated


def is_slab(atoms: ase.Atoms) -> bool:
    """Whether ``atoms`` is a slab for LAMMPS (``pbc = [True, True, False]``)."""
    return atoms.pbc.tolist() == [True, True, False]


def write_data(
    atoms: ase.Atoms, path: str, types: List[int], velocities: bool = False
) -> ase.Atoms:
    """Write ``atoms`` (rotated to LAMMPS' frame) to ``path``; return the rotated atoms.

    :param atoms: a fully periodic structure, or a slab (run in.lorem with
        ``-var BOUNDARY "p p f"``)
    :param path: the data file to write
    :param types: atomic numbers of LAMMPS types 1..n; every atom must have one of them
    :param velocities: also write a ``Velocities`` section (Å/ps)
    """
    frame = lammps_frame(atoms)
    numbers = frame.numbers
    missing = sorted(set(numbers.tolist()) - set(types))
    if missing:
        raise ValueError(f"atomic numbers {missing} are not in --types {types}")
    type_of = {number: index + 1 for index, number in enumerate(types)}
    (lx, _, _), (xy, ly, _), (xz, yz, lz) = frame.cell.array
    masses = {number: ase.data.atomic_masses[number] for number in types}

    lines = [
        f"LAMMPS data file from {frame.get_chemical_formula()} (lorem_mta write_data.py)",
        "",
        f"{len(frame)} atoms",
        f"{len(types)} atom types",
        "",
        f"0.0 {lx:.17g} xlo xhi",
        f"0.0 {ly:.17g} ylo yhi",
        f"0.0 {lz:.17g} zlo zhi",
    ]
    if (xy, xz, yz) != (0.0, 0.0, 0.0):
        lines.append(f"{xy:.17g} {xz:.17g} {yz:.17g} xy xz yz")
    lines += ["", "Masses", ""]
    lines += [f"{type_of[number]} {masses[number]:.17g}" for number in types]
    lines += ["", "Atoms # atomic", ""]
    for index, (number, position) in enumerate(zip(numbers, frame.positions, strict=True)):
        x, y, z = position
        lines.append(f"{index + 1} {type_of[number]} {x:.17g} {y:.17g} {z:.17g}")
    if velocities:
        # ASE velocity unit -> Å/ps
        per_ps = frame.get_velocities() * (1000.0 * ase.units.fs)
        lines += ["", "Velocities", ""]
        for index, (vx, vy, vz) in enumerate(per_ps):
            lines.append(f"{index + 1} {vx:.17g} {vy:.17g} {vz:.17g}")
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")
    return frame


def nacl_supercell(repeat: int, rattle: float = 0.0, seed: int = 0) -> ase.Atoms:
    """Rocksalt NaCl, ``repeat``³ conventional cells (a = 5.64 Å), optionally rattled."""
    atoms = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(repeat)
    if rattle > 0:
        atoms.rattle(rattle, seed=seed)
    return atoms


def main(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("structure", nargs="?", help="any file ASE reads (last frame)")
    parser.add_argument("output", help="the LAMMPS data file to write")
    parser.add_argument("--types", required=True, help="atomic numbers of types 1..n: 11,17")
    parser.add_argument("--nacl", type=int, help="use an NaCl supercell of N³ cubic cells")
    parser.add_argument("--rattle", type=float, default=0.0, help="rattle amplitude (Å)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--velocities", action="store_true", help="write the velocities")
    parser.add_argument("--output-xyz", help="also write the rotated structure (extxyz)")
    args = parser.parse_args(argv)

    if (args.structure is None) == (args.nacl is None):
        parser.error("give either a structure file or --nacl N")
    if args.nacl is not None:
        atoms = nacl_supercell(args.nacl, args.rattle, args.seed)
    else:
        atoms = ase.io.read(args.structure)
        if args.rattle > 0:
            atoms.rattle(args.rattle, seed=args.seed)
    types = [int(t) for t in args.types.replace(",", " ").split()]
    frame = write_data(atoms, args.output, types, velocities=args.velocities)
    if args.output_xyz:
        ase.io.write(args.output_xyz, frame, format="extxyz")
    print(f"wrote {args.output}: {len(frame)} atoms, types {types}")


if __name__ == "__main__":
    main()
