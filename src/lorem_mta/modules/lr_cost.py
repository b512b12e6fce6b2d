r"""How the long-range sum of a periodic structure is evaluated: cost model, chooser, guard.

The Coulomb potentials of a periodic structure (:py:class:`~.long_range.CoulombPotentials`)
can be computed in three ways that give the same result up to a stated accuracy. Their
cost depends on the structure, not only on its number of atoms:

``"ewald"``
    The reference Ewald sum with the model's smearing :math:`\sigma = r_c / 4`: real space
    over the model's neighbour list, reciprocal space over :math:`n_k` k-vectors. Time and
    memory grow as :math:`n_k \times N` (torch-pme holds the phases of every k-vector at
    every atom, about seven arrays of that size with the backward pass). :math:`n_k`
    grows with the cell volume: a molecule in a 30 A box needs 110 000 k-vectors.
``"pme"``
    Particle-mesh Ewald with the same smearing: :math:`M` mesh points per channel (FFTs)
    and a :math:`5^3`-point stencil per atom and channel; about linear in :math:`N`
    and in the volume. Relative error of the potentials ~1e-5.
``"direct"``
    An Ewald sum with a wider smearing :math:`\sigma' = 2^k \sigma` chosen for the
    structure: the real-space sum runs over explicit pairs of atoms and periodic images
    within :math:`R' = \sigma' s` (:math:`s = \sqrt{2 \ln(1/a)}`), the reciprocal sum over
    the few k-vectors below :math:`k_{max} = s / \sigma'`. The part of the reference
    real-space sum that the model's neighbour list leaves out (pairs beyond :math:`r_c`) is
    subtracted over the same pairs, so that it reproduces the reference sum, not the
    fully converged one. Cost :math:`\propto N^2` times the number of images: the cheap
    choice for a few atoms in a large box (molecules, clusters, sparse slabs).

:py:class:`LongRangePlanner` estimates the time and the peak memory of every option for
the structure at hand (cell, number of atoms and of charge channels, periodic
directions) from the counts above and from per-element costs measured on a CPU
(``benchmarks/long_range_methods.py --calibrate``), and picks the fastest whose memory
fits the limit (``"auto"``), or checks the fixed choice against the limit. Either way a
structure that would exhaust the memory is refused *before* anything is allocated, with
an error that says what to change.

The accuracy knob :math:`a` (``long_range_accuracy``) is the size of the Gaussian filter
at the largest k-vector kept, :math:`e^{-\sigma^2 k_{max}^2 / 2} = a`, and the value of
:math:`\mathrm{erfc}` at the real-space cutoff of ``"direct"``: roughly the relative error
of the potentials. ``None`` keeps lorem-jax's reference k-vectors for ``"ewald"`` (and
means :py:data:`DEFAULT_ACCURACY` for the other methods). PME is only a candidate for
accuracies of :py:data:`PME_ACCURACY` or looser (its mesh is fixed).
"""

import math
from typing import Dict, List, Optional, Tuple

import torch

#: accepted values of ``long_range_method``
METHODS = ["auto", "ewald", "pme", "direct"]
#: accuracy of ``"auto"``, ``"pme"`` and ``"direct"`` when none is given
DEFAULT_ACCURACY = 1e-5
#: loosest accuracy at which ``"auto"`` considers PME (relative error of its potentials)
PME_ACCURACY = 1e-5
#: default memory limit of the long-range sum of one structure, in GiB
DEFAULT_MEMORY_LIMIT_GB = 16.0
#: ``"direct"`` smearings: sigma times these factors
DIRECT_LEVELS = [2.0, 4.0, 8.0, 16.0, 32.0]

