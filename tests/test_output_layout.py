"""The documented block layout of ``lorem::charges`` and ``lorem::potentials``.

``docs/architecture.rst`` ("Outputs") describes it: block ``o3_lambda = 0`` has two
properties, ``channel`` 0 (the scalar MLP charge) and 1 (the ``l = 0`` spherical charge);
every block ``o3_lambda = l >= 1`` has one property, labelled ``channel = 1 + l**2`` (the
position of its first component in the flat stack of ``1 + (L + 1)**2`` charges), and
``2 l + 1`` components ``o3_mu = -l..l``.
"""

import pytest
import torch
from _helpers import make_model, molecule, nacl_cell

from lorem_mta.utils import predict

NAMES = ["lorem::charges", "lorem::potentials"]


@pytest.mark.parametrize("max_degree_lr", [0, 1, 2])
@pytest.mark.parametrize("structure", [molecule, nacl_cell], ids=["molecule", "periodic"])
def test_charges_and_potentials_layout(max_degree_lr, structure):
    atoms = structure()
    model = make_model(max_degree=2, max_degree_lr=max_degree_lr)
    outputs = predict(model, [atoms], extra_outputs=NAMES).outputs
    for name in NAMES:
        tensor = outputs[name]
        assert tensor.keys.names == ["o3_lambda", "o3_sigma"]
        assert tensor.keys.values.tolist() == [[l, 1] for l in range(max_degree_lr + 1)]
        flat = []
        for l in range(max_degree_lr + 1):
            block = tensor.block({"o3_lambda": l, "o3_sigma": 1})
            assert block.samples.names == ["system", "atom"]
            assert block.components[0].names == ["o3_mu"]
            assert block.components[0].values.reshape(-1).tolist() == list(range(-l, l + 1))
            assert block.properties.names == ["channel"]
            channels = block.properties.values.reshape(-1).tolist()
            if l == 0:
                assert channels == [0, 1]
                flat += channels
            else:
                assert channels == [1 + l * l]
                flat += [channels[0] + m + l for m in range(-l, l + 1)]
            assert block.values.shape == (len(atoms), 2 * l + 1, len(channels))
            assert torch.isfinite(block.values).all()
        # the flat positions cover the 1 + (L + 1)^2 charges exactly once
        assert flat == list(range(1 + (max_degree_lr + 1) ** 2))
