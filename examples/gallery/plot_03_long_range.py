"""
Anatomy of the long-range block
===============================

LOREM's long-range block gives every atom ten latent charges: a scalar charge
:math:`q_i` from an MLP and nine equivariant charges :math:`Q_i^{lm}` with
:math:`l \\le 2` from a tensor product of the spherical features. Each of the ten
channels goes through the same Coulomb sum, and the resulting potentials are mixed back
into the features (see :doc:`/architecture`).

The exported model makes both visible as additional outputs, ``lorem::charges`` and
``lorem::potentials``. This example looks at them for a real, trained model: the small
lorem-jax model of ``tests/resources/jax_run`` (trained with ``lorem-train`` on
cumulene, C9H4), converted with ``lorem-mta convert-jax``.
"""

# %%
# Convert the model and ask for the extra outputs
# -----------------------------------------------
#
# ``additional_outputs`` makes the calculator compute the listed outputs with every
# energy evaluation and store them in ``calculator.additional_outputs``, as metatensor
# ``TensorMap`` objects with one block per degree ``(o3_lambda, o3_sigma)``.

from pathlib import Path

import ase.io
import matplotlib.pyplot as plt
import numpy as np
import torch
from metatomic.torch import ModelOutput
from metatomic_ase import MetatomicCalculator

from lorem_mta.convert import convert_jax

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
ROOT = HERE.parents[1]
output = Path("outputs") / "gallery-long-range"
output.mkdir(parents=True, exist_ok=True)
convert_jax(
    str(ROOT / "tests" / "resources" / "jax_run"),
    str(output / "model.pt"),
    torch.float64,
    extensions=str(output / "extensions"),
)

outputs = {
    name: ModelOutput(sample_kind="atom") for name in ["lorem::charges", "lorem::potentials"]
}
calculator = MetatomicCalculator(str(output / "model.pt"), additional_outputs=outputs)

atoms = ase.io.read(ROOT / "examples" / "train" / "cumulene.xyz", index=0)
atoms.calc = calculator
print(f"{atoms.get_chemical_formula()}: E = {atoms.get_potential_energy():.4f} eV")
charges = calculator.additional_outputs["lorem::charges"]
print(charges)

# %%
# The layout of the outputs
# -------------------------
#
# Block ``l = 0`` holds two channels (property ``channel`` 0: the scalar MLP charge,
# 1: the ``l = 0`` spherical charge); blocks ``l = 1`` and ``l = 2`` hold one channel
# with ``2l + 1`` components ``o3_mu = -l ... l`` (for ``l = 1``: ``y, z, x``). Stacked,
# they give the ten channels of the paper.


def channels(tensor_map):
    """Per-atom values of the ten channels, ``(n_atoms, 10)``."""
    columns = []
    for key, block in tensor_map.items():
        values = block.values.detach().numpy()
        if int(key["o3_lambda"]) == 0:
            columns.append(values[:, 0, :])  # (atoms, 2): channels 0 and 1
        else:
            columns.append(values[:, :, 0])  # (atoms, 2l + 1)
    return np.concatenate(columns, axis=1)


for key, block in charges.items():
    print(
        f"o3_lambda={int(key['o3_lambda'])}: values {tuple(block.values.shape)}, "
        f"channels {block.properties.values.flatten().tolist()}"
    )

q = channels(charges)
v = channels(calculator.additional_outputs["lorem::potentials"])
labels = ["q", "Q00"] + [f"Q1{m:+d}" for m in (-1, 0, 1)] + [f"Q2{m:+d}" for m in range(-2, 3)]

# %%
# Charges and potentials of every atom
# ------------------------------------
#
# Atoms are sorted along the chain of the molecule (its principal axis). The scalar
# charges tell hydrogens, terminal carbons and inner carbons apart; they are not
# neutral (nothing asks them to be: they are latent quantities, not physical charges).
# The potentials vary smoothly along the chain, because each one sums the charges of
# the whole molecule with a :math:`1/r` kernel. This model is small and barely trained
# (10 epochs of lorem-jax on 16 structures); in it the ``l = 2`` channels carry more
# weight than the ``l = 1`` ones.

centred = atoms.positions - atoms.positions.mean(axis=0)
axis_direction = np.linalg.svd(centred)[2][0]
order = np.argsort(centred @ axis_direction)
names = [f"{atoms.symbols[i]}{i}" for i in order]

figure, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
for axis, values, title in [(axes[0], q, "latent charges"), (axes[1], v, "potentials")]:
    limit = np.abs(values).max()
    image = axis.imshow(values[order], cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    axis.set_xticks(range(10), labels, rotation=60)
    axis.set_title(title)
    figure.colorbar(image, ax=axis, shrink=0.8)
axes[0].set_yticks(range(len(atoms)), names)
figure.tight_layout()

# %%
# Along the chain
# ---------------
#
# The same data as curves: position of each atom along the chain against the scalar
# channels and the norms of the ``l = 1`` and ``l = 2`` channels (the norms are
# rotation invariant).

position = centred[order] @ axis_direction
figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
for axis, values, title in [(axes[0], q[order], "charges"), (axes[1], v[order], "potentials")]:
    axis.plot(position, values[:, 0], "o-", label="scalar q")
    axis.plot(position, values[:, 1], "s-", label="l = 0")
    axis.plot(position, np.linalg.norm(values[:, 2:5], axis=1), "^-", label="|l = 1|")
    axis.plot(position, np.linalg.norm(values[:, 5:10], axis=1), "v-", label="|l = 2|")
    axis.set_xlabel("position along the chain (Å)")
    axis.set_title(title)
axes[0].legend(fontsize=8, loc="center", bbox_to_anchor=(0.5, 0.6))
figure.tight_layout()

# %%
# Equivariance
# ------------
#
# Rotating the molecule leaves the scalar channels unchanged and rotates the ``l = 1``
# channels like vectors (``(y, z, x)`` components): :math:`Q^1(R\mathbf r) = R\,Q^1`,
# and the same holds for the potentials, because every channel goes through the same
# rotation-invariant Coulomb operator.

angle = 0.7
rotation = np.array(
    [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]]
)
rotated = atoms.copy()
rotated.positions = atoms.positions @ rotation.T
rotated.calc = calculator
rotated.get_potential_energy()
q_rotated = channels(calculator.additional_outputs["lorem::charges"])
v_rotated = channels(calculator.additional_outputs["lorem::potentials"])

yzx = [1, 2, 0]  # (y, z, x) order of o3_mu = -1, 0, 1
to_yzx = rotation[np.ix_(yzx, yzx)]
print("scalar channels:", np.abs(q_rotated[:, :2] - q[:, :2]).max())
print("l = 1 charges:  ", np.abs(q_rotated[:, 2:5] - q[:, 2:5] @ to_yzx.T).max())
print("l = 1 potentials:", np.abs(v_rotated[:, 2:5] - v[:, 2:5] @ to_yzx.T).max())
