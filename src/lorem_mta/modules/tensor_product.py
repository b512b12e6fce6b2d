r"""Clebsch-Gordan coefficients and the equivariant layers built on them (LOREM Sec. 3.4, 4).

Spherical features ``x`` have shape ``(n, (L + 1)^2, F)`` in sphericart order (see
:py:mod:`lorem_mta.modules.spherical`).

**Equivariant linear layer** (e3x ``Dense`` without bias): one matrix per degree, shared
over :math:`m`, :math:`y^{lm}_o = \sum_c x^{lm}_c W^{l}_{co}`.

**Tensor product** (e3x ``Tensor``, no pseudotensors): channel-wise coupling with one
weight vector per path,

.. math::

    z^{l_3 m_3}_f = \sum_{(l_1, l_2)} w^{l_1 l_2 l_3}_f \sum_{m_1 m_2}
        C^{l_1 l_2 l_3}_{m_1 m_2 m_3}\, x^{l_1 m_1}_f\, y^{l_2 m_2}_f ,

restricted to parity-allowed paths (:math:`l_1 + l_2 + l_3` even; the triangle rule comes
from :math:`C`). The real coefficients satisfy
:math:`\sum_{m_1 m_2 m_3} (C^{l_1 l_2 l_3})^2 = 2 l_3 + 1`; they are the complex
Clebsch-Gordan coefficients from ``wigners`` transformed to the real basis, with the phase
:math:`(-1)^{(l_1 + l_2 - l_3)/2}` that makes them identical to e3x's (so that
:math:`C^{110}_{m m'} = +\delta_{m m'}/\sqrt{3}`). The contraction runs over the
non-zero ``(l1, l2, l3)`` blocks only (no dense :math:`(L+1)^6` tensor).

**TensorDense** = equivariant linear ``F_in -> 2 F_out`` then the tensor product of the
two halves. **MessagePass** = tensor product of a filtered edge feature with the
neighbour's spherical features, summed over neighbours.
"""

import math
from typing import List, Optional, Tuple

import numpy as np
import torch
import wigners

from .layers import lecun_normal_
from .spherical import degree_index


def _complex_to_real(l: int) -> np.ndarray:
    """Unitary map from complex to sphericart's real spherical harmonics of degree l."""
    u = np.zeros((2 * l + 1, 2 * l + 1), dtype=complex)
    for m in range(-l, l + 1):
        row = m + l
        if m > 0:
            u[row, m + l] = (-1) ** m / math.sqrt(2)
            u[row, -m + l] = 1 / math.sqrt(2)
        elif m < 0:
            u[row, -m + l] = -1j * (-1) ** m / math.sqrt(2)
            u[row, m + l] = 1j / math.sqrt(2)
        else:
            u[row, l] = 1.0
    return u


