r"""Loss and errors of compiled energy (and force) batches, on plain tensors.

metatrain's loss (:py:class:`~metatrain.utils.loss.LossAggregator`), its per-atom
averages and its error accumulators work on TensorMaps: for a batch of 8 small
molecules, joining the samples' targets and building and reading these maps costs
about 3 ms a step, a quarter of a compiled training step. With ``compile: true``, a
batch of prepared structures (:py:class:`~.batching.PreparedBatch`) that the compiled
function supports, whose only target is the energy (with or without forces), takes
this path when the loss terms are metatrain's unmasked ``mse``, ``mae`` or ``huber``
losses and the targets are not rescaled for the errors (no ``scale_targets``). The
numbers are metatrain's: with :math:`N_s` atoms in structure :math:`s`,

.. math::

    \mathcal L = w_E\, \ell_E\Big(\frac{E_s}{N_s}, \frac{E^{\mathrm{ref}}_s}{N_s}\Big)
      + w_F\, \ell_F\Big(\frac{\partial E}{\partial \mathbf r_i},
      \Big(\frac{\partial E}{\partial \mathbf r_i}\Big)^{\mathrm{ref}}\Big)

(the energies are not divided for targets in ``per_structure_targets``), each term
over the entries whose reference is not NaN, computed with the same operations in the
same order, so the loss is the same to the last bit
(``tests/test_flat_loss.py``); the RMSE and MAE accumulators receive the same sums.
The reference values of every structure are read from its sample once.
"""

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from metatrain.utils.loss import TensorMapHuberLoss, TensorMapMAELoss, TensorMapMSELoss
from metatrain.utils.metrics import MAEAccumulator, RMSEAccumulator

#: metatrain's loss terms that this module computes (unmasked, pointwise)
SUPPORTED_LOSSES = (TensorMapMSELoss, TensorMapMAELoss, TensorMapHuberLoss)


class FlatEvaluation(NamedTuple):
    """A batch evaluated on plain tensors, as the loss and the errors see it.

    ``energies`` and ``reference`` ``(n_structures, 1)``: per atom unless the target
    is per structure; ``gradients`` and ``reference_gradients`` ``(n_atoms, 3)``, or
    ``None`` without forces; ``loss``: the loss of the batch; ``complete``: whether
    every reference value is a number.
    """

    energies: torch.Tensor
    reference: torch.Tensor
    gradients: Optional[torch.Tensor]
    reference_gradients: Optional[torch.Tensor]
    loss: torch.Tensor
    #: no reference value of the batch is NaN (nothing to leave out)
    complete: bool


class _Reference(NamedTuple):
    """The reference values of one prepared sample."""

    #: the sample itself: holding it keeps its ``id`` from being reused
    sample: Any
    #: its batch can take this path
    accepted: bool
    #: ``(1, 1)``
    energy: torch.Tensor
    #: ``(n_atoms, 3)`` or ``None``
    gradients: Optional[torch.Tensor]
    #: no reference value is NaN
    complete: bool


