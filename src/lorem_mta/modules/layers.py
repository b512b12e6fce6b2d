r"""Dense building blocks shared by every LOREM stage: MLPs and the ``Update`` block.

The ``Update`` block (LOREM paper, arXiv:2507.19382, Sec. 5) mixes new information
:math:`y_i` into the scalar node features :math:`x_i` with two residual MLPs, each
followed by a layer norm:

.. math::

    x_i &\leftarrow \mathrm{LN}_0\big(x_i + \mathrm{MLP}_0(y_i)\big) \\
    x_i &\leftarrow \mathrm{LN}_1\big(x_i + \mathrm{MLP}_1(x_i)\big)

Both MLPs have one hidden layer of width :math:`2d` with SiLU activation. Layer norms use
:math:`\epsilon = 10^{-6}` with a learned scale and bias, as flax's ``LayerNorm``.
"""

import math
from typing import List

import torch


def lecun_normal_(weight: torch.Tensor, fan_in: int) -> torch.Tensor:
    """Fill ``weight`` in place with flax's default LeCun-normal initialisation.

    A truncated normal (two standard deviations) rescaled so that the variance is
    ``1 / fan_in``.

    :param weight: tensor to initialise
    :param fan_in: number of inputs of the layer
    :return: ``weight``
    """
    # std of a unit normal truncated to [-2, 2] is 0.87962566...
    std = math.sqrt(1.0 / max(fan_in, 1)) / 0.8796256610342398
    with torch.no_grad():
        torch.nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
    return weight


class Linear(torch.nn.Linear):
    """:py:class:`torch.nn.Linear` with flax's default initialisation.

    Weights are LeCun-normal, biases zero.

    :param in_features: input size
    :param out_features: output size
    :param bias: whether to add a bias
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)

    def reset_parameters(self) -> None:
        """Re-draw the weights (LeCun normal) and zero the bias."""
        lecun_normal_(self.weight, self.in_features)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)


class MLP(torch.nn.Module):
    """Multi-layer perceptron with SiLU between layers and none after the last.

    :param in_features: input size
    :param features: output size of every layer, e.g. ``[128, 128, 1]``
    """

    def __init__(self, in_features: int, features: List[int]):
        super().__init__()
        sizes = [in_features] + list(features)
        self.layers = torch.nn.ModuleList(
            [Linear(sizes[k], sizes[k + 1]) for k in range(len(features))]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP.

        :param x: tensor of shape ``(..., in_features)``
        :return: tensor of shape ``(..., features[-1])``
        """
        n_layers = len(self.layers)
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k != n_layers - 1:
                x = torch.nn.functional.silu(x)
        return x

    def last_layer_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the last layer of the MLP sees: every layer but the last, with SiLU.

        ``self.layers[-1]`` applied to the result gives :py:meth:`forward`; these are the
        last-layer features of LLPR uncertainties (``mtt::aux::*_last_layer_features``).

        :param x: tensor of shape ``(..., in_features)``
        :return: tensor of shape ``(..., features[-2])`` (``x`` itself for a one-layer
            MLP)
        """
        n_layers = len(self.layers)
        for k, layer in enumerate(self.layers):
            if k != n_layers - 1:
                x = torch.nn.functional.silu(layer(x))
        return x


class Update(torch.nn.Module):
    """Residual update of scalar node features (see module docstring).

    :param in_features: size of the incoming information ``y``
    :param features: size ``d`` of the node features ``x``
    """

    def __init__(self, in_features: int, features: int):
        super().__init__()
        self.mlp_0 = MLP(in_features, [2 * features, features])
        self.norm_0 = torch.nn.LayerNorm(features, eps=1e-6)
        self.mlp_1 = MLP(features, [2 * features, features])
        self.norm_1 = torch.nn.LayerNorm(features, eps=1e-6)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Update ``x`` with ``y``.

        :param x: node features, tensor of shape ``(n_atoms, features)``
        :param y: new information, tensor of shape ``(n_atoms, in_features)``
        :return: updated node features, tensor of shape ``(n_atoms, features)``
        """
        x = self.norm_0(x + self.mlp_0(y))
        return self.norm_1(x + self.mlp_1(x))


def structure_index(atom_ptr: List[int], n_atoms: int, device: torch.device) -> torch.Tensor:
    """Index of the structure of every atom of a batch.

    :param atom_ptr: first atom of every structure, plus the total
    :param n_atoms: total number of atoms, ``atom_ptr[-1]``
    :param device: device of the result
    :return: integer tensor of shape ``(n_atoms,)``
    """
    n_structures = len(atom_ptr) - 1
    counts = torch.tensor(
        [atom_ptr[k + 1] - atom_ptr[k] for k in range(n_structures)],
        dtype=torch.long,
        device=device,
    )
    return torch.repeat_interleave(
        torch.arange(n_structures, device=device), counts, output_size=n_atoms
    )