#: Per-element costs (seconds, forward and backward, one CPU core), measured with
#: ``benchmarks/long_range_methods.py --calibrate``; only their ratios matter for the
#: choice. Peak memory: bytes = factor x elements x element size, measured with forces.
COSTS: Dict[str, float] = {
    # fixed cost of one evaluation (kernel launches, small tensors)
    "fixed": 2.0e-3,
    # Ewald: per k-vector and atom, per k-vector, atom and channel
    "ewald_kn": 1.2e-7,
    "ewald_knc": 1.7e-8,
    # PME: per mesh point and channel (FFTs, filter), per stencil point and channel, fixed
    "pme_mc": 1.6e-7,
    "pme_sc": 3.2e-8,
    "pme_fixed": 1.0e-2,
    # direct: per candidate (pair times image, screened without gradients), per pair
    # kept, per pair kept and channel
    "direct_candidate": 1.6e-8,
    "direct_pair": 8.0e-7,
    "direct_pair_c": 6.0e-8,
    # memory: arrays of n_k x N held at once by Ewald (phases, cos, sin, gradients)
    "memory_ewald_kn": 8.0,
    # memory: PME mesh copies per channel (real and complex FFTs, gradients), stencil
    # values per stencil point and channel, integer indices per stencil point
    "memory_pme_mc": 10.0,
    "memory_pme_sc": 8.0,
    "memory_pme_s": 8.0,
    # memory: direct values per candidate (vector, distance, mask), per pair, per pair
    # and channel
    "memory_direct_candidate": 6.0,
    "memory_direct_pair": 12.0,
    "memory_direct_pair_c": 4.0,
    # memory: all-pairs sum of a molecule, per pair and per pair and channel
    "memory_molecule_pair": 10.0,
    "memory_molecule_pair_c": 4.0,
}


def fft_mesh_size(n_min: int) -> int:
    """The smallest ``2^a 3^b 5^c`` that is at least ``n_min`` (fast FFT lengths).

    :param n_min: smallest acceptable number of mesh points
    :return: the mesh size
    """
    best = 1
    while best < n_min:
        best *= 2
    five = 1
    while five < best:
        three = five
        while three < best:
            size = three
            while size < n_min:
                size *= 2
            best = min(best, size)
            three *= 3
        five *= 5
    return best


def mesh_shape(cell: torch.Tensor, mesh_spacing: float) -> torch.Tensor:
    """PME mesh points along each lattice vector: ``2 |h_a| / spacing + 1``, rounded up.

    torch-pme's own choice rounds up to a power of two, which can multiply the number of
    mesh points by up to 8 (64^3 instead of 48^3 for a 28 A cubic cell); this keeps the
    requested resolution and rounds up to the next fast FFT length instead.

    :param cell: tensor of shape ``(3, 3)``, rows are lattice vectors
    :param mesh_spacing: torch-pme's ``mesh_spacing``
    :return: integer tensor of shape ``(3,)``
    """
    lengths = torch.linalg.norm(cell.detach().to(torch.float64), dim=1)
    minimum: List[int] = torch.ceil(2 * lengths / mesh_spacing + 1).long().tolist()
    sizes = [fft_mesh_size(n) for n in minimum]
    return torch.tensor(sizes, dtype=torch.long, device=cell.device)


def wavelength(smearing: float, accuracy: float) -> float:
    """Ewald wavelength ``lambda`` with ``exp(-sigma^2 k_max^2 / 2) = accuracy``.

    The k-vectors of :py:func:`~.long_range.ewald_kvectors` reach ``k_max = pi / lambda``.

    :param smearing: Gaussian smearing ``sigma``
    :param accuracy: target accuracy, between 0 and 1
    :return: ``lambda = pi sigma / sqrt(2 ln(1 / accuracy))``
    """
    return math.pi * smearing / math.sqrt(2 * math.log(1 / accuracy))


def image_counts(cell: torch.Tensor, positions: torch.Tensor, cutoff: float) -> List[int]:
    """Periodic images along each lattice vector that can hold a pair within ``cutoff``.

    :param cell: tensor of shape ``(3, 3)``
    :param positions: tensor of shape ``(n_atoms, 3)`` (need not be wrapped)
    :param cutoff: largest pair distance
    :return: ``n_a``: images ``-n_a .. n_a`` along lattice vector ``a``
    """
    inverse = torch.linalg.inv(cell.detach().to(torch.float64))
    # distance between lattice planes: 1 / |column a of the inverse cell|
    spacing = 1.0 / torch.linalg.norm(inverse, dim=0)
    fractional = positions.detach().to(torch.float64) @ inverse
    extent = fractional.max(dim=0).values - fractional.min(dim=0).values
    return torch.ceil(cutoff / spacing + extent).long().tolist()