class FlatLoss:
    """metatrain's loss and error sums of energy batches, from tensors.

    :param loss_fn: the trainer's ``LossAggregator`` (its terms and weights)
    :param target_name: the energy target
    :param per_structure: the energy is not divided by the number of atoms
    :param block_name: the name of the target's block in the error metrics with
        ``log_separate_blocks`` (``None`` without)
    """

    def __init__(
        self,
        loss_fn: Any,
        target_name: str,
        per_structure: bool,
        block_name: Optional[str],
    ) -> None:
        self.terms = list(loss_fn.losses.values())
        self.target_name = target_name
        self.per_structure = per_structure
        self.metric_name = target_name if block_name is None else target_name + block_name
        self._references: Dict[int, _Reference] = {}

    @staticmethod
    def unsupported(
        loss_fn: Any, targets: Dict[str, Any], target_name: str, unit_scales: bool
    ) -> Optional[str]:
        """Why the batches of a training run can not use this path, or ``None``.

        :param loss_fn: the trainer's ``LossAggregator``
        :param targets: the target infos of the training, by name
        :param target_name: the model's energy target
        :param unit_scales: the errors are computed without rescaling the targets
        :return: a reason, or ``None``
        """
        if set(targets) != {target_name}:
            return "targets other than the energy"
        info = targets[target_name]
        if info.per_atom or not set(info.gradients) <= {"positions"}:
            return "per-atom energies, stress or virial"
        if not unit_scales:
            return "scaled targets"
        for term in loss_fn.losses.values():
            if type(term) not in SUPPORTED_LOSSES:
                return "loss " + type(term).__name__
            if term.target != target_name or term.gradient not in (None, "positions"):
                return "loss terms of other targets"
        return None

    def references(
        self, samples: List[Any], dtype: torch.dtype, device: torch.device
    ) -> Optional[List["_Reference"]]:
        """The reference values of a batch, or ``None`` if it can not take this path.

        A batch takes it when every sample has only a system and the energy, in
        ``dtype`` on ``device``; every sample is read (and checked) once.

        :param samples: the batch's prepared samples
        :param dtype: the training dtype
        :param device: the training device
        :return: the references of the samples, in order
        """
        references = []
        for sample in samples:
            item = self._references.get(id(sample))
            if item is None or item.sample is not sample:
                item = self._read(sample, dtype, device)
                self._references[id(sample)] = item
            if not item.accepted:
                return None
            references.append(item)
        return references

    def evaluate(
        self,
        references: List["_Reference"],
        energies: torch.Tensor,
        gradients: Optional[torch.Tensor],
        atom_ptr: List[int],
    ) -> FlatEvaluation:
        """The per-atom energies, the references and the loss of a batch.

        :param references: the batch's :py:meth:`references`
        :param energies: predicted energies ``(n_structures,)``
        :param gradients: predicted position gradients ``(n_atoms, 3)``, or ``None``
            when the target has none
        :param atom_ptr: first atom of every structure, plus the total
        :return: the :py:class:`FlatEvaluation`
        """
        reference = torch.cat([item.energy for item in references])
        predicted = energies.unsqueeze(-1)
        if not self.per_structure:
            # metatrain's average_by_num_atoms: divided by an integer tensor
            counts = [atom_ptr[k + 1] - atom_ptr[k] for k in range(len(references))]
            num_atoms = torch.tensor(counts, device=energies.device).view(-1, 1)
            predicted = predicted / num_atoms
            reference = reference / num_atoms
        reference_gradients: Optional[torch.Tensor] = None
        if gradients is not None:
            reference_gradients = torch.cat([_given(item.gradients) for item in references])
        complete = all(item.complete for item in references)
        loss = torch.zeros((), dtype=energies.dtype, device=energies.device)
        for term in self.terms:
            if term.gradient is None:
                value = _term(term, predicted, reference, complete)
            elif gradients is None or reference_gradients is None:
                continue
            else:
                value = _term(term, gradients, reference_gradients, complete)
            loss = loss + term.weight * value
        return FlatEvaluation(
            predicted, reference, gradients, reference_gradients, loss, complete
        )

    def accumulate(self, accumulators: List[Any], evaluated: FlatEvaluation) -> None:
        """Add a batch to metatrain's RMSE and MAE accumulators.

        :param accumulators: ``RMSEAccumulator`` and ``MAEAccumulator`` objects
        :param evaluated: from :py:meth:`evaluate`
        """
        pairs = [(self.metric_name, evaluated.energies, evaluated.reference)]
        if evaluated.gradients is not None and evaluated.reference_gradients is not None:
            name = self.metric_name + "_positions_gradients"
            pairs.append((name, evaluated.gradients, evaluated.reference_gradients))
        with torch.no_grad():
            for accumulator in accumulators:
                if isinstance(accumulator, RMSEAccumulator):
                    power = 2
                elif isinstance(accumulator, MAEAccumulator):
                    power = 1
                else:
                    raise TypeError(f"unknown accumulator {type(accumulator).__name__}")
                for name, predicted, reference in pairs:
                    _add_errors(
                        accumulator.information,
                        name,
                        predicted,
                        reference,
                        power,
                        evaluated.complete,
                    )

    def _read(self, sample: Any, dtype: torch.dtype, device: torch.device) -> "_Reference":
        """The reference values of a sample, and whether its batch can take this path.

        :param sample: a prepared sample
        :param dtype: the training dtype
        :param device: the training device
        :return: its :py:class:`_Reference`
        """
        rejected = _Reference(sample, False, torch.zeros(0), None, False)
        if set(sample._fields) != {"system", self.target_name}:
            return rejected  # extra data (masks, inputs) go through metatrain
        block = getattr(sample, self.target_name).block()
        tensors = [sample.system.positions, block.values]
        if not all(t.dtype == dtype and t.device == device for t in tensors):
            return rejected
        if tuple(block.values.shape) != (1, 1):
            return rejected
        gradients: Optional[torch.Tensor] = None
        if "positions" in block.gradients_list():
            gradients = block.gradient("positions").values.reshape(-1, 3)
        complete = not bool(torch.isnan(block.values).any())
        if gradients is not None:
            complete = complete and not bool(torch.isnan(gradients).any())
        return _Reference(sample, True, block.values, gradients, complete)


def _given(tensor: Optional[torch.Tensor]) -> torch.Tensor:
    """``tensor``, which must be present (a sample without forces in a force run)."""
    if tensor is None:
        raise ValueError("a structure of a training set with forces has no forces")
    return tensor


def _term(
    term: Any, predicted: torch.Tensor, reference: torch.Tensor, complete: bool
) -> torch.Tensor:
    """One loss term as metatrain computes it: flattened, NaN references left out.

    :param term: metatrain's loss term (its ``torch_loss``)
    :param predicted: predictions, any shape
    :param reference: references, the same shape
    :param complete: no reference is NaN (the selection would keep every entry)
    :return: the term, a scalar
    """
    predicted = predicted.reshape(-1)
    reference = reference.reshape(-1)
    if complete:
        return term.torch_loss(predicted, reference)
    kept = ~torch.isnan(reference)
    reference = reference[kept]
    predicted = predicted[kept]
    if len(reference) == 0:
        return torch.zeros((), dtype=predicted.dtype, device=predicted.device)
    return term.torch_loss(predicted, reference)


def _add_errors(
    information: Dict[str, Tuple[float, int]],
    name: str,
    predicted: torch.Tensor,
    reference: torch.Tensor,
    power: int,
    complete: bool,
) -> None:
    """Add the sum of squared (``power`` 2) or absolute errors of the non-NaN entries.

    :param information: an accumulator's sums and counts, by metric name
    :param name: the metric name
    :param predicted: predictions
    :param reference: references, the same shape
    :param power: 2 for the RMSE, 1 for the MAE
    :param complete: no reference is NaN (every entry counts)
    """
    if complete:
        errors = predicted.reshape(-1) - reference.reshape(-1)
        count = errors.shape[0]
    else:
        kept = ~torch.isnan(reference)
        errors = predicted[kept] - reference[kept]
        count = int(kept.sum().item())
    total = (errors**2 if power == 2 else errors.abs()).sum().item()
    previous = information.get(name, (0.0, 0))
    information[name] = (previous[0] + total, previous[1] + count)