def clebsch_gordan(l1: int, l2: int, l3: int) -> np.ndarray:
    """Real Clebsch-Gordan coefficients in sphericart order, e3x normalisation and phase.

    :param l1: degree of the first input
    :param l2: degree of the second input
    :param l3: degree of the output
    :return: array of shape ``(2 l1 + 1, 2 l2 + 1, 2 l3 + 1)``
    """
    if not abs(l1 - l2) <= l3 <= l1 + l2:
        return np.zeros((2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1))
    complex_cg = wigners.clebsch_gordan_array(l1, l2, l3)
    real = np.einsum(
        "ai,bj,ck,ijk->abc",
        _complex_to_real(l1),
        _complex_to_real(l2),
        _complex_to_real(l3).conj(),
        complex_cg,
    )
    if (l1 + l2 + l3) % 2 == 0:
        return real.real * (-1) ** ((l1 + l2 - l3) // 2)
    return real.imag * (-1) ** ((l1 + l2 - l3 + 1) // 2)


def allowed_paths(
    max_degree_1: int, max_degree_2: int, max_degree_out: int
) -> List[Tuple[int, int, int]]:
    """Parity-allowed ``(l1, l2, l3)`` paths that satisfy the triangle rule.

    :param max_degree_1: largest degree of the first input
    :param max_degree_2: largest degree of the second input
    :param max_degree_out: largest output degree
    :return: list of paths
    """
    return [
        (l1, l2, l3)
        for l1 in range(max_degree_1 + 1)
        for l2 in range(max_degree_2 + 1)
        for l3 in range(max_degree_out + 1)
        if abs(l1 - l2) <= l3 <= l1 + l2 and (l1 + l2 + l3) % 2 == 0
    ]


class EquivariantLinear(torch.nn.Module):
    """One linear map per degree, shared over ``m``, no bias (e3x ``Dense``).

    :param max_degree: largest degree ``L`` of the input (and output)
    :param in_features: input channels
    :param out_features: output channels
    """

    def __init__(self, max_degree: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(max_degree + 1, in_features, out_features))
        lecun_normal_(self.weight, in_features)
        self.register_buffer("degrees", degree_index(max_degree), persistent=False)
        self.sizes: List[int] = [2 * l + 1 for l in range(max_degree + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the per-degree maps.

        :param x: tensor of shape ``(n, (L + 1)^2, in_features)``
        :return: tensor of shape ``(n, (L + 1)^2, out_features)``
        """
        if torch.compiler.is_compiling():
            return self.per_degree(x)
        return torch.einsum("nmi,mio->nmo", x, self.weight[self.degrees])

    def per_degree(self, x: torch.Tensor) -> torch.Tensor:
        """:py:meth:`forward` as one matrix product per degree (what a compiled graph uses).

        No gather of the weight by an index tensor and no batched product over the
        ``(L + 1)^2`` components: inside ``torch.compile`` both become loops with
        indirect loads and small extern calls, while the products of the degrees run
        over all the atoms at once. The same numbers as :py:meth:`forward` up to
        round-off; in eager mode, the single ``einsum`` dispatches fewer operators.

        :param x: tensor of shape ``(n, (L + 1)^2, in_features)``
        :return: tensor of shape ``(n, (L + 1)^2, out_features)``
        """
        n, n_in, n_out = x.shape[0], x.shape[2], self.weight.shape[2]
        if n_in <= 8:
            # a few input channels: a broadcast product and a sum, fused by the
            # compiler (no matrix product call, in the force pass and its backward)
            weight = torch.cat(
                [self.weight[l].expand(size, n_in, n_out) for l, size in enumerate(self.sizes)]
            )
            return (x.unsqueeze(-1) * weight).sum(dim=2)
        blocks = torch.split(x, self.sizes, dim=1)
        # (n (2l + 1), in) @ (in, out): a plain matrix product per degree
        return torch.cat(
            [
                (blocks[l].reshape(-1, n_in) @ self.weight[l]).view(n, self.sizes[l], n_out)
                for l in range(len(blocks))
            ],
            dim=1,
        )


class TensorProduct(torch.nn.Module):
    """Channel-wise Clebsch-Gordan product with one weight vector per path (e3x ``Tensor``).

    The weight has shape ``(L1 + 1, L2 + 1, L_out + 1, F)`` like e3x's kernel (parity-
    forbidden entries exist but are never used).

    The contraction is grouped by input pair ``(l1, l2)``: the outer product of the two
    input blocks, ``(n, F, (2 l1 + 1)(2 l2 + 1))``, is multiplied by the matrix of every
    allowed output ``l3`` stacked side by side, then weighted per path and channel and
    added to the output block of every ``l3``. This touches only the non-zero
    ``(l1, l2, l3)`` blocks and uses dense matrix products inside them.

    :param max_degree_1: largest degree ``L1`` of the first input
    :param max_degree_2: largest degree ``L2`` of the second input
    :param max_degree_out: largest output degree ``L_out``
    :param features: number of channels ``F``
    :param paths: the ``(l1, l2, l3)`` paths to couple; by default the parity-allowed
        ones of :py:func:`allowed_paths`
    :param rank_one: also prepare :py:meth:`rank_one`
    """

    def __init__(
        self,
        max_degree_1: int,
        max_degree_2: int,
        max_degree_out: int,
        features: int,
        paths: Optional[List[Tuple[int, int, int]]] = None,
        rank_one: bool = False,
    ):
        super().__init__()
        self.n_out = (max_degree_out + 1) ** 2
        shape = (max_degree_1 + 1, max_degree_2 + 1, max_degree_out + 1)
        self.weight = torch.nn.Parameter(torch.zeros(*shape, features))

        if paths is None:
            paths = allowed_paths(max_degree_1, max_degree_2, max_degree_out)
        self.sizes_1: List[int] = [2 * l + 1 for l in range(max_degree_1 + 1)]
        self.sizes_2: List[int] = [2 * l + 1 for l in range(max_degree_2 + 1)]
        self.sizes_out: List[int] = [2 * l + 1 for l in range(max_degree_out + 1)]
        # one entry per input pair: (l1, l2, offset in cg, columns, first output, outputs)
        self.pairs: List[Tuple[int, int, int, int, int, int]] = []
        # output degrees of every pair, one after the other, and their sizes
        self.pair_outputs: List[int] = []
        matrices: List[np.ndarray] = []
        offset = 0
        for l1, l2 in sorted({(p[0], p[1]) for p in paths}):
            outputs = [p[2] for p in paths if p[0] == l1 and p[1] == l2]
            matrix = np.concatenate(
                [
                    clebsch_gordan(l1, l2, l3).reshape((2 * l1 + 1) * (2 * l2 + 1), 2 * l3 + 1)
                    for l3 in outputs
                ],
                axis=1,
            )
            self.pairs.append(
                (l1, l2, offset, matrix.shape[1], len(self.pair_outputs), len(outputs))
            )
            self.pair_outputs += outputs
            matrices.append(matrix.reshape(-1))
            offset += matrix.size

        self.register_buffer("cg", torch.tensor(np.concatenate(matrices), dtype=torch.float64))
        self._register_columns(
            "pair",
            [
                (l1, l2, l3)
                for l1, l2, _, _, first, count in self.pairs
                for l3 in self.pair_outputs[first : first + count]
            ],
            shape,
        )
        self.single_channel = features == 1
        self._register_sparse_cg(paths, shape, max_degree_2, max_degree_out)
        self._register_rank_one_cg(paths if rank_one else [], max_degree_1, max_degree_2)
        self._init_weights(paths, shape)

    def _register_rank_one_cg(
        self, paths: List[Tuple[int, int, int]], max_degree_1: int, max_degree_2: int
    ) -> None:
        """Coefficients of :py:meth:`rank_one`, grouped by the degree ``l2`` of ``y``.

        For every ``l2``, a matrix of shape ``((L1 + 1)^2, (2 l2 + 1) * width)`` holding
        :math:`C^{l_1 l_2 l_3}_{m_1 m_2 m_3}` at row ``(l1, m1)``, column ``(m2, k)``,
        with ``k`` running over ``(l1, l3, m3)`` of every path from ``l2``.
        """
        n_1 = (max_degree_1 + 1) ** 2
        # one entry per l2: (l2, offset, width, first path, paths)
        self.groups: List[Tuple[int, int, int, int, int]] = []
        self.group_paths: List[Tuple[int, int]] = []
        matrices: List[np.ndarray] = [np.zeros(0)]
        offset = 0
        for l2 in range(max_degree_2 + 1):
            group = [(l1, l3) for l1, p2, l3 in paths if p2 == l2]
            if not group:
                continue
            width = sum(2 * l3 + 1 for _, l3 in group)
            matrix = np.zeros((n_1, 2 * l2 + 1, width))
            column = 0
            for l1, l3 in group:
                block = clebsch_gordan(l1, l2, l3)
                matrix[l1 * l1 : (l1 + 1) ** 2, :, column : column + 2 * l3 + 1] = block
                column += 2 * l3 + 1
            self.groups.append((l2, offset, width, len(self.group_paths), len(group)))
            self.group_paths += group
            matrices.append(matrix.reshape(-1))
            offset += matrix.size
        self.register_buffer(
            "rank_one_cg",
            torch.tensor(np.concatenate(matrices), dtype=torch.float64),
            persistent=False,
        )
        self._register_columns(
            "group",
            [
                (l1, l2, l3)
                for l2, _, _, first, count in self.groups
                for l1, l3 in self.group_paths[first : first + count]
            ],
            (max_degree_1 + 1, max_degree_2 + 1, self.weight.shape[2]),
        )

    def _register_columns(
        self, name: str, paths: List[Tuple[int, int, int]], shape: Tuple
    ) -> None:
        """Where every coupled column goes: its path's weight and its output component.

        The products compute, per input pair (or per ``l2`` for :py:meth:`rank_one`),
        the columns :math:`(l_3, m_3)` of every path side by side. ``{name}_weight``
        holds, for each of these columns in order, the flat index of its path in
        ``weight.reshape(-1, F)``; ``{name}_degree`` the degree ``l1`` of the path and
        ``{name}_output`` the output component ``l3^2 + l3 + m3``, so that weighting
        and summing every path is one gather, one product and one ``index_add``.

        :param name: ``"pair"`` or ``"group"``
        :param paths: the paths in the order of the columns
        :param shape: shape of the weight without the channels
        """
        weight, degree, output = [], [], []
        for l1, l2, l3 in paths:
            size = 2 * l3 + 1
            weight += [(l1 * shape[1] + l2) * shape[2] + l3] * size
            degree += [l1] * size
            output += list(range(l3 * l3, (l3 + 1) ** 2))
        for suffix, values in (("weight", weight), ("degree", degree), ("output", output)):
            self.register_buffer(
                f"{name}_{suffix}", torch.tensor(values, dtype=torch.long), persistent=False
            )

    def _register_sparse_cg(
        self,
        paths: List[Tuple[int, int, int]],
        shape: Tuple,
        max_degree_2: int,
        max_degree_out: int,
    ) -> None:
        """Non-zero coefficients of every path, for the single-channel product.

        ``sparse_index`` is the flat position in the ``((L1+1)^2, (L2+1)^2,
        (L_out+1)^2)`` coefficient tensor, ``sparse_path`` the flat index of the path's
        weight and ``sparse_values`` the coefficient (empty unless ``F = 1``).
        """
        n_2, n_out = (max_degree_2 + 1) ** 2, (max_degree_out + 1) ** 2
        index: List[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        path_index: List[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        values: List[np.ndarray] = [np.zeros(0)]
        for l1, l2, l3 in paths if self.single_channel else []:
            block = clebsch_gordan(l1, l2, l3)
            a, b, c = np.nonzero(np.abs(block) > 1e-14)
            flat = ((a + l1 * l1) * n_2 + b + l2 * l2) * n_out + c + l3 * l3
            index.append(flat)
            path_index.append(np.full(len(flat), (l1 * shape[1] + l2) * shape[2] + l3))
            values.append(block[a, b, c])
        self.register_buffer(
            "sparse_index", torch.tensor(np.concatenate(index)), persistent=False
        )
        self.register_buffer(
            "sparse_path", torch.tensor(np.concatenate(path_index)), persistent=False
        )
        self.register_buffer(
            "sparse_values",
            torch.tensor(np.concatenate(values), dtype=torch.float64),
            persistent=False,
        )

    def _init_weights(self, paths: List[Tuple[int, int, int]], shape: Tuple) -> None:
        # e3x's tensor_lecun_normal: variance 1 / (number of paths into l3)
        paths_into = [sum(1 for p in paths if p[2] == l3) for l3 in range(shape[2])]
        with torch.no_grad():
            for l1, l2, l3 in paths:
                lecun_normal_(self.weight[l1, l2, l3], paths_into[l3])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Couple ``x`` and ``y``.

        :param x: tensor of shape ``(n, (L1 + 1)^2, F)``
        :param y: tensor of shape ``(n, (L2 + 1)^2, F)``
        :return: tensor of shape ``(n, (L_out + 1)^2, F)``
        """
        if self.single_channel:
            return self._single_channel(x, y)
        if torch.compiler.is_compiling():
            return self.static_forward(x, y)
        n, n_features = x.shape[0], self.weight.shape[-1]
        # split (not slice) the inputs per degree and accumulate the outputs per degree:
        # the backward of a split is one concatenation, while every slice of a large
        # tensor costs a zero-filled copy of it in the double backward of force training
        xs = torch.split(x.transpose(1, 2), self.sizes_1, dim=2)  # [n, F, 2 l1 + 1]
        ys = torch.split(y.transpose(1, 2), self.sizes_2, dim=2)
        cg = self.cg.to(x.dtype)
        coupled: List[torch.Tensor] = []
        for l1, l2, offset, width, _, _ in self.pairs:
            size_1, size_2 = self.sizes_1[l1], self.sizes_2[l2]
            outer = xs[l1].unsqueeze(-1) * ys[l2].unsqueeze(-2)  # [n, F, size_1, size_2]
            block = cg[offset : offset + size_1 * size_2 * width].view(size_1 * size_2, width)
            coupled.append(outer.reshape(n, n_features, size_1 * size_2) @ block)
        # weight every column by its path and add it to its output component
        weights = self.weight.reshape(-1, n_features).index_select(0, self.pair_weight)
        terms = torch.cat(coupled, dim=2) * weights.t()  # [n, F, columns]
        output = torch.zeros((n, n_features, self.n_out), dtype=x.dtype, device=x.device)
        return output.index_add(2, self.pair_output, terms).transpose(1, 2)

    def static_forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:py:meth:`forward` with every path weighted and added by static slicing.

        What a compiled graph uses: the path weights are taken by constant indices and
        the columns added to their output degree block by block, so that
        ``torch.compile`` fuses the weighting and the sums into direct loads instead of a
        gather and a scatter through index tensors (loops with indirect loads and
        atomic adds, in the force pass and again in its backward). Same numbers as
        :py:meth:`forward` up to round-off; in eager mode, :py:meth:`forward`
        dispatches fewer operators.

        :param x: tensor of shape ``(n, (L1 + 1)^2, F)``
        :param y: tensor of shape ``(n, (L2 + 1)^2, F)``
        :return: tensor of shape ``(n, (L_out + 1)^2, F)``
        """
        n, n_features = x.shape[0], self.weight.shape[-1]
        xs = torch.split(x.transpose(1, 2), self.sizes_1, dim=2)  # [n, F, 2 l1 + 1]
        ys = torch.split(y.transpose(1, 2), self.sizes_2, dim=2)
        cg = self.cg.to(x.dtype)
        terms: List[List[torch.Tensor]] = [[] for _ in self.sizes_out]
        for l1, l2, offset, width, first, count in self.pairs:
            size_1, size_2 = self.sizes_1[l1], self.sizes_2[l2]
            outer = xs[l1].unsqueeze(-1) * ys[l2].unsqueeze(-2)  # [n, F, size_1, size_2]
            block = cg[offset : offset + size_1 * size_2 * width].view(size_1 * size_2, width)
            # a broadcast product and a sum over the (2 l1 + 1)(2 l2 + 1) products,
            # fused by the compiler (no small matrix product per input pair)
            outer = outer.reshape(n, n_features, size_1 * size_2, 1)
            coupled = (outer * block).sum(dim=2)  # [n, F, width]
            outputs = self.pair_outputs[first : first + count]
            columns = torch.split(coupled, [self.sizes_out[l3] for l3 in outputs], dim=2)
            for k, l3 in enumerate(outputs):
                terms[l3].append(columns[k] * self.weight[l1, l2, l3].unsqueeze(-1))
        return _sum_blocks(terms, n, n_features, x).transpose(1, 2)

    def rank_one(self, v: torch.Tensor, scale: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The product for a first input that is the same in every channel up to a scale.

        ``forward(x, y)`` with :math:`x^{lm}_f = v^{lm} s^l_f` (e.g. the output of a
        ``1 -> F`` :py:class:`EquivariantLinear`, whose weight is ``scale``), without
        forming ``x``: for every degree ``l2`` of ``y``, the coefficients of all its
        paths are first contracted with :math:`v` (one matrix product, no channel
        index), then with :math:`y` (one batched product), and the scale joins the path
        weight.

        :param v: tensor of shape ``(n, (L1 + 1)^2)``
        :param scale: tensor of shape ``(L1 + 1, F)``
        :param y: tensor of shape ``(n, (L2 + 1)^2, F)``
        :return: tensor of shape ``(n, (L_out + 1)^2, F)``, equal to
            ``forward(v[:, :, None] * scale[degrees], y)``
        """
        if torch.compiler.is_compiling():
            return self.static_rank_one(v, scale, y)
        n, n_features = y.shape[0], self.weight.shape[-1]
        n_1 = v.shape[1]
        ys = torch.split(y.transpose(1, 2), self.sizes_2, dim=2)  # [n, F, 2 l2 + 1]
        cg = self.rank_one_cg.to(y.dtype)
        coupled: List[torch.Tensor] = []
        for l2, offset, width, _, _ in self.groups:
            size_2 = self.sizes_2[l2]
            block = cg[offset : offset + n_1 * size_2 * width].view(n_1, size_2 * width)
            contracted = (v @ block).view(n, size_2, width)
            coupled.append(torch.bmm(ys[l2], contracted))  # [n, F, width]
        # path weight times the scale of the path's l1, per column
        weights = self.weight.reshape(-1, n_features).index_select(0, self.group_weight)
        weights = weights * scale.index_select(0, self.group_degree)
        terms = torch.cat(coupled, dim=2) * weights.t()  # [n, F, columns]
        output = torch.zeros((n, n_features, self.n_out), dtype=y.dtype, device=y.device)
        return output.index_add(2, self.group_output, terms).transpose(1, 2)

    def static_rank_one(
        self, v: torch.Tensor, scale: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """:py:meth:`rank_one` with static weighting and sums (see :py:meth:`static_forward`).

        :param v: tensor of shape ``(n, (L1 + 1)^2)``
        :param scale: tensor of shape ``(L1 + 1, F)``
        :param y: tensor of shape ``(n, (L2 + 1)^2, F)``
        :return: tensor of shape ``(n, (L_out + 1)^2, F)``
        """
        n, n_features = y.shape[0], self.weight.shape[-1]
        n_1 = v.shape[1]
        ys = torch.split(y.transpose(1, 2), self.sizes_2, dim=2)  # [n, F, 2 l2 + 1]
        cg = self.rank_one_cg.to(y.dtype)
        terms: List[List[torch.Tensor]] = [[] for _ in self.sizes_out]
        for l2, offset, width, first, count in self.groups:
            size_2 = self.sizes_2[l2]
            block = cg[offset : offset + n_1 * size_2 * width].view(n_1, size_2 * width)
            contracted = (v @ block).view(n, size_2, width)
            # a broadcast product and a sum over 2 l2 + 1 terms: fused by the compiler,
            # where a batched product over the atoms is one tiny product per atom
            coupled = (ys[l2].unsqueeze(-1) * contracted.unsqueeze(1)).sum(dim=2)
            paths = self.group_paths[first : first + count]
            columns = torch.split(coupled, [self.sizes_out[l3] for _, l3 in paths], dim=2)
            for k, (l1, l3) in enumerate(paths):
                weight = self.weight[l1, l2, l3] * scale[l1]
                terms[l3].append(columns[k] * weight.unsqueeze(-1))
        return _sum_blocks(terms, n, n_features, y).transpose(1, 2)

    def _single_channel(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The product for ``F = 1`` with one weighted coefficient matrix.

        :param x: tensor of shape ``(n, (L1 + 1)^2, 1)``
        :param y: tensor of shape ``(n, (L2 + 1)^2, 1)``
        :return: tensor of shape ``(n, (L_out + 1)^2, 1)``
        """
        n, n_1, n_2 = x.shape[0], x.shape[1], y.shape[1]
        weights = self.weight.reshape(-1)[self.sparse_path] * self.sparse_values.to(x.dtype)
        coupling = torch.zeros(n_1 * n_2 * self.n_out, dtype=x.dtype, device=x.device)
        coupling = coupling.index_add(0, self.sparse_index, weights)
        partial = (x[:, :, 0] @ coupling.view(n_1, n_2 * self.n_out)).view(n, n_2, self.n_out)
        if torch.compiler.is_compiling():
            # broadcast product and sum, fused by the compiler (see static_rank_one)
            return (y * partial).sum(dim=1).unsqueeze(-1)
        return torch.bmm(y.transpose(1, 2), partial).transpose(1, 2)


def _sum_blocks(
    terms: List[List[torch.Tensor]], n: int, n_features: int, like: torch.Tensor
) -> torch.Tensor:
    """The output degree blocks side by side, each the sum of its terms.

    :param terms: for every output degree ``l``, tensors of shape ``(n, F, 2 l + 1)``
        (none for a degree that no path reaches: zeros)
    :param n: rows
    :param n_features: channels ``F``
    :param like: dtype and device of the zeros
    :return: tensor of shape ``(n, F, (L_out + 1)^2)``
    """
    blocks: List[torch.Tensor] = []
    for l, degree_terms in enumerate(terms):
        if len(degree_terms) == 0:
            blocks.append(
                torch.zeros((n, n_features, 2 * l + 1), dtype=like.dtype, device=like.device)
            )
            continue
        block = degree_terms[0]
        for term in degree_terms[1:]:
            block = block + term
        blocks.append(block)
    return torch.cat(blocks, dim=2)


class TensorDense(torch.nn.Module):
    """Equivariant linear ``F_in -> 2 F_out`` followed by the product of both halves.

    :param max_degree: largest input degree
    :param in_features: input channels
    :param out_features: output channels
    :param max_degree_out: largest output degree
    """

    def __init__(
        self, max_degree: int, in_features: int, out_features: int, max_degree_out: int
    ):
        super().__init__()
        self.out_features = out_features
        self.dense = EquivariantLinear(max_degree, in_features, 2 * out_features)
        self.tensor = TensorProduct(max_degree, max_degree, max_degree_out, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Self tensor product of ``x``.

        :param x: tensor of shape ``(n, (L + 1)^2, in_features)``
        :return: tensor of shape ``(n, (L_out + 1)^2, out_features)``
        """
        h = self.dense(x)
        return self.tensor(h[..., : self.out_features], h[..., self.out_features :])


class MessagePass(torch.nn.Module):
    """``M_i = sum_j TensorProduct(filter(a_ij), S_j)`` (e3x ``MessagePass``).

    :param max_degree: largest degree of edges, nodes and messages
    :param features: number of channels
    """

    def __init__(self, max_degree: int, features: int):
        super().__init__()
        self.filter = EquivariantLinear(max_degree, features, features)
        self.tensor = TensorProduct(max_degree, max_degree, max_degree, features)

    def forward(
        self,
        nodes: torch.Tensor,
        edges: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
    ) -> torch.Tensor:
        """Gather, couple and sum messages.

        :param nodes: node features ``S``, tensor of shape ``(n_atoms, (L + 1)^2, F)``
        :param edges: edge features ``a_ij``, tensor of shape ``(n_pairs, (L + 1)^2, F)``
        :param centers: index ``i`` of every pair, shape ``(n_pairs,)``
        :param neighbors: index ``j`` of every pair, shape ``(n_pairs,)``
        :return: tensor of shape ``(n_atoms, (L + 1)^2, F)``
        """
        messages = self.tensor(self.filter(edges), nodes[neighbors])
        return torch.zeros_like(nodes).index_add(0, centers, messages)