def image_pairs(
    positions: torch.Tensor, cell: torch.Tensor, cutoff: float, periodic: List[bool]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Full list of the pairs of atoms and periodic images closer than ``cutoff``.

    The candidates (every pair and image) are screened without gradients; the distances
    of the pairs kept are recomputed from ``positions`` and ``cell`` so that forces and
    stresses flow through them. A pair of an atom with its own image is included.

    :param positions: tensor of shape ``(n_atoms, 3)``
    :param cell: tensor of shape ``(3, 3)``
    :param cutoff: largest pair distance
    :param periodic: periodicity along each lattice vector (no images along the others)
    :return: pairs ``(n_pairs, 2)`` (centre, neighbour) and distances ``(n_pairs,)``
    """
    device = positions.device
    counts = image_counts(cell, positions, cutoff)
    axes: List[torch.Tensor] = []
    for a in range(3):
        n = counts[a] if periodic[a] else 0
        axes.append(torch.arange(-n, n + 1, device=device))
    s1, s2, s3 = torch.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
    shifts = torch.stack([s1.reshape(-1), s2.reshape(-1), s3.reshape(-1)], dim=1)
    shifts = shifts.to(positions.dtype)
    with torch.no_grad():
        # r_j - r_i + S h for every (S, i, j)
        differences = positions[None, :, :] - positions[:, None, :]
        vectors = differences[None] + (shifts @ cell)[:, None, None, :]
        distances = torch.linalg.norm(vectors, dim=-1)
        keep = (distances < cutoff) & (distances > 0)
        index = torch.nonzero(keep)  # (n_pairs, 3): shift, centre, neighbour
    pair_shifts = shifts[index[:, 0]]
    pairs = index[:, 1:]
    vectors = positions[pairs[:, 1]] - positions[pairs[:, 0]] + pair_shifts @ cell
    return pairs, torch.linalg.norm(vectors, dim=1)


class LongRangePlanner(torch.nn.Module):
    """Estimates the cost of every long-range method for a structure and picks one.

    Holds no parameters or buffers (it adds nothing to the state dict).

    :param cutoff: model cutoff ``r_c`` (the smearing is ``r_c / 4``)
    :param method: ``"auto"``, ``"ewald"``, ``"pme"`` or ``"direct"``
    :param accuracy: target accuracy; ``None`` for the reference Ewald k-vectors
        (``"ewald"``) or :py:data:`DEFAULT_ACCURACY` (the others)
    :param memory_limit_gb: largest estimated peak memory of the long-range sum of one
        structure, in GiB
    """

    def __init__(
        self,
        cutoff: float,
        method: str = "auto",
        accuracy: Optional[float] = None,
        memory_limit_gb: float = DEFAULT_MEMORY_LIMIT_GB,
    ):
        super().__init__()
        self.cutoff = cutoff
        self.smearing = cutoff / 4.0
        self.mesh_spacing = self.smearing
        self.direct_smearings: List[float] = [self.smearing * f for f in DIRECT_LEVELS]
        self.costs: Dict[str, float] = dict(COSTS)
        self.default_accuracy = DEFAULT_ACCURACY
        self.pme_accuracy = PME_ACCURACY
        # the settings that `lorem-mta export` may change in an exported model: only
        # these three attributes, everything else is derived when used
        self.method = "auto"
        self.accuracy = 0.0  # 0: None (reference Ewald k-vectors / DEFAULT_ACCURACY)
        self.memory_limit = 0.0
        self.configure(method, accuracy, memory_limit_gb)

    @torch.jit.unused
    def configure(self, method: str, accuracy: Optional[float], memory_limit_gb: float) -> None:
        """Validate and set the method, the accuracy and the memory limit.

        :param method: ``"auto"``, ``"ewald"``, ``"pme"`` or ``"direct"``
        :param accuracy: target accuracy between 0 and 1, or ``None``
        :param memory_limit_gb: memory limit in GiB
        """
        if method not in METHODS:
            raise ValueError(
                f"unknown long-range method '{method}': use one of {', '.join(METHODS)}"
            )
        if accuracy is not None and not 0 < accuracy < 1:
            raise ValueError(f"the long-range accuracy must be in (0, 1), got {accuracy}")
        if not memory_limit_gb > 0:
            raise ValueError(f"the memory limit must be positive, got {memory_limit_gb}")
        self.method = method
        self.accuracy = 0.0 if accuracy is None else float(accuracy)
        self.memory_limit = float(memory_limit_gb) * 1024.0**3

    def target_accuracy(self) -> float:
        """The accuracy in use (:py:data:`DEFAULT_ACCURACY` if none was given)."""
        if self.accuracy > 0:
            return self.accuracy
        return self.default_accuracy

    def ewald_wavelength(self) -> float:
        """Ewald wavelength: ``r_c / 8`` (lorem-jax) for the reference, else from ``a``."""
        if self.accuracy <= 0 and self.method == "ewald":
            return self.cutoff / 8.0
        return wavelength(self.smearing, self.target_accuracy())

    def direct_scale(self) -> float:
        """``s = sqrt(2 ln(1/a))``: ``k_max sigma'`` and ``R' / sigma'`` of direct sums."""
        return math.sqrt(2 * math.log(1 / self.target_accuracy()))

    def direct_cutoff(self, level: int) -> float:
        """Real-space cutoff of the direct sum at ``level``, ``R' = sigma' s``."""
        return self.direct_smearings[level] * self.direct_scale()

    def direct_wavelength(self, level: int) -> float:
        """Ewald wavelength of the direct sum at ``level``."""
        return math.pi * self.direct_smearings[level] / self.direct_scale()

    def estimates(
        self,
        cell: torch.Tensor,
        n_atoms: int,
        n_channels: int,
        periodic: List[bool],
        element_size: int = 8,
    ) -> List[Tuple[str, int, float, float]]:
        """Estimated time (s) and peak memory (bytes) of every method for a structure.

        :param cell: tensor of shape ``(3, 3)`` (a slab is a cell with vacuum in it)
        :param n_atoms: number of atoms in the long-range sum
        :param n_channels: number of charge channels
        :param periodic: periodicity along each lattice vector
        :param element_size: bytes per number (8 for float64, 4 for float32)
        :return: ``(method, level, seconds, bytes)`` for ``"ewald"``, ``"pme"`` and every
            level of ``"direct"``
        """
        k = self.costs
        n = float(n_atoms)
        c = float(n_channels)
        e = float(element_size)
        cell64 = cell.detach().to(torch.float64)
        lengths: List[float] = torch.linalg.norm(cell64, dim=1).tolist()
        volume = abs(float(torch.linalg.det(cell64)))
        inverse = torch.linalg.inv(cell64)
        spacings: List[float] = (1.0 / torch.linalg.norm(inverse, dim=0)).tolist()
        result: List[Tuple[str, int, float, float]] = []

        n_k = _n_kvectors(lengths, self.ewald_wavelength())
        seconds = k["fixed"] + n_k * n * (k["ewald_kn"] + k["ewald_knc"] * c)
        memory = k["memory_ewald_kn"] * n_k * n * e + 4 * n_k * c * e
        result.append(("ewald", 0, seconds, memory))

        mesh: List[int] = mesh_shape(cell64, self.mesh_spacing).tolist()
        m = float(mesh[0] * mesh[1] * mesh[2])
        stencil = 125.0 * n  # 5th-order B-splines: 5^3 points per atom
        seconds = k["fixed"] + k["pme_fixed"] + m * c * k["pme_mc"] + stencil * c * k["pme_sc"]
        memory = (
            k["memory_pme_mc"] * m * c * e
            + k["memory_pme_sc"] * stencil * c * e
            + k["memory_pme_s"] * stencil * 8
        )
        result.append(("pme", 0, seconds, memory))

        for level in range(len(self.direct_smearings)):
            radius = self.direct_cutoff(level)
            n_images = 1.0
            for a in range(3):
                if periodic[a]:
                    # the atoms may span the cell: one more image each way
                    n_images *= 2 * math.ceil(radius / spacings[a] + 1) + 1
            candidates = n_images * n * n
            # pairs in a sphere of radius R', at most every candidate
            pairs = min(candidates, n * n * 4 / 3 * math.pi * radius**3 / volume + n * n)
            n_k = _n_kvectors(lengths, self.direct_wavelength(level))
            seconds = (
                k["fixed"]
                + candidates * k["direct_candidate"]
                + pairs * (k["direct_pair"] + k["direct_pair_c"] * c)
                + n_k * n * (k["ewald_kn"] + k["ewald_knc"] * c)
            )
            memory = (
                k["memory_direct_candidate"] * candidates * e
                + pairs * (k["memory_direct_pair"] + k["memory_direct_pair_c"] * c) * e
                + k["memory_ewald_kn"] * n_k * n * e
            )
            result.append(("direct", level, seconds, memory))
        return result

    def plan(
        self,
        cell: torch.Tensor,
        n_atoms: int,
        n_channels: int,
        periodic: List[bool],
        element_size: int = 8,
    ) -> Tuple[str, int]:
        """The method (and ``"direct"`` level) for a structure, checked against the limit.

        ``"auto"`` takes the fastest estimate among the methods whose estimated peak
        memory fits :py:attr:`memory_limit` (PME only if the accuracy allows it); a fixed
        method takes its cheapest setting.

        :param cell: tensor of shape ``(3, 3)``
        :param n_atoms: number of atoms in the long-range sum
        :param n_channels: number of charge channels
        :param periodic: periodicity along each lattice vector
        :param element_size: bytes per number
        :return: ``(method, level)``, method ``"ewald"``, ``"pme"`` or ``"direct"``
        :raises ValueError: if no allowed method fits the memory limit
        """
        options = self.estimates(cell, n_atoms, n_channels, periodic, element_size)
        best_method = ""
        best_level = 0
        best_seconds = math.inf
        smallest = math.inf
        for method, level, seconds, memory in options:
            if not self._allowed(method):
                continue
            smallest = min(smallest, memory)
            if memory <= self.memory_limit and seconds < best_seconds:
                best_method, best_level, best_seconds = method, level, seconds
        if best_method == "":
            raise ValueError(self._refusal(cell, n_atoms, smallest, options))
        return best_method, best_level

    def check_molecule(self, n_atoms: int, n_channels: int, element_size: int = 8) -> None:
        """Refuse a non-periodic structure whose all-pairs sum exceeds the memory limit.

        :param n_atoms: number of atoms
        :param n_channels: number of charge channels
        :param element_size: bytes per number
        :raises ValueError: with what to do instead
        """
        pairs = 0.5 * float(n_atoms) * float(n_atoms - 1)
        k = self.costs
        needed = pairs * (k["memory_molecule_pair"] + k["memory_molecule_pair_c"] * n_channels)
        needed *= float(element_size)
        if needed > self.memory_limit:
            raise ValueError(
                "the long-range sum of this non-periodic structure ("
                + str(n_atoms)
                + " atoms) runs over all pairs of atoms and would need about "
                + _gib(needed)
                + " of memory, more than the limit of "
                + _gib(self.memory_limit)
                + ". Put it in a periodic box with some vacuum (pbc=True), where "
                "long_range_method='auto' uses particle-mesh Ewald, or allow more memory "
                "with `lorem-mta export MODEL -o NEW.pt --memory-limit GB`."
            )

    def _allowed(self, method: str) -> bool:
        if self.method == "auto":
            return method != "pme" or self.target_accuracy() >= self.pme_accuracy
        return method == self.method

    def _refusal(
        self,
        cell: torch.Tensor,
        n_atoms: int,
        needed: float,
        options: List[Tuple[str, int, float, float]],
    ) -> str:
        """The error message of a structure that does not fit the memory limit."""
        lengths: List[float] = torch.linalg.norm(
            cell.detach().to(torch.float64), dim=1
        ).tolist()
        box = "x".join([_decimals(x, 1) for x in lengths])
        lowest = math.inf
        lowest_name = ""
        for method, _level, _seconds, memory in options:
            if memory < lowest:
                lowest = memory
                lowest_name = method
        message = (
            "the long-range sum of this periodic structure ("
            + str(n_atoms)
            + " atoms, cell "
            + box
            + " A) with long_range_method='"
            + self.method
            + "' would need about "
            + _gib(needed)
            + " of memory, more than the limit of "
            + _gib(self.memory_limit)
            + ". "
        )
        if self.method != "auto" and lowest <= self.memory_limit:
            message += (
                "Use long_range_method='auto' (which would take '"
                + lowest_name
                + "' here): in the options file of `mtt train` set `long_range_method: "
                "auto`; for an existing model or checkpoint run `lorem-mta export "
                "MODEL -o NEW.pt --long-range-method auto`. "
            )
        else:
            message += (
                "The cheapest method ('" + lowest_name + "') needs about " + _gib(lowest) + ". "
            )
        message += (
            "For a molecule or cluster in a box use pbc=False; to allow more memory, "
            "re-export with `lorem-mta export MODEL -o NEW.pt --memory-limit GB`."
        )
        return message


def _n_kvectors(lengths: List[float], wavelength: float) -> float:
    """Number of k-vectors of :py:func:`~.long_range.ewald_kvectors`."""
    count = 1.0
    for length in lengths:
        count *= math.ceil(length / wavelength)
    return count - 1


def _decimals(value: float, digits: int) -> str:
    """Non-negative ``value`` with ``digits`` decimals (TorchScript's ``str`` prints 17)."""
    scale = 1
    for _ in range(digits):
        scale *= 10
    rounded = int(round(value * scale))
    return str(rounded // scale) + "." + str(rounded % scale + scale)[1:]


def _gib(value: float) -> str:
    """``value`` bytes in GiB, with two decimals."""
    return _decimals(value / 1024.0**3, 2) + " GB"
