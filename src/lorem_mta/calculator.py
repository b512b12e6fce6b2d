"""ASE calculator for LOREM models: metatomic-ase's, with two edge cases made explicit.

:py:class:`LoremCalculator` is metatomic-ase's ``MetatomicCalculator`` (same arguments,
same results) except for two kinds of structures where metatomic-ase returns something
unusable:

* the stress of a structure without a cell volume (a molecule, ``pbc=False`` and a zero
  cell): metatomic-ase divides the virial by the volume 0 and returns ``[nan, inf, -inf,
  ...]`` with a warning. The stress of such a structure is not defined, so
  :py:class:`LoremCalculator` raises ASE's ``PropertyNotImplementedError`` (what ASE's
  own calculators raise for a property they can not give) naming the cause and the
  virial as the quantity that is defined; energies and forces are unaffected;
* a structure without atoms: metatomic-ase's neighbour list (vesin) fails with
  ``points can not be a NULL pointer`` before the model runs. Its energy is 0 and its
  forces an empty ``(0, 3)`` array (the stress of an empty periodic cell is zero), which
  is what :py:class:`LoremCalculator` returns without calling the model.
"""

from typing import List, Optional

import ase
import numpy as np
from ase.calculators.calculator import (
    Calculator,
    PropertyNotImplementedError,
    all_changes,
)
from metatomic_ase import MetatomicCalculator

#: a cell volume (A^3) below which the stress is not defined
MIN_VOLUME = 1e-12


class LoremCalculator(MetatomicCalculator):
    """``MetatomicCalculator`` that refuses undefined stresses and handles empty systems.

    Takes the arguments of ``metatomic_ase.MetatomicCalculator`` (the exported model file
    or model, ``device``, ``additional_outputs``, ...).
    """

    def calculate(
        self,
        atoms: Optional[ase.Atoms] = None,
        properties: Optional[List[str]] = None,
        system_changes: List[str] = all_changes,
    ) -> None:
        """Compute ``properties`` (called by ``atoms.get_potential_energy()`` & co.).

        :param atoms: the structure
        :param properties: the ASE properties to compute
        :param system_changes: what changed since the last call
        :raises PropertyNotImplementedError: for the stress of a structure whose cell
            has no volume
        """
        properties = ["energy"] if properties is None else list(properties)
        no_volume = atoms is not None and _volume(atoms) < MIN_VOLUME
        if no_volume and "stress" in properties:
            raise PropertyNotImplementedError(
                "the stress of a structure without a cell volume (here "
                f"pbc={atoms.pbc.tolist()}, volume {_volume(atoms):g} A^3) is not "
                "defined: the stress is the virial divided by the volume. Use energies "
                "and forces, or give the structure a periodic cell"
            )
        if atoms is not None and len(atoms) == 0:
            Calculator.calculate(self, atoms, properties, system_changes)
            self.results = {
                "energy": 0.0,
                "free_energy": 0.0,
                "energies": np.zeros(0),
                "forces": np.zeros((0, 3)),
                "stress": np.zeros(6),
            }
            return
        super().calculate(atoms, properties, system_changes)
        if no_volume:
            # computed alongside the energy, as the virial divided by a zero volume
            self.results.pop("stress", None)


def _volume(atoms: ase.Atoms) -> float:
    return abs(float(atoms.cell.volume)) if atoms.cell.rank == 3 else 0.0
